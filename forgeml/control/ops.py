"""The operations of the control plane, one method each, shared by the REST API and the MCP
server (and, for the plain reads, by the CLI): every call names its principal, is checked
against the principal's scopes, and every change is written to the audit log.

Scopes travel as roles on the serving API keys (`forgeml keys create --role jobs:submit`);
the `admin` role holds every scope, `agent`, `viewer` and `approver` are bundles.
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import os
import secrets
from pathlib import Path
from typing import Any

from forgeml.control import approvals as approvals_mod
from forgeml.control import jobs as jobs_mod
from forgeml.control.budgets import get_budget, job_plan, record_plan, usage
from forgeml.control.job_spec import JobSpec, PipelineRunParams, spec_from_request
from forgeml.control.limits import InvalidRequest, check_job_args, check_path_text
from forgeml.control.plan import JobPlan, plan_job
from forgeml.control.roots import resolve_user_path
from forgeml.core.errors import ForgeError, NotFoundError
from forgeml.core.workspace import Workspace
from forgeml.governance.audit import AuditLog, audit_log_path
from forgeml.governance.keys import KeyStore, Principal
from forgeml.governance.labels import ClearanceError, require_clearance
from forgeml.registry import Asset, Registry

SCOPES = (
    "jobs:submit", "jobs:read", "jobs:cancel", "assets:read", "runs:read", "evals:read",
    "aliases:write", "exports:write", "assets:delete", "assets:label", "approvals:read",
    "approvals:decide",
)  # fmt: skip
ROLE_SCOPES = {
    "agent": {"jobs:submit", "jobs:read", "jobs:cancel", "assets:read", "runs:read", "evals:read"},
    "viewer": {"jobs:read", "assets:read", "runs:read", "evals:read", "approvals:read"},
    approvals_mod.APPROVER_ROLE: {
        "jobs:read", "assets:read", "runs:read", "evals:read", "approvals:read",
        "approvals:decide",
    },
}  # fmt: skip


class Forbidden(ForgeError):
    """The principal lacks the scope for this operation."""


class BudgetExceeded(ForgeError):
    """A job's dry-run plan was refused; `plan` says why."""

    def __init__(self, plan: JobPlan) -> None:
        super().__init__("job refused: " + "; ".join(plan.refusals))
        self.plan = plan


def cli_principal() -> str:
    """Who a command typed at the CLI acts as (audited, charged to): the OS user."""
    return f"cli:{getpass.getuser()}"


@dataclasses.dataclass(frozen=True)
class Submitter:
    """Whom a job is admitted for: a principal, whether it is an operator, its key's
    data clearance."""

    principal: str
    is_admin: bool = False
    clearance: str | None = None


def current_submitter(reg: Registry) -> Submitter:
    """Whom the jobs this process queues are charged to: the submitter of the job it runs in
    ($FORGEML_JOB, set by the worker), as that job was admitted; else the person at the CLI."""
    job_id = os.environ.get(jobs_mod.JOB_ENV)
    if not job_id:
        return Submitter(cli_principal(), is_admin=True)
    job = jobs_mod.get_job(reg, job_id)
    admitted = job_plan(reg, job.id) or {}
    return Submitter(job.submitted_by, bool(admitted.get("is_admin")), admitted.get("clearance"))


