"""Job queue: typed job specs (forgeml.control.job_spec), queued in the registry database and
run by workers.

A job is claimed by exactly one worker inside a write transaction (SQLite takes the write
lock up front; PostgreSQL uses `FOR UPDATE SKIP LOCKED`). Workers heartbeat while a job
runs; a job whose worker stopped heartbeating (or whose command failed) is marked
`failed-retryable`, and a worker claims it again once its backoff has passed
(`retry_delay_s`: doubling from attempt to attempt) until `max_attempts` ran; `retry_job`
queues it at once. A pre-training job submitted with `--auto-resume` continues from its last
checkpoint.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from forgeml.control.job_spec import JobSpec
from forgeml.core.errors import ForgeError, NotFoundError
from forgeml.registry import Registry
from forgeml.registry.schema import JobRow

QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"
RETRYABLE, CANCELLED = "failed-retryable", "cancelled"
FINISHED = {SUCCEEDED, FAILED, RETRYABLE, CANCELLED}  # not running (now)
FINAL = {SUCCEEDED, FAILED, CANCELLED}  # no attempt of it will ever run again
JOB_ENV = "FORGEML_JOB"  # the id of the job a worker's child process runs
RETRY_BASE_S = 30.0  # the wait before a failed job's 2nd attempt; doubled before each next
RETRY_MAX_S = 3600.0


@dataclass(frozen=True)
class Job:
    id: str
    args: list[str]  # the command line, for people; `spec` is what runs
    spec: dict[str, Any] | None  # None: queued before typed specs (migration 0006)
    status: str
    submitted_by: str
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    heartbeat_at: datetime | None
    worker: str | None
    attempts: int
    max_attempts: int
    cancel_requested: bool
    exit_code: int | None
    error: str | None

    @property
    def done(self) -> bool:
        """True when no attempt of this job will run again (a failed-retryable job with
        attempts left is not done: a worker claims it again after its backoff)."""
        return self.status in FINAL or (self.status == RETRYABLE and self.retry_at() is None)

    def retry_at(self, base_s: float = RETRY_BASE_S) -> datetime | None:
        """When a worker may claim this failed-retryable job again (None: it will not)."""
        if self.status != RETRYABLE or self.attempts >= self.max_attempts:
            return None
        return (self.ended_at or self.created_at) + timedelta(
            seconds=retry_delay_s(self.attempts, base_s)
        )


def retry_delay_s(attempts: int, base_s: float = RETRY_BASE_S) -> float:
    """Exponential backoff: `base_s` after the 1st attempt, doubling after each later one."""
    return min(RETRY_MAX_S, base_s * 2 ** max(0, attempts - 1))


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _job(row: JobRow) -> Job:
    return Job(**{f: getattr(row, f) for f in Job.__dataclass_fields__})


def new_job_id() -> str:
    return f"job-{int(time.time() * 1000):011x}{secrets.token_hex(4)}"


def submit_job(
    reg: Registry,
    spec: JobSpec,
    *,
    args: list[str] | None = None,
    submitted_by: str = "user",
    max_attempts: int = 3,
) -> Job:
    """Queue a job spec (planned: ops.admit_job is the way in that checks budgets); `args` is
    the command line it was given as, shown in job lists (default: the spec's own)."""
    if not isinstance(spec, JobSpec):
        raise ForgeError(
            "a job is a JobSpec", hint="read a command line with job_spec.parse_job_args"
        )
    if spec.takes_recipe and spec.recipe is None:
        raise ForgeError(
            f"the `{spec.command}` job's recipe was not resolved",
            hint="plan it first (ops.admit_job): its recipe is validated once, at plan time",
        )
    row = JobRow(
        id=new_job_id(),
        args=list(args) if args else spec.command_line(),
        spec=spec.model_dump(mode="json"),
        status=QUEUED,
        submitted_by=submitted_by,
        created_at=_now(),
        attempts=0,
        max_attempts=max_attempts,
        cancel_requested=False,
    )
    with reg.transaction(write=True) as s:
        s.add(row)
    return _job(row)


def get_job(reg: Registry, ref: str) -> Job:
    """The job `ref` names: its id, or a prefix of exactly one job's id."""
    if not ref:
        raise NotFoundError("no job id given", hint="run `forgeml jobs list`")
    with reg.transaction() as s:
        row = s.get(JobRow, ref)
        if row is None:
            # autoescape: a '%' or '_' in `ref` is a character, not a LIKE wildcard
            rows = s.scalars(
                select(JobRow).where(JobRow.id.startswith(ref, autoescape=True)).limit(2)
            ).all()
            if len(rows) != 1:
                raise NotFoundError(f"unknown job '{ref}'", hint="run `forgeml jobs list`")
            row = rows[0]
        return _job(row)


def list_jobs(reg: Registry, status: str | None = None) -> list[Job]:
    with reg.transaction() as s:
        q = select(JobRow).order_by(JobRow.created_at.desc())
        if status:
            q = q.where(JobRow.status == status)
        return [_job(r) for r in s.scalars(q)]


def claim_next_job(reg: Registry, worker: str, *, retry_base_s: float = RETRY_BASE_S) -> Job | None:
    """Atomically take the oldest queued job for `worker`, else the failed-retryable job whose
    backoff passed longest ago; None when there is neither."""
    now = _now()
    with reg.transaction(write=True) as s:
        q = select(JobRow).where(JobRow.status == QUEUED).order_by(JobRow.created_at).limit(1)
        if reg.engine.dialect.name == "postgresql":
            q = q.with_for_update(skip_locked=True)
        row = s.scalars(q).first()
        if row is None:
            row = _due_retry(reg, s, now, retry_base_s)
        if row is None:
            return None
        row.status, row.worker, row.attempts = RUNNING, worker, row.attempts + 1
        row.started_at = row.heartbeat_at = now
        row.ended_at = row.exit_code = row.error = None
        return _job(row)


def _due_retry(reg: Registry, s: Session, now: datetime, base_s: float) -> JobRow | None:
    """The failed-retryable job with attempts left whose backoff ended first, if it ended."""
    q = select(JobRow).where(JobRow.status == RETRYABLE, JobRow.attempts < JobRow.max_attempts)
    if reg.engine.dialect.name == "postgresql":
        q = q.with_for_update(skip_locked=True)
    due = [(_job(r).retry_at(base_s), r) for r in s.scalars(q)]
    due = [(at, r) for at, r in due if at is not None and at <= now]
    return min(due, key=lambda d: d[0])[1] if due else None


def heartbeat(reg: Registry, job_id: str, worker: str) -> bool:
    """Record that `worker` is alive; returns True when a cancel was requested."""
    with reg.transaction(write=True) as s:
        row = s.get(JobRow, job_id)
        if row is None or row.worker != worker or row.status != RUNNING:
            return True
        row.heartbeat_at = _now()
        return row.cancel_requested


def finish_job(
    reg: Registry,
    job_id: str,
    worker: str,
    *,
    exit_code: int | None,
    error: str | None = None,
    retryable: bool = True,
) -> Job:
    """Record how an attempt ended; a failure is retried while attempts are left, unless
    `retryable` is False (it would fail the same way again)."""
    with reg.transaction(write=True) as s:
        row = s.get(JobRow, job_id)
        if row is None or row.worker != worker or row.status != RUNNING:
            raise ForgeError(f"job {job_id} is no longer held by {worker}")
        if row.cancel_requested:
            row.status = CANCELLED
        elif exit_code == 0:
            row.status = SUCCEEDED
        else:
            again = retryable and row.attempts < row.max_attempts
            row.status = RETRYABLE if again else FAILED
        row.exit_code, row.error, row.ended_at = exit_code, error, _now()
        return _job(row)


def cancel_job(reg: Registry, ref: str) -> Job:
    """Cancel a queued job at once; ask the worker of a running one to stop it."""
    job = get_job(reg, ref)
    with reg.transaction(write=True) as s:
        row = s.get(JobRow, job.id)
        if row.status in {QUEUED, RETRYABLE}:  # a retryable job is not claimed again
            row.status, row.ended_at = CANCELLED, _now()
        elif row.status == RUNNING:
            row.cancel_requested = True
        else:
            raise ForgeError(f"job {row.id} is already {row.status}")
        return _job(row)


def retry_job(reg: Registry, ref: str) -> Job:
    """Queue a failed job again (its stages are cached or resume, so no work is repeated)."""
    job = get_job(reg, ref)
    with reg.transaction(write=True) as s:
        row = s.get(JobRow, job.id)
        if row.status not in {RETRYABLE, FAILED}:
            raise ForgeError(f"job {row.id} is {row.status}; only failed jobs can be retried")
        row.status, row.worker, row.cancel_requested = QUEUED, None, False
        row.max_attempts = max(row.max_attempts, row.attempts + 1)
        return _job(row)


def reap_stale_jobs(reg: Registry, timeout_s: float) -> list[str]:
    """Mark running jobs whose worker stopped heartbeating as failed-retryable."""
    cutoff = _now() - timedelta(seconds=timeout_s)
    with reg.transaction(write=True) as s:
        rows = s.scalars(
            select(JobRow).where(JobRow.status == RUNNING, JobRow.heartbeat_at < cutoff)
        ).all()
        for row in rows:
            row.status = RETRYABLE if row.attempts < row.max_attempts else FAILED
            row.error = f"worker {row.worker} stopped heartbeating"
            row.ended_at = _now()
        return [r.id for r in rows]
