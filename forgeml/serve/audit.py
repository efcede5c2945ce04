"""Hash-chained, append-only audit log of serving requests and admin actions (JSONL).

Each entry holds its index, the sha256 of the previous entry and its own sha256 over its
canonical JSON; `verify_audit_log` finds the first edited, deleted, inserted or reordered entry.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from forgeml.core.io import atomic_write_text

GENESIS = "0" * 64
AUDIT_FILE = "audit/audit.jsonl"


def audit_log_path(workspace_root: str | Path) -> Path:
    """Where a workspace keeps its audit log."""
    return Path(workspace_root) / AUDIT_FILE


def _entry_hash(entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _head_path(path: Path) -> Path:
    return path.with_name(path.name + ".head")


class AuditLog:
    """Append entries to `path`; safe across threads and, through a file lock, processes.

    The log file is append-only (one JSON line per entry, fsynced), not rewritten atomically:
    a torn last line is what `verify_audit_log` reports. A `.head` file beside it records the
    count and last hash, so dropping entries from the end is detected too.
    """

    def __init__(self, path: str | Path, *, fsync: bool = True) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self._lock = threading.Lock()

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        """Write one entry: `event` (e.g. "request", "key_created") plus JSON-able fields."""
        # Binary: the tail read starts at a byte offset, maybe inside a multi-byte character.
        with self._lock, open(self.path, "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                index, prev = self._tail(fh)
                entry = {
                    "index": index,
                    "ts": datetime.now(UTC).isoformat(),
                    "event": event,
                    **fields,
                    "prev": prev,
                }
                entry["hash"] = _entry_hash(entry)
                fh.seek(0, os.SEEK_END)
                line = json.dumps(entry, ensure_ascii=False, default=str) + "\n"
                fh.write(line.encode("utf-8"))
                fh.flush()
                if self.fsync:
                    os.fsync(fh.fileno())
                atomic_write_text(
                    _head_path(self.path), json.dumps({"count": index + 1, "hash": entry["hash"]})
                )
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        return entry

    @staticmethod
    def _tail(fh) -> tuple[int, str]:
        """(next index, hash of the last entry), reading only the end of the file (whose
        first line may be cut; the last one is whole)."""
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        if size == 0:
            return 0, GENESIS
        back = min(size, 65536)
        while True:
            fh.seek(size - back)
            lines = fh.read().splitlines()
            if len(lines) >= 2 or back == size:
                last = json.loads(lines[-1])
                return int(last["index"]) + 1, last["hash"]
            back = min(size, back * 4)


def verify_audit_log(path: str | Path) -> tuple[bool, int | None]:
    """(True, None) if the chain is intact, else (False, index of the first bad entry).

    An entry is bad when its JSON does not parse, its hash does not match its content, its
    `prev` is not the previous entry's hash, or its index is out of sequence; a log shorter
    than its `.head` file says (entries cut from the end) is bad at the first missing index.
    """
    path = Path(path)
    prev, count = GENESIS, 0
    if path.exists():
        with open(path, encoding="utf-8") as fh:
            for i, line in enumerate(fh):
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    return False, i
                if (
                    not isinstance(entry, dict)
                    or entry.get("index") != i
                    or entry.get("prev") != prev
                    or entry.get("hash") != _entry_hash(entry)
                ):
                    return False, i
                prev, count = entry["hash"], i + 1
    head = _head_path(path)
    if head.exists():
        recorded = json.loads(head.read_text())
        if recorded["count"] > count:
            return False, count
        if recorded["count"] == count and recorded["hash"] != prev:
            return False, count - 1
    return True, None
