"""Typed job specs: a command line is read once at submit (its recipe validated then), the
worker runs the stored spec through the stage functions with the CLI unimportable, jobs
queued before specs still run or fail with the reason, and old registries upgrade in place."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext

from forgeml.control import trial_jobs
from forgeml.control.job_spec import PARAMS, JobSpec, parse_job_args
from forgeml.control.jobs import FAILED, RETRYABLE, SUCCEEDED, get_job, list_jobs
from forgeml.control.limits import InvalidRequest
from forgeml.control.ops import PATH_PARAMS, Submitter, absolute_job, admit_job
from forgeml.control.run_job import execute_job
from forgeml.control.worker import run_worker
from forgeml.core.config import config_hash, load_recipe
from forgeml.core.errors import ConfigError, ForgeError, NotFoundError
from forgeml.governance.audit import AuditLog, audit_log_path
from forgeml.registry import Registry, open_registry
from forgeml.registry.schema import Base, JobRow
from forgeml.registry.store import MIGRATIONS_DIR

ADMIN = Submitter("cli:test", is_admin=True)
TINY = {
    "tokenizer": {"vocab_size": 300},
    "model": {"dim": 16, "n_layers": 1, "n_heads": 2, "n_kv_heads": 1, "ffn_hidden": 32},
    "train": {"max_steps": 2, "seq_len": 16, "micro_batch_size": 1, "device": "cpu"},
}
# One command line per job command, every option spelled as the CLI spells it.
COMMAND_LINES = {
    "pipeline run": ["r.yaml", "train.max_steps=5", "--auto-resume", "--json", "out.json"],
    "train pretrain": ["r.yaml", "--data", "d", "--tokenizer", "t", "--resume", "--force"],
    "train cpt": ["r.yaml", "--from", "m", "--data", "d", "--replay", "g"],
    "train sft": ["r.yaml", "sft.method=lora", "--base", "m", "--heldout", "h.jsonl"],
    "train dpo": ["r.yaml", "--base", "m", "--data", "p.jsonl"],
    "train rm": ["r.yaml", "--base", "m", "--data", "p.jsonl", "--force"],
    "train rl": ["r.yaml", "--base", "m", "--prompts", "p.jsonl", "--resume"],
    "train multimodal": ["r.yaml", "--base", "m", "--data", "mm.jsonl", "--resume"],
    "data ingest": ["a", "b", "--name", "n", "--include", "*.md", "--include", "*.txt",
                    "--text-field", "body", "--max-file-bytes", "100"],
    "data curate": ["d", "--recipe", "r.yaml", "--set", "curate.dedup.threshold=0.7"],
    "tokenizer train": ["d", "--vocab-size", "512", "--heldout-fraction", "0.1"],
    "eval run": ["m", "--suite", "s.yaml", "--data-root", "dr", "--dtype", "fp32"],
    "generate": ["m", "x = 1<FILL>", "--infill", "--stop", "\n", "--top-k", "5"],
    "hpo": ["r.yaml", "--space", "s.yaml", "--trials", "3", "--parallel", "2", "--no-baseline",
            "--out", "best.yaml"],
    "hpo-trial": ["study-1", "--offset", "2"],
    "synth rules": ["d", "--rule", "qa", "--rule", "infill", "--pair", "acl:py", "--seed", "1"],
    "synth teacher": ["--endpoint", "http://h/v1", "--model", "t", "--seeds", "s.jsonl", "--n", "5"],
}  # fmt: skip


def _recipe(tmp_path: Path, corpus: Path, body: dict | None = None) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({**TINY, "data": {"sources": [str(corpus)]}, **(body or {})}))
    return path


def _corpus(tmp_path: Path) -> Path:
    corpus = tmp_path / "corpus"
    corpus.mkdir(exist_ok=True)
    for i in range(3):
        (corpus / f"note{i}.txt").write_text(f"Note {i}: the pump is checked every {i} days.\n")
    return corpus


def test_every_job_command_reads_its_command_line_into_a_spec_and_back(tmp_path) -> None:
    assert set(COMMAND_LINES) == set(PARAMS)
    assert PATH_PARAMS <= {f for model in PARAMS.values() for f in model.model_fields}
    for name, rest in COMMAND_LINES.items():
        spec = parse_job_args([*name.split(), *rest])
        assert spec.command == name
        again = JobSpec.model_validate_json(spec.model_dump_json())
        assert again == spec and type(again.params) is PARAMS[name]
        assert parse_job_args(spec.command_line()) == spec, name
    hpo = parse_job_args(["hpo", "r.yaml", *COMMAND_LINES["hpo"][1:]]).params
    assert (hpo.trials, hpo.parallel, hpo.baseline, hpo.out) == (3, 2, False, "best.yaml")
    (tmp_path / "corpus").mkdir()
    named = absolute_job(parse_job_args(["data", "ingest", "corpus", "--name", "corpus"]), tmp_path)
    assert named.params.paths == [str(tmp_path / "corpus")]  # workers may run elsewhere
    assert named.params.name == "corpus"  # a name is never rewritten as a path
    ingest = parse_job_args(["data", "ingest", *COMMAND_LINES["data ingest"]])
    assert ingest.params.paths == ["a", "b"] and ingest.params.text_fields == ["body"]
    assert ingest.outputs() == {} and ("paths", "b") in ingest.named()
    for bad, message in [
        (["eval", "run", "m", "--bogus", "1"], "has no option --bogus"),
        (["hpo", "r.yaml", "--space", "s", "--trials", "0"], "--trials"),
        (["train", "sft", "r.yaml"], "--base is required"),
        (["pipeline", "run"], "needs a recipe"),
        (["generate", "m"], "prompt is required"),
        (["tokenizer", "train", "d", "extra"], "unexpected argument"),
        (["assets", "list"], "not a job command"),
    ]:
        with pytest.raises(InvalidRequest, match=message):
            parse_job_args(bad)


def test_a_bad_recipe_is_refused_at_submit_with_the_recipe_error(workspace, tmp_path) -> None:
    reg = open_registry(workspace)
    audit = AuditLog(audit_log_path(workspace.root))
    recipe = _recipe(tmp_path, _corpus(tmp_path))
    with pytest.raises(ConfigError, match="max_stepz"):
        admit_job(
            workspace, reg, audit, ["pipeline", "run", str(recipe), "train.max_stepz=5"], ADMIN
        )
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"model": {"dim": "wide"}}))
    for args in (["pipeline", "run", str(bad)], ["train", "sft", str(bad), "--base", "m"],
                 ["data", "curate", "d", "--recipe", str(bad)]):  # fmt: skip
        with pytest.raises(ConfigError, match="model.dim"):
            admit_job(workspace, reg, audit, args, ADMIN)
    # `train sft` reads sft.train: an override of pre-training's train is refused at submit
    sft = ["train", "sft", str(recipe), "train.max_steps=5", "--base", "m"]
    with pytest.raises(ConfigError, match="write sft.train.max_steps"):
        admit_job(workspace, reg, audit, sft, ADMIN)
    with pytest.raises(NotFoundError, match="recipe not found"):
        admit_job(workspace, reg, audit, ["train", "rl", "nope.yaml", "--base", "m",
                                          "--prompts", "p"], ADMIN)  # fmt: skip
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"params": {"optim.lr": {"type": "float", "low": 1}}}))
    with pytest.raises(ConfigError, match="optim.lr"):
        admit_job(workspace, reg, audit, ["hpo", str(recipe), "--space", str(space)], ADMIN)
    assert list_jobs(reg) == []  # nothing reached the queue


def test_the_job_runs_the_recipe_it_was_planned_with(workspace, tmp_path, monkeypatch) -> None:
    """The spec holds the resolved recipe: editing the file after submit changes nothing, and
    the worker's code calls run_pipeline (what `forgeml pipeline run` calls) with it."""
    import forgeml.pipeline.run as pipeline_run

    reg = open_registry(workspace)
    recipe = _recipe(tmp_path, _corpus(tmp_path))
    args = ["pipeline", "run", str(recipe), "train.max_steps=3"]
    job, plan = admit_job(workspace, reg, AuditLog(audit_log_path(workspace.root)), args, ADMIN)
    assert job.args == args and plan.command == "pipeline run"
    planned = load_recipe(recipe, ["train.max_steps=3"])
    recipe.write_text("train: {max_steps: oops}\n")  # too late: the job holds its recipe
    seen = []

    class Result:
        stages: list = []

    def fake_run_pipeline(ws, rec, **kw):
        seen.append((ws.root, config_hash(rec), kw["auto_resume"]))
        return Result()

    monkeypatch.setattr(pipeline_run, "run_pipeline", fake_run_pipeline)
    execute_job(workspace, JobSpec.model_validate(get_job(reg, job.id).spec))
    assert seen == [(workspace.root, config_hash(planned), False)]


