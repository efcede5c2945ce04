"""Registry on SQLite: content addressing, ref resolution, runs and the stage cache,
lineage walks, aliases with rollback, and that the migrations match the ORM tables."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from forgeml.core.config import config_hash
from forgeml.core.errors import ForgeError, NotFoundError
from forgeml.registry import Registry, format_lineage, tree_digest
from forgeml.registry.artifacts import is_read_only, remove_tree
from forgeml.registry.schema import Base


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    registry = Registry(f"sqlite:///{tmp_path / 'ws' / 'registry.db'}", tmp_path / "ws" / "art")
    yield registry
    registry.close()


def _folder(root: Path, files: dict[str, str]) -> Path:
    for rel, content in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(content)
    return root


def test_add_and_resolve_by_id_prefix_name(reg: Registry, tmp_path: Path) -> None:
    src = _folder(tmp_path / "docs", {"a.txt": "alpha", "sub/b.txt": "beta"})
    asset = reg.add_asset("dataset", "docs", src, metadata={"lang": "en"})
    assert asset.id == f"dataset-{asset.sha256[:12]}"
    assert asset.sha256 == tree_digest(src).sha256
    assert (asset.n_files, asset.size_bytes) == (2, 9)
    assert asset.metadata == {"lang": "en"}
    assert (asset.path / "sub" / "b.txt").read_text() == "beta"
    assert asset.created_at.tzinfo is not None
    assert reg.get_asset(asset.id) == asset
    assert reg.get_asset(asset.id[:10]).id == asset.id
    assert reg.get_asset(asset.sha256[:8]).id == asset.id
    assert reg.get_asset("docs").id == asset.id
    assert reg.asset_path("docs") == asset.path
    assert [a.id for a in reg.list_assets("dataset")] == [asset.id]
    assert reg.list_assets("model") == []

    # The name resolves to the latest asset carrying it.
    newer = reg.add_asset("dataset", "docs", _folder(tmp_path / "docs2", {"a.txt": "gamma"}))
    assert reg.get_asset("docs").id == newer.id


def test_single_file_asset_path_is_the_file(reg: Registry, tmp_path: Path) -> None:
    src = tmp_path / "tok.json"
    src.write_text('{"v": 1}')
    asset = reg.add_asset("tokenizer", "bpe", src)
    assert asset.path.is_file() and asset.path.name == "tok.json"
    assert asset.path.read_text() == '{"v": 1}'
    assert reg.verify_asset(asset.id)


def test_content_addressing_is_idempotent(reg: Registry, tmp_path: Path) -> None:
    a = reg.add_asset("dataset", "x", _folder(tmp_path / "a", {"f.txt": "same"}))
    b = reg.add_asset("dataset", "y", _folder(tmp_path / "b", {"f.txt": "same"}))
    assert a.id == b.id and b.name == "x"
    c = reg.add_asset("dataset", "z", _folder(tmp_path / "c", {"f.txt": "samf"}))
    assert c.id != a.id
    # A renamed file is different content: the manifest includes relative paths.
    d = reg.add_asset("dataset", "w", _folder(tmp_path / "d", {"g.txt": "same"}))
    assert d.id != a.id
    assert len(reg.list_assets()) == 3
    # Same bytes under another kind is another asset.
    assert reg.add_asset("eval", "e", tmp_path / "a").id.startswith("eval-")


def test_artifacts_read_only_and_source_untouched(reg: Registry, tmp_path: Path) -> None:
    src = _folder(tmp_path / "model", {"w.bin": "0123", "cfg/c.json": "{}"})
    before = tree_digest(src)
    asset = reg.add_asset("model", "m", src)
    assert tree_digest(src) == before
    assert not is_read_only(src / "w.bin")
    stored = asset.path
    assert is_read_only(stored) and is_read_only(stored / "w.bin")
    assert is_read_only(stored / "cfg") and is_read_only(stored / "cfg" / "c.json")
    assert not [p for p in stored.parent.iterdir() if p.name.startswith(".tmp-")]
    assert reg.verify_asset("m")

    # Tampering is caught by re-hashing.
    (stored / "w.bin").chmod(0o644)
    (stored / "w.bin").write_text("9999")
    assert not reg.verify_asset("m")


def test_unknown_refs_and_kinds(reg: Registry, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="unknown asset 'nope'") as err:
        reg.get_asset("nope")
    assert "forgeml assets list" in str(err.value)
    with pytest.raises(NotFoundError, match="unknown run"):
        reg.get_run("run-zzz")
    with pytest.raises(ForgeError, match="unknown asset kind 'weights'"):
        reg.add_asset("weights", "w", tmp_path)
    with pytest.raises(NotFoundError, match="no such file"):
        reg.add_asset("dataset", "d", tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ForgeError, match="holds no files"):
        reg.add_asset("dataset", "d", tmp_path / "empty")


def test_ambiguous_prefix_lists_candidates(reg: Registry, tmp_path: Path) -> None:
    ids = {
        reg.add_asset("dataset", f"d{i}", _folder(tmp_path / str(i), {"f": str(i)})).id
        for i in range(3)
    }
    with pytest.raises(ForgeError, match="ambiguous") as err:
        reg.get_asset("dataset-")
    for asset_id in ids:
        assert asset_id in str(err.value)


def test_runs_metrics_and_cache(reg: Registry, tmp_path: Path) -> None:
    data = reg.add_asset("dataset", "docs", _folder(tmp_path / "d", {"a": "1"}))
    other = reg.add_asset("dataset", "more", _folder(tmp_path / "e", {"a": "2"}))
    cfg = {"vocab_size": 512, "algo": "bpe"}
    run = reg.start_run("tokenize", cfg, inputs=["docs"], seed=7, launched_by="agent:ci")
    assert run.id.startswith("run-") and run.status == "running"
    assert run.inputs == [data.id] and run.seed == 7 and run.launched_by == "agent:ci"
    assert run.config_hash == config_hash(cfg)
    assert run.code_version.startswith("0.") and "sqlalchemy" in run.library_versions
    # Nothing cached while the run is still running.
    assert reg.find_cached_run("tokenize", run.config_hash, [data.id]) is None

    tok = reg.add_asset(
        "tokenizer", "bpe", _folder(tmp_path / "t", {"t.json": "{}"}), run_id=run.id
    )
    assert tok.producer_run == run.id
    done = reg.finish_run(run.id, status="succeeded", outputs=[tok.id], metrics={"fertility": 1.3})
    assert done.status == "succeeded" and done.outputs == [tok.id]
    assert done.metrics == {"fertility": 1.3} and done.ended_at >= done.started_at
    assert reg.get_run(run.id[:12]) == done
    with pytest.raises(ForgeError, match="already finished"):
        reg.finish_run(run.id, status="failed")

    hit = reg.find_cached_run("tokenize", config_hash(cfg), [data.id])
    assert hit is not None and hit.id == run.id
    assert (
        reg.find_cached_run("tokenize", config_hash({**cfg, "vocab_size": 1024}), [data.id]) is None
    )
    assert reg.find_cached_run("tokenize", config_hash(cfg), [data.id, other.id]) is None
    assert reg.find_cached_run("tokenize", config_hash(cfg), [other.id]) is None
    assert reg.find_cached_run("train", config_hash(cfg), [data.id]) is None

    failed = reg.start_run("tokenize", {"x": 1}, inputs=[data.id])
    reg.finish_run(failed.id, status="failed", error="boom")
    assert reg.get_run(failed.id).error == "boom"
    assert reg.find_cached_run("tokenize", config_hash({"x": 1}), [data.id]) is None
    assert {r.id for r in reg.list_runs(stage="tokenize")} == {run.id, failed.id}
    assert [r.id for r in reg.list_runs(status="failed")] == [failed.id]
    assert reg.list_runs()[0].id == failed.id  # newest first

    # Deleting the output's files invalidates the cache entry.
    reg.artifacts.remove("tokenizer", tok.id)
    assert reg.find_cached_run("tokenize", config_hash(cfg), [data.id]) is None


def test_lineage_up_and_down(reg: Registry, tmp_path: Path) -> None:
    data = reg.add_asset("dataset", "docs", _folder(tmp_path / "d", {"a": "1"}))
    r1 = reg.start_run("tokenize", {"v": 1}, inputs=[data.id])
    tok = reg.add_asset("tokenizer", "bpe", _folder(tmp_path / "t", {"t": "2"}), run_id=r1.id)
    reg.finish_run(r1.id, status="succeeded", outputs=[tok.id])
    r2 = reg.start_run("pretrain", {"lr": 1e-3}, inputs=[data.id, tok.id])
    model = reg.add_asset("model", "tiny", _folder(tmp_path / "m", {"w": "3"}), run_id=r2.id)
    reg.finish_run(r2.id, status="succeeded", outputs=[model.id])
    adapter = reg.add_asset(
        "adapter", "lora", _folder(tmp_path / "l", {"w": "4"}), parents=[model.id]
    )

    up = reg.lineage(model.id, "up")
    ids = [n["id"] for n in up.nodes]
    assert ids[0] == model.id and set(ids) == {model.id, r2.id, data.id, tok.id, r1.id}
    assert set(up.edges) == {
        (r2.id, model.id),
        (data.id, r2.id),
        (tok.id, r2.id),
        (r1.id, tok.id),
        (data.id, r1.id),
    }
    by_id = {n["id"]: n for n in up.nodes}
    assert by_id[r2.id]["type"] == "run" and by_id[r2.id]["stage"] == "pretrain"
    assert by_id[tok.id]["type"] == "asset" and by_id[tok.id]["kind"] == "tokenizer"
    assert by_id[data.id]["depth"] == 2  # reached directly through r2 first (BFS)

    down = reg.lineage("docs", "down")
    assert {n["id"] for n in down.nodes} == {data.id, r1.id, tok.id, r2.id, model.id, adapter.id}
    assert (model.id, adapter.id) in down.edges

    shallow = reg.lineage(model.id, "up", max_depth=1)
    assert [n["id"] for n in shallow.nodes] == [model.id, r2.id]
    assert reg.lineage(r1.id, "down").nodes[0]["type"] == "run"
    text = format_lineage(reg.lineage(adapter.id, "up"))
    assert text.splitlines()[0].startswith(adapter.id) and "(pretrain, succeeded)" in text


def test_lineage_survives_cycles(reg: Registry, tmp_path: Path) -> None:
    a = reg.add_asset("dataset", "a", _folder(tmp_path / "a", {"f": "a"}))
    b = reg.add_asset("dataset", "b", _folder(tmp_path / "b", {"f": "b"}), parents=[a.id])
    reg.add_asset("dataset", "a", tmp_path / "a", parents=[b.id])  # same content: adds the edge
    lin = reg.lineage(a.id, "down")
    assert {n["id"] for n in lin.nodes} == {a.id, b.id}
    assert set(lin.edges) == {(a.id, b.id), (b.id, a.id)}
    assert format_lineage(lin).count(a.id) == 2  # shown once, then as a back-reference


def test_aliases_history_and_rollback(reg: Registry, tmp_path: Path) -> None:
    m1 = reg.add_asset("model", "m", _folder(tmp_path / "1", {"w": "1"}))
    m2 = reg.add_asset("model", "m", _folder(tmp_path / "2", {"w": "2"}))
    m3 = reg.add_asset("model", "m", _folder(tmp_path / "3", {"w": "3"}))
    assert reg.resolve_alias("champion") is None
    with pytest.raises(NotFoundError):
        reg.rollback_alias("champion")
    reg.set_alias("champion", m1.id, reason="first")
    with pytest.raises(ForgeError, match="no previous target"):
        reg.rollback_alias("champion")
    reg.set_alias("champion", m2.id, actor="agent:ci")
    reg.set_alias("champion", m3.id[:14])
    assert reg.resolve_alias("champion") == m3.id
    assert reg.get_asset("champion").id == m3.id
    assert reg.list_aliases() == {"champion": m3.id}

    assert reg.rollback_alias("champion") == m2.id
    assert reg.rollback_alias("champion") == m1.id
    assert reg.get_asset("champion").id == m1.id
    with pytest.raises(ForgeError, match="no previous target"):
        reg.rollback_alias("champion")

    history = reg.alias_history("champion")
    assert [h["action"] for h in history] == ["set", "set", "set", "rollback", "rollback"]
    assert [h["asset_id"] for h in history] == [m1.id, m2.id, m3.id, m2.id, m1.id]
    assert history[1]["previous_asset_id"] == m1.id and history[1]["actor"] == "agent:ci"
    assert history[0]["reason"] == "first"
    with pytest.raises(NotFoundError):
        reg.set_alias("champion", "no-such-model")


def test_reopen_keeps_data_and_migrations_match_models(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    with Registry(url, tmp_path / "art") as reg:
        asset = reg.add_asset("dataset", "d", _folder(tmp_path / "d", {"a": "1"}))
    with Registry(url, tmp_path / "art") as reg:
        assert reg.get_asset("d") == asset
        with reg.engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
            mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
        assert mode == "wal"


def test_deleted_artifact_is_restored_on_reregister(reg: Registry, tmp_path: Path) -> None:
    src = _folder(tmp_path / "d", {"a": "1"})
    asset = reg.add_asset("dataset", "d", src)
    remove_tree(asset.path)
    assert not reg.verify_asset(asset.id)
    assert reg.add_asset("dataset", "d", src).id == asset.id
    assert reg.verify_asset(asset.id)


def test_workspace_layout_and_in_memory_database(tmp_path: Path) -> None:
    with Registry.open_workspace(tmp_path / "ws") as reg:
        asset = reg.add_asset("dataset", "d", _folder(tmp_path / "d", {"a": "1"}))
        assert (tmp_path / "ws" / "registry.db").is_file()
        assert asset.path.is_relative_to(tmp_path / "ws" / "artifacts" / "dataset")
    with Registry("sqlite://", tmp_path / "mem-art") as reg:
        run = reg.start_run("eval", {"suite": "s"}, inputs=[])
        assert reg.get_run(run.id).inputs == []
        assert reg.add_asset("eval", "e", tmp_path / "d").id.startswith("eval-")


def test_newer_schema_revision_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    with Registry(url, tmp_path / "art") as reg, reg.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(ForgeError, match="schema revision 9999"):
        Registry(url, tmp_path / "art")
