"""`forgeml audit {verify,checkpoint}`: check the tamper-evident audit log's chain and signed
checkpoints, and sign and ship a new checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from forgeml.cli.common import console, current_workspace, err

audit_app = typer.Typer(help="The tamper-evident audit log.", no_args_is_help=True)


@audit_app.command("verify")
def audit_verify(
    checkpoints: Annotated[
        list[Path] | None,
        typer.Option(
            "--checkpoints",
            help="A shipped copy of the signed checkpoints (repeatable); catches a deleted "
            "or truncated local checkpoint file.",
        ),
    ] = None,
    key_dir: Annotated[
        Path | None, typer.Option(help="Folder with the audit keys (default: the configured).")
    ] = None,
    public_key: Annotated[
        Path | None, typer.Option(help="Checkpoint public key (audit-signing.pub) to trust.")
    ] = None,
) -> None:
    """Check every entry's MAC and chain, the head file and the signed checkpoints; print one
    line per problem and exit 1 if there is any."""
    from forgeml.governance.audit import audit_log_path, verify_audit_log

    path = audit_log_path(current_workspace().root)
    result = verify_audit_log(
        path, checkpoints=checkpoints or [], key_dir=key_dir, public_key=public_key
    )
    for note in result.notes:
        console.print(f"note: {note}", highlight=False, soft_wrap=True)
    if result.ok:
        console.print(
            f"audit log intact: {result.entries} entries, {result.checkpoints} signed "
            f"checkpoint(s) checked: {path}",
            highlight=False,
            soft_wrap=True,
        )
        return
    where = f" at entry {result.first_bad}" if result.first_bad is not None else ""
    err.print(f"[bold red]audit log broken{where}[/]: {escape(str(path))}", soft_wrap=True)
    for problem in result.problems:
        err.print(f"  {escape(problem)}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


@audit_app.command("checkpoint")
def audit_checkpoint(
    ship_to: Annotated[
        list[str] | None,
        typer.Option(
            "--ship-to",
            help="Also copy the checkpoint here: a file (append-only, on another mount) or "
            "syslog://HOST:PORT (repeatable).",
        ),
    ] = None,
) -> None:
    """Sign the audit log's current entry count and head now, append the checkpoint beside
    the log and ship it to the configured targets and --ship-to."""
    from forgeml.governance.audit import AuditLog, audit_log_path

    log = AuditLog(audit_log_path(current_workspace().root))
    record, failures = log.checkpoint(ship_to=tuple(ship_to or ()))
    console.print(
        f"checkpoint: {record['count']} entries, head {record['head'][:16]}…, "
        f"key {record['key_id']}",
        highlight=False,
    )
    for failure in failures:
        err.print(f"[bold red]error:[/] {escape(failure)}", highlight=False, soft_wrap=True)
    if failures:
        raise typer.Exit(1)