def admit_job(
    ws: Workspace,
    reg: Registry,
    audit: AuditLog,
    job: list[str] | JobSpec,
    who: Submitter,
    *,
    key_id: str | None = None,
    max_attempts: int = 3,
) -> tuple[jobs_mod.Job, JobPlan]:
    """The one way into the job queue: make the dry-run plan (which reads a command line into
    its typed spec and validates the recipe), refuse the job (BudgetExceeded, audited) if the
    plan says so, else queue its spec with the plan stored and charged to `who`."""
    job = absolute_job(job, ws.root)
    plan = plan_job(
        ws, reg, job, principal=who.principal, is_admin=who.is_admin, clearance=who.clearance
    )
    if not plan.ok:
        audit.append(
            "job_refused", principal=who.principal, key_id=key_id, args=plan.args,
            refusals=plan.refusals,
        )  # fmt: skip
        raise BudgetExceeded(plan)
    assert plan.spec is not None  # a plan without refusals read its job
    queued = jobs_mod.submit_job(
        reg, plan.spec, args=plan.args, submitted_by=who.principal, max_attempts=max_attempts
    )
    record_plan(
        reg, queued.id, who.principal, plan.device, plan.estimated_hours,
        _jsonable(plan.to_dict()),
    )  # fmt: skip
    audit.append(
        "job_submitted", principal=who.principal, key_id=key_id, job=queued.id, args=plan.args,
        command=plan.command, hours=plan.estimated_hours,
    )  # fmt: skip
    return queued, plan


def scopes_of(principal: Principal) -> set[str]:
    if principal.is_admin:
        return set(SCOPES)
    held = {r for r in principal.roles if r in SCOPES}
    for role in principal.roles:
        held |= ROLE_SCOPES.get(role, set())
    return held


# -- plain functions the CLI calls too -------------------------------------------------------


def asset_info(reg: Registry, ref: str) -> dict[str, Any]:
    """One asset as JSON: metadata, files, and the run that made it."""
    a = reg.get_asset(ref)
    info: dict[str, Any] = {
        "id": a.id,
        "kind": a.kind,
        "name": a.name,
        "sha256": a.sha256,
        "size_bytes": a.size_bytes,
        "files": a.n_files,
        "created_at": str(a.created_at),
        "path": str(a.path),
        "producer_run": a.producer_run,
        "metadata": a.metadata,
    }
    if a.producer_run:
        run = reg.get_run(a.producer_run)
        info["run"] = {
            "stage": run.stage,
            "status": run.status,
            "config_hash": run.config_hash,
            "inputs": run.inputs,
            "seed": run.seed,
            "code_version": run.code_version,
            "started_at": str(run.started_at),
            "ended_at": str(run.ended_at),
        }
    return info


def read_job_log(ws: Workspace, reg: Registry, ref: str, tail_chars: int | None = None) -> str:
    """The log of a job's latest attempt (its last `tail_chars` characters if given)."""
    from forgeml.control.worker import job_log_path

    job = jobs_mod.get_job(reg, ref)
    path = job_log_path(ws, job)
    if job.attempts == 0 or not path.is_file():
        raise ForgeError(f"job {job.id} has no log yet ({job.status})")
    text = path.read_text(errors="replace")
    return text[-tail_chars:] if tail_chars else text


def absolute_job_args(args: list[str], base: Path | None = None) -> list[str]:
    """Make arguments that name existing files absolute (workers may run elsewhere); the
    arguments are checked first (count, size, text: limits.check_job_args)."""
    check_job_args(args)
    out = []
    for a in args:
        p = resolve_user_path(a, base or Path.cwd()) if a and not a.startswith("-") else None
        out.append(str(p) if p is not None and _exists(p) else a)
    return out


# The job parameters that may name a file or folder (others name assets, or are text).
PATH_PARAMS = frozenset({
    "paths", "data", "heldout", "prompts", "replay", "suite", "data_root", "space", "seeds",
    "out", "json_out",
})  # fmt: skip


def absolute_job(job: list[str] | JobSpec, base: Path) -> list[str] | JobSpec:
    """A command line or spec whose strings that name existing files are made absolute (a
    spec's recipe file and path parameters only: a prompt or name is never rewritten)."""
    if not isinstance(job, JobSpec):
        return absolute_job_args(list(job), base)

    def absolute(value: Any) -> Any:
        if isinstance(value, list):
            return [absolute(v) for v in value]
        if not isinstance(value, str) or not value or value.startswith("-"):
            return value
        p = resolve_user_path(value, base)
        return str(p) if p is not None and _exists(p) else value

    params = {k: absolute(v) if k in PATH_PARAMS else v for k, v in job.params.model_dump().items()}
    return job.model_copy(
        update={
            "params": type(job.params).model_validate(params),
            "recipe_file": absolute(job.recipe_file),
        }
    )


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a name too long for the file system
        return False


