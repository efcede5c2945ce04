"""Audit log: an intact chain verifies; edits, deletions, insertions, reorders and truncation
are each found at the first bad index; concurrent appenders keep one chain."""

from __future__ import annotations

import json
import threading

import pytest

from forgeml.serve.audit import AuditLog, audit_log_path, verify_audit_log


@pytest.fixture
def log_path(tmp_path):
    log = AuditLog(audit_log_path(tmp_path), fsync=False)
    for i in range(6):
        log.append("request", principal=f"user{i}", completion_tokens=i)
    return log.path


def lines(path):
    return path.read_text().splitlines()


def test_intact_log_verifies(log_path):
    assert verify_audit_log(log_path) == (True, None)
    entries = [json.loads(x) for x in lines(log_path)]
    assert [e["index"] for e in entries] == list(range(6))
    assert entries[3]["prev"] == entries[2]["hash"]


def test_empty_or_missing_log_verifies(tmp_path):
    assert verify_audit_log(tmp_path / "none.jsonl") == (True, None)


def test_edited_entry_is_found(log_path):
    rows = lines(log_path)
    rows[2] = rows[2].replace('"completion_tokens": 2', '"completion_tokens": 200')
    log_path.write_text("\n".join(rows) + "\n")
    assert verify_audit_log(log_path) == (False, 2)


def test_deleted_entry_is_found(log_path):
    rows = lines(log_path)
    del rows[3]
    log_path.write_text("\n".join(rows) + "\n")
    assert verify_audit_log(log_path) == (False, 3)


def test_reordered_entries_are_found(log_path):
    rows = lines(log_path)
    rows[1], rows[4] = rows[4], rows[1]
    log_path.write_text("\n".join(rows) + "\n")
    assert verify_audit_log(log_path) == (False, 1)


def test_truncated_tail_is_found(log_path):
    rows = lines(log_path)
    log_path.write_text("\n".join(rows[:4]) + "\n")
    assert verify_audit_log(log_path) == (False, 4)


def test_rehashed_forgery_breaks_the_next_link(log_path):
    """Editing an entry and recomputing its own hash still breaks the following entry's prev."""
    from forgeml.serve.audit import _entry_hash

    rows = lines(log_path)
    entry = json.loads(rows[1])
    entry["principal"] = "mallory"
    entry["hash"] = _entry_hash(entry)
    rows[1] = json.dumps(entry)
    log_path.write_text("\n".join(rows) + "\n")
    assert verify_audit_log(log_path) == (False, 2)


def test_garbage_line_is_found(log_path):
    with open(log_path, "a") as fh:
        fh.write("{not json\n")
    assert verify_audit_log(log_path) == (False, 6)


def test_appends_continue_the_chain_across_instances_and_threads(log_path):
    logs = [AuditLog(log_path, fsync=False) for _ in range(4)]

    def work(log):
        for _ in range(10):
            log.append("request", principal="t")

    threads = [threading.Thread(target=work, args=(log,)) for log in logs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(lines(log_path)) == 46
    assert verify_audit_log(log_path) == (True, None)


def test_appends_past_the_tail_window_with_any_text(tmp_path):
    """The next index is read from the last 64 KiB, a window that here starts inside a
    two-byte character; entries also hold characters str.splitlines breaks lines at."""
    log = AuditLog(tmp_path / "audit.jsonl", fsync=False)
    odd = "\u2028 \x85 \u2029"  # left unescaped by json.dumps(ensure_ascii=False)
    for i in range(80):
        log.append("request", completion="é" * (1000 + i) + odd)
    entries = [json.loads(x) for x in log.path.read_bytes().split(b"\n") if x]
    assert [e["index"] for e in entries] == list(range(80))
    assert entries[-1]["completion"].endswith(odd)
    assert verify_audit_log(log.path) == (True, None)
