"""The registry: assets, runs, lineage edges, aliases and the stage cache, on SQLAlchemy 2.

One implementation for SQLite (default, WAL) and PostgreSQL (by URL). Every stage records
a run here; `find_cached_run` is what lets `forgeml pipeline run` skip finished stages.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from forgeml.core.config import config_hash as compute_config_hash
from forgeml.core.errors import ForgeError, NotFoundError
from forgeml.registry.artifacts import ArtifactStore, remove_tree, tree_digest
from forgeml.registry.database import MIGRATIONS_DIR, create_registry_engine, migrate_to_head
from forgeml.registry.records import (
    ASSET_KINDS,
    RUN_STATUSES,
    Asset,
    Lineage,
    Run,
    as_utc,
    code_version,
    format_lineage,
    library_versions,
    new_run_id,
    utcnow,
)
from forgeml.registry.rows import (
    deletion_blockers,
    input_ids,
    lock_assets,
    resolve_asset_row,
    resolve_run_row,
    to_asset,
    to_run,
    to_runs,
    walk_lineage,
)
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

# Callers import these from here (the names the registry has always offered).
__all__ = [
    "ASSET_KINDS",
    "MIGRATIONS_DIR",
    "RUN_STATUSES",
    "Asset",
    "Lineage",
    "Registry",
    "Run",
    "code_version",
    "format_lineage",
    "library_versions",
    "new_run_id",
]

T = TypeVar("T")

# A detached asset folder older than this belongs to a deletion whose process died.
_STALE_DETACH_S = 600.0


class Registry:
    """Assets, runs, lineage and aliases. Open one per process (engines do not survive fork)."""

    def __init__(self, url: str, artifact_root: str | Path) -> None:
        self.url = url
        self.artifacts = ArtifactStore(artifact_root)
        self.engine, sqlite_path = create_registry_engine(url)
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(
            self.engine.execution_options(forgeml_write=True), expire_on_commit=False
        )
        migrate_to_head(self.engine, url, sqlite_path)
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

    # -- sessions -----------------------------------------------------------------------

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
                existing.producer_run, existing.created_at = run_id, utcnow()
            elif existing is None:
                session.add(
                    AssetRow(
                        id=asset_id,
                        kind=kind,
                        name=name,
                        sha256=digest.sha256,
                        size_bytes=digest.size_bytes,
                        n_files=digest.n_files,
                        created_at=utcnow(),
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
        lock_assets(session, parent_ids, share=True)
        for parent_id in parent_ids:
            resolve_asset_row(session, parent_id)  # deleted since it was looked up?
        wanted = [(p, asset_id, PARENT, i) for i, p in enumerate(parent_ids)]
        if run_id is not None:
            wanted.append((run_id, asset_id, PRODUCES, 0))
        for src, dst, relation, position in wanted:
            if session.get(EdgeRow, (src, dst, relation)) is None:
                session.add(EdgeRow(src=src, dst=dst, relation=relation, position=position))
                session.flush()

    def get_asset(self, ref: str, *, deleted_ok: bool = False) -> Asset:
        """A live asset by full id, alias, name (latest with it) or unique id/hash prefix; a
        deleted one (`deleted_at` set) by its full id when `deleted_ok`."""
        with self._reading() as session:
            return to_asset(
                resolve_asset_row(session, ref, deleted_ok=deleted_ok), self.artifacts.root
            )

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
            return [to_asset(r, self.artifacts.root) for r in session.scalars(stmt)]

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
            row = resolve_asset_row(session, ref)
            lock_assets(session, [row.id], share=False)
            meta = {**(row.meta or {}), **updates}
            for key in remove:
                meta.pop(key, None)
            row.meta = meta
            session.flush()
            return to_asset(row, self.artifacts.root)

        return self._write_retrying(update)

    # -- deletion -----------------------------------------------------------------------

    def _refuse_if_blocked(self, session: Session, row: AssetRow) -> None:
        reasons = deletion_blockers(session, row)
        if reasons:
            raise ForgeError(
                f"cannot delete {row.id} ({row.kind} {row.name}): " + "; ".join(reasons),
                hint="see `forgeml assets lineage " + row.id + " --down`",
            )

    def check_deletable(self, ref: str) -> Asset:
        """The live asset `ref` if it could be deleted now, else a ForgeError saying why."""
        with self._reading() as session:
            row = resolve_asset_row(session, ref)
            self._refuse_if_blocked(session, row)
            return to_asset(row, self.artifacts.root)

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
                row = resolve_asset_row(session, ref)
                lock_assets(session, [row.id], share=False)
                row = resolve_asset_row(session, row.id)  # deleted meanwhile?
                self._refuse_if_blocked(session, row)
                row.deleted_at, row.deleted_by, row.delete_reason = utcnow(), actor, reason
                session.flush()
                deleted = to_asset(row, self.artifacts.root)
                detached = self.artifacts.detach(row.kind, row.id)
        except BaseException:
            if detached is not None:
                self.artifacts.reattach(deleted.kind, deleted.id, detached)
            raise
        if detached is not None:
            remove_tree(detached)
        return deleted

    # -- runs ---------------------------------------------------------------------------

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
            started_at=utcnow(),
            ended_at=None,
            launched_by=launched_by,
            error=None,
        )
        with self._writing() as session:
            consumed = input_ids(session, inputs)
            lock_assets(session, consumed, share=True)
            for asset_id in consumed:
                resolve_asset_row(session, asset_id)  # deleted meanwhile?
            session.add(row)
            for i, asset_id in enumerate(consumed):
                session.add(EdgeRow(src=asset_id, dst=row.id, relation=CONSUMES, position=i))
            session.flush()
            return to_run(session, row)

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
            row = resolve_run_row(session, run_id)
            session.refresh(row, with_for_update=True)  # two finishers: the second one fails
            if row.status != "running":
                raise ForgeError(
                    f"run {row.id} already finished with status '{row.status}'",
                    hint="start a new run",
                )
            for i, ref in enumerate(outputs):
                asset = resolve_asset_row(session, ref)
                edge = session.get(EdgeRow, (row.id, asset.id, PRODUCES))
                if edge is None:
                    session.add(EdgeRow(src=row.id, dst=asset.id, relation=PRODUCES, position=i))
                else:
                    edge.position = i
                if asset.producer_run is None:
                    asset.producer_run = row.id
            row.status = status
            row.ended_at = utcnow()
            row.metrics = {**(row.metrics or {}), **(metrics or {})}
            row.error = error
            session.flush()
            return to_run(session, row)

        return self._write_retrying(finish)

    def get_run(self, ref: str) -> Run:
        """A run by full id or unique id prefix."""
        with self._reading() as session:
            return to_run(session, resolve_run_row(session, ref))

    def list_runs(self, stage: str | None = None, status: str | None = None) -> list[Run]:
        """Runs, newest first."""
        stmt = select(RunRow).order_by(RunRow.started_at.desc(), RunRow.id.desc())
        if stage is not None:
            stmt = stmt.where(RunRow.stage == stage)
        if status is not None:
            stmt = stmt.where(RunRow.status == status)
        with self._reading() as session:
            return to_runs(session, session.scalars(stmt).all())

    def find_cached_run(self, stage: str, config_hash: str, inputs: Sequence[str]) -> Run | None:
        """Latest succeeded run of `stage` with this config hash and the same set of inputs
        whose outputs are all still registered and on disk; None means the stage must run."""
        with self._reading() as session:
            wanted = set(input_ids(session, inputs))
            candidates = session.scalars(
                select(RunRow)
                .where(
                    RunRow.stage == stage,
                    RunRow.config_hash == config_hash,
                    RunRow.status == "succeeded",
                )
                .order_by(RunRow.started_at.desc(), RunRow.id.desc())
            ).all()
            for run in to_runs(session, candidates):
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

    def lineage(
        self, ref: str, direction: Literal["up", "down"] = "up", max_depth: int | None = None
    ) -> Lineage:
        """Walk the graph from an asset or run: "up" to what it was made from, "down" to
        everything made from it. Breadth-first; each node is visited once, so cycles end."""
        if direction not in ("up", "down"):
            raise ForgeError(f"invalid lineage direction '{direction}'", hint="use 'up' or 'down'")
        with self._reading() as session:
            return walk_lineage(session, ref, direction, max_depth)

    # -- aliases ------------------------------------------------------------------------

    def set_alias(self, name: str, asset_id: str, *, reason: str = "", actor: str = "user") -> str:
        """Point alias `name` at an asset (`asset_id` may be any ref: id, prefix, name or another
        alias); returns the resolved asset id."""
        if not name:
            raise ForgeError("an alias needs a name", hint="e.g. champion or candidate")

        def move(session: Session) -> str:
            target = resolve_asset_row(session, asset_id).id
            self._move_alias(session, name, target, "set", reason, actor)
            return target

        return self._write_retrying(move)

    def _move_alias(
        self, session: Session, name: str, target: str, action: str, reason: str, actor: str
    ) -> None:
        now = utcnow()
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
                    "at": as_utc(e.at),
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
            resolve_asset_row(session, target)  # refuses a target deleted since
            self._move_alias(session, name, target, "rollback", reason, actor)
            return target

        return self._write_retrying(roll_back)
