"""Audit log: an intact chain verifies; edits, deletions, insertions, reorders and truncation
are each found at the first bad index; concurrent appenders keep one chain; legacy sha256
logs still verify; settings and keys come from where the docs say. Attacks: test_audit_tamper."""

from __future__ import annotations

import json
import threading

import pytest

from forgeml.governance.audit import AuditLog, audit_log_path, verify_audit_log


@pytest.fixture
def log_path(tmp_path):
    log = AuditLog(audit_log_path(tmp_path), fsync=False)
    for i in range(6):
        log.append("request", principal=f"user{i}", completion_tokens=i)
    return log.path


def lines(path):
    return path.read_text().splitlines()


def test_intact_log_verifies(log_path):
    assert verify_audit_log(log_path).ok
    entries = [json.loads(x) for x in lines(log_path)]
    assert [e["index"] for e in entries] == list(range(6))
    assert entries[3]["prev"] == entries[2]["mac"]


def test_empty_or_missing_log_verifies(tmp_path):
    assert verify_audit_log(tmp_path / "none.jsonl").ok


def test_edited_entry_is_found(log_path):
    rows = lines(log_path)
    rows[2] = rows[2].replace('"completion_tokens": 2', '"completion_tokens": 200')
    log_path.write_text("\n".join(rows) + "\n")
    assert verify_audit_log(log_path).first_bad == 2


def test_deleted_entry_is_found(log_path):
    rows = lines(log_path)
    del rows[3]
    log_path.write_text("\n".join(rows) + "\n")
    assert verify_audit_log(log_path).first_bad == 3


def test_reordered_entries_are_found(log_path):
    rows = lines(log_path)
    rows[1], rows[4] = rows[4], rows[1]
    log_path.write_text("\n".join(rows) + "\n")
    assert verify_audit_log(log_path).first_bad == 1


def test_truncated_tail_is_found(log_path):
    rows = lines(log_path)
    log_path.write_text("\n".join(rows[:4]) + "\n")
    result = verify_audit_log(log_path)
    assert not result.ok and result.first_bad is None
    assert any("head file records 6" in p for p in result.problems), result.problems


def test_remaced_forgery_without_the_key_is_found(log_path, tmp_path):
    """Editing an entry and recomputing its MAC with a key of one's own fails at that entry."""
    import hashlib
    import hmac

    rows = lines(log_path)
    entry = json.loads(rows[1])
    entry["principal"] = "mallory"
    body = {k: v for k, v in entry.items() if k != "mac"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    entry["mac"] = hmac.new(b"x" * 32, canonical.encode(), hashlib.sha256).hexdigest()
    rows[1] = json.dumps(entry)
    log_path.write_text("\n".join(rows) + "\n")
    result = verify_audit_log(log_path)
    assert result.first_bad == 1 and "MAC does not match" in result.problems[0]


def test_garbage_line_is_found(log_path):
    with open(log_path, "a") as fh:
        fh.write("{not json\n")
    assert verify_audit_log(log_path).first_bad == 6


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
    assert verify_audit_log(log_path).ok


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
    assert verify_audit_log(log.path).ok


def test_lone_surrogate_and_odd_values_are_logged_and_verify(tmp_path):
    """A prompt with a lone surrogate (no UTF-8 form) is still audited: written as its JSON
    escape, read back exactly; non-JSON values are stored as text, MACed as stored."""
    from pathlib import PurePosixPath

    log = AuditLog(tmp_path / "audit.jsonl", fsync=False)
    entry = log.append("request", prompt="a\ud800b", where=PurePosixPath("/x"))
    assert entry["where"] == "/x"
    assert "\\ud800" in log.path.read_text()
    assert json.loads(log.path.read_text())["prompt"] == "a\ud800b"
    assert verify_audit_log(log.path).ok


def test_fields_cannot_overwrite_the_chain_fields(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl", fsync=False)
    log.append("request")
    entry = log.append("request", index=7, prev="x", mac="y", v=1)
    assert (entry["index"], entry["v"]) == (1, 2) and entry["prev"] != "x"
    assert verify_audit_log(log.path).ok


def test_keys_are_made_private_outside_the_audit_folder(tmp_path):
    import stat

    from forgeml.governance.audit_keys import HMAC_KEY_FILE, SIGNING_KEY_FILE

    log = AuditLog(audit_log_path(tmp_path / "ws"), fsync=False)
    log.append("request")
    keys = tmp_path / "ws" / ".forgeml-keys"
    assert log.settings.key_dir == keys and keys.parent != log.path.parent
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    for name in (HMAC_KEY_FILE, SIGNING_KEY_FILE):
        assert stat.S_IMODE((keys / name).stat().st_mode) == 0o600
    assert len(bytes.fromhex((keys / HMAC_KEY_FILE).read_text())) == 32
    assert not any(log.path.parent.glob("*.key"))


def test_settings_come_from_arguments_env_then_forge_yaml(tmp_path, monkeypatch):
    import yaml

    from forgeml.core.errors import ForgeError
    from forgeml.core.workspace import init_workspace
    from forgeml.governance.audit_keys import resolve_audit_settings

    ws = init_workspace(tmp_path / "ws")
    path = audit_log_path(ws.root)
    default = resolve_audit_settings(path)
    assert (default.key_dir, default.checkpoint_every, default.ship_to) == (
        ws.root / ".forgeml-keys",
        100,
        (),
    )
    settings = yaml.safe_load((ws.root / "forge.yaml").read_text())
    settings["audit"] = {"key_dir": "../k", "checkpoint_every": 7, "ship_to": ["/mnt/a.jsonl"]}
    (ws.root / "forge.yaml").write_text(yaml.safe_dump(settings))
    from_yaml = resolve_audit_settings(path)
    assert (from_yaml.key_dir, from_yaml.checkpoint_every, from_yaml.ship_to) == (
        ws.root / "../k",
        7,
        ("/mnt/a.jsonl",),
    )
    monkeypatch.setenv("FORGEML_AUDIT_KEY_DIR", str(tmp_path / "env-keys"))
    monkeypatch.setenv("FORGEML_AUDIT_CHECKPOINT_EVERY", "3")
    monkeypatch.setenv("FORGEML_AUDIT_SHIP_TO", "/mnt/b.jsonl,syslog://127.0.0.1:5514")
    from_env = resolve_audit_settings(path)
    assert (from_env.key_dir, from_env.checkpoint_every, from_env.ship_to) == (
        tmp_path / "env-keys",
        3,
        ("/mnt/b.jsonl", "syslog://127.0.0.1:5514"),
    )
    assert resolve_audit_settings(path, checkpoint_every=0, ship_to=()).checkpoint_every == 0
    monkeypatch.setenv("FORGEML_AUDIT_CHECKPOINT_EVERY", "often")
    with pytest.raises(ForgeError, match="whole number, got 'often'"):
        resolve_audit_settings(path)


def test_a_checkpoint_every_n_entries(tmp_path):
    from forgeml.governance.audit_checkpoints import checkpoints_path

    log = AuditLog(tmp_path / "ws" / "audit.jsonl", fsync=False, checkpoint_every=5)
    for i in range(12):
        log.append("request", n=i)
    records = [json.loads(x) for x in checkpoints_path(log.path).read_text().splitlines()]
    assert [r["count"] for r in records] == [5, 10]
    entries = [json.loads(x) for x in lines(log.path)]
    assert records[1]["head"] == entries[9]["mac"] and records[0]["log"] == entries[0]["mac"]
    result = verify_audit_log(log.path)
    assert result.ok and result.checkpoints == 2
