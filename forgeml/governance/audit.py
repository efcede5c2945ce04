"""Tamper-evident, append-only audit log of serving requests and admin actions (JSONL).

Each entry is authenticated with HMAC-SHA256 under a key kept outside the audit folder and
chained to the previous one through `prev`; every N entries (and on demand) a checkpoint of
{count, head MAC} is signed with Ed25519 and can be shipped off the machine. The threat model
is in docs/AUDIT.md; `verify_audit_log` reports every problem it finds, one line each.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import logging
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from forgeml.core.io import atomic_write_text
from forgeml.governance.audit_checkpoints import (
    append_checkpoint_line,
    checkpoint_signature_valid,
    checkpoints_path,
    read_checkpoints,
    ship_checkpoint,
    sign_checkpoint,
)
from forgeml.governance.audit_keys import (
    KEY_DIR_ENV,
    AuditKeys,
    AuditSettings,
    ensure_audit_keys,
    load_audit_keys,
    resolve_audit_settings,
)

GENESIS = "0" * 64
AUDIT_FILE = "audit/audit.jsonl"
ENTRY_VERSION = 2  # 2: HMAC-SHA256 `mac`; entries without `v` are legacy plain-sha256 `hash`
_log = logging.getLogger(__name__)


def audit_log_path(workspace_root: str | Path) -> Path:
    """Where a workspace keeps its audit log."""
    return Path(workspace_root) / AUDIT_FILE


def _canonical(entry: dict[str, Any], drop: str) -> bytes:
    body = {k: v for k, v in entry.items() if k != drop}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    # A lone surrogate (a prompt may hold one) has no UTF-8 form; surrogatepass keeps it exact.
    return text.encode("utf-8", "surrogatepass")


def _entry_mac(entry: dict[str, Any], key: bytes) -> str:
    return hmac.new(key, _canonical(entry, "mac"), hashlib.sha256).hexdigest()


def _legacy_hash(entry: dict[str, Any]) -> str:
    return hashlib.sha256(_canonical(entry, "hash")).hexdigest()


def _link(entry: dict[str, Any]) -> str:
    """What the next entry's `prev` holds: the MAC, or a legacy entry's hash."""
    return entry["mac"] if "mac" in entry else entry["hash"]


def _head_path(path: Path) -> Path:
    return path.with_name(path.name + ".head")


def _head_mac(key: bytes, count: int, head: str) -> str:
    return hmac.new(key, f"head:{count}:{head}".encode(), hashlib.sha256).hexdigest()


class AuditLog:
    """Append entries to `path`; safe across threads and, through a file lock, processes.

    The log file is append-only (one JSON line per entry, fsynced), never rewritten. A
    `.head` file beside it records the count and last MAC (itself MACed), and every
    `checkpoint_every` entries a signed checkpoint goes to `<log>.checkpoints` and to the
    `ship_to` targets. Settings not given here come from `resolve_audit_settings`.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        fsync: bool = True,
        key_dir: str | Path | None = None,
        checkpoint_every: int | None = None,
        ship_to: list[str] | tuple[str, ...] | None = None,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self.settings: AuditSettings = resolve_audit_settings(
            self.path, key_dir=key_dir, checkpoint_every=checkpoint_every, ship_to=ship_to
        )
        self._keys: AuditKeys | None = None
        self._lock = threading.Lock()

    @property
    def keys(self) -> AuditKeys:
        if self._keys is None:
            self._keys = ensure_audit_keys(self.settings.key_dir)
        return self._keys

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        """Write one entry: `event` (e.g. "request", "key_created") plus JSON-able fields."""
        key = self.keys.require_hmac_key()
        # Binary: the tail read starts at a byte offset, maybe inside a multi-byte character.
        with self._lock, open(self.path, "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                index, prev, log_id = self._tail(fh)
                entry = {"v": ENTRY_VERSION, "index": index, "ts": datetime.now(UTC).isoformat()}
                entry.update(event=event, **fields)
                entry.update(v=ENTRY_VERSION, index=index, prev=prev)
                entry.pop("mac", None)
                # What is MACed must be what is read back: values go through JSON once.
                entry = json.loads(json.dumps(entry, ensure_ascii=False, default=str))
                entry["mac"] = _entry_mac(entry, key)
                line = json.dumps(entry, ensure_ascii=False) + "\n"
                fh.seek(0, os.SEEK_END)
                # backslashreplace writes a lone surrogate as its JSON escape (\ud800).
                fh.write(line.encode("utf-8", "backslashreplace"))
                fh.flush()
                if self.fsync:
                    os.fsync(fh.fileno())
                count = index + 1
                atomic_write_text(
                    _head_path(self.path),
                    json.dumps(
                        {"count": count, "mac": entry["mac"],
                         "head_mac": _head_mac(key, count, entry["mac"])}
                    ),
                )  # fmt: skip
                every = self.settings.checkpoint_every
                if every and count % every == 0:
                    _, failures = self._checkpoint_record(
                        log_id or entry["mac"], count, entry["mac"], ()
                    )
                    for failure in failures:
                        _log.warning(failure)
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        return entry

    def checkpoint(self, *, ship_to: tuple[str, ...] = ()) -> tuple[dict[str, Any], list[str]]:
        """Sign the log's current head now: (the checkpoint, one line per failed shipment).
        Ships to the configured targets and to `ship_to`."""
        with self._lock, open(self.path, "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                count, head, log_id = self._tail(fh)
                return self._checkpoint_record(log_id or GENESIS, count, head, ship_to)
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _checkpoint_record(
        self, log_id: str, count: int, head: str, extra: tuple[str, ...]
    ) -> tuple[dict[str, Any], list[str]]:
        record = sign_checkpoint(self.keys, log_id=log_id, count=count, head=head)
        append_checkpoint_line(checkpoints_path(self.path), record, fsync=self.fsync)
        targets = tuple(dict.fromkeys((*self.settings.ship_to, *extra)))
        return record, ship_checkpoint(record, targets)

    @staticmethod
    def _tail(fh) -> tuple[int, str, str | None]:
        """(next index, link of the last entry, link of the first entry or None), reading only
        the start and end of the file (the tail's first line may be cut; its last is whole)."""
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        if size == 0:
            return 0, GENESIS, None
        back = min(size, 65536)
        while True:
            fh.seek(size - back)
            lines = fh.read().splitlines()
            if len(lines) >= 2 or back == size:
                last = json.loads(lines[-1])
                break
            back = min(size, back * 4)
        fh.seek(0)
        first = json.loads(fh.readline())
        return int(last["index"]) + 1, _link(last), _link(first)


@dataclass(frozen=True)
class AuditVerification:
    """What `verify_audit_log` found. `problems`: one line per sign of tampering (empty when
    intact); `first_bad`: index of the first bad entry, if one entry is to blame; `notes`:
    facts that are not failures (legacy entries, checkpoints checked)."""

    entries: int
    problems: tuple[str, ...] = ()
    first_bad: int | None = None
    checkpoints: int = 0
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems


def _check_entries(
    path: Path, key: bytes | None, problems: list[str], notes: list[str]
) -> tuple[list[str], int, int | None]:
    """The links of the entries that verify, in order, how many of them are legacy entries,
    and the first bad index (or None)."""
    links: list[str] = []
    prev, legacy, first_bad = GENESIS, 0, None
    if not path.exists():
        return links, 0, None
    with open(path, encoding="utf-8", errors="replace") as fh:
        for i, line in enumerate(fh):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                entry = None
            if not isinstance(entry, dict):
                problems.append(f"entry {i}: not a JSON object (torn write or edited by hand)")
                first_bad = i
                break
            if entry.get("index") != i:
                problems.append(
                    f"entry {i}: has index {entry.get('index')!r}: entries were deleted, "
                    "inserted or reordered here"
                )
                first_bad = i
                break
            if entry.get("prev") != prev:
                problems.append(
                    f"entry {i}: does not chain to entry {i - 1}: an entry before it was "
                    "edited, deleted or reordered"
                )
                first_bad = i
                break
            if entry.get("v") == ENTRY_VERSION:
                if key is None:
                    problems.append(
                        f"entry {i}: cannot be authenticated: no audit key (audit-hmac.key) "
                        f"in the key folder; set {KEY_DIR_ENV} or pass --key-dir"
                    )
                    first_bad = i
                    break
                if not hmac.compare_digest(str(entry.get("mac")), _entry_mac(entry, key)):
                    problems.append(
                        f"entry {i}: MAC does not match its content: edited, or written "
                        "without the audit key"
                    )
                    first_bad = i
                    break
            elif "v" in entry or legacy < i or entry.get("hash") != _legacy_hash(entry):
                problems.append(
                    f"entry {i}: unauthenticated or unknown entry format after authenticated "
                    "entries, or a legacy hash that does not match"
                )
                first_bad = i
                break
            else:
                legacy += 1
            prev = _link(entry)
            links.append(prev)
    if legacy:
        notes.append(
            f"entries 0-{legacy - 1} are legacy plain-sha256 entries (written before entries "
            "were authenticated): only the first authenticated entry after them vouches for them"
        )
    return links, legacy, first_bad


def _check_head(
    path: Path, links: list[str], legacy: int, key: bytes | None, problems: list[str]
) -> None:
    """Compare the log with its `.head` file; once the log holds authenticated entries the
    head must exist and carry a valid `head_mac` (a legacy-format head would be a forgery)."""
    head = _head_path(path)
    authenticated = len(links) > legacy
    if not head.exists():
        if authenticated:
            problems.append(
                f"head file {head.name} is missing while the log has {len(links)} entries: "
                "it was deleted (the log may have been truncated)"
            )
        return
    try:
        recorded = json.loads(head.read_text())
        count, last = int(recorded["count"]), recorded.get("mac", recorded.get("hash"))
    except (ValueError, KeyError, TypeError):
        problems.append(f"head file {head.name} is unreadable: edited by hand")
        return
    if key is not None and (authenticated or "head_mac" in recorded):
        expected = _head_mac(key, count, str(last))
        if not hmac.compare_digest(str(recorded.get("head_mac")), expected):
            problems.append(f"head file {head.name} was rewritten without the audit key")
            return
    if count and not path.exists():
        problems.append(
            f"audit log {path.name} is missing but its head file records {count} entries: "
            "the log was deleted"
        )
    elif count > len(links):
        problems.append(
            f"log has {len(links)} good entries but its head file records {count}: "
            "entries were cut from the end"
        )
    elif count == len(links) and count and last != links[-1]:
        problems.append(f"entry {count - 1} differs from the head file: it was rewritten")


def _check_checkpoints(
    path: Path,
    links: list[str],
    chain_broken: bool,
    keys: AuditKeys,
    extra: tuple[Path, ...],
    problems: list[str],
) -> int:
    """Compare the log with every readable, validly signed checkpoint; return how many."""
    local = checkpoints_path(path)
    sources = [p for p in (local, *extra) if p.exists()]
    for p in extra:
        if not p.exists():
            problems.append(f"shipped checkpoint file {p} does not exist")
    log_id = links[0] if links else None
    valid: dict[Path, list[dict[str, Any]]] = {}
    foreign: dict[Path, int] = {}
    for source in sources:
        for lineno, record in read_checkpoints(source):
            where = f"{source}:{lineno}"
            if record is None:
                problems.append(f"checkpoint {where}: unreadable line (edited by hand)")
            elif keys.public_key is None:
                problems.append(
                    f"checkpoint {where}: cannot check its signature: no public key "
                    f"(audit-signing.pub); set {KEY_DIR_ENV} or pass --public-key"
                )
            elif not checkpoint_signature_valid(record, keys.public_key):
                problems.append(
                    f"checkpoint {where}: bad signature (forged, altered, or signed by another key)"
                )
            elif log_id is not None and record.get("log") not in (log_id, GENESIS):
                if source == local:
                    problems.append(
                        f"checkpoint {where} was signed for a log whose first entry differs: "
                        "the log was deleted and started again, or replaced"
                    )
                else:
                    foreign[source] = foreign.get(source, 0) + 1  # another log shipped here
            else:
                valid.setdefault(source, []).append(record)
    for source, n in foreign.items():
        if not valid.get(source):
            problems.append(
                f"none of the {n} checkpoint(s) in {source} belongs to this log (its first "
                "entry differs): the log was replaced, or the file belongs to another log"
            )
    records = [r for rs in valid.values() for r in rs]
    if not records:
        return 0
    newest = max(records, key=lambda r: int(r["count"]))
    if not path.exists() and int(newest["count"]) > 0:
        problems.append(
            f"audit log {path} is missing but a checkpoint signed at {newest['ts']} covers "
            f"{newest['count']} entries: the log was deleted"
        )
        return len(records)
    if int(newest["count"]) > len(links) and not chain_broken:
        problems.append(
            f"log has {len(links)} entries but the checkpoint signed at {newest['ts']} covers "
            f"{newest['count']}: entries {len(links)}-{int(newest['count']) - 1} were deleted "
            "(log truncated)"
        )
    for record in sorted(records, key=lambda r: int(r["count"])):
        count = int(record["count"])
        if 0 < count <= len(links) and links[count - 1] != record["head"]:
            problems.append(
                f"entry {count - 1} differs from the checkpoint signed at {record['ts']}: "
                f"the log was rewritten at or before entry {count - 1}"
            )
            break
    local_seen = {(r["count"], r["head"]) for r in valid.get(local, [])}
    for source in extra:
        missing = [r for r in valid.get(source, []) if (r["count"], r["head"]) not in local_seen]
        if missing:
            problems.append(
                f"local checkpoint file {local.name} lacks {len(missing)} checkpoint(s) found "
                f"in {source}: it was truncated or deleted"
            )
    return len(records)


def verify_audit_log(
    path: str | Path,
    *,
    checkpoints: list[str | Path] | tuple[str | Path, ...] = (),
    key_dir: str | Path | None = None,
    public_key: str | Path | None = None,
) -> AuditVerification:
    """Check every entry's MAC and link, the head file, and the log against every signed
    checkpoint (the local file and the shipped copies in `checkpoints`).

    Finds edited, inserted, deleted and reordered entries (first bad index), entries written
    without the key, a truncated tail (against the head file and checkpoints), a deleted log
    (against checkpoints) and a truncated or deleted local checkpoint file (against a shipped
    copy). Creates no key: with no key at hand, authenticated entries are reported unchecked.
    """
    path = Path(path)
    settings = resolve_audit_settings(path, key_dir=key_dir, checkpoint_every=0, ship_to=())
    keys = load_audit_keys(settings.key_dir, public_key_file=public_key)
    problems: list[str] = []
    notes: list[str] = []
    links, legacy, first_bad = _check_entries(path, keys.hmac_key, problems, notes)
    if first_bad is None:
        _check_head(path, links, legacy, keys.hmac_key, problems)
    n_checkpoints = _check_checkpoints(
        path, links, first_bad is not None, keys, tuple(Path(p) for p in checkpoints), problems
    )
    if n_checkpoints:
        notes.append(f"{n_checkpoints} signed checkpoint(s) checked")
    return AuditVerification(
        entries=len(links) if first_bad is None else first_bad,
        problems=tuple(problems),
        first_bad=first_bad,
        checkpoints=n_checkpoints,
        notes=tuple(notes),
    )
