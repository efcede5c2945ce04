"""`forgeml worker`: claim queued jobs one at a time and run them as CLI subprocesses.

Each job runs `python -m forgeml.cli -w WORKSPACE ARGS...` with its output in
`runs/jobs/<job>/attempt-<n>.log`. The worker heartbeats while it waits, stops the job's
process group when a cancel is requested, and its children die with it (PR_SET_PDEATHSIG)
so a killed worker leaves no orphan training behind.
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

from forgeml.control.jobs import (
    JOB_ENV,
    RETRY_BASE_S,
    Job,
    claim_next_job,
    finish_job,
    heartbeat,
    reap_stale_jobs,
)
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


def run_job(
    ws: Workspace, reg: Registry, job: Job, worker: str, *, heartbeat_s: float = 2.0
) -> Job:
    """Run one claimed job to its end (or cancel) and record the outcome."""
    log = job_log_path(ws, job)
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "forgeml.cli", "-w", str(ws.root), *job.args]
    with open(log, "ab") as out:
        out.write(f"$ forgeml {' '.join(job.args)}\n".encode())
        out.flush()
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
