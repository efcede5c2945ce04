"""Per-principal budgets of the control plane: CPU/GPU-hours, concurrent jobs, model size and
the data classification a principal may train on, set by a human (`forgeml budgets set`).

Usage is charged from the dry-run plan stored with every job submitted through the control
plane: a queued or running job holds its estimated hours, a finished one its measured hours.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, insert, select, update

from forgeml.control.jobs import QUEUED, RUNNING
from forgeml.core.errors import ForgeError, NotFoundError
from forgeml.governance.labels import LEVELS  # least to most sensitive, as in serving
from forgeml.registry import Registry
from forgeml.registry.schema import JobRow, budgets, job_plans

UNLABELED = "internal"  # a dataset with no `classification` is treated as internal


@dataclass(frozen=True)
class Budget:
    """A human-set allowance; None means no limit on that axis."""

    principal: str
    cpu_hours: float | None = None
    gpu_hours: float | None = None
    max_concurrent_jobs: int | None = None
    max_model_params: int | None = None
    data_clearance: str | None = None
    since: datetime | None = None
    updated_by: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Usage:
    cpu_hours: float
    gpu_hours: float
    active_jobs: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def set_budget(
    reg: Registry,
    principal: str,
    *,
    cpu_hours: float | None = None,
    gpu_hours: float | None = None,
    max_concurrent_jobs: int | None = None,
    max_model_params: int | None = None,
    data_clearance: str | None = None,
    reset_usage: bool = False,
    actor: str = "cli",
) -> Budget:
    """Create or replace a principal's budget; `reset_usage` starts counting hours anew."""
    if not principal:
        raise ForgeError("a budget needs a principal", hint="pass the key's principal name")
    for name, value in (
        ("cpu hours", cpu_hours),
        ("gpu hours", gpu_hours),
        ("max concurrent jobs", max_concurrent_jobs),
        ("max model params", max_model_params),
    ):
        if value is not None and value < 0:
            raise ForgeError(f"{name} must be >= 0, got {value}")
    if data_clearance is not None and data_clearance not in LEVELS:
        raise ForgeError(
            f"unknown data clearance '{data_clearance}'", hint=f"use one of {', '.join(LEVELS)}"
        )
    now = _now()
    row = {
        "cpu_hours": cpu_hours,
        "gpu_hours": gpu_hours,
        "max_concurrent_jobs": max_concurrent_jobs,
        "max_model_params": max_model_params,
        "data_clearance": data_clearance,
        "updated_at": now,
        "updated_by": actor,
    }
    with reg.transaction(write=True) as s:
        old = s.execute(select(budgets.c.since).where(budgets.c.principal == principal)).first()
        if old is None:
            s.execute(insert(budgets).values(principal=principal, since=now, **row))
        else:
            since = now if reset_usage else old.since
            s.execute(
                update(budgets).where(budgets.c.principal == principal).values(since=since, **row)
            )
    return get_budget(reg, principal)


def get_budget(reg: Registry, principal: str) -> Budget | None:
    with reg.transaction() as s:
        row = s.execute(select(budgets).where(budgets.c.principal == principal)).mappings().first()
    return _budget(row) if row is not None else None


def list_budgets(reg: Registry) -> list[Budget]:
    with reg.transaction() as s:
        rows = s.execute(select(budgets).order_by(budgets.c.principal)).mappings().all()
    return [_budget(r) for r in rows]


def remove_budget(reg: Registry, principal: str) -> None:
    with reg.transaction(write=True) as s:
        if s.execute(delete(budgets).where(budgets.c.principal == principal)).rowcount == 0:
            raise NotFoundError(f"no budget for '{principal}'", hint="see `forgeml budgets list`")


def _budget(row: Any) -> Budget:
    return Budget(
        principal=row["principal"],
        cpu_hours=row["cpu_hours"],
        gpu_hours=row["gpu_hours"],
        max_concurrent_jobs=row["max_concurrent_jobs"],
        max_model_params=row["max_model_params"],
        data_clearance=row["data_clearance"],
        since=row["since"],
        updated_by=row["updated_by"],
    )


def record_plan(
    reg: Registry, job_id: str, principal: str, device: str, hours: float, plan: dict
) -> None:
    """Keep the plan a job was admitted with: its hours are charged to `principal`."""
    with reg.transaction(write=True) as s:
        s.execute(
            insert(job_plans).values(
                job_id=job_id,
                principal=principal,
                device=device,
                estimated_hours=hours,
                plan=plan,
                created_at=_now(),
            )
        )


def job_plan(reg: Registry, job_id: str) -> dict | None:
    with reg.transaction() as s:
        row = s.execute(select(job_plans.c.plan).where(job_plans.c.job_id == job_id)).first()
    return row.plan if row is not None else None


def usage(reg: Registry, principal: str, since: datetime | None = None) -> Usage:
    """Hours charged to `principal` since `since`: measured for finished jobs, estimated for
    queued and running ones; and how many of its jobs are queued or running."""
    hours = {"cpu": 0.0, "gpu": 0.0}
    with reg.transaction() as s:
        q = select(job_plans, JobRow.status, JobRow.started_at, JobRow.ended_at).join(
            JobRow, JobRow.id == job_plans.c.job_id
        )
        q = q.where(job_plans.c.principal == principal)
        if since is not None:
            q = q.where(job_plans.c.created_at >= since)
        rows = s.execute(q).mappings().all()
        active = s.scalar(
            select(func.count())
            .select_from(JobRow)
            .where(JobRow.submitted_by == principal, JobRow.status.in_((QUEUED, RUNNING)))
        )
    for r in rows:
        device = "gpu" if r["device"] == "gpu" else "cpu"
        if r["status"] in (QUEUED, RUNNING):
            hours[device] += r["estimated_hours"]
        elif r["started_at"] is not None and r["ended_at"] is not None:
            hours[device] += (r["ended_at"] - r["started_at"]).total_seconds() / 3600
    return Usage(cpu_hours=hours["cpu"], gpu_hours=hours["gpu"], active_jobs=active)


def sensitivity(label: str | None) -> int:
    """Rank of a dataset label among LEVELS (no label: internal; unknown: the most sensitive)."""
    label = label or UNLABELED
    return LEVELS.index(label) if label in LEVELS else len(LEVELS) - 1


def clearance_allows(clearance: str | None, label: str | None) -> bool:
    """True if data labelled `label` may be used with `clearance` (unknown label: the most
    sensitive; no or unknown clearance: the least, as in the serving policy)."""
    have = LEVELS.index(clearance) if clearance in LEVELS else 0
    return sensitivity(label) <= have
