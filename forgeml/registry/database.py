"""The registry's database: one SQLAlchemy engine for SQLite (WAL) or PostgreSQL, and the
Alembic upgrade to the newest schema, run once however many processes open it at once.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import StaticPool

from forgeml.core.errors import ForgeError

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Arbitrary constant key for pg_advisory_lock so concurrent first opens migrate once.
_PG_MIGRATION_LOCK = 0x666F726765


class _MigrationLock:
    """Serialises the first open of a registry across processes: a file lock next to a SQLite
    database, a session-level advisory lock on PostgreSQL."""

    def __init__(self, engine: Engine, sqlite_path: Path | None) -> None:
        self.engine = engine
        self.sqlite_path = sqlite_path

    @contextlib.contextmanager
    def held(self, conn) -> Iterator[None]:
        dialect = self.engine.dialect.name
        if dialect == "postgresql":
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
            conn.commit()
            try:
                yield
            finally:
                conn.rollback()
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_MIGRATION_LOCK})
                conn.commit()
        elif self.sqlite_path is not None:
            import fcntl

            lock_path = self.sqlite_path.with_name(self.sqlite_path.name + ".lock")
            with open(lock_path, "a+") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(fh, fcntl.LOCK_UN)
        else:
            yield


_SQLITE_BUSY_MS = 30_000


def _switch_to_wal(cur: Any) -> None:
    """WAL mode, which persists in the file. Switching a fresh file needs an exclusive lock,
    and SQLite answers "database is locked" at once (without its busy handler) when another
    process opens the file at the same moment, so the switch is retried until the timeout."""
    deadline = time.monotonic() + _SQLITE_BUSY_MS / 1000
    while True:
        try:
            if cur.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
                return
            cur.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:
        # SQLAlchemy emits BEGIN itself (below) so writers can take the lock up front.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {_SQLITE_BUSY_MS}")
        _switch_to_wal(cur)
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:
        # A deferred transaction that reads and then writes cannot wait for the lock in WAL
        # mode (SQLITE_BUSY_SNAPSHOT); BEGIN IMMEDIATE takes it first and honours busy_timeout.
        if conn.get_execution_options().get("forgeml_write"):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")


def create_registry_engine(url: str) -> tuple[Engine, Path | None]:
    """The engine for `url` and, for a SQLite file, its path (None in memory and on PostgreSQL)."""
    parsed = make_url(url)
    sqlite_path: Path | None = None
    if parsed.get_backend_name() == "sqlite":
        kwargs: dict[str, Any] = {}
        if parsed.database in (None, "", ":memory:"):
            kwargs["poolclass"] = StaticPool  # one shared in-memory database
        else:
            sqlite_path = Path(parsed.database).resolve()
            sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, **kwargs)
        _configure_sqlite(engine)
    else:
        engine = create_engine(url, pool_pre_ping=True)
    return engine, sqlite_path


def migrate_to_head(engine: Engine, url: str, sqlite_path: Path | None) -> None:
    """Upgrade the database to the newest Alembic revision (nothing when it is there already);
    a revision this forgeml does not know is refused."""
    lock = _MigrationLock(engine, sqlite_path)
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    scripts = ScriptDirectory.from_config(cfg)
    head = scripts.get_current_head()
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
        conn.rollback()
        if current == head:
            return
        if current is not None and current not in {s.revision for s in scripts.walk_revisions()}:
            raise ForgeError(
                f"registry database is at schema revision {current}, unknown to this forgeml",
                hint="upgrade forgeml to the version that last wrote this registry",
            )
        with lock.held(conn):
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            conn.commit()
