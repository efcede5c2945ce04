"""The registry: assets, runs, lineage edges, aliases and the stage cache, on SQLAlchemy 2.

One implementation for SQLite (default, WAL) and PostgreSQL (by URL). Every stage records
a run here; `find_cached_run` is what lets `forgeml pipeline run` skip finished stages.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import platform
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any, Literal, TypeVar

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from pydantic import BaseModel
from sqlalchemy import Engine, create_engine, event, or_, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

import forgeml
from forgeml.core.config import config_hash as compute_config_hash
from forgeml.core.errors import ForgeError, NotFoundError
from forgeml.registry.artifacts import ArtifactStore, remove_tree, tree_digest
from forgeml.registry.schema import (
    CONSUMES,
    PARENT,
    PRODUCES,
    AliasEventRow,
    AliasRow,
    AssetRow,
    EdgeRow,
    RunRow,
)

ASSET_KINDS = frozenset({"dataset", "tokenizer", "model", "adapter", "eval", "run-output"})
RUN_STATUSES = frozenset({"running", "succeeded", "failed", "cancelled"})
TRACKED_LIBRARIES = ("torch", "transformers", "tokenizers", "numpy", "pyarrow", "sqlalchemy")
MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Arbitrary constant key for pg_advisory_lock so concurrent first opens migrate once.
_PG_MIGRATION_LOCK = 0x666F726765
_ASSET_HINT = "run `forgeml assets list` to see ids"
_RUN_HINT = "run `forgeml runs list` to see ids"
T = TypeVar("T")


@dataclass(frozen=True)
class Asset:
    id: str
    kind: str
    name: str
    sha256: str
    size_bytes: int
    n_files: int
    created_at: datetime
    metadata: dict[str, Any]
    producer_run: str | None
    path: Path
    deleted_at: datetime | None = None
    deleted_by: str | None = None
    delete_reason: str | None = None


@dataclass(frozen=True)
class Run:
    id: str
    stage: str
    status: str
    config: dict[str, Any]
    config_hash: str
    inputs: list[str]
    outputs: list[str]
    metrics: dict[str, Any]
    seed: int | None
    code_version: str
    library_versions: dict[str, str]
    started_at: datetime
    ended_at: datetime | None
    launched_by: str
    error: str | None


@dataclass(frozen=True)
class Lineage:
    """Nodes reached from `root` (root first, BFS order) and edges oriented upstream -> downstream."""

    root: str
    direction: Literal["up", "down"]
    nodes: list[dict[str, Any]] = field(default_factory=list)
    edges: list[tuple[str, str]] = field(default_factory=list)


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _aware(dt: datetime | None) -> datetime | None:
    return None if dt is None else dt.replace(tzinfo=UTC)


def new_run_id() -> str:
    """`run-` + 11 hex digits of milliseconds since the epoch + 8 random hex digits:
    lexical order is start order, and two processes in the same millisecond do not collide."""
    return f"run-{time.time_ns() // 1_000_000:011x}{secrets.token_hex(4)}"


@cache
def _git_commit() -> str | None:
    """Commit of the checkout forgeml runs from, read from .git without a subprocess."""
    for parent in Path(forgeml.__file__).resolve().parents:
        git = parent / ".git"
        if not git.exists():
            continue
        try:
            if git.is_file():  # worktree or submodule: "gitdir: <path>"
                git = (parent / git.read_text().split(":", 1)[1].strip()).resolve()
            head = (git / "HEAD").read_text().strip()
            if not head.startswith("ref:"):
                return head
            ref = head.split(":", 1)[1].strip()
            if (git / ref).is_file():
                return (git / ref).read_text().strip()
            packed = git / "packed-refs"
            if packed.is_file():
                for line in packed.read_text().splitlines():
                    if line.endswith(" " + ref):
                        return line.split()[0]
        except OSError:
            return None
        return None
    return None


def code_version() -> str:
    commit = _git_commit()
    return f"{forgeml.__version__}+g{commit[:12]}" if commit else forgeml.__version__


@cache
def library_versions() -> dict[str, str]:
    """Installed versions (from package metadata, so nothing heavy is imported)."""
    versions = {"python": platform.python_version()}
    for name in TRACKED_LIBRARIES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return versions


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


# A detached asset folder older than this belongs to a deletion whose process died.
_STALE_DETACH_S = 600.0


class Registry:
    """Assets, runs, lineage and aliases. Open one per process (engines do not survive fork)."""

    def __init__(self, url: str, artifact_root: str | Path) -> None:
        self.url = url
        self.artifacts = ArtifactStore(artifact_root)
        parsed = make_url(url)
        sqlite_path: Path | None = None
        if parsed.get_backend_name() == "sqlite":
            kwargs: dict[str, Any] = {}
            if parsed.database in (None, "", ":memory:"):
                kwargs["poolclass"] = StaticPool  # one shared in-memory database
            else:
                sqlite_path = Path(parsed.database).resolve()
                sqlite_path.parent.mkdir(parents=True, exist_ok=True)
            self.engine = create_engine(url, **kwargs)
            _configure_sqlite(self.engine)
        else:
            self.engine = create_engine(url, pool_pre_ping=True)
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(
            self.engine.execution_options(forgeml_write=True), expire_on_commit=False
        )
        self._migrate(_MigrationLock(self.engine, sqlite_path))
        self._recover_interrupted_deletes()

    def _recover_interrupted_deletes(self) -> None:
        """Finish or undo deletions whose process died between moving an asset's files aside
        and the commit: the files of a deleted asset go, those of a live one come back."""
        try:
            for kind, asset_id, detached in self.artifacts.interrupted_detaches(_STALE_DETACH_S):
                with self._reading() as session:
                    row = session.get(AssetRow, asset_id)
                    state = None if row is None else "live" if row.deleted_at is None else "gone"
                if state == "gone":
                    remove_tree(detached)
                elif state == "live" and not self.artifacts.exists(kind, asset_id):
                    self.artifacts.reattach(kind, asset_id, detached)
        except OSError:
            pass  # a store we cannot fix up now; opening the registry must still work

    @classmethod
    def open_workspace(cls, root: str | Path, url: str | None = None) -> Registry:
        """The registry of a workspace: `<root>/registry.db` (unless `url`) and `<root>/artifacts`."""
        root = Path(root)
        return cls(url or f"sqlite:///{root / 'registry.db'}", root / "artifacts")

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- schema -------------------------------------------------------------------------

    def _migrate(self, lock: _MigrationLock) -> None:
        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        cfg.set_main_option("sqlalchemy.url", self.url.replace("%", "%%"))
        scripts = ScriptDirectory.from_config(cfg)
        head = scripts.get_current_head()
        with self.engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
            conn.rollback()
            if current == head:
                return
            if current is not None and current not in {
                s.revision for s in scripts.walk_revisions()
            }:
                raise ForgeError(
                    f"registry database is at schema revision {current}, unknown to this forgeml",
                    hint="upgrade forgeml to the version that last wrote this registry",
                )
            with lock.held(conn):
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
                conn.commit()

    @contextlib.contextmanager
    def _writing(self) -> Iterator[Session]:
        with self._write() as session, session.begin():
            yield session

    def _write_retrying(self, write: Callable[[Session], T], attempts: int = 5) -> T:
        """Run `write` in a write transaction, again if it lost a unique-key race (another
        process inserted the same asset, edge or alias first; only PostgreSQL lets that
        happen, SQLite writers are serialised): the retry sees the row and updates it."""
        for attempt in range(attempts):
            try:
                with self._writing() as session:
                    return write(session)
            except IntegrityError:
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    @contextlib.contextmanager
    def transaction(self, *, write: bool = False) -> Iterator[Session]:
        """A session in one transaction, for sibling stores on the same database (the job
        queue); a write transaction takes the write lock up front on SQLite."""
        with self._writing() if write else self._reading() as session:
            yield session

    @contextlib.contextmanager
    def _reading(self) -> Iterator[Session]:
        with self._read() as session, session.begin():
            yield session

    # -- assets -------------------------------------------------------------------------

    def _to_asset(self, row: AssetRow) -> Asset:
        return Asset(
            id=row.id,
            kind=row.kind,
            name=row.name,
            sha256=row.sha256,
            size_bytes=row.size_bytes,
            n_files=row.n_files,
            created_at=_aware(row.created_at),
            metadata=dict(row.meta or {}),
            producer_run=row.producer_run,
            path=self.artifacts.root / row.path,
            deleted_at=_aware(row.deleted_at),
            deleted_by=row.deleted_by,
            delete_reason=row.delete_reason,
        )

    @staticmethod
    def _check_kind(kind: str) -> None:
        if kind not in ASSET_KINDS:
            raise ForgeError(
                f"unknown asset kind '{kind}'", hint=f"use one of {', '.join(sorted(ASSET_KINDS))}"
            )

    def add_asset(
        self,
        kind: str,
        name: str,
        src: str | Path,
        *,
        metadata: dict[str, Any] | None = None,
        run_id: str | None = None,
        parents: Iterable[str] = (),
    ) -> Asset:
        """Register a file or folder; its id is `<kind>-<sha256[:12]>` of its content, so the
        same content registers once (later calls return the first asset, adding lineage)."""
        self._check_kind(kind)
        if not name:
            raise ForgeError("an asset needs a name", hint="pass a short descriptive name")
        src = Path(src)
        digest = tree_digest(src)
        asset_id = f"{kind}-{digest.sha256[:12]}"
        parent_ids = [self.get_asset(p).id for p in parents]
        if run_id is not None:
            run_id = self.get_run(run_id).id
        folder = self.artifacts.put(kind, asset_id, src)
        rel = folder.relative_to(self.artifacts.root)
        if src.is_file():
            rel = rel / src.name

        def register(session: Session) -> None:
            existing = session.get(AssetRow, asset_id)
            if existing is not None and existing.deleted_at is not None:
                # The same content registered again after a deletion: the asset lives again,
                # under its new name and provenance (a concurrent delete may have removed
                # the files after `put` above, so they are put back inside this transaction).
                self.artifacts.put(kind, asset_id, src)
                existing.deleted_at = existing.deleted_by = existing.delete_reason = None
                meta = dict(metadata or {})
                old_label = (existing.meta or {}).get("classification")
                if old_label is not None and "classification" not in meta:
                    meta["classification"] = old_label  # the content's label comes back too
                existing.name, existing.meta = name, meta
                existing.producer_run, existing.created_at = run_id, _utcnow()
            elif existing is None:
                session.add(
                    AssetRow(
                        id=asset_id,
                        kind=kind,
                        name=name,
                        sha256=digest.sha256,
                        size_bytes=digest.size_bytes,
                        n_files=digest.n_files,
                        created_at=_utcnow(),
                        meta=dict(metadata or {}),
                        producer_run=run_id,
                        path=rel.as_posix(),
                    )
                )
                session.flush()
            self._add_edges(session, asset_id, run_id, parent_ids)

        self._write_retrying(register)
        return self.get_asset(asset_id)

    def _add_edges(
        self, session: Session, asset_id: str, run_id: str | None, parent_ids: list[str]
    ) -> None:
        self._lock_assets(session, parent_ids, share=True)
        for parent_id in parent_ids:
            self._resolve_asset_row(session, parent_id)  # deleted since it was looked up?
        wanted = [(p, asset_id, PARENT, i) for i, p in enumerate(parent_ids)]
        if run_id is not None:
            wanted.append((run_id, asset_id, PRODUCES, 0))
        for src, dst, relation, position in wanted:
            if session.get(EdgeRow, (src, dst, relation)) is None:
                session.add(EdgeRow(src=src, dst=dst, relation=relation, position=position))
                session.flush()

    def _resolve_asset_row(
        self, session: Session, ref: str, *, deleted_ok: bool = False
    ) -> AssetRow:
        """A live asset by id, alias, name or unique prefix; a deleted one only by its full id
        and only with `deleted_ok` (else a NotFoundError that says when and by whom)."""
        if not ref:
            raise NotFoundError("empty asset reference", hint=_ASSET_HINT)
        row = session.get(AssetRow, ref)
        if row is not None:
            if row.deleted_at is not None and not deleted_ok:
                raise NotFoundError(
                    f"asset {row.id} was deleted at {row.deleted_at:%Y-%m-%d %H:%M:%S} UTC "
                    f"by {row.deleted_by}",
                    hint="register its content again to bring it back",
                )
            return row
        live = AssetRow.deleted_at.is_(None)
        alias = session.get(AliasRow, ref)
        if alias is not None:
            row = session.get(AssetRow, alias.asset_id)
            if row is not None and row.deleted_at is None:
                return row
        row = session.scalars(
            select(AssetRow)
            .where(AssetRow.name == ref, live)
            .order_by(AssetRow.created_at.desc(), AssetRow.id.desc())
            .limit(1)
        ).first()
        if row is not None:
            return row
        # A prefix of the id, or of the bare content hash when the ref looks like hex.
        conds = [AssetRow.id.startswith(ref, autoescape=True)]
        if len(ref) >= 6 and all(c in "0123456789abcdef" for c in ref):
            conds.append(AssetRow.sha256.startswith(ref))
        matches = session.scalars(select(AssetRow).where(or_(*conds), live).limit(11)).all()
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            shown = ", ".join(sorted(m.id for m in matches[:10]))
            raise ForgeError(
                f"asset reference '{ref}' is ambiguous: {shown}"
                + (", ..." if len(matches) > 10 else ""),
                hint="give more characters of the id",
            )
        raise NotFoundError(f"unknown asset '{ref}'", hint=_ASSET_HINT)

    def get_asset(self, ref: str, *, deleted_ok: bool = False) -> Asset:
        """A live asset by full id, alias, name (latest with it) or unique id/hash prefix; a
        deleted one (`deleted_at` set) by its full id when `deleted_ok`."""
        with self._reading() as session:
            return self._to_asset(self._resolve_asset_row(session, ref, deleted_ok=deleted_ok))

    def list_assets(self, kind: str | None = None) -> list[Asset]:
        """Live assets, newest first."""
        stmt = (
            select(AssetRow)
            .where(AssetRow.deleted_at.is_(None))
            .order_by(AssetRow.created_at.desc(), AssetRow.id)
        )
        if kind is not None:
            self._check_kind(kind)
            stmt = stmt.where(AssetRow.kind == kind)
        with self._reading() as session:
            return [self._to_asset(r) for r in session.scalars(stmt)]

    def asset_path(self, ref: str) -> Path:
        """Where the asset's files are: its folder, or its file for a single-file asset."""
        return self.get_asset(ref).path

    def verify_asset(self, ref: str) -> bool:
        """Re-hash the stored files; False if they were changed or deleted."""
        asset = self.get_asset(ref)
        return self.artifacts.verify(asset.kind, asset.id, asset.sha256)

    def update_asset_metadata(
        self, ref: str, updates: dict[str, Any], *, remove: Iterable[str] = ()
    ) -> Asset:
        """Set `updates` and drop the `remove` keys in a live asset's metadata (its labels
        change; its content, and so its id, never does)."""

        def update(session: Session) -> Asset:
            row = self._resolve_asset_row(session, ref)
            self._lock_assets(session, [row.id], share=False)
            meta = {**(row.meta or {}), **updates}
            for key in remove:
                meta.pop(key, None)
            row.meta = meta
            session.flush()
            return self._to_asset(row)

        return self._write_retrying(update)

    # -- deletion -----------------------------------------------------------------------

    def _deletion_blockers(self, session: Session, row: AssetRow) -> list[str]:
        """Why `row` may not be deleted now: live assets made from it (directly, or by a run
        that read it), runs still reading it, aliases pointing at it."""
        children: set[str] = set()
        readers: list[str] = []
        for dst, relation in session.execute(
            select(EdgeRow.dst, EdgeRow.relation).where(
                EdgeRow.src == row.id, EdgeRow.relation.in_((PARENT, CONSUMES))
            )
        ):
            if relation == PARENT:
                children.add(dst)
                continue
            run = session.get(RunRow, dst)
            if run is not None and run.status == "running":
                readers.append(run.id)
            children.update(
                session.scalars(
                    select(EdgeRow.dst).where(EdgeRow.src == dst, EdgeRow.relation == PRODUCES)
                )
            )
        children.discard(row.id)
        live = sorted(
            session.scalars(
                select(AssetRow.id).where(
                    AssetRow.id.in_(sorted(children)), AssetRow.deleted_at.is_(None)
                )
            )
        )
        aliases = sorted(session.scalars(select(AliasRow.name).where(AliasRow.asset_id == row.id)))
        reasons = []
        if live:
            reasons.append(
                f"{len(live)} asset(s) were made from it: {', '.join(live[:10])}"
                + (", ..." if len(live) > 10 else "")
                + " (delete those first)"
            )
        if readers:
            reasons.append(f"running run(s) read it: {', '.join(sorted(readers))}")
        if aliases:
            reasons.append(
                f"alias(es) point at it: {', '.join(aliases)} (move them with `forgeml promote` "
                "or `forgeml rollback` first)"
            )
        return reasons

    def _refuse_if_blocked(self, session: Session, row: AssetRow) -> None:
        reasons = self._deletion_blockers(session, row)
        if reasons:
            raise ForgeError(
                f"cannot delete {row.id} ({row.kind} {row.name}): " + "; ".join(reasons),
                hint="see `forgeml assets lineage " + row.id + " --down`",
            )

    def check_deletable(self, ref: str) -> Asset:
        """The live asset `ref` if it could be deleted now, else a ForgeError saying why."""
        with self._reading() as session:
            row = self._resolve_asset_row(session, ref)
            self._refuse_if_blocked(session, row)
            return self._to_asset(row)

    def delete_asset(self, ref: str, *, actor: str = "user", reason: str = "") -> Asset:
        """Mark an asset deleted and remove its stored files, or change nothing.

        Refused while live assets were made from it, a running run reads it, or an alias
        points at it. The row stays (lineage walks and the audit log still name it); the
        files are the store's own copy (the folder belongs to this asset id alone), never the
        files it was registered from. The folder is renamed away inside the write
        transaction and removed only after the commit, or renamed back if it fails."""
        detached: Path | None = None
        try:
            with self._writing() as session:
                row = self._resolve_asset_row(session, ref)
                self._lock_assets(session, [row.id], share=False)
                row = self._resolve_asset_row(session, row.id)  # deleted meanwhile?
                self._refuse_if_blocked(session, row)
                row.deleted_at, row.deleted_by, row.delete_reason = _utcnow(), actor, reason
                session.flush()
                deleted = self._to_asset(row)
                detached = self.artifacts.detach(row.kind, row.id)
        except BaseException:
            if detached is not None:
                self.artifacts.reattach(deleted.kind, deleted.id, detached)
            raise
        if detached is not None:
            remove_tree(detached)
        return deleted

    # -- runs ---------------------------------------------------------------------------

    def _to_runs(self, session: Session, rows: Sequence[RunRow]) -> list[Run]:
        """Runs with their inputs and outputs, loading edges in batches (not one per run)."""
        inputs: dict[str, list[str]] = {r.id: [] for r in rows}
        outputs: dict[str, list[str]] = {r.id: [] for r in rows}
        ids = list(inputs)
        for i in range(0, len(ids), 500):  # stay far below SQLite's bound-parameter limit
            chunk = ids[i : i + 500]
            for src, dst, relation in session.execute(
                select(EdgeRow.src, EdgeRow.dst, EdgeRow.relation)
                .where(
                    or_(
                        (EdgeRow.relation == CONSUMES) & EdgeRow.dst.in_(chunk),
                        (EdgeRow.relation == PRODUCES) & EdgeRow.src.in_(chunk),
                    )
                )
                .order_by(EdgeRow.position, EdgeRow.src, EdgeRow.dst)
            ):
                if relation == CONSUMES:
                    inputs[dst].append(src)
                else:
                    outputs[src].append(dst)
        return [
            Run(
                id=row.id,
                stage=row.stage,
                status=row.status,
                config=dict(row.config or {}),
                config_hash=row.config_hash,
                inputs=inputs[row.id],
                outputs=outputs[row.id],
                metrics=dict(row.metrics or {}),
                seed=row.seed,
                code_version=row.code_version,
                library_versions=dict(row.library_versions or {}),
                started_at=_aware(row.started_at),
                ended_at=_aware(row.ended_at),
                launched_by=row.launched_by,
                error=row.error,
            )
            for row in rows
        ]

    def _to_run(self, session: Session, row: RunRow) -> Run:
        return self._to_runs(session, [row])[0]

    def _resolve_run_row(self, session: Session, ref: str) -> RunRow:
        row = session.get(RunRow, ref) if ref else None
        if row is not None:
            return row
        matches = (
            session.scalars(
                select(RunRow).where(RunRow.id.startswith(ref, autoescape=True)).limit(11)
            ).all()
            if ref
            else []
        )
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            shown = ", ".join(sorted(m.id for m in matches[:10]))
            raise ForgeError(
                f"run reference '{ref}' is ambiguous: {shown}", hint="give more characters"
            )
        raise NotFoundError(f"unknown run '{ref}'", hint=_RUN_HINT)

    def _lock_assets(self, session: Session, ids: Sequence[str], *, share: bool) -> None:
        """Row locks on PostgreSQL (SQLite runs one writer at a time already), the rows
        re-read: a deletion holds its asset FOR UPDATE, and whatever makes a child of it or
        starts a run reading it holds it FOR SHARE, so that the deletion's check for
        dependants and a new dependant cannot both commit."""
        if ids and self.engine.dialect.name == "postgresql":
            session.execute(
                select(AssetRow)
                .where(AssetRow.id.in_(sorted(set(ids))))
                .with_for_update(read=share)
                .execution_options(populate_existing=True)
            ).all()

    def _input_ids(self, session: Session, inputs: Sequence[str]) -> list[str]:
        ids: list[str] = []
        for ref in inputs:
            asset_id = self._resolve_asset_row(session, ref).id
            if asset_id not in ids:
                ids.append(asset_id)
        return ids

    def start_run(
        self,
        stage: str,
        config: dict[str, Any] | BaseModel,
        *,
        inputs: Sequence[str] = (),
        seed: int | None = None,
        launched_by: str = "user",
    ) -> Run:
        """Record a new running run of `stage` consuming `inputs` (ids, aliases or names)."""
        if isinstance(config, BaseModel):
            config = config.model_dump(mode="json")
        row = RunRow(
            id=new_run_id(),
            stage=stage,
            status="running",
            config=dict(config),
            config_hash=compute_config_hash(config),
            metrics={},
            seed=seed,
            code_version=code_version(),
            library_versions=library_versions(),
            started_at=_utcnow(),
            ended_at=None,
            launched_by=launched_by,
            error=None,
        )
        with self._writing() as session:
            input_ids = self._input_ids(session, inputs)
            self._lock_assets(session, input_ids, share=True)
            for asset_id in input_ids:
                self._resolve_asset_row(session, asset_id)  # deleted meanwhile?
            session.add(row)
            for i, asset_id in enumerate(input_ids):
                session.add(EdgeRow(src=asset_id, dst=row.id, relation=CONSUMES, position=i))
            session.flush()
            return self._to_run(session, row)

    def finish_run(
        self,
        run_id: str,
        *,
        status: str,
        outputs: Sequence[str] = (),
        metrics: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> Run:
        """Close a running run with a final status, its output assets and metrics."""
        if status not in RUN_STATUSES - {"running"}:
            raise ForgeError(
                f"invalid final run status '{status}'",
                hint="use one of succeeded, failed, cancelled",
            )

        def finish(session: Session) -> Run:
            row = self._resolve_run_row(session, run_id)
            session.refresh(row, with_for_update=True)  # two finishers: the second one fails
            if row.status != "running":
                raise ForgeError(
                    f"run {row.id} already finished with status '{row.status}'",
                    hint="start a new run",
                )
            for i, ref in enumerate(outputs):
                asset = self._resolve_asset_row(session, ref)
                edge = session.get(EdgeRow, (row.id, asset.id, PRODUCES))
                if edge is None:
                    session.add(EdgeRow(src=row.id, dst=asset.id, relation=PRODUCES, position=i))
                else:
                    edge.position = i
                if asset.producer_run is None:
                    asset.producer_run = row.id
            row.status = status
            row.ended_at = _utcnow()
            row.metrics = {**(row.metrics or {}), **(metrics or {})}
            row.error = error
            session.flush()
            return self._to_run(session, row)

        return self._write_retrying(finish)

    def get_run(self, ref: str) -> Run:
        """A run by full id or unique id prefix."""
        with self._reading() as session:
            return self._to_run(session, self._resolve_run_row(session, ref))

    def list_runs(self, stage: str | None = None, status: str | None = None) -> list[Run]:
        """Runs, newest first."""
        stmt = select(RunRow).order_by(RunRow.started_at.desc(), RunRow.id.desc())
        if stage is not None:
            stmt = stmt.where(RunRow.stage == stage)
        if status is not None:
            stmt = stmt.where(RunRow.status == status)
        with self._reading() as session:
            return self._to_runs(session, session.scalars(stmt).all())

    def find_cached_run(self, stage: str, config_hash: str, inputs: Sequence[str]) -> Run | None:
        """Latest succeeded run of `stage` with this config hash and the same set of inputs
        whose outputs are all still registered and on disk; None means the stage must run."""
        with self._reading() as session:
            wanted = set(self._input_ids(session, inputs))
            candidates = session.scalars(
                select(RunRow)
                .where(
                    RunRow.stage == stage,
                    RunRow.config_hash == config_hash,
                    RunRow.status == "succeeded",
                )
                .order_by(RunRow.started_at.desc(), RunRow.id.desc())
            ).all()
            for run in self._to_runs(session, candidates):
                if set(run.inputs) != wanted:
                    continue
                assets = [session.get(AssetRow, a) for a in run.outputs]
                if all(
                    a is not None
                    and a.deleted_at is None
                    and (self.artifacts.root / a.path).exists()
                    for a in assets
                ):
                    return run
        return None

    # -- lineage ------------------------------------------------------------------------

    def _node(self, session: Session, node_id: str) -> dict[str, Any]:
        asset = session.get(AssetRow, node_id)
        if asset is not None:
            node = {"id": asset.id, "type": "asset", "kind": asset.kind, "name": asset.name}
            return node if asset.deleted_at is None else {**node, "deleted": True}
        run = session.get(RunRow, node_id)
        if run is not None:
            return {
                "id": run.id,
                "type": "run",
                "stage": run.stage,
                "name": run.stage,
                "status": run.status,
            }
        return {"id": node_id, "type": "missing", "name": node_id}

    def lineage(
        self, ref: str, direction: Literal["up", "down"] = "up", max_depth: int | None = None
    ) -> Lineage:
        """Walk the graph from an asset or run: "up" to what it was made from, "down" to
        everything made from it. Breadth-first; each node is visited once, so cycles end."""
        if direction not in ("up", "down"):
            raise ForgeError(f"invalid lineage direction '{direction}'", hint="use 'up' or 'down'")
        with self._reading() as session:
            if session.get(RunRow, ref) is not None:
                root = ref
            else:
                try:
                    root = self._resolve_asset_row(session, ref, deleted_ok=True).id
                except NotFoundError:
                    root = self._resolve_run_row(session, ref).id
            depth_of = {root: 0}
            order = [root]
            edges: list[tuple[str, str]] = []
            seen_edges: set[tuple[str, str]] = set()
            frontier = [root]
            depth = 0
            while frontier and (max_depth is None or depth < max_depth):
                depth += 1
                if direction == "up":
                    stmt = select(EdgeRow.src, EdgeRow.dst).where(EdgeRow.dst.in_(frontier))
                else:
                    stmt = select(EdgeRow.src, EdgeRow.dst).where(EdgeRow.src.in_(frontier))
                stmt = stmt.order_by(EdgeRow.position, EdgeRow.src, EdgeRow.dst)
                next_frontier = []
                for src, dst in session.execute(stmt).all():
                    if (src, dst) not in seen_edges:
                        seen_edges.add((src, dst))
                        edges.append((src, dst))
                    other = src if direction == "up" else dst
                    if other not in depth_of:
                        depth_of[other] = depth
                        order.append(other)
                        next_frontier.append(other)
                frontier = next_frontier
            nodes = [{**self._node(session, n), "depth": depth_of[n]} for n in order]
        return Lineage(root=root, direction=direction, nodes=nodes, edges=edges)

    # -- aliases ------------------------------------------------------------------------

    def set_alias(self, name: str, asset_id: str, *, reason: str = "", actor: str = "user") -> str:
        """Point alias `name` at an asset (`asset_id` may be any ref: id, prefix, name or another
        alias); returns the resolved asset id."""
        if not name:
            raise ForgeError("an alias needs a name", hint="e.g. champion or candidate")

        def move(session: Session) -> str:
            target = self._resolve_asset_row(session, asset_id).id
            self._move_alias(session, name, target, "set", reason, actor)
            return target

        return self._write_retrying(move)

    def _move_alias(
        self, session: Session, name: str, target: str, action: str, reason: str, actor: str
    ) -> None:
        now = _utcnow()
        alias = session.get(AliasRow, name, with_for_update=True)
        previous = alias.asset_id if alias is not None else None
        if alias is None:
            session.add(AliasRow(name=name, asset_id=target, updated_at=now))
        else:
            alias.asset_id = target
            alias.updated_at = now
        session.add(
            AliasEventRow(
                name=name,
                action=action,
                asset_id=target,
                previous_asset_id=previous,
                reason=reason,
                actor=actor,
                at=now,
            )
        )

    def resolve_alias(self, name: str) -> str | None:
        with self._reading() as session:
            alias = session.get(AliasRow, name)
            return alias.asset_id if alias is not None else None

    def list_aliases(self) -> dict[str, str]:
        with self._reading() as session:
            return {a.name: a.asset_id for a in session.scalars(select(AliasRow).order_by("name"))}

    def alias_history(self, name: str) -> list[dict[str, Any]]:
        """Every move of the alias, oldest first."""
        with self._reading() as session:
            events = session.scalars(
                select(AliasEventRow).where(AliasEventRow.name == name).order_by(AliasEventRow.id)
            ).all()
            return [
                {
                    "action": e.action,
                    "asset_id": e.asset_id,
                    "previous_asset_id": e.previous_asset_id,
                    "reason": e.reason,
                    "actor": e.actor,
                    "at": _aware(e.at),
                }
                for e in events
            ]

    def rollback_alias(self, name: str, *, reason: str = "", actor: str = "user") -> str:
        """Move the alias back to the target it had before its latest move that is still in
        effect (rollbacks undo sets like a stack); returns the new target id."""

        def roll_back(session: Session) -> str:
            alias = session.get(AliasRow, name, with_for_update=True)
            if alias is None:
                raise NotFoundError(
                    f"unknown alias '{name}'", hint="set it first with `forgeml promote`"
                )
            stack: list[str] = []
            for e in session.scalars(
                select(AliasEventRow).where(AliasEventRow.name == name).order_by(AliasEventRow.id)
            ):
                if e.action == "rollback":
                    stack.pop()
                else:
                    stack.append(e.asset_id)
            if len(stack) < 2:
                raise ForgeError(
                    f"alias '{name}' has no previous target to roll back to",
                    hint="point it at another asset first",
                )
            target = stack[-2]
            self._resolve_asset_row(session, target)  # refuses a target deleted since
            self._move_alias(session, name, target, "rollback", reason, actor)
            return target

        return self._write_retrying(roll_back)


def format_lineage(lin: Lineage) -> str:
    """An indented text tree of a lineage walk (shared nodes are shown once, then `^`)."""
    children: dict[str, list[str]] = {}
    for src, dst in lin.edges:
        parent, child = (dst, src) if lin.direction == "up" else (src, dst)
        children.setdefault(parent, []).append(child)
    info = {n["id"]: n for n in lin.nodes}
    lines: list[str] = []
    shown: set[str] = set()

    def label(node_id: str) -> str:
        n = info.get(node_id, {"type": "missing", "name": node_id})
        if n["type"] == "asset":
            deleted = "  (deleted)" if n.get("deleted") else ""
            return f"{node_id}  [{n['kind']}] {n['name']}{deleted}"
        if n["type"] == "run":
            return f"{node_id}  ({n['stage']}, {n['status']})"
        return f"{node_id}  (missing)"

    def walk(node_id: str, indent: str) -> None:
        if node_id in shown:
            lines.append(f"{indent}{node_id}  ^")
            return
        shown.add(node_id)
        lines.append(indent + label(node_id))
        for child in children.get(node_id, []):
            walk(child, indent + "  ")

    walk(lin.root, "")
    return "\n".join(lines)