BLOCK_CLI = """
import os, sys

class _NoCli:
    def find_spec(self, name, path=None, target=None):
        if name == "forgeml.cli" or name.startswith("forgeml.cli."):
            raise ImportError(f"{name} is blocked in this test")
        return None

sys.meta_path.insert(0, _NoCli())
with open(os.environ["FORGEML_TEST_BLOCKED"], "a") as f:
    f.write(f"{os.getpid()}\\n")
"""


def test_jobs_run_with_the_cli_unimportable(workspace, tmp_path, monkeypatch) -> None:
    """The worker never builds a CLI command line: with `forgeml.cli` unimportable here and in
    every child process, queued jobs (one with a recipe) still run; so renaming a CLI flag
    cannot break a queued job."""
    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text(BLOCK_CLI)
    marker = tmp_path / "blocked.txt"
    monkeypatch.setenv("PYTHONPATH", str(block))
    monkeypatch.setenv("FORGEML_TEST_BLOCKED", str(marker))
    monkeypatch.setitem(sys.modules, "forgeml.cli", None)
    with pytest.raises(ImportError):
        import forgeml.cli  # noqa: F401
    reg = open_registry(workspace)
    audit = AuditLog(audit_log_path(workspace.root))
    corpus = _corpus(tmp_path)
    ingest, _ = admit_job(workspace, reg, audit, ["data", "ingest", str(corpus), "--name", "notes"],
                          ADMIN)  # fmt: skip
    curate = ["data", "curate", "notes", "--set", "curate.dedup.near=false", "--name", "clean"]
    curated, _ = admit_job(workspace, reg, audit, curate, ADMIN)
    assert curated.spec["recipe"]["curate"]["dedup"]["near"] is False
    assert run_worker(workspace, max_jobs=2, poll_s=0.1, heartbeat_s=0.5) == 2
    for job in (ingest, curated):
        done = get_job(reg, job.id)
        log = (workspace.runs_dir / "jobs" / job.id / "attempt-1.log").read_text()
        assert done.status == SUCCEEDED, log
        assert "forgeml.cli" not in log
    assert len(marker.read_text().split()) == 2  # both children ran with the CLI blocked
    assert {a.name for a in reg.list_assets("dataset")} >= {"notes", "clean"}


