"""Every table of the registry database, and the Alembic migrations create exactly these.

ORM classes (assets, runs, lineage, aliases, jobs) are touched only by `registry.store` and
`registry.rows`; Core tables (API keys, control budgets/plans/approvals, the HPO journal) by
their packages.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Table,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Relations stored in `edges`, always oriented upstream -> downstream.
CONSUMES = "consumes"  # asset -> run
PRODUCES = "produces"  # run -> asset
PARENT = "parent"  # asset -> asset


class Base(DeclarativeBase):
    pass


class AssetRow(Base):
    """One immutable, content-addressed artifact; `path` is relative to the artifact root."""

    __tablename__ = "assets"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    name: Mapped[str] = mapped_column(String(255), index=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    n_files: Mapped[int] = mapped_column(Integer)
    # Naive UTC everywhere: SQLite drops tz info, so we never store it on either backend.
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=False))
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON)
    producer_run: Mapped[str | None] = mapped_column(String(64), nullable=True)
    path: Mapped[str] = mapped_column(Text)
    # A deleted asset keeps its row (lineage and audit still name it) but not its files.
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=False), nullable=True)
    deleted_by: Mapped[str | None] = mapped_column(String(255), nullable=True)
    delete_reason: Mapped[str | None] = mapped_column(Text, nullable=True)


class RunRow(Base):
    """One execution of a stage; inputs and outputs live in `edges`."""

    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    stage: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    config_hash: Mapped[str] = mapped_column(String(64))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    seed: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    code_version: Mapped[str] = mapped_column(String(128))
    library_versions: Mapped[dict[str, str]] = mapped_column(JSON)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=False))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=False), nullable=True)
    launched_by: Mapped[str] = mapped_column(String(255))
    error: Mapped[str | None] = mapped_column(Text, nullable=True)

    __table_args__ = (Index("ix_runs_cache_key", "stage", "config_hash", "status"),)


class EdgeRow(Base):
    """A lineage edge from `src` (upstream) to `dst` (downstream); `position` orders inputs."""

    __tablename__ = "edges"

    src: Mapped[str] = mapped_column(String(64), primary_key=True)
    dst: Mapped[str] = mapped_column(String(64), primary_key=True)
    relation: Mapped[str] = mapped_column(String(16), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (Index("ix_edges_dst", "dst"),)


class AliasRow(Base):
    """The current target of a named alias (champion, candidate, ...)."""

    __tablename__ = "aliases"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    asset_id: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=False))


class AliasEventRow(Base):
    """Append-only history of alias moves; replaying it gives the rollback stack."""

    __tablename__ = "alias_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), index=True)
    action: Mapped[str] = mapped_column(String(16))
    asset_id: Mapped[str] = mapped_column(String(64))
    previous_asset_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    reason: Mapped[str] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(String(255))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=False))


class JobRow(Base):
    """A queued job for `forgeml worker` processes (the agent-first control plane): its typed
    spec (forgeml.control.job_spec; NULL for jobs queued before 0006) and its command line."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    args: Mapped[list[str]] = mapped_column(JSON)
    spec: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    status: Mapped[str] = mapped_column(String(24), index=True)
    submitted_by: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=False))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=False), nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=False), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=False), nullable=True)
    worker: Mapped[str | None] = mapped_column(String(128), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


# -- Core tables on the same metadata, read and written by the packages named ------------------

# forgeml.governance.keys: API keys, stored hashed (never the secret), bound to a principal.
api_keys = Table(
    "serve_api_keys",
    Base.metadata,
    Column("id", String(32), primary_key=True),
    Column("principal", String(200), nullable=False, index=True),
    Column("salt", String(64), nullable=False),
    Column("secret_sha256", String(64), nullable=False),
    Column("roles", JSON, nullable=False),
    Column("models", JSON, nullable=False),  # model names/aliases/ids; ["*"] = any
    Column("endpoints", JSON, nullable=False),
    Column("requests_per_minute", Integer),
    Column("tokens_per_minute", Integer),
    Column("clearance", String(64)),
    Column("label", String(200), nullable=False, default=""),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True)),
)

# forgeml.control: per-principal budgets, the dry-run plan of every job, pending approvals.
budgets = Table(
    "control_budgets",
    Base.metadata,
    Column("principal", String(200), primary_key=True),
    Column("cpu_hours", Float),
    Column("gpu_hours", Float),
    Column("max_concurrent_jobs", Integer),
    Column("max_model_params", BigInteger),
    Column("data_clearance", String(64)),
    Column("since", DateTime(timezone=False), nullable=False),  # usage counts from here
    Column("updated_at", DateTime(timezone=False), nullable=False),
    Column("updated_by", String(255), nullable=False),
)

job_plans = Table(
    "control_job_plans",
    Base.metadata,
    Column("job_id", String(64), primary_key=True),
    Column("principal", String(200), nullable=False, index=True),
    Column("device", String(16), nullable=False),  # "cpu" or "gpu": which hours it is charged
    Column("estimated_hours", Float, nullable=False),
    Column("plan", JSON, nullable=False),
    Column("created_at", DateTime(timezone=False), nullable=False),
)

approvals = Table(
    "control_approvals",
    Base.metadata,
    Column("id", String(64), primary_key=True),
    Column("action", String(32), nullable=False),
    Column("params", JSON, nullable=False),
    Column("requested_by", String(200), nullable=False),
    Column("reason", Text, nullable=False),
    Column("status", String(16), nullable=False, index=True),
    Column("created_at", DateTime(timezone=False), nullable=False),
    Column("decided_at", DateTime(timezone=False)),
    Column("decided_by", String(255)),
    Column("result", JSON),
    Column("error", Text),
)

# forgeml.hpo.storage: Optuna's journal (an append-only log of study events), numbered by us.
hpo_journal = Table(
    "hpo_journal",
    Base.metadata,
    Column("log_number", BigInteger, primary_key=True, autoincrement=False),
    Column("entry", Text, nullable=False),
)
