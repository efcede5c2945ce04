"""Reads of the registry's rows inside one session: resolving a reference (id, alias, name or
prefix) to its row, rows to the dataclasses callers see, row locks, what blocks a deletion,
and the lineage walk. `forgeml.registry.store.Registry` opens the sessions and calls these.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from forgeml.core.errors import ForgeError, NotFoundError
from forgeml.registry.records import Asset, Lineage, Run, as_utc
from forgeml.registry.schema import (
    CONSUMES,
    PARENT,
    PRODUCES,
    AliasRow,
    AssetRow,
    EdgeRow,
    RunRow,
)

ASSET_HINT = "run `forgeml assets list` to see ids"
RUN_HINT = "run `forgeml runs list` to see ids"


def resolve_asset_row(session: Session, ref: str, *, deleted_ok: bool = False) -> AssetRow:
    """A live asset by id, alias, name or unique prefix; a deleted one only by its full id
    and only with `deleted_ok` (else a NotFoundError that says when and by whom)."""
    if not ref:
        raise NotFoundError("empty asset reference", hint=ASSET_HINT)
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
    raise NotFoundError(f"unknown asset '{ref}'", hint=ASSET_HINT)


def resolve_run_row(session: Session, ref: str) -> RunRow:
    """A run by full id or unique id prefix."""
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
    raise NotFoundError(f"unknown run '{ref}'", hint=RUN_HINT)


def lock_assets(session: Session, ids: Sequence[str], *, share: bool) -> None:
    """Row locks on PostgreSQL (SQLite runs one writer at a time already), the rows
    re-read: a deletion holds its asset FOR UPDATE, and whatever makes a child of it or
    starts a run reading it holds it FOR SHARE, so that the deletion's check for
    dependants and a new dependant cannot both commit."""
    if ids and session.get_bind().dialect.name == "postgresql":
        session.execute(
            select(AssetRow)
            .where(AssetRow.id.in_(sorted(set(ids))))
            .with_for_update(read=share)
            .execution_options(populate_existing=True)
        ).all()


def input_ids(session: Session, inputs: Sequence[str]) -> list[str]:
    """The live asset ids of `inputs` (any references), in order, each once."""
    ids: list[str] = []
    for ref in inputs:
        asset_id = resolve_asset_row(session, ref).id
        if asset_id not in ids:
            ids.append(asset_id)
    return ids


def to_asset(row: AssetRow, artifact_root: Path) -> Asset:
    """The dataclass of an asset row; its path is under the store's `artifact_root`."""
    return Asset(
        id=row.id,
        kind=row.kind,
        name=row.name,
        sha256=row.sha256,
        size_bytes=row.size_bytes,
        n_files=row.n_files,
        created_at=as_utc(row.created_at),
        metadata=dict(row.meta or {}),
        producer_run=row.producer_run,
        path=artifact_root / row.path,
        deleted_at=as_utc(row.deleted_at),
        deleted_by=row.deleted_by,
        delete_reason=row.delete_reason,
    )


def to_runs(session: Session, rows: Sequence[RunRow]) -> list[Run]:
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
            started_at=as_utc(row.started_at),
            ended_at=as_utc(row.ended_at),
            launched_by=row.launched_by,
            error=row.error,
        )
        for row in rows
    ]


def to_run(session: Session, row: RunRow) -> Run:
    """One run with its inputs and outputs."""
    return to_runs(session, [row])[0]


def deletion_blockers(session: Session, row: AssetRow) -> list[str]:
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


def _lineage_node(session: Session, node_id: str) -> dict[str, Any]:
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


def walk_lineage(
    session: Session, ref: str, direction: Literal["up", "down"], max_depth: int | None
) -> Lineage:
    """Walk the graph from an asset or run: "up" to what it was made from, "down" to
    everything made from it. Breadth-first; each node is visited once, so cycles end."""
    if session.get(RunRow, ref) is not None:
        root = ref
    else:
        try:
            root = resolve_asset_row(session, ref, deleted_ok=True).id
        except NotFoundError:
            root = resolve_run_row(session, ref).id
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
    nodes = [{**_lineage_node(session, n), "depth": depth_of[n]} for n in order]
    return Lineage(root=root, direction=direction, nodes=nodes, edges=edges)