def _legacy_job(reg: Registry, job_id: str, args: list[str], spec: dict | None = None) -> None:
    """A row as queued before typed specs: a command line, no spec (or the spec given)."""
    from datetime import datetime

    with reg.transaction(write=True) as s:
        s.add(JobRow(id=job_id, args=args, spec=spec, status="queued", submitted_by="user",
                     created_at=datetime(2026, 1, 1), attempts=0, max_attempts=3,
                     cancel_requested=False))  # fmt: skip


def test_jobs_queued_before_specs_run_or_fail_with_the_reason(workspace, tmp_path) -> None:
    reg = open_registry(workspace)
    corpus = _corpus(tmp_path)
    _legacy_job(reg, "job-old-1", ["data", "ingest", str(corpus), "--name", "old"])
    _legacy_job(reg, "job-old-2", ["runs", "list"])
    # a spec stored by a version whose recipe schema differed: refused before it runs
    stale = {"command": "pipeline run", "params": {}, "recipe": {"model": {"dim": "wide"}}}
    _legacy_job(reg, "job-old-3", ["pipeline", "run", "r.yaml"], stale)
    assert run_worker(workspace, max_jobs=3, poll_s=0.1, heartbeat_s=0.5) == 3
    ran = get_job(reg, "job-old-1")
    assert ran.status == SUCCEEDED and ran.spec is None
    assert "old" in {a.name for a in reg.list_assets("dataset")}
    refused = get_job(reg, "job-old-2")
    assert refused.status == FAILED and refused.attempts == 1  # not retried: it cannot read
    assert "command line (queued before typed job specs) no longer reads" in refused.error
    assert "not a job command" in refused.error
    log = (workspace.runs_dir / "jobs" / "job-old-2" / "attempt-1.log").read_text()
    assert refused.error in log
    stale_job = get_job(reg, "job-old-3")
    assert stale_job.status == FAILED and stale_job.attempts == 1
    assert "stored job spec no longer reads" in stale_job.error and "model.dim" in stale_job.error


def test_a_registry_from_before_job_specs_upgrades_in_place(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url)
    command.upgrade(cfg, "0005")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO jobs (id, args, status, submitted_by, created_at, attempts, "
                "max_attempts, cancel_requested) VALUES ('job-old', '[\"runs\", \"list\"]', "
                "'queued', 'user', '2026-01-01 00:00:00', 0, 3, 0)"
            )
        )
    engine.dispose()
    reg = Registry(url, tmp_path / "artifacts")  # migrates to head on open
    try:
        with reg.engine.connect() as conn:
            assert MigrationContext.configure(conn).get_current_revision() == "0006"
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        old = get_job(reg, "job-old")
        assert old.args == ["runs", "list"] and old.spec is None and old.status == "queued"
    finally:
        reg.close()
    command.downgrade(cfg, "0005")  # and back: the command lines stay
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT args FROM jobs")).scalar_one() == '["runs", "list"]'
    engine.dispose()


