"""`forgeml assets {list,show,lineage,delete,label}` and `forgeml runs {list,show}`: browse the
registry and its lineage graph, delete an asset, set its classification label."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from forgeml.cli.common import console, current_workspace
from forgeml.core.errors import ForgeError

assets_app = typer.Typer(help="Browse the registry and its lineage graph.", no_args_is_help=True)
runs_app = typer.Typer(help="Browse runs (every stage is a run).", no_args_is_help=True)


@assets_app.command("list")
def assets_list(
    kind: Annotated[str | None, typer.Option(help="Only this kind (dataset, model, ...).")] = None,
) -> None:
    """List registered assets, newest last."""
    from forgeml.registry import open_registry

    assets = open_registry(current_workspace()).list_assets(kind)
    table = Table()
    for col in ("id", "kind", "name", "size", "created"):
        table.add_column(col)
    for a in assets:
        table.add_row(a.id, a.kind, a.name, _size(a.size_bytes), str(a.created_at)[:19])
    console.print(table)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@assets_app.command("show")
def assets_show(
    ref: Annotated[str, typer.Argument(help="Asset id, prefix, name or alias.")],
) -> None:
    """Show one asset: metadata, files, the run that made it."""
    from forgeml.control.ops import asset_info
    from forgeml.registry import open_registry

    console.print_json(json.dumps(asset_info(open_registry(current_workspace()), ref), default=str))


@assets_app.command("lineage")
def assets_lineage(
    ref: Annotated[str, typer.Argument(help="Asset or run id.")],
    up: Annotated[bool, typer.Option("--up", help="Walk to what it was made from.")] = False,
    down: Annotated[bool, typer.Option("--down", help="Walk to what was made from it.")] = False,
    depth: Annotated[int | None, typer.Option(help="Stop after this many hops.")] = None,
) -> None:
    """Walk the lineage graph upstream (--up, default) or downstream (--down)."""
    from forgeml.registry import open_registry

    if up and down:
        raise ForgeError("choose one of --up and --down")
    from forgeml.registry import format_lineage

    direction = "down" if down else "up"
    graph = open_registry(current_workspace()).lineage(ref, direction, max_depth=depth)
    console.print(format_lineage(graph), highlight=False, markup=False)


@runs_app.command("list")
def runs_list(
    stage: Annotated[
        str | None, typer.Option(help="Only this stage (ingest, pretrain, ...).")
    ] = None,
    status: Annotated[str | None, typer.Option(help="running, succeeded, failed.")] = None,
) -> None:
    """List runs, newest first."""
    from forgeml.registry import open_registry

    table = Table()
    for col in ("id", "stage", "status", "config", "inputs", "outputs", "started"):
        table.add_column(col, overflow="fold")
    for r in open_registry(current_workspace()).list_runs(stage=stage, status=status):
        table.add_row(
            r.id,
            r.stage,
            r.status,
            r.config_hash[:12],
            " ".join(r.inputs),
            " ".join(r.outputs),
            str(r.started_at)[:19],
        )
    console.print(table)


@runs_app.command("show")
def runs_show(ref: Annotated[str, typer.Argument(help="Run id or unique prefix.")]) -> None:
    """Show one run: config, inputs, outputs, metrics, versions, timing."""
    import dataclasses

    from forgeml.registry import open_registry

    run = open_registry(current_workspace()).get_run(ref)
    console.print_json(json.dumps(dataclasses.asdict(run), default=str))


@assets_app.command("delete")
def assets_delete(
    ref: Annotated[str, typer.Argument(help="Asset id, unique prefix, name or alias.")],
    reason: Annotated[str, typer.Option(help="Why (audited).")] = "",
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete an asset: its stored files go, its registry row stays marked deleted (lineage
    still names it). Refused while other assets were made from it or an alias points at it;
    the files it was registered from are never touched. Agents ask through the control plane
    and wait for `forgeml approvals approve`."""
    from forgeml.control.ops import cli_principal
    from forgeml.governance.audit import AuditLog, audit_log_path
    from forgeml.registry import open_registry

    ws = current_workspace()
    reg = open_registry(ws)
    asset = reg.check_deletable(ref)
    if not yes:
        typer.confirm(f"delete {asset.id} ({asset.kind} {asset.name})?", abort=True)
    actor = cli_principal()
    gone = reg.delete_asset(asset.id, actor=actor, reason=reason)
    AuditLog(audit_log_path(ws.root)).append(
        "asset_deleted", principal=actor, asset=gone.id, kind=gone.kind, name=gone.name,
        sha256=gone.sha256, reason=reason,
    )  # fmt: skip
    console.print(f"deleted {gone.id} ({gone.kind} {gone.name})", highlight=False)


@assets_app.command("label")
def assets_label(
    ref: Annotated[str, typer.Argument(help="Asset id, prefix, name or alias.")],
    level: Annotated[str, typer.Argument(help="public, internal, confidential or restricted.")],
    reason: Annotated[str, typer.Option(help="Why (audited).")] = "",
) -> None:
    """Set an asset's classification label; every asset made from it inherits it (serving,
    exports and the control plane then need a clearance that covers it). Raising a label
    takes effect at once; lowering one waits for `forgeml approvals approve`. Audited."""
    from forgeml.control.approvals import change_label
    from forgeml.control.ops import cli_principal
    from forgeml.governance.audit import AuditLog, audit_log_path
    from forgeml.registry import open_registry

    ws = current_workspace()
    audit = AuditLog(audit_log_path(ws.root))
    done = change_label(open_registry(ws), audit, ref, level, actor=cli_principal(), reason=reason)
    if done["status"] == "pending_approval":
        console.print(
            f"lowering {done['asset']} to {level} needs an approval: {done['approval']} "
            f"(an approver runs `forgeml approvals approve {done['approval']}`)",
            highlight=False,
        )
        return
    console.print(
        f"{done['asset_id']}: {done['label']} (effective {done['effective']}; "
        f"{len(done['restamped'])} derived asset(s) relabelled)",
        highlight=False,
    )
