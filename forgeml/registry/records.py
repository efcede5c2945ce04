"""What the registry hands back: assets, runs and lineage walks as plain frozen dataclasses.

Also the provenance every run records (run ids, code and library versions) and the text
form of a lineage walk. No database here: `forgeml.registry.store` fills these in.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import platform
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any, Literal

import forgeml

ASSET_KINDS = frozenset({"dataset", "tokenizer", "model", "adapter", "eval", "run-output"})
RUN_STATUSES = frozenset({"running", "succeeded", "failed", "cancelled"})
TRACKED_LIBRARIES = ("torch", "transformers", "tokenizers", "numpy", "pyarrow", "sqlalchemy")


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


def utcnow() -> datetime:
    """Now in UTC, naive: the form the registry's DateTime columns store."""
    return datetime.now(UTC).replace(tzinfo=None)


def as_utc(dt: datetime | None) -> datetime | None:
    """A stored (naive UTC) time as an aware one."""
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