def test_hpo_waits_for_a_failed_retryable_trial(workspace, monkeypatch) -> None:
    """A trial job that failed but will be retried is not finished: the search waits for it."""
    from forgeml.control.jobs import claim_next_job, finish_job, submit_job

    reg = open_registry(workspace)
    trial = submit_job(reg, parse_job_args(["hpo-trial", "s", "--offset", "1"]))
    claim_next_job(reg, "w")
    assert finish_job(reg, trial.id, "w", exit_code=1).status == RETRYABLE
    monkeypatch.setattr(trial_jobs, "queue_trial_jobs", lambda *a, **k: [trial.id])
    waiter = threading.Thread(
        target=trial_jobs.run_trial_jobs,
        args=(workspace, "s", 1),
        kwargs={"parallel": 1, "start_workers": False, "notify": None},
        daemon=True,
    )
    waiter.start()
    time.sleep(1.5)
    assert waiter.is_alive()  # still waiting: a worker will run the trial again
    claim_next_job(reg, "w", retry_base_s=1e-3)
    finish_job(reg, trial.id, "w", exit_code=0)
    waiter.join(timeout=10)
    assert not waiter.is_alive()


def test_cli_submits_a_command_line_or_a_spec_file(workspace, tmp_path) -> None:
    import json

    from typer.testing import CliRunner

    from forgeml.cli import app

    corpus = _corpus(tmp_path)
    runner = CliRunner()
    base = ["-q", "-w", str(workspace.root), "jobs", "submit"]
    by_args = runner.invoke(app, [*base, "--", "data", "ingest", str(corpus), "--name", "a"])
    assert by_args.exit_code == 0, by_args.output
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps({"command": "data ingest", "params": {"paths": [str(corpus)]}}))
    by_spec = runner.invoke(app, [*base, "--spec", str(spec)])
    assert by_spec.exit_code == 0, by_spec.output
    jobs = {j.id: j for j in list_jobs(open_registry(workspace))}
    assert jobs[by_args.output.split()[-1]].spec["params"]["name"] == "a"
    queued = jobs[by_spec.output.split()[-1]]
    assert (
        queued.args == ["data", "ingest", str(corpus)] and queued.spec["params"]["name"] == "corpus"
    )
    both = runner.invoke(app, [*base, "--spec", str(spec), "--", "data", "ingest", "x"])
    assert both.exit_code != 0


def test_eval_job_and_cli_call_the_same_function_alike(workspace, tmp_path, monkeypatch) -> None:
    """`forgeml eval run ...` and a queued `eval run` job both call evaluate_model, with the
    same arguments; evaluate_model picks the stage by suite."""
    from typer.testing import CliRunner

    import forgeml.pipeline.eval_suite_stage as suite_stage
    import forgeml.pipeline.evaluate as evaluate
    import forgeml.pipeline.infill_stage as infill_stage
    import forgeml.pipeline.perplexity_stage as ppl_stage
    from forgeml.cli import app
    from forgeml.pipeline.runtime import StageResult

    calls: list[tuple] = []
    real = evaluate.evaluate_model

    def stage(name):
        def run(ws, model, *args, **kw):
            calls.append((name, model))
            return StageResult("eval", "run-x", ["eval-x"], {"n": 1}, cached=False)

        return run

    monkeypatch.setattr(infill_stage, "infill_eval_stage", stage("infill"))
    monkeypatch.setattr(suite_stage, "eval_suite_stage", stage("suite"))
    monkeypatch.setattr(ppl_stage, "perplexity_eval_stage", stage("perplexity"))
    suite = tmp_path / "suite.yaml"
    suite.write_text("tasks: []\n")
    assert real(workspace, "m", suite="infill", data="d").output == "eval-x"
    real(workspace, "m", suite=str(suite))
    real(workspace, "m")
    assert calls == [("infill", "m"), ("suite", "m"), ("perplexity", "m")]
    with pytest.raises(ForgeError, match="suite not found"):
        real(workspace, "m", suite=str(tmp_path / "none.yaml"))

    seen: list[dict] = []
    monkeypatch.setattr(evaluate, "evaluate_model", lambda ws, model, **kw: seen.append(
        {"model": model, **{k: v for k, v in kw.items() if k != "notify"}}) or real(
        ws, model, **kw))  # fmt: skip
    args = ["eval", "run", "m", "--max-batches", "2", "--seq-len", "32", "--dtype", "fp32"]
    r = CliRunner().invoke(app, ["-q", "-w", str(workspace.root), *args])
    assert r.exit_code == 0, r.output
    execute_job(workspace, parse_job_args(args))
    by_cli, by_job = seen
    assert by_job == by_cli and (by_cli["max_batches"], by_cli["seq_len"]) == (2, 32)
