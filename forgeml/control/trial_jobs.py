"""Hyper-parameter trials as jobs: `forgeml hpo --parallel N` queues one job per trial.

Each trial job is planned and charged like any other job to whoever started the search;
`trial_job_runner` is what the CLI hands to `forgeml.hpo.study.run_hpo` as its job queue.
"""

from __future__ import annotations

import subprocess
import sys
import time

from forgeml.control.job_spec import HpoTrialParams, JobSpec
from forgeml.control.jobs import SUCCEEDED, get_job
from forgeml.control.ops import BudgetExceeded, admit_job, current_submitter
from forgeml.core.errors import ForgeError
from forgeml.core.workspace import Workspace
from forgeml.governance.audit import AuditLog, audit_log_path
from forgeml.hpo.study import TrialJobs
from forgeml.pipeline.runtime import Notify
from forgeml.registry import open_registry

# Backoff before a local worker retries a failed trial: a trial is cheap to run again, and
# the search waits for it (the local workers stay up four times this long when idle).
LOCAL_RETRY_S = 1.0


def queue_trial_jobs(ws: Workspace, name: str, todo: int, notify: Notify | None) -> list[str]:
    """Queue up to `todo` trial jobs, each planned and charged like any other job to whoever
    started this search (the submitter of the job it runs in, or the person at the CLI).
    Stops at the first trial the budget refuses; raises BudgetExceeded if that is the first."""
    reg = open_registry(ws)
    who, audit = current_submitter(reg), AuditLog(audit_log_path(ws.root))
    jobs: list[str] = []
    for i in range(todo):
        try:
            trial = JobSpec(command="hpo-trial", params=HpoTrialParams(study=name, offset=i + 1))
            job, _ = admit_job(ws, reg, audit, trial, who)
        except BudgetExceeded as exc:
            if not jobs:
                raise
            if notify:
                notify(f"hpo {name}: {todo - len(jobs)} trial job(s) not queued: {exc}")
            break
        jobs.append(job.id)
    if notify:
        notify(f"hpo {name}: queued {len(jobs)} trial job(s) for {who.principal}")
    return jobs


def run_trial_jobs(
    ws: Workspace, name: str, todo: int, *, parallel: int, start_workers: bool,
    notify: Notify | None,
) -> None:  # fmt: skip
    """Queue one job per trial and wait until none will run again (a failed-retryable trial
    is waited for: a worker retries it); with `start_workers`, `parallel` local workers are
    started to run them (retrying a failed trial after a short backoff, and staying up longer
    than it)."""
    reg = open_registry(ws)
    jobs = queue_trial_jobs(ws, name, todo, notify)
    workers = []
    if start_workers:
        cmd = [sys.executable, "-m", "forgeml.control.worker", str(ws.root),
               "--idle-exit", str(4 * LOCAL_RETRY_S), "--poll", "0.3", "--heartbeat", "1",
               "--retry-backoff", str(LOCAL_RETRY_S)]  # fmt: skip
        workers = [
            subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _ in range(parallel)
        ]
    try:
        while True:
            states = [get_job(reg, j) for j in jobs]
            if all(s.done for s in states):
                break
            if workers and all(w.poll() is not None for w in workers):
                raise ForgeError(
                    f"the local workers exited with {sum(not s.done for s in states)} "
                    "trial job(s) unfinished",
                    hint="see `forgeml jobs list`; run `forgeml worker` to finish them",
                )
            time.sleep(0.5)
    finally:
        for w in workers:
            w.wait(timeout=60)
    failed = [s.id for s in states if s.status != SUCCEEDED]
    if failed and notify:
        notify(f"hpo {name}: {len(failed)} trial job(s) did not succeed: {', '.join(failed)}")


def trial_job_runner(
    ws: Workspace, *, parallel: int, start_workers: bool = True, notify: Notify | None = None
) -> TrialJobs:
    """The job queue `run_hpo` runs its trials through when `parallel` > 1."""

    def run(name: str, todo: int) -> None:
        run_trial_jobs(
            ws, name, todo, parallel=parallel, start_workers=start_workers, notify=notify
        )

    return run
