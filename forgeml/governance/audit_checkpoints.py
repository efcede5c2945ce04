"""Signed checkpoints of the audit log: {entry count, head MAC, time} signed with Ed25519,
appended beside the log and shipped to append-only files or syslog, so that truncating or
deleting the log is caught later by `verify_audit_log` even if the local copy is gone."""

from __future__ import annotations

import base64
import json
import logging
import logging.handlers
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from forgeml.governance.audit_keys import AuditKeys

SYSLOG_TAG = "forgeml-audit-checkpoint: "
_decoder = json.JSONDecoder()


def checkpoints_path(log_path: str | Path) -> Path:
    """The local checkpoint file of a log: `audit.jsonl.checkpoints` beside it."""
    log_path = Path(log_path)
    return log_path.with_name(log_path.name + ".checkpoints")


def _signed_bytes(record: dict[str, Any]) -> bytes:
    body = {k: v for k, v in record.items() if k != "sig"}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def sign_checkpoint(keys: AuditKeys, *, log_id: str, count: int, head: str) -> dict[str, Any]:
    """A checkpoint saying "the log `log_id` had `count` entries, the last with MAC `head`"."""
    if keys.signing_key is None:
        raise ValueError("no checkpoint signing key")
    record = {
        "checkpoint": 1,
        "log": log_id,
        "count": count,
        "head": head,
        "ts": datetime.now(UTC).isoformat(),
        "key_id": keys.key_id,
    }
    record["sig"] = base64.b64encode(keys.signing_key.sign(_signed_bytes(record))).decode()
    return record


def checkpoint_signature_valid(record: dict[str, Any], public_key: Ed25519PublicKey) -> bool:
    try:
        public_key.verify(base64.b64decode(record["sig"], validate=True), _signed_bytes(record))
    except (InvalidSignature, KeyError, TypeError, ValueError):
        return False
    return True


def append_checkpoint_line(path: Path, record: dict[str, Any], *, fsync: bool = True) -> None:
    """Append one checkpoint line (O_APPEND, so an append-only `chattr +a` file works too)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (json.dumps(record, sort_keys=True) + "\n").encode())
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def _send_syslog(target: str, record: dict[str, Any]) -> None:
    url = urlparse(target)
    if url.hostname:
        address: str | tuple[str, int] = (url.hostname, url.port or 514)
        kind = socket.SOCK_DGRAM
    else:
        address, kind = url.path or "/dev/log", socket.SOCK_DGRAM
    handler = logging.handlers.SysLogHandler(address=address, socktype=kind)
    try:
        handler.emit(
            logging.makeLogRecord(
                {"msg": SYSLOG_TAG + json.dumps(record, sort_keys=True), "levelno": logging.INFO,
                 "levelname": "INFO"}
            )
        )  # fmt: skip
    finally:
        handler.close()


def ship_checkpoint(record: dict[str, Any], targets: tuple[str, ...]) -> list[str]:
    """Copy a checkpoint to every target; return one line per target that failed."""
    failures = []
    for target in targets:
        try:
            if target.startswith("syslog:"):
                _send_syslog(target, record)
            else:
                append_checkpoint_line(Path(target).expanduser(), record)
        except OSError as exc:
            failures.append(f"could not ship the audit checkpoint to {target}: {exc}")
    return failures


def read_checkpoints(path: Path) -> list[tuple[int, dict[str, Any] | None]]:
    """(line number, record or None if unreadable) for each checkpoint line of `path`.

    A line may carry a prefix (a syslog collector's priority, time and host) and a suffix:
    the record is the JSON object that starts at its first `{`. Lines without a checkpoint in them are skipped."""
    out: list[tuple[int, dict[str, Any] | None]] = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            start = line.find("{")
            if start < 0:
                continue
            try:  # raw_decode: a syslog record may end in a NUL or a collector's suffix
                record, _ = _decoder.raw_decode(line[start:])
            except json.JSONDecodeError:
                out.append((lineno, None))
                continue
            if isinstance(record, dict) and record.get("checkpoint") == 1:
                out.append((lineno, record))
            elif '"checkpoint"' in line:
                out.append((lineno, None))
    return out
