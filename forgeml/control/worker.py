"""`forgeml worker`: claim queued jobs one at a time and run each job spec in a child process.

Each job runs `python -m forgeml.control.run_job WORKSPACE SPEC_JSON` (the stage functions the
CLI calls, never the CLI) with its output in `runs/jobs/<job>/attempt-<n>.log`. The worker
heartbeats while it waits, stops the job's process group when a cancel is requested, and its
children die with it (PR_SET_PDEATHSIG) so a killed worker leaves no orphan training behind.
A job queued before typed specs (a command line only) is read into a spec when it is claimed;
one that no longer reads fails at once with the reason, without retries.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from forgeml.control.job_spec import JobSpec, parse_job_args
from forgeml.control.jobs import (
    JOB_ENV,
    RETRY_BASE_S,
    Job,
    claim_next_job,
    finish_job,
    heartbeat,
    reap_stale_jobs,
)
from forgeml.core.errors import ForgeError
from forgeml.core.workspace import Workspace
from forgeml.registry import Registry


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this child when the worker process dies."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def job_log_path(ws: Workspace, job: Job, attempt: int | None = None) -> Path:
    return ws.runs_dir / "jobs" / job.id / f"attempt-{attempt or job.attempts}.log"


def job_spec_of(job: Job) -> JobSpec:
    """What a claimed job runs: its stored spec (its recipe checked against this version's
    schema), or, queued before typed specs, its command line read into one now, its recipe
    validated. Raises ForgeError, saying which, when the job cannot run as queued."""
    try:
        if job.spec is None:
            return parse_job_args(job.args).resolved()[0]
        spec = JobSpec.model_validate(job.spec)
        if spec.takes_recipe:
            spec.load_recipe()
        return spec
    except ValidationError as exc:
        raise ForgeError(f"its stored job spec does not validate: {exc}") from None
    except ForgeError as exc:
        what = (
            "its command line (queued before typed job specs)"
            if job.spec is None
            else ("its stored job spec")
        )
        raise ForgeError(f"{what} no longer reads: {exc}", hint="submit the job again") from None


def run_job(
    ws: Workspace, reg: Registry, job: Job, worker: str, *, heartbeat_s: float = 2.0
) -> Job:
    """Run one claimed job to its end (or cancel) and record the outcome."""
    log = job_log_path(ws, job)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        out.write(f"$ forgeml {' '.join(job.args)}\n".encode())
        out.flush()
        try:
            spec = job_spec_of(job)
        except ForgeError as exc:
            error = str(exc)  # it would fail the same way again: no retry
            out.write(f"error: {error}\n".encode())
            return finish_job(reg, job.id, worker, exit_code=None, error=error, retryable=False)
        spec_path = log.with_suffix(".spec.json")
        spec_path.write_text(spec.model_dump_json(indent=1))
        cmd = [sys.executable, "-m", "forgeml.control.run_job", str(ws.root), str(spec_path)]
        proc = subprocess.Popen(
            cmd,
            env={**os.environ, JOB_ENV: job.id},  # jobs it queues are charged to its submitter
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        cancelled = False
        while True:
            try:
                code = proc.wait(timeout=heartbeat_s)
                break
            except subprocess.TimeoutExpired:
                if heartbeat(reg, job.id, worker) and not cancelled:
                    cancelled = True
                    _stop(proc)
    error = "cancelled" if cancelled else (None if code == 0 else f"exit code {code}")
    return finish_job(reg, job.id, worker, exit_code=code, error=error)


def _stop(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def run_worker(
    ws: Workspace,
    *,
    worker_id: str | None = None,
    poll_s: float = 1.0,
    heartbeat_s: float = 2.0,
    stale_after_s: float = 30.0,
    max_jobs: int | None = None,
    idle_exit_s: float | None = None,
    retry_base_s: float = RETRY_BASE_S,
    notify: Callable[[str], None] | None = None,
) -> int:
    """Run queued jobs until `max_jobs` ran or the queue stayed empty `idle_exit_s` seconds;
    failed-retryable jobs are run again once their backoff (from `retry_base_s`) passed."""
    from forgeml.registry import open_registry

    worker = worker_id or f"{socket.gethostname()}:{os.getpid()}"
    reg = open_registry(ws)
    done, idle_since = 0, time.monotonic()
    while max_jobs is None or done < max_jobs:
        for stale in reap_stale_jobs(reg, stale_after_s):
            if notify:
                notify(f"{stale}: worker lost, marked failed-retryable (retried after a backoff)")
        job = claim_next_job(reg, worker, retry_base_s=retry_base_s)
        if job is None:
            if idle_exit_s is not None and time.monotonic() - idle_since > idle_exit_s:
                break
            time.sleep(poll_s)
            continue
        if notify:
            notify(
                f"{job.id}: running `forgeml {' '.join(job.args)}` "
                f"(attempt {job.attempts} of {job.max_attempts})"
            )
        result = run_job(ws, reg, job, worker, heartbeat_s=heartbeat_s)
        if notify:
            notify(f"{job.id}: {result.status}")
        done += 1
        idle_since = time.monotonic()
    return done


def main(argv: list[str] | None = None) -> int:
    """`python -m forgeml.control.worker WORKSPACE [--idle-exit S] ...`: a worker started by
    another process (local HPO trial workers), without the CLI."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m forgeml.control.worker")
    parser.add_argument("workspace")
    parser.add_argument("--idle-exit", type=float, default=None)
    parser.add_argument("--poll", type=float, default=1.0)
    parser.add_argument("--heartbeat", type=float, default=2.0)
    parser.add_argument("--retry-backoff", type=float, default=RETRY_BASE_S)
    opts = parser.parse_args(argv)
    from forgeml.core.workspace import open_workspace

    run_worker(
        open_workspace(opts.workspace), poll_s=opts.poll, heartbeat_s=opts.heartbeat,
        idle_exit_s=opts.idle_exit, retry_base_s=opts.retry_backoff,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
