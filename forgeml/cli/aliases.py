"""`forgeml promote`, `forgeml rollback` and `forgeml aliases`: move an alias (behind the KPI
gate), move it back, and show where aliases point and how they moved; every move is audited."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from forgeml.cli.common import console, current_workspace, err, notify


def promote_cmd(
    model: Annotated[str, typer.Argument(help="Model asset (id, prefix or name).")],
    alias: Annotated[str, typer.Option("--alias", "-a", help="Alias to move, e.g. champion.")],
    suite: Annotated[
        Path | None, typer.Option(help="KPI suite: the move needs its gate to pass.")
    ] = None,
    data_root: Annotated[Path | None, typer.Option(help="Folder of the suite's data.")] = None,
    force: Annotated[
        bool, typer.Option(help="Move despite a failing gate (needs --reason).")
    ] = False,
    reason: Annotated[str, typer.Option(help="Why (kept in the alias history).")] = "",
) -> None:
    """Point an alias at a model if it passes the gate against the alias's current model.

    Every move is written to the audit log, a forced one with its reason."""
    from forgeml.control.ops import cli_principal
    from forgeml.governance.audit import AuditLog, audit_log_path
    from forgeml.pipeline.eval_suite_stage import GateFailed, promote

    ws, actor = current_workspace(), cli_principal()
    try:
        res = promote(
            ws, model, alias, suite_path=suite, data_root=data_root, force=force,
            reason=reason, actor=actor, notify=notify,
        )  # fmt: skip
    except GateFailed as exc:
        console.print(exc.report.table(), markup=False, highlight=False)
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    # The event and fields the control plane writes for the same move (ControlPlane.promote).
    AuditLog(audit_log_path(ws.root)).append(
        "alias_promoted", principal=actor, alias=res.alias, asset_id=res.asset_id,
        previous=res.previous, forced=res.forced, reason=reason,
        gate=None if res.gate is None else ("passed" if res.gate.report.passed else "failed"),
    )  # fmt: skip
    if res.gate is not None:
        console.print(res.gate.report.table(), markup=False, highlight=False)
    console.print(f"{alias} -> {res.asset_id}" + (" (forced)" if res.forced else ""))


def rollback_cmd(
    alias: Annotated[str, typer.Argument(help="Alias to move back to its previous target.")],
    reason: Annotated[str, typer.Option(help="Why (kept in the alias history).")] = "",
) -> None:
    """Move an alias back to its previous target in one command (audited)."""
    from forgeml.control.ops import cli_principal
    from forgeml.governance.audit import AuditLog, audit_log_path
    from forgeml.pipeline.eval_suite_stage import rollback

    ws, actor = current_workspace(), cli_principal()
    target = rollback(ws, alias, reason=reason, actor=actor)
    AuditLog(audit_log_path(ws.root)).append(
        "alias_rolled_back", principal=actor, alias=alias, asset_id=target, reason=reason
    )
    console.print(f"{alias} -> {target}")


def aliases_cmd(
    name: Annotated[str | None, typer.Argument(help="Show this alias's history.")] = None,
) -> None:
    """List aliases, or one alias's full history."""
    from forgeml.registry import open_registry

    reg = open_registry(current_workspace())
    table = Table()
    if name is None:
        for col in ("alias", "target"):
            table.add_column(col)
        for alias, target in sorted(reg.list_aliases().items()):
            table.add_row(alias, target)
    else:
        events = reg.alias_history(name)
        cols = ("at", "action", "asset_id", "previous_asset_id", "actor", "reason")
        for col in cols:
            table.add_column(col, overflow="fold")
        for e in events:
            table.add_row(
                *(str(e.get(c) or "")[:19] if c == "at" else str(e.get(c) or "") for c in cols)
            )
    console.print(table)
