"""ORM tables of the registry: assets, runs, lineage edges, aliases and their history.

Only `forgeml.registry.store` touches these classes; callers get plain dataclasses. The
Alembic migrations in `migrations/versions/` create exactly these tables.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Index, Integer, String, Text
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
    """A queued CLI command for `forgeml worker` processes (the agent-first control plane)."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    args: Mapped[list[str]] = mapped_column(JSON)
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
