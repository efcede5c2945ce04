"""`forgeml control serve`, `forgeml mcp`, `forgeml plan`, `forgeml approvals ...` and
`forgeml budgets ...`: the REST and MCP servers agents use, dry-run plans, human approvals and
per-principal budgets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from forgeml.cli.common import console, current_workspace

control_app = typer.Typer(help="The REST control plane for agents.", no_args_is_help=True)
approvals_app = typer.Typer(
    help="Approve or deny sensitive actions agents asked for.", no_args_is_help=True
)
budgets_app = typer.Typer(help="Per-principal budgets for agents.", no_args_is_help=True)


@control_app.command("serve")
def control_serve(
    host: Annotated[str, typer.Option(help="Bind address (loopback unless you say so).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option()] = 8100,
) -> None:
    """REST control plane behind API keys (schema at /openapi.json, to a valid key; no
    CDN-loaded docs page). Agents read only the workspace and forge.yaml `data_roots`."""
    from forgeml.control.api import serve_control

    serve_control(current_workspace().root, host=host, port=port)


def mcp_cmd(
    http: Annotated[bool, typer.Option(help="Streamable HTTP at /mcp instead of stdio.")] = False,
    host: Annotated[str, typer.Option(help="--http: bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="--http: port.")] = 8200,
) -> None:
    """MCP server for agents: stdio with the key in $FORGEML_API_KEY, or --http with
    `Authorization: Bearer` keys."""
    from forgeml.control.mcp_server import run_mcp

    run_mcp(current_workspace().root, http=http, host=host, port=port)


def plan_cmd(
    args: Annotated[list[str], typer.Argument(help="The forgeml command, after `--`.")],
    principal: Annotated[
        str | None, typer.Option(help="Check against this principal's budget.")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Dry-run plan of a job: stages, time, memory, and its cost against a budget."""
    from forgeml.control.ops import absolute_job_args, cli_principal
    from forgeml.control.plan import plan_job
    from forgeml.registry import open_registry

    ws = current_workspace()
    plan = plan_job(
        ws, open_registry(ws), absolute_job_args(args), principal=principal or cli_principal(),
        is_admin=principal is None,
    )  # fmt: skip
    if json_out:
        console.print_json(json.dumps(plan.to_dict()))
    else:
        console.print(plan.summary(), markup=False, highlight=False)
    if not plan.ok:
        raise typer.Exit(1)


@approvals_app.command("list")
def approvals_list(
    status: Annotated[str | None, typer.Option(help="pending, executed, failed, denied.")] = None,
) -> None:
    """List approvals (pending first in `--status pending`)."""
    from forgeml.control.approvals import list_approvals
    from forgeml.registry import open_registry

    table = Table()
    for col in ("id", "status", "action", "params", "requested by", "reason", "decided by"):
        table.add_column(col, overflow="fold")
    for a in list_approvals(open_registry(current_workspace()), status):
        table.add_row(
            a.id, a.status, a.action, json.dumps(a.params), a.requested_by, a.reason,
            a.decided_by or "-",
        )  # fmt: skip
    console.print(table)


KeyFile = Annotated[
    Path | None,
    typer.Option(
        "--key-file",
        help="A file holding your API key (default: $FORGEML_API_KEY); it says who decides.",
    ),
]
AsName = Annotated[
    str | None, typer.Option("--as", help="Must name the key's principal (optional).")
]


def _approver(reg, key_file: Path | None, as_name: str | None) -> str:
    from forgeml.control.approvals import approver_from_key, read_api_key

    return approver_from_key(reg, read_api_key(key_file), as_name)


@approvals_app.command("approve")
def approvals_approve(
    ref: Annotated[str, typer.Argument(help="Approval id (or unique prefix).")],
    key_file: KeyFile = None,
    as_name: AsName = None,
) -> None:
    """Approve a pending action and execute it now. You prove who you are with your own API
    key (a principal holding the approver or admin role, not the one who asked)."""
    from forgeml.control.approvals import approve
    from forgeml.governance.audit import AuditLog, audit_log_path
    from forgeml.registry import open_registry

    ws = current_workspace()
    reg = open_registry(ws)
    approver = _approver(reg, key_file, as_name)
    done = approve(ws, reg, AuditLog(audit_log_path(ws.root)), ref, decided_by=approver)
    console.print(f"{done.id}: {done.status}", highlight=False)
    if done.result:
        console.print_json(json.dumps(done.result, default=str))
    if done.error:
        console.print(f"error: {done.error}", markup=False, highlight=False)
        raise typer.Exit(1)


