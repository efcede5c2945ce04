"""`forgeml jobs {submit,list,show,logs,cancel,retry}` and `forgeml worker`: queue typed job
specs in the registry database after their dry-run plan, and run them in worker processes."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from forgeml.cli.common import console, current_workspace, err, notify, state

jobs_app = typer.Typer(help="Queue commands for `forgeml worker` processes.", no_args_is_help=True)


@jobs_app.command(
    "submit", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)
def jobs_submit(
    args: Annotated[
        list[str] | None, typer.Argument(help="The forgeml command to run, after `--`.")
    ] = None,
    spec: Annotated[
        Path | None,
        typer.Option(help="Or a job spec JSON file ({command, params, recipe_file, overrides})."),
    ] = None,
    max_attempts: Annotated[int, typer.Option(help="Attempts before a job is failed.")] = 3,
) -> None:
    """Queue a command, e.g. `forgeml jobs submit -- pipeline run r.yaml --auto-resume`. It is
    read once into a typed job spec (its recipe validated now) that the worker runs; the
    dry-run plan is printed and stored with it; your budget (`forgeml budgets set
    cli:USER ...`), if you have one, can refuse it."""
    from forgeml.control.job_spec import spec_from_request
    from forgeml.control.ops import (
        BudgetExceeded,
        Submitter,
        absolute_job,
        admit_job,
        cli_principal,
    )
    from forgeml.core.errors import ForgeError
    from forgeml.governance.audit import AuditLog, audit_log_path
    from forgeml.registry import open_registry

    if bool(args) == (spec is not None):
        raise ForgeError("give a command after `--` or --spec FILE", hint="not both")
    ws = current_workspace()
    # Workers may run in another folder: make paths that exist here absolute.
    job = spec_from_request(json.loads(spec.read_text())) if spec is not None else args or []
    job = absolute_job(job, Path.cwd())
    who = Submitter(cli_principal(), is_admin=True)
    try:
        queued, plan = admit_job(
            ws, open_registry(ws), AuditLog(audit_log_path(ws.root)), job, who,
            max_attempts=max_attempts,
        )  # fmt: skip
    except BudgetExceeded as exc:
        err.print(exc.plan.summary(), markup=False, highlight=False)
        raise
    if not state.quiet:
        err.print(plan.summary(), markup=False, highlight=False)
    console.print(queued.id)


@jobs_app.command("list")
def jobs_list(status: Annotated[str | None, typer.Option(help="Only this status.")] = None) -> None:
    """List jobs, newest first."""
    from forgeml.control.jobs import list_jobs
    from forgeml.registry import open_registry

    table = Table()
    for col in ("id", "status", "attempts", "worker", "command", "created"):
        table.add_column(col, overflow="fold")
    for j in list_jobs(open_registry(current_workspace()), status):
        table.add_row(
            j.id,
            j.status,
            str(j.attempts),
            j.worker or "-",
            " ".join(j.args),
            str(j.created_at)[:19],
        )
    console.print(table)


@jobs_app.command("show")
def jobs_show(ref: Annotated[str, typer.Argument(help="Job id or unique prefix.")]) -> None:
    """Show one job."""
    import dataclasses

    from forgeml.control.jobs import get_job
    from forgeml.registry import open_registry

    console.print_json(
        json.dumps(
            dataclasses.asdict(get_job(open_registry(current_workspace()), ref)), default=str
        )
    )


@jobs_app.command("logs")
def jobs_logs(ref: Annotated[str, typer.Argument(help="Job id or unique prefix.")]) -> None:
    """Print the log of a job's latest attempt."""
    from forgeml.control.ops import read_job_log
    from forgeml.registry import open_registry

    ws = current_workspace()
    sys.stdout.write(read_job_log(ws, open_registry(ws), ref))


@jobs_app.command("cancel")
def jobs_cancel(ref: Annotated[str, typer.Argument(help="Job id or unique prefix.")]) -> None:
    """Cancel a queued job, or stop a running one."""
    from forgeml.control.jobs import cancel_job
    from forgeml.registry import open_registry

    job = cancel_job(open_registry(current_workspace()), ref)
    console.print(f"{job.id}: {'cancel requested' if job.status == 'running' else job.status}")


@jobs_app.command("retry")
def jobs_retry(ref: Annotated[str, typer.Argument(help="Job id or unique prefix.")]) -> None:
    """Queue a failed job again (cached stages are skipped; `--auto-resume` jobs resume)."""
    from forgeml.control.jobs import retry_job
    from forgeml.registry import open_registry

    console.print(f"{retry_job(open_registry(current_workspace()), ref).id}: queued")


def worker_cmd(
    max_jobs: Annotated[int | None, typer.Option(help="Exit after this many jobs.")] = None,
    idle_exit: Annotated[
        float | None, typer.Option(help="Exit after the queue stayed empty this many seconds.")
    ] = None,
    poll: Annotated[float, typer.Option(help="Seconds between queue polls.")] = 1.0,
    heartbeat: Annotated[float, typer.Option(help="Seconds between heartbeats.")] = 2.0,
    stale_after: Annotated[
        float, typer.Option(help="A running job without heartbeat this long is failed-retryable.")
    ] = 30.0,
    retry_backoff: Annotated[
        float, typer.Option(help="Seconds before a failed job's 2nd attempt (doubled each time).")
    ] = 30.0,
) -> None:
    """Run queued jobs (start several workers for parallelism; each job runs once, failed ones
    again after a backoff, up to their max attempts)."""
    from forgeml.control.worker import run_worker

    n = run_worker(
        current_workspace(),
        poll_s=poll,
        heartbeat_s=heartbeat,
        stale_after_s=stale_after,
        max_jobs=max_jobs,
        idle_exit_s=idle_exit,
        retry_base_s=retry_backoff,
        notify=notify,
    )
    console.print(f"worker ran {n} job(s)")