def eval_record(reg: Registry, ref: str) -> dict[str, Any]:
    """An eval asset's numbers: its metadata, results.json when it has one, and its run's
    metrics. A model ref gives its newest evals (found downstream in the lineage)."""
    asset = reg.get_asset(ref)
    if asset.kind != "eval":
        down = reg.lineage(asset.id, "down", max_depth=2)
        evals = [n["id"] for n in down.nodes if n.get("kind") == "eval" and not n.get("deleted")]
        if not evals:
            raise NotFoundError(f"{asset.id} has no eval yet", hint="run `forgeml eval run`")
        return {"model": asset.id, "evals": [eval_record(reg, e) for e in evals]}
    out: dict[str, Any] = {"id": asset.id, "name": asset.name, "metadata": asset.metadata}
    results = Path(asset.path) / "results.json"
    if results.is_file():
        out["results"] = json.loads(results.read_text())
    if asset.producer_run:
        run = reg.get_run(asset.producer_run)
        out["stage"], out["metrics"], out["inputs"] = run.stage, run.metrics, run.inputs
    return out


def _job_of(job: list[str] | dict[str, Any]) -> list[str] | JobSpec:
    """A request's job: a command line as it is, a JSON spec validated into a JobSpec."""
    return spec_from_request(job) if isinstance(job, dict) else list(job)


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