@approvals_app.command("deny")
def approvals_deny(
    ref: Annotated[str, typer.Argument(help="Approval id (or unique prefix).")],
    reason: Annotated[str, typer.Option(help="Why (audited).")] = "",
    key_file: KeyFile = None,
    as_name: AsName = None,
) -> None:
    """Deny a pending action; it is never executed. Proven by your API key, as approving."""
    from forgeml.control.approvals import deny
    from forgeml.governance.audit import AuditLog, audit_log_path
    from forgeml.registry import open_registry

    ws = current_workspace()
    reg = open_registry(ws)
    approver = _approver(reg, key_file, as_name)
    done = deny(reg, AuditLog(audit_log_path(ws.root)), ref, decided_by=approver, reason=reason)
    console.print(f"{done.id}: {done.status}", highlight=False)


@budgets_app.command("set")
def budgets_set(
    principal: Annotated[str, typer.Argument(help="The key principal the budget is for.")],
    cpu_hours: Annotated[float | None, typer.Option(help="CPU-hours (none: no limit).")] = None,
    gpu_hours: Annotated[float | None, typer.Option(help="GPU-hours (none: no limit).")] = None,
    max_jobs: Annotated[int | None, typer.Option(help="Jobs queued or running at once.")] = None,
    max_params: Annotated[int | None, typer.Option(help="Largest model, in parameters.")] = None,
    clearance: Annotated[
        str | None, typer.Option(help="Most sensitive dataset label it may use.")
    ] = None,
    reset: Annotated[bool, typer.Option(help="Count used hours from now.")] = False,
) -> None:
    """Create or replace a principal's budget (audited)."""
    from forgeml.control.budgets import set_budget
    from forgeml.control.ops import cli_principal
    from forgeml.governance.audit import AuditLog, audit_log_path
    from forgeml.registry import open_registry

    ws = current_workspace()
    actor = cli_principal()
    budget = set_budget(
        open_registry(ws), principal, cpu_hours=cpu_hours, gpu_hours=gpu_hours,
        max_concurrent_jobs=max_jobs, max_model_params=max_params, data_clearance=clearance,
        reset_usage=reset, actor=actor,
    )  # fmt: skip
    AuditLog(audit_log_path(ws.root)).append(
        "budget_set", principal=actor, budget=json.loads(json.dumps(budget.to_dict(), default=str))
    )
    console.print_json(json.dumps(budget.to_dict(), default=str))


@budgets_app.command("show")
def budgets_show(principal: Annotated[str, typer.Argument(help="Key principal.")]) -> None:
    """A principal's budget and the hours and jobs it has used."""
    from forgeml.control.budgets import get_budget, usage
    from forgeml.registry import open_registry

    reg = open_registry(current_workspace())
    budget = get_budget(reg, principal)
    used = usage(reg, principal, budget.since if budget else None)
    out = {"budget": budget.to_dict() if budget else None, "used": used.to_dict()}
    console.print_json(json.dumps(out, default=str))


@budgets_app.command("list")
def budgets_list() -> None:
    """Every budget."""
    from forgeml.control.budgets import list_budgets
    from forgeml.registry import open_registry

    table = Table()
    for col in ("principal", "cpu h", "gpu h", "jobs", "params", "clearance", "since"):
        table.add_column(col)
    for b in list_budgets(open_registry(current_workspace())):
        table.add_row(
            b.principal, *(str(v) if v is not None else "-" for v in (
                b.cpu_hours, b.gpu_hours, b.max_concurrent_jobs, b.max_model_params,
                b.data_clearance)), str(b.since)[:19],
        )  # fmt: skip
    console.print(table)


@budgets_app.command("remove")
def budgets_remove(principal: Annotated[str, typer.Argument(help="Key principal.")]) -> None:
    """Remove a budget (the principal can then submit no jobs, unless it is an admin)."""
    from forgeml.control.budgets import remove_budget
    from forgeml.control.ops import cli_principal
    from forgeml.governance.audit import AuditLog, audit_log_path
    from forgeml.registry import open_registry

    ws = current_workspace()
    remove_budget(open_registry(ws), principal)
    AuditLog(audit_log_path(ws.root)).append(
        "budget_removed", principal=cli_principal(), budget_of=principal
    )
    console.print(f"removed the budget of {principal}")
