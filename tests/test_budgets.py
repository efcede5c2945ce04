"""Dry-run plans and budgets: every refusal reason, usage accounting, and the human CLI paths
(budgets, plan, approvals)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from forgeml.cli import app
from forgeml.control import jobs as jobs_mod
from forgeml.control.budgets import clearance_allows, record_plan, set_budget, usage
from forgeml.control.job_spec import parse_job_args
from forgeml.control.plan import STAGE_OVERHEAD_S, plan_job
from forgeml.core.errors import ForgeError
from forgeml.registry import open_registry

INGEST = parse_job_args(["data", "ingest", "x"])  # a job queued directly, not planned
TINY = {
    "tokenizer": {"vocab_size": 400},
    "model": {"dim": 32, "n_layers": 2, "n_heads": 2, "n_kv_heads": 1, "ffn_hidden": 64},
    "train": {
        "max_steps": 50,
        "seq_len": 32,
        "micro_batch_size": 2,
        "device": "cpu",
        "eval_every": 0,
    },
}


@pytest.fixture(autouse=True)
def _agents_read_tmp(workspace, tmp_path: Path) -> None:
    """The recipes and folders of these tests live beside the workspace: a data root."""
    from forgeml.control.roots import set_data_roots

    set_data_roots(workspace, [tmp_path])


@pytest.fixture
def recipe(tmp_path: Path, text_folder: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({**TINY, "data": {"sources": [str(text_folder)]}}))
    return path


def _plan(ws, args, who="bot", **kw):
    return plan_job(ws, open_registry(ws), [str(a) for a in args], principal=who, **kw)


def test_plan_of_a_pipeline_has_stages_memory_and_the_real_param_count(workspace, recipe) -> None:
    from forgeml.core.config import load_recipe
    from forgeml.models.dense import Transformer

    plan = _plan(workspace, ["pipeline", "run", recipe], is_admin=True)
    assert plan.ok, plan.refusals
    assert [s.name for s in plan.stages] == ["ingest", "tokenizer", "pack", "pretrain", "eval"]
    cfg = load_recipe(recipe, []).model.model_copy(update={"vocab_size": 400})
    assert plan.model_params == sum(p.numel() for p in Transformer(cfg).parameters())
    assert 0 < plan.peak_memory_bytes < plan.available_memory_bytes
    longer = _plan(workspace, ["pipeline", "run", recipe, "train.max_steps=5000"], is_admin=True)
    work = [p.stages[3].seconds - STAGE_OVERHEAD_S for p in (plan, longer)]
    assert work[1] == pytest.approx(100 * work[0])  # 100x the steps, 100x the FLOPs
    assert "pretrain" in plan.summary() and "ok: within budget" in plan.summary()


def test_refusals_no_budget_hours_concurrency_size_memory(workspace, recipe) -> None:
    reg = open_registry(workspace)
    args = ["pipeline", "run", recipe]
    assert "has no budget" in _plan(workspace, args).refusals[0]
    set_budget(reg, "bot", cpu_hours=1e-6)
    (reason,) = _plan(workspace, args).refusals
    assert "cpu-hours but only" in reason
    set_budget(reg, "bot", cpu_hours=10, max_concurrent_jobs=1, max_model_params=10_000)
    jobs_mod.submit_job(reg, INGEST, submitted_by="bot")
    refusals = _plan(workspace, args).refusals
    assert any("at most 1 at once" in r for r in refusals)
    assert any("over the limit of 10,000" in r for r in refusals)
    set_budget(reg, "bot", cpu_hours=10)
    huge = [*args, "model.dim=16384", "model.n_layers=64", "model.n_heads=64", "model.n_kv_heads=8",
            "model.ffn_hidden=65536"]  # fmt: skip
    assert any(r.startswith("memory:") for r in _plan(workspace, huge, is_admin=True).refusals)
    assert _plan(workspace, ["serve"]).refusals[0].startswith("'serve' cannot be queued")
    with pytest.raises(ForgeError):
        _plan(workspace, [])


def test_dataset_classification_needs_clearance(workspace, tmp_path) -> None:
    reg = open_registry(workspace)
    folder = tmp_path / "secret"
    folder.mkdir()
    (folder / "a.txt").write_text("x")
    ds = reg.add_asset("dataset", "hr-records", folder, metadata={"classification": "restricted"})
    args = ["tokenizer", "train", "hr-records"]
    set_budget(reg, "bot", cpu_hours=1, data_clearance="internal")
    (reason,) = _plan(workspace, args).refusals
    assert ds.id in reason and "restricted" in reason
    set_budget(reg, "bot", cpu_hours=1, data_clearance="restricted")
    assert _plan(workspace, args).ok
    set_budget(reg, "bot", cpu_hours=1)  # no clearance in the budget: the key's applies
    assert _plan(workspace, args, clearance="confidential").refusals
    assert clearance_allows("internal", None) and not clearance_allows(None, None)
    assert not clearance_allows("confidential", "top-secret")  # unknown label: most sensitive


def test_usage_charges_estimates_then_measured_hours(workspace) -> None:
    reg = open_registry(workspace)
    budget = set_budget(reg, "bot", cpu_hours=1, gpu_hours=1)
    a = jobs_mod.submit_job(reg, INGEST, submitted_by="bot")
    b = jobs_mod.submit_job(reg, INGEST, submitted_by="bot")
    record_plan(reg, a.id, "bot", "cpu", 0.25, {})
    record_plan(reg, b.id, "bot", "gpu", 0.5, {})
    used = usage(reg, "bot", budget.since)
    assert (used.cpu_hours, used.gpu_hours, used.active_jobs) == (0.25, 0.5, 2)
    claimed = jobs_mod.claim_next_job(reg, "w")
    with reg.transaction(write=True) as s:  # pretend the job ran for 6 minutes
        from forgeml.registry.schema import JobRow

        row = s.get(JobRow, claimed.id)
        row.started_at = row.started_at - timedelta(minutes=6)
    jobs_mod.finish_job(reg, claimed.id, "w", exit_code=0)
    used = usage(reg, "bot", budget.since)
    assert used.cpu_hours == pytest.approx(0.1, abs=1e-3) and used.active_jobs == 1
    jobs_mod.cancel_job(reg, b.id)  # cancelled before it ran: nothing charged
    assert usage(reg, "bot", budget.since).gpu_hours == 0
    fresh = set_budget(reg, "bot", cpu_hours=1, reset_usage=True)
    assert usage(reg, "bot", fresh.since).cpu_hours == 0


def test_cli_budgets_plan_and_human_approval(workspace, recipe, tmp_path) -> None:
    from forgeml.control.ops import ControlPlane
    from forgeml.governance.audit import audit_log_path, verify_audit_log
    from forgeml.governance.keys import Principal, create_api_key

    runner = CliRunner()
    w = ["-w", str(workspace.root)]
    r = runner.invoke(app, [*w, "budgets", "set", "bot", "--cpu-hours", "2", "--max-jobs", "3"])
    assert r.exit_code == 0, r.output
    shown = json.loads(runner.invoke(app, [*w, "budgets", "show", "bot"]).output)
    assert shown["budget"]["cpu_hours"] == 2.0 and shown["used"]["active_jobs"] == 0
    r = runner.invoke(app, [*w, "plan", "--principal", "bot", "--", "pipeline", "run", str(recipe)])
    assert r.exit_code == 0 and "pretrain" in r.output, r.output
    r = runner.invoke(app, [*w, "plan", "--principal", "nobody", "--", "eval", "run", "m"])
    assert r.exit_code == 1 and "has no budget" in r.output

    control = ControlPlane(workspace)
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "w").write_text("1")
    model = control.reg.add_asset("model", "m", folder)
    bot = Principal("bot", "k", roles=("aliases:write",))
    pending = control.promote(bot, "m", "champion")["approval"]["id"]
    listed = runner.invoke(app, [*w, "approvals", "list", "--status", "pending"]).output
    assert pending in listed
    r = runner.invoke(app, [*w, "approvals", "approve", pending, "--as", "alice"])
    assert isinstance(r.exception, ForgeError) and "own API key" in str(r.exception)
    alice = {"FORGEML_API_KEY": create_api_key(workspace.root, "alice", roles=["approver"])[0]}
    r = runner.invoke(app, [*w, "approvals", "approve", pending, "--as", "alice"], env=alice)
    assert r.exit_code == 0 and "executed" in r.output, r.output
    assert control.reg.resolve_alias("champion") == model.id
    r = runner.invoke(app, [*w, "approvals", "deny", pending], env=alice)
    assert isinstance(r.exception, ForgeError) and "already executed" in str(r.exception)
    second = control.promote(bot, "m", "prod")["approval"]["id"]
    deny = [*w, "approvals", "deny", second, "--reason", "no"]
    assert "own API key" in str(runner.invoke(app, deny, env={"FORGEML_API_KEY": ""}).exception)
    assert runner.invoke(app, [*deny, "--as", "alice"], env=alice).exit_code == 0
    assert control.reg.resolve_alias("prod") is None
    events = [json.loads(x) for x in audit_log_path(workspace.root).read_text().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds.count("budget_set") == 1 and "approval_denied" in kinds
    assert {e["principal"] for e in events if e["event"] == "approval_approved"} == {"alice"}
    assert verify_audit_log(audit_log_path(workspace.root)).ok
    control.close()


def _labelled(reg, tmp_path: Path, name: str, label: str | None, **kw):
    folder = tmp_path / f"{name}-files"
    folder.mkdir()
    (folder / "part.txt").write_text(name)
    meta = {"classification": label} if label else {}
    return reg.add_asset("dataset", name, folder, metadata=meta, **kw)


def test_an_agent_is_refused_a_recipe_that_reads_a_classified_dataset(
    workspace, recipe, tmp_path, text_folder
) -> None:
    """Clearance covers what the recipe reads, not only dataset ids on the command line."""
    from forgeml.control.ops import BudgetExceeded, ControlPlane
    from forgeml.governance.keys import Principal

    control = ControlPlane(workspace)
    reg = control.reg
    hr = _labelled(reg, tmp_path, "hr-records", "restricted")
    set_budget(reg, "bot", cpu_hours=1, data_clearance="internal")
    bot = Principal("bot", "k", roles=("agent",))
    raw = yaml.safe_load(recipe.read_text())
    sft = tmp_path / "sft.yaml"
    sft.write_text(yaml.safe_dump({**raw, "sft": {"data": "hr-records"}}))

    with pytest.raises(BudgetExceeded) as exc:
        control.submit_job(bot, ["pipeline", "run", str(sft)])
    (reason,) = exc.value.plan.refusals
    assert hr.id in reason and "sft.data" in reason and "restricted" in reason
    assert jobs_mod.list_jobs(reg) == []
    # The same dataset named by an override, or by a stage that takes the recipe as a file.
    over = _plan(workspace, ["pipeline", "run", recipe, "sft.data=hr-records"]).refusals
    assert len(over) == 1 and hr.id in over[0] and "sft.data" in over[0]
    assert hr.id in _plan(workspace, ["train", "sft", sft, "--base", "m"]).refusals[0]
    set_budget(reg, "bot", cpu_hours=1, data_clearance="restricted")
    assert control.submit_job(bot, ["pipeline", "run", str(sft)])["plan"]["ok"]
    control.close()


def test_raw_sources_carry_the_label_of_what_was_ingested_from_them(
    workspace, recipe, tmp_path, text_folder
) -> None:
    reg = open_registry(workspace)
    set_budget(reg, "bot", cpu_hours=1, data_clearance="internal")
    args = ["pipeline", "run", recipe]  # data.sources: [text_folder]
    assert _plan(workspace, args).ok
    run = reg.start_run("ingest", {"sources": [str(text_folder.resolve())]})
    docs = _labelled(reg, tmp_path, "docs", "confidential", run_id=run.id)
    reg.finish_run(run.id, status="succeeded", outputs=[docs.id])
    (reason,) = _plan(workspace, args).refusals
    assert docs.id in reason and "recipe.data.sources[0]" in reason and "confidential" in reason
    # A sub-folder of an ingested source holds the same files.
    sub = tmp_path / "sub.yaml"
    sub.write_text(recipe.read_text().replace(str(text_folder), str(text_folder / "src")))
    assert docs.id in _plan(workspace, ["pipeline", "run", sub]).refusals[0]
    # A dataset made from a confidential one is confidential, whatever its own label says.
    derived = _labelled(reg, tmp_path, "curated", "public", parents=[docs.id])
    (reason,) = _plan(workspace, ["tokenizer", "train", "curated"]).refusals
    assert derived.id in reason and f"from upstream {docs.id}" in reason
    # Pointing the recipe at the artifact store reads the stored dataset.
    stored = tmp_path / "stored.yaml"
    stored.write_text(recipe.read_text().replace(str(text_folder), str(docs.path)))
    assert docs.id in _plan(workspace, ["pipeline", "run", stored]).refusals[0]
    # Deleting what was ingested does not clear the folder it came from.
    reg.delete_asset(derived.id, actor="admin")
    reg.delete_asset(docs.id, actor="admin")
    (reason,) = _plan(workspace, args).refusals
    assert docs.id in reason and "confidential" in reason


def test_cli_jobs_submit_prints_stores_and_charges_the_plan(workspace) -> None:
    from forgeml.control.budgets import job_plan
    from forgeml.control.ops import BudgetExceeded, cli_principal
    from forgeml.governance.audit import audit_log_path

    runner, w = CliRunner(), ["-w", str(workspace.root)]
    r = runner.invoke(app, [*w, "jobs", "submit", "--", "eval", "run", "m1"])
    assert r.exit_code == 0, r.output
    job_id = r.stdout.strip()
    assert "plan for `forgeml eval run m1`" in r.stderr and "ok: within budget" in r.stderr
    reg = open_registry(workspace)
    stored = job_plan(reg, job_id)
    assert stored["principal"] == cli_principal() and stored["stages"][0]["name"] == "eval run"
    assert jobs_mod.get_job(reg, job_id).submitted_by == cli_principal()
    budget = set_budget(reg, cli_principal(), cpu_hours=10, max_concurrent_jobs=1)
    assert usage(reg, cli_principal(), budget.since).active_jobs == 1
    r = runner.invoke(app, [*w, "jobs", "submit", "--", "eval", "run", "m1"])
    assert isinstance(r.exception, BudgetExceeded) and "at most 1 at once" in str(r.exception)
    assert "REFUSED" in r.stderr and len(jobs_mod.list_jobs(reg)) == 1
    events = [
        json.loads(x)["event"] for x in audit_log_path(workspace.root).read_text().splitlines()
    ]
    assert events == ["job_submitted", "job_refused"]


def test_approvers_must_be_human_principals_with_the_approver_role(workspace, tmp_path) -> None:
    from forgeml.control import approvals
    from forgeml.governance.audit import AuditLog, audit_log_path
    from forgeml.governance.keys import create_api_key, revoke_api_key

    reg = open_registry(workspace)
    audit = AuditLog(audit_log_path(workspace.root))
    create_api_key(workspace.root, "bot", roles=["agent", "approver"])  # an agent all the same
    create_api_key(workspace.root, "viewer-1", roles=["viewer"])
    _, alice = create_api_key(workspace.root, "alice", roles=["approver"])
    create_api_key(workspace.root, "root", roles=["admin"])
    folder = tmp_path / "out"
    pending = approvals.request_approval(
        reg, audit, "export", {"model": "m", "out": str(folder)}, requested_by="bot"
    )
    for name, why in [("mallory", "not a known principal"), ("bot", "cannot approve"),
                      ("viewer-1", "neither the approver nor the admin role")]:  # fmt: skip
        with pytest.raises(ForgeError, match=why):
            approvals.approve(workspace, reg, audit, pending.id, decided_by=name)
        with pytest.raises(ForgeError, match=why):
            approvals.deny(reg, audit, pending.id, decided_by=name)
    other = approvals.request_approval(reg, audit, "delete", {"asset": "x"}, requested_by="root")
    with pytest.raises(ForgeError, match="holds an agent key"):
        approvals.deny(reg, audit, other.id, decided_by="bot")
    revoke_api_key(workspace.root, alice.id)
    with pytest.raises(ForgeError, match="not a known principal"):
        approvals.deny(reg, audit, pending.id, decided_by="alice")
    assert approvals.get_approval(reg, pending.id).status == approvals.PENDING
    assert approvals.deny(reg, audit, pending.id, decided_by="root").status == approvals.DENIED
