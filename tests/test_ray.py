"""Ray as the optional scale-out engine, on a local cluster started here on loopback: the
cluster listens and talks on 127.0.0.1 only with usage statistics off, curation on Ray gives
the same curated Parquet and report as the local executor, and HPO trials run as Ray tasks
sharing the study in the registry database."""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from forgeml.core.config import CurateConfig

needs_ray = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None,
    reason="ray is not installed (pip install 'forgeml[ray]')",
)


@pytest.fixture(scope="module")
def ray_local():
    """A 2-CPU local cluster for the module; forgeml's stages join it instead of starting one."""
    from forgeml.core.ray_cluster import start_local_ray

    ray = start_local_ray(num_cpus=2)
    yield ray
    ray.shutdown()


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    mapped = getattr(addr, "ipv4_mapped", None)  # ::ffff:127.0.0.1 on a dual-stack socket
    return addr.is_loopback or (mapped is not None and mapped.is_loopback)


@pytest.mark.slow
@needs_ray
def test_local_cluster_listens_and_talks_on_loopback_only(ray_local):
    psutil = pytest.importorskip("psutil")

    assert ray_local.util.get_node_ip_address() == "127.0.0.1"

    @ray_local.remote
    def worker_env() -> dict[str, str | None]:
        keys = ("RAY_USAGE_STATS_ENABLED", "HF_HUB_OFFLINE", "RAY_ENABLE_UV_RUN_RUNTIME_ENV")
        return {k: os.environ.get(k) for k in keys}

    assert ray_local.get(worker_env.remote()) == {
        "RAY_USAGE_STATS_ENABLED": "0",
        "HF_HUB_OFFLINE": "1",
        "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
    }
    sockets = []
    for proc in psutil.Process().children(recursive=True):  # gcs, raylet, agents, workers
        try:
            sockets += [(proc.name(), c) for c in proc.net_connections("inet")]
        except psutil.Error:
            continue
    listening = [(name, c.laddr.ip) for name, c in sockets if c.status == psutil.CONN_LISTEN]
    assert listening, "found none of the Ray servers"
    assert all(_loopback(ip) for _, ip in listening), listening
    peers = [(name, c.raddr.ip) for name, c in sockets if c.raddr]
    assert all(_loopback(ip) for _, ip in peers), peers


def _raw_acme(workspace, tmp_path: Path) -> Path:
    from test_curate import _acme_with_copies

    from forgeml.pipeline.ingest_stage import ingest_stage
    from forgeml.registry import open_registry

    root = tmp_path / "acme"
    _acme_with_copies(root)
    raw = ingest_stage(workspace, [root], name="acme", exclude=["answers.json", "planted.json"])
    return Path(open_registry(workspace).get_asset(raw.output).path) / "data.parquet"


@pytest.mark.slow
@needs_ray
def test_curation_on_ray_is_identical_to_local(ray_local, workspace, tmp_path, monkeypatch):
    import time

    from forgeml.data import curate

    raw = _raw_acme(workspace, tmp_path)
    monkeypatch.setattr(curate, "_BATCH", 32)  # many batches, so their order matters
    base = {"gopher_repetition": {"enabled": False}, "dedup": {"threshold": 0.7}}
    local_cfg = CurateConfig.model_validate(base)
    ray_cfg = CurateConfig.model_validate({**base, "executor": "ray"})
    t0 = time.perf_counter()
    local = curate.curate_documents(raw, tmp_path / "local" / "data.parquet", local_cfg)
    t1 = time.perf_counter()
    on_ray = curate.curate_documents(raw, tmp_path / "ray" / "data.parquet", ray_cfg)
    t2 = time.perf_counter()
    print(f"curate {local.input} records: local {t1 - t0:.2f}s, ray {t2 - t1:.2f}s")

    assert local.input > 5 * 32 and local.kept and local.dropped
    assert local.duplicates["near_clusters"] and local.redactions["email"]
    assert on_ray.kept + on_ray.dropped + on_ray.failed == on_ray.input == local.input
    a = pq.read_table(tmp_path / "local" / "data.parquet")
    b = pq.read_table(tmp_path / "ray" / "data.parquet")
    assert a.num_rows == local.kept and a.equals(b)
    report_a, report_b = local.to_dict(), on_ray.to_dict()
    assert report_a.pop("out_path") != report_b.pop("out_path")
    assert json.dumps(report_a) == json.dumps(report_b)  # same values in the same key order


@pytest.mark.slow
@needs_ray
def test_curate_stage_on_ray_shares_the_cache_with_local(ray_local, workspace, tmp_path):
    from forgeml.pipeline.curate_stage import curate_stage
    from forgeml.pipeline.ingest_stage import ingest_stage

    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(6):
        (folder / f"n{i}.txt").write_text(f"Note {i}: write to ops{i}@acme.example today.\n" * 3)
    raw = ingest_stage(workspace, [folder], name="notes").output
    cfg = CurateConfig.model_validate({"executor": "ray", "language": {"enabled": False}})
    first = curate_stage(workspace, raw, cfg)
    assert not first.cached and first.metrics["kept"] + first.metrics["dropped"] == 6
    assert curate_stage(workspace, raw, cfg.model_copy(update={"executor": "local"})).cached


def test_ray_executor_without_ray_says_how_to_install(monkeypatch):
    import sys

    from forgeml.core.errors import ConfigError
    from forgeml.core.ray_cluster import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ConfigError, match=r"forgeml\[ray\]"):
        import_ray()


def _warm_two_workers(ray, gate: Path) -> None:
    """Have two Ray workers up at once with the trial code imported, so two trials start
    together rather than racing two cold worker start-ups (torch imports that end seconds
    apart on a busy machine, longer than a tiny trial takes)."""
    gate.mkdir()

    @ray.remote(num_cpus=1)
    def warm(folder: str) -> int:
        import os
        import time
        from pathlib import Path

        import forgeml.hpo.study
        import forgeml.train.pretrain  # noqa: F401

        Path(folder, str(os.getpid())).touch()
        deadline = time.monotonic() + 120
        while len(os.listdir(folder)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)  # each waits for the other: two workers, not one used twice
        return os.getpid()

    assert len(set(ray.get([warm.remote(str(gate)), warm.remote(str(gate))]))) == 2


@pytest.mark.slow
@needs_ray
def test_hpo_trials_run_as_ray_tasks(ray_local, workspace, text_folder, tmp_path):
    import optuna
    from test_hpo import LR_SPACE, tiny_recipe

    from forgeml.hpo.space import parse_space
    from forgeml.hpo.storage import study_storage
    from forgeml.hpo.study import run_hpo
    from forgeml.registry import open_registry

    recipe = tiny_recipe(text_folder, max_steps=12)
    _warm_two_workers(ray_local, tmp_path / "warm")
    result = run_hpo(
        workspace, recipe, parse_space(LR_SPACE), trials=2, parallel=2, baseline=False,
        executor="ray",
    )  # fmt: skip
    assert result.n_complete == 2 and len(result.trials) == 2
    lrs = {t["params"]["optim.lr"] for t in result.trials}
    assert len(lrs) == 2  # each task seeded its own draw
    reg = open_registry(workspace)
    runs = [reg.get_run(t["run_id"]) for t in result.trials]
    assert all(r.status == "succeeded" and r.stage == "pretrain" for r in runs)
    first, second = sorted(runs, key=lambda r: r.started_at)
    assert second.started_at < first.ended_at  # the two trials ran at the same time
    stored = optuna.load_study(study_name=result.study, storage=study_storage(workspace))
    assert len(stored.trials) == 2 and stored.best_value == pytest.approx(result.best_value)
