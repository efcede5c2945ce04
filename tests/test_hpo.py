"""Hyper-parameter search: TPE finds a better learning rate than a bad default, ASHA prunes a
falling-behind trial, trials are registered runs, the study lives in the registry database
next to Alembic's tables, parallel trials run as jobs on two workers."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
import yaml

from forgeml.core.config import load_recipe, validate_recipe
from forgeml.core.errors import ConfigError
from forgeml.hpo.space import parse_space
from forgeml.hpo.storage import study_storage
from forgeml.hpo.study import run_hpo
from forgeml.registry import open_registry

TINY = {
    "name": "hpo-tiny",
    "data": {"name": "notes", "heldout_fraction": 0.1},
    "tokenizer": {"vocab_size": 300},
    "model": {"dim": 32, "n_layers": 1, "n_heads": 2, "n_kv_heads": 1, "ffn_hidden": 64,
              "max_seq_len": 64},
    "optim": {"lr": 1e-6, "warmup_steps": 2, "schedule": "constant"},
    "train": {"max_steps": 24, "micro_batch_size": 4, "seq_len": 32, "eval_every": 6,
              "eval_batches": 2, "checkpoint_every": 0, "dtype": "fp32", "device": "cpu",
              "log_every": 6, "seed": 3},
    "eval": {"batch_size": 4},
}  # fmt: skip

LR_SPACE = {
    "params": {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}},
    "sampler": {"seed": 0, "n_startup_trials": 3},
    "pruner": {"kind": "none"},
}


def tiny_recipe(folder: Path, **train):
    raw = {**TINY, "data": {**TINY["data"], "sources": [str(folder)]}}
    raw["train"] = {**TINY["train"], **train}
    return validate_recipe(raw)


def test_tpe_beats_a_bad_default_and_writes_the_best_recipe(workspace, text_folder, tmp_path):
    recipe = tiny_recipe(text_folder)
    out = tmp_path / "best.yaml"
    result = run_hpo(workspace, recipe, parse_space(LR_SPACE), trials=4, out=out)

    assert result.n_complete == 4 and result.n_pruned == 0
    # lr 1e-6 barely moves the random init; the search finds a much lower held-out loss
    assert result.baseline_value - result.best_value > 0.5, result
    assert 1e-4 <= result.best_params["optim.lr"] <= 1e-1
    lrs = [t["params"]["optim.lr"] for t in result.trials]
    assert len(set(lrs)) == 4  # every trial sampled its own value

    best = load_recipe(out)  # a recipe that loads and validates, with the best value in it
    assert best.optim.lr == pytest.approx(result.best_params["optim.lr"])
    assert best.model == recipe.model and best.train == recipe.train

    # every trial is a registered pre-training run with lineage to the data
    reg = open_registry(workspace)
    runs = {r.id: r for r in reg.list_runs(stage="pretrain")}
    for t in result.trials:
        run = runs[t["run_id"]]
        assert run.status == "succeeded"
        assert run.config["hpo"] == {"study": result.study, "trial": t["number"]}
        assert run.config["optim"]["lr"] == pytest.approx(t["params"]["optim.lr"])
        model = reg.get_asset(t["model"])
        assert model.metadata["hpo_trial"] == t["number"]
        up = {n["id"] for n in reg.lineage(model.id, "up").nodes}
        assert set(run.inputs) <= up
    hpo_run = reg.get_run(result.run_id)
    assert hpo_run.stage == "hpo" and hpo_run.metrics["best_model"] == result.best_model
    summary = json.loads(Path(reg.get_asset(hpo_run.outputs[0]).path, "study.json").read_text())
    assert summary["best_run"] == result.best_run

    # the study is stored in the registry database, beside the registry's own tables
    names = sa.inspect(reg.engine).get_table_names()
    assert "hpo_journal" in names and "alembic_version" in names and "runs" in names
    stored = optuna.load_study(study_name=result.study, storage=study_storage(workspace))
    assert len(stored.trials) == 4 and stored.best_value == pytest.approx(result.best_value)
    # the same search again is a cached run; asking for more trials continues the study
    assert run_hpo(workspace, recipe, parse_space(LR_SPACE), trials=4).cached
    more = run_hpo(workspace, recipe, parse_space(LR_SPACE), trials=5, baseline=False)
    assert more.study == result.study and len(more.trials) == 5
    narrower = parse_space({**LR_SPACE, "params": {"optim.lr": {"type": "float", "low": 1e-3,
                            "high": 1e-2, "log": True}}})  # fmt: skip
    with pytest.raises(ConfigError, match="was started with another space"):
        run_hpo(workspace, recipe, narrower, trials=6, study_name=result.study)


def test_asha_prunes_a_bad_trial(workspace, text_folder):
    recipe = tiny_recipe(text_folder)
    space = parse_space(
        {**LR_SPACE, "pruner": {"kind": "asha", "min_resource": 6, "reduction_factor": 3}}
    )
    result = run_hpo(
        workspace, recipe, space, trials=3, baseline=False,
        first_trials=[{"optim.lr": 3e-2}, {"optim.lr": 2e-2}, {"optim.lr": 1e-4}],
    )  # fmt: skip
    by_lr = {t["params"]["optim.lr"]: t for t in result.trials}
    bad = by_lr[1e-4]
    assert bad["state"] == "pruned" and "pruned at step" in bad["reason"]
    steps = [int(s) for s in bad["intermediate"]]
    assert max(steps) < recipe.train.max_steps  # stopped early
    assert by_lr[3e-2]["state"] == "complete"
    assert result.n_pruned >= 1 and result.best_params["optim.lr"] in (3e-2, 2e-2)
    run = open_registry(workspace).get_run(bad["run_id"])
    assert run.status == "failed" and "TrialPruned" in run.error


def test_space_errors_are_clear(workspace, text_folder):
    recipe = tiny_recipe(text_folder)
    with pytest.raises(ConfigError, match="optim.learning_rate' is not a recipe field"):
        run_hpo(workspace, recipe, parse_space({"params": {
            "optim.learning_rate": {"type": "float", "low": 0.1, "high": 1.0}}}), trials=1)  # fmt: skip
    with pytest.raises(ConfigError, match="low"):
        parse_space({"params": {"optim.lr": {"type": "float", "low": 1.0, "high": 0.1}}})
    with pytest.raises(ConfigError, match="optim.lr"):  # lr must be > 0: caught before trials
        run_hpo(workspace, recipe, parse_space({"params": {
            "optim.lr": {"type": "categorical", "choices": [0.01, -1.0]}}}), trials=1)  # fmt: skip


@pytest.mark.slow
def test_parallel_trials_run_as_jobs_on_two_workers(workspace, text_folder, tmp_path):
    from forgeml.control.jobs import list_jobs

    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(tiny_recipe(text_folder).model_dump(mode="json")))
    space_path = tmp_path / "space.yaml"
    space_path.write_text(yaml.safe_dump(LR_SPACE))
    from typer.testing import CliRunner

    from forgeml.cli import app

    out = tmp_path / "best.yaml"
    res = CliRunner().invoke(app, [
        "-q", "-w", str(workspace.root), "hpo", str(recipe_path), "--space", str(space_path),
        "--trials", "4", "--parallel", "2", "--no-baseline", "--out", str(out),
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    jobs = [j for j in list_jobs(open_registry(workspace)) if j.args[0] == "hpo-trial"]
    assert len(jobs) == 4 and all(j.status == "succeeded" for j in jobs)
    assert len({j.worker for j in jobs}) == 2
    stored = optuna.load_study(study_name=jobs[0].args[1], storage=study_storage(workspace))
    assert len(stored.trials) == 4
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in stored.trials) >= 1
    assert load_recipe(out).optim.lr == pytest.approx(stored.best_params["optim.lr"])


PG_URL = os.environ.get("FORGEML_TEST_PG_URL")
_APPENDER = """
import sys
from forgeml.hpo.storage import RegistryJournalBackend
from forgeml.registry import Registry
backend = RegistryJournalBackend(Registry(sys.argv[1], sys.argv[2]))
who = int(sys.argv[3])
for i in range(0, 24, 3):
    backend.append_logs([{"who": who, "i": j} for j in range(i, i + 1 + (i // 3) % 3)])
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'registry.db'}"
        return
    if not PG_URL:
        pytest.skip("FORGEML_TEST_PG_URL is not set (see .ci/start_postgres.sh)")
    schema = f"forgeml_h_{secrets.token_hex(4)}"
    admin = sa.create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = sa.make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    yield url.render_as_string(hide_password=False)
    with admin.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


def test_journal_in_the_registry_database_under_concurrent_writers(registry_url, tmp_path):
    """Three processes append at once: every log is stored once, numbered without gaps, in
    each writer's order; Optuna studies round-trip through it; Alembic still sees its head."""
    from forgeml.hpo.storage import RegistryJournalBackend
    from forgeml.registry import Registry

    reg = Registry(registry_url, tmp_path / "art")  # migrations first, like a workspace
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _APPENDER, registry_url, str(tmp_path / "art"), str(w)]
        )  # fmt: skip
        for w in range(3)
    ]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    backend = RegistryJournalBackend(reg)
    logs = list(backend.read_logs(0))
    per_writer = [[log["i"] for log in logs if log["who"] == w] for w in range(3)]
    expected = [j for i in range(0, 24, 3) for j in range(i, i + 1 + (i // 3) % 3)]
    assert per_writer == [expected] * 3
    with reg.engine.connect() as conn:
        numbers = [r[0] for r in conn.execute(sa.text("SELECT log_number FROM hpo_journal"))]
    assert sorted(numbers) == list(range(len(logs)))
    assert list(backend.read_logs(len(logs) - 2)) == logs[-2:]

    with reg.engine.begin() as conn:  # Optuna replays every log: start from an empty journal
        conn.execute(sa.text("DELETE FROM hpo_journal"))
    storage = optuna.storages.JournalStorage(backend)
    study = optuna.create_study(study_name="s", storage=storage)
    study.optimize(lambda t: (t.suggest_float("x", -1, 1) - 0.5) ** 2, n_trials=4)
    again = optuna.load_study(study_name="s", storage=optuna.storages.JournalStorage(
        RegistryJournalBackend(Registry(registry_url, tmp_path / "art"))))  # fmt: skip
    assert len(again.trials) == 4 and again.best_value == study.best_value
    reg.close()
    Registry(registry_url, tmp_path / "art").close()  # the registry opens fine beside it


_OPENER = """
import sys
from forgeml.hpo.storage import RegistryJournalBackend
from forgeml.registry import Registry
RegistryJournalBackend(Registry(sys.argv[1], sys.argv[2])).append_logs([{"opened": 1}])
"""


def test_journal_table_created_by_many_processes_at_once_on_sqlite(tmp_path):
    """Six processes open the journal of a new SQLite registry together: one migrates it
    (migration 0005 makes the journal) under the migration lock, the others wait for it."""
    from forgeml.hpo.storage import RegistryJournalBackend
    from forgeml.registry import Registry

    for k in range(3):
        url, art = f"sqlite:///{tmp_path / f'r{k}.db'}", str(tmp_path / f"art{k}")
        procs = [subprocess.Popen([sys.executable, "-c", _OPENER, url, art]) for _ in range(6)]
        assert [p.wait(timeout=120) for p in procs] == [0] * 6
        with Registry(url, art) as reg:
            assert list(RegistryJournalBackend(reg).read_logs(0)) == [{"opened": 1}] * 6


def test_hyperband_pruner_runs_with_tpe(workspace, text_folder):
    recipe = tiny_recipe(text_folder, max_steps=12)
    space = parse_space({**LR_SPACE, "pruner": {"kind": "hyperband", "min_resource": 6}})
    assert isinstance(space.pruner_for(recipe), optuna.pruners.HyperbandPruner)
    result = run_hpo(workspace, recipe, space, trials=2, baseline=False)
    assert result.n_complete + result.n_pruned == 2 and result.n_complete >= 1


def test_parallel_trial_jobs_are_planned_and_charged_to_who_started_the_search(
    workspace, text_folder, tmp_path, monkeypatch
):
    from forgeml.control.budgets import job_plan, set_budget, usage
    from forgeml.control.jobs import JOB_ENV, get_job
    from forgeml.control.ops import BudgetExceeded, ControlPlane
    from forgeml.control.roots import set_data_roots
    from forgeml.control.trial_jobs import queue_trial_jobs
    from forgeml.governance.keys import Principal

    set_data_roots(workspace, [tmp_path, text_folder])  # an agent reads only inside its roots
    control = ControlPlane(workspace)
    reg = control.reg
    for name in ("shards", "bpe"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "f").write_text(name)
    shards = reg.add_asset("dataset", "shards", tmp_path / "shards",
                           metadata={"classification": "confidential"})  # fmt: skip
    tok = reg.add_asset("tokenizer", "bpe", tmp_path / "bpe")
    recipe = tiny_recipe(text_folder)
    study = optuna.create_study(study_name="s1", storage=study_storage(workspace))
    attrs = {"recipe": recipe.model_dump(mode="json"), "space": LR_SPACE, "shards": shards.id,
             "tokenizer": tok.id}  # fmt: skip
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    recipe_path, space_path = tmp_path / "r.yaml", tmp_path / "space.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe.model_dump(mode="json")))
    space_path.write_text(yaml.safe_dump(LR_SPACE))
    set_budget(reg, "bot", cpu_hours=1, max_concurrent_jobs=10, data_clearance="confidential")
    bot = Principal("bot", "k", roles=("agent",))
    args = ["hpo", str(recipe_path), "--space", str(space_path), "--trials", "3", "--parallel", "2"]
    parent = control.submit_job(bot, args)
    stages = {s["name"]: s for s in parent["plan"]["stages"]}
    assert "trial jobs" in stages and "× 3 trials" not in stages["pretrain"]["note"]
    monkeypatch.setenv(JOB_ENV, parent["job"]["id"])  # as the worker runs the hpo job

    trials = queue_trial_jobs(workspace, "s1", 3, None)
    assert len(trials) == 3
    plans = [job_plan(reg, j) for j in trials]
    assert all(get_job(reg, j).submitted_by == "bot" for j in trials)
    assert all(p["principal"] == "bot" and not p["is_admin"] for p in plans)
    assert [s["name"] for s in plans[0]["stages"]] == ["pretrain"]
    used = usage(reg, "bot")
    hours = plans[0]["estimated_hours"]
    assert used.active_jobs == 4 and used.cpu_hours == pytest.approx(
        parent["plan"]["estimated_hours"] + 3 * hours
    )
    # The budget runs out after one more trial: that one is queued, the rest are not.
    set_budget(reg, "bot", cpu_hours=used.cpu_hours + 1.5 * hours, max_concurrent_jobs=10,
               data_clearance="confidential")  # fmt: skip
    said: list[str] = []
    assert len(queue_trial_jobs(workspace, "s1", 3, said.append)) == 1
    assert any("2 trial job(s) not queued" in m and "hours" in m for m in said)
    # The trials read the study's shards: the clearance check sees them (the hpo job could not).
    set_budget(reg, "bot", cpu_hours=10, max_concurrent_jobs=10, data_clearance="internal")
    with pytest.raises(BudgetExceeded, match=f"{shards.id} .*confidential"):
        queue_trial_jobs(workspace, "s1", 3, None)
    control.close()