class ControlPlane:
    """What an authenticated principal may do to a workspace (REST and MCP call this)."""

    def __init__(self, ws: Workspace, reg: Registry | None = None) -> None:
        from forgeml.registry import open_registry

        self.ws = ws
        self.reg = reg or open_registry(ws)
        self.keys = KeyStore(self.reg.engine)
        self.audit = AuditLog(audit_log_path(ws.root))

    def close(self) -> None:
        self.reg.close()

    def authenticate(self, key: str | None) -> Principal | None:
        return self.keys.authenticate(key)

    def require(self, who: Principal, scope: str) -> None:
        if scope not in scopes_of(who):
            raise Forbidden(f"this key lacks the '{scope}' scope")

    def _audit(self, event: str, who: Principal, **fields: Any) -> None:
        self.audit.append(event, principal=who.name, key_id=who.key_id, **fields)

    def _pending_approval(
        self, who: Principal, action: str, params: dict[str, Any], reason: str
    ) -> dict[str, Any]:
        """Ask a human to approve `action` (run later as `who`) and say that it waits."""
        pending = approvals_mod.request_approval(
            self.reg, self.audit, action, params, requested_by=who.name, reason=reason
        )
        return {"status": "pending_approval", "approval": _jsonable(pending.to_dict())}

    def _cleared(self, who: Principal, ref: str | Asset, action: str = "read") -> Asset:
        """The asset, if the key's clearance covers its effective label (lineage included)."""
        asset = ref if isinstance(ref, Asset) else self.reg.get_asset(ref, deleted_ok=True)
        try:
            require_clearance(self.reg, asset, who.clearance, action=action)
        except ClearanceError as exc:
            raise Forbidden(exc.message, hint=exc.hint) from None
        return asset

    def _covers(self, who: Principal, asset_id: str) -> bool:
        try:
            self._cleared(who, asset_id)
        except (Forbidden, NotFoundError):
            return False
        return True

    # -- jobs ---------------------------------------------------------------------------

    def _own_job(self, who: Principal, ref: str) -> jobs_mod.Job:
        """A job the principal may see: its own (an admin sees all); others are not found."""
        job = jobs_mod.get_job(self.reg, ref)
        if not who.is_admin and job.submitted_by != who.name:
            raise NotFoundError(f"unknown job '{ref}'", hint="list your jobs")
        return job

    def plan(self, who: Principal, job: list[str] | dict[str, Any]) -> JobPlan:
        """The dry run of a job: a command line, or a spec as JSON (JobSpec's fields)."""
        self.require(who, "jobs:submit")
        return plan_job(
            self.ws, self.reg, absolute_job(_job_of(job), self.ws.root), principal=who.name,
            is_admin=who.is_admin, clearance=who.clearance,
        )  # fmt: skip

    def submit_job(
        self, who: Principal, job: list[str] | dict[str, Any], max_attempts: int = 3
    ) -> dict[str, Any]:
        """Plan, refuse if over budget, else queue; the plan is stored and charged."""
        self.require(who, "jobs:submit")
        queued, plan = admit_job(
            self.ws, self.reg, self.audit, self._with_summary(_job_of(job)),
            Submitter(who.name, who.is_admin, who.clearance), key_id=who.key_id,
            max_attempts=max_attempts,
        )  # fmt: skip
        return {"job": self._job_dict(queued), "plan": plan.to_dict()}

    def _with_summary(self, job: list[str] | JobSpec) -> list[str] | JobSpec:
        """A pipeline job also writes its summary (stages, outputs, metrics) into the
        workspace, so `show_job` can name the assets it made."""
        path = str(self.ws.runs_dir / "jobs" / "summaries" / f"{secrets.token_hex(8)}.json")
        if isinstance(job, JobSpec):
            params = job.params
            if not isinstance(params, PipelineRunParams) or params.json_out:
                return job
            return job.model_copy(update={"params": params.model_copy(update={"json_out": path})})
        if job[:2] != ["pipeline", "run"] or any(a.startswith("--json") for a in job):
            return list(job)
        return [*job, "--json", path]

    def _summary(self, job: jobs_mod.Job) -> dict[str, Any] | None:
        spec = job.spec or {}
        out = (spec.get("params") or {}).get("json_out")
        if spec.get("command") != "pipeline run" or not out:
            return None
        path = Path(out).resolve()
        if not path.is_relative_to(self.ws.root) or not path.is_file():
            return None
        return json.loads(path.read_text())

    def _job_dict(self, job: jobs_mod.Job) -> dict[str, Any]:
        return _jsonable(dataclasses.asdict(job))

    def list_jobs(self, who: Principal, status: str | None = None) -> list[dict[str, Any]]:
        self.require(who, "jobs:read")
        jobs = jobs_mod.list_jobs(self.reg, status)
        return [self._job_dict(j) for j in jobs if who.is_admin or j.submitted_by == who.name]

    def show_job(self, who: Principal, ref: str) -> dict[str, Any]:
        self.require(who, "jobs:read")
        job = self._own_job(who, ref)
        out = {**self._job_dict(job), "plan": job_plan(self.reg, job.id)}
        summary = self._summary(job)
        if summary is not None:
            out["summary"] = summary
        return out

    def job_logs(self, who: Principal, ref: str, tail_chars: int | None = 20000) -> str:
        self.require(who, "jobs:read")
        return read_job_log(self.ws, self.reg, self._own_job(who, ref).id, tail_chars)

    def cancel_job(self, who: Principal, ref: str) -> dict[str, Any]:
        self.require(who, "jobs:cancel")
        job = jobs_mod.cancel_job(self.reg, self._own_job(who, ref).id)
        self._audit("job_cancelled", who, job=job.id, status=job.status)
        return self._job_dict(job)

    def budget(self, who: Principal) -> dict[str, Any]:
        """The caller's own budget and what it has used (no scope needed)."""
        budget = get_budget(self.reg, who.name)
        used = usage(self.reg, who.name, budget.since if budget else None)
        return {"budget": _jsonable(budget.to_dict()) if budget else None, "used": used.to_dict()}

    # -- registry reads -----------------------------------------------------------------

    def list_assets(self, who: Principal, kind: str | None = None) -> list[dict[str, Any]]:
        self.require(who, "assets:read")
        return [
            {"id": a.id, "kind": a.kind, "name": a.name, "size_bytes": a.size_bytes,
             "created_at": str(a.created_at), "producer_run": a.producer_run}
            for a in self.reg.list_assets(kind)
            if self._covers(who, a.id)
        ]  # fmt: skip

    def show_asset(self, who: Principal, ref: str) -> dict[str, Any]:
        self.require(who, "assets:read")
        return _jsonable(asset_info(self.reg, self._cleared(who, self.reg.get_asset(ref)).id))

    def lineage(
        self, who: Principal, ref: str, direction: str = "up", depth: int | None = None
    ) -> dict[str, Any]:
        self.require(who, "assets:read")
        if direction not in ("up", "down"):
            raise ForgeError(f"direction must be up or down, got '{direction}'")
        lin = self.reg.lineage(ref, direction, max_depth=depth)
        hidden = {
            n["id"]
            for n in lin.nodes
            if n.get("type") == "asset" and not self._covers(who, n["id"])
        }
        if lin.root in hidden:
            self._cleared(who, lin.root)  # raises Forbidden, saying why
        nodes = [n for n in lin.nodes if n["id"] not in hidden]
        edges = [e for e in lin.edges if not hidden & set(e)]
        return _jsonable(
            {"root": lin.root, "direction": lin.direction, "nodes": nodes, "edges": edges}
        )

    def aliases(self, who: Principal) -> dict[str, str]:
        self.require(who, "assets:read")
        return self.reg.list_aliases()

    def list_runs(
        self, who: Principal, stage: str | None = None, status: str | None = None
    ) -> list[dict[str, Any]]:
        self.require(who, "runs:read")
        return [
            {"id": r.id, "stage": r.stage, "status": r.status, "config_hash": r.config_hash,
             "inputs": r.inputs, "outputs": r.outputs, "started_at": str(r.started_at),
             "ended_at": str(r.ended_at)}
            for r in self.reg.list_runs(stage=stage, status=status)
        ]  # fmt: skip

    def show_run(self, who: Principal, ref: str) -> dict[str, Any]:
        self.require(who, "runs:read")
        run = self.reg.get_run(ref)
        for output in run.outputs:  # a run's config and metrics are as sensitive as its outputs
            self._cleared(who, output)
        return _jsonable(dataclasses.asdict(run))

    def read_eval(self, who: Principal, ref: str) -> dict[str, Any]:
        self.require(who, "evals:read")
        record = eval_record(self.reg, self._cleared(who, self.reg.get_asset(ref)).id)
        if "evals" in record:
            record["evals"] = [e for e in record["evals"] if self._covers(who, e["id"])]
        return _jsonable(record)

    def eval_report(self, who: Principal, ref: str) -> str:
        """An eval's HTML report: the one its stage wrote, else drawn from its results."""
        from forgeml.eval.gate import load_eval_record
        from forgeml.eval.report import eval_report_html

        self.require(who, "evals:read")
        asset = self._cleared(who, self.reg.get_asset(ref))
        if asset.kind != "eval":
            raise ForgeError(
                f"{asset.id} is a {asset.kind}, not an eval", hint="pass an eval asset id"
            )
        stored = Path(asset.path) / "report.html"
        if stored.is_file():
            return stored.read_text()
        results = Path(asset.path) / "results.json"
        if not results.is_file() or "tasks" not in json.loads(results.read_text()):
            raise NotFoundError(
                f"{asset.id} has no HTML report (not a KPI-suite eval)",
                hint=f"read its numbers from /v1/evals/{asset.id}",
            )
        return eval_report_html(load_eval_record(asset.path))

    # -- deletion (always waits for a human) --------------------------------------------

    def delete_asset(self, who: Principal, ref: str, reason: str = "") -> dict[str, Any]:
        """Ask to delete an asset: checked now (nothing made from it, no alias on it), done
        only when a human approves; its stored files go, the registry keeps its row."""
        self.require(who, "assets:delete")
        asset = self.reg.check_deletable(ref)
        params = {"asset": asset.id, "kind": asset.kind, "name": asset.name, "reason": reason}
        return self._pending_approval(who, "delete", params, reason)

    def label_asset(self, who: Principal, ref: str, level: str, reason: str = "") -> dict[str, Any]:
        """Set an asset's classification label (audited); raising it takes effect at once for
        every asset made from it, lowering it waits for a human's approval."""
        self.require(who, "assets:label")
        asset = self._cleared(who, ref, action="label")
        done = approvals_mod.change_label(
            self.reg, self.audit, asset.id, level, actor=who.name, reason=reason
        )
        return _jsonable(done)

    # -- alias moves and exports (sensitive ones wait for a human) ----------------------

    def promote(
        self,
        who: Principal,
        model: str,
        alias: str,
        *,
        suite: str | None = None,
        force: bool = False,
        reason: str = "",
    ) -> dict[str, Any]:
        self.require(who, "aliases:write")
        model_id = self.reg.get_asset(model).id
        params = {
            "model": model_id,
            "alias": alias,
            "suite": suite,
            "force": force,
            "reason": reason,
        }
        if alias in approvals_mod.PRODUCTION_ALIASES:
            return self._pending_approval(who, "promote", params, reason)
        result = approvals_mod.EXECUTORS["promote"](self.ws, params, who.name)
        self._audit("alias_promoted", who, **result)
        return {"status": "done", **result}

    def rollback(self, who: Principal, alias: str, reason: str = "") -> dict[str, Any]:
        """Move an alias back (not gated: undoing a move is the safe direction)."""
        from forgeml.pipeline.eval_suite_stage import rollback

        self.require(who, "aliases:write")
        target = rollback(self.ws, alias, reason=reason, actor=who.name)
        self._audit("alias_rolled_back", who, alias=alias, asset_id=target, reason=reason)
        return {"status": "done", "alias": alias, "asset_id": target}

    def export(self, who: Principal, model: str, out: str, reason: str = "") -> dict[str, Any]:
        self.require(who, "exports:write")
        check_path_text(out, "the export folder")
        path = resolve_user_path(out, self.ws.root)
        if path is None:
            raise InvalidRequest(f"the export folder {out[:80]!r} is not a usable path")
        asset = self._cleared(who, self.reg.get_asset(model), action="export")
        params = {"model": asset.id, "out": str(path)}
        if not path.is_relative_to(self.ws.root):
            return self._pending_approval(who, "export", params, reason)
        result = approvals_mod.EXECUTORS["export"](self.ws, params, who.name)
        self._audit("model_exported", who, **params)
        return {"status": "done", **result}

    # -- approvals ----------------------------------------------------------------------

    def list_approvals(self, who: Principal, status: str | None = None) -> list[dict[str, Any]]:
        """Pending and past approvals: all with approvals:read, else the caller's own."""
        items = approvals_mod.list_approvals(self.reg, status)
        if "approvals:read" not in scopes_of(who):
            items = [a for a in items if a.requested_by == who.name]
        return [_jsonable(a.to_dict()) for a in items]

    def decide(self, who: Principal, ref: str, approve: bool, reason: str = "") -> dict[str, Any]:
        self.require(who, "approvals:decide")
        if approve:
            done = approvals_mod.approve(self.ws, self.reg, self.audit, ref, decided_by=who.name)
        else:
            done = approvals_mod.deny(self.reg, self.audit, ref, decided_by=who.name, reason=reason)
        return _jsonable(done.to_dict())
