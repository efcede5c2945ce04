"""Tampering with the audit log, as an attacker who can write the audit folder but cannot read
the keys: every case is detected, except the two docs/AUDIT.md names as limits, which are
asserted as such. Also: shipping checkpoints to a file and to syslog (a loopback UDP socket)."""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from forgeml.governance.audit import AuditLog, _head_mac, audit_log_path, verify_audit_log
from forgeml.governance.audit_checkpoints import checkpoints_path

ATTACKER_KEY = b"mallory's own key, not the real one"


@pytest.fixture
def env(tmp_path: Path):
    """A workspace log of 10 entries, keys held apart, a checkpoint every 4 entries (at 4 and
    8) shipped to an "offsite" append-only file."""
    shipped = tmp_path / "offsite" / "checkpoints.jsonl"
    log = AuditLog(
        audit_log_path(tmp_path / "ws"),
        fsync=False,
        key_dir=tmp_path / "keys",
        checkpoint_every=4,
        ship_to=[str(shipped)],
    )
    for i in range(10):
        log.append("request", principal=f"user{i}", completion_tokens=i)
    return {"log": log, "path": log.path, "keys": tmp_path / "keys", "shipped": shipped}


def verify(env, **kw):
    return verify_audit_log(env["path"], key_dir=env["keys"], **kw)


def rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def write_rows(path: Path, entries: list[dict]) -> None:
    path.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries))


def attacker_mac(entry: dict) -> str:
    body = {k: v for k, v in entry.items() if k != "mac"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hmac.new(ATTACKER_KEY, canonical.encode(), hashlib.sha256).hexdigest()


def rechain(entries: list[dict]) -> list[dict]:
    """Renumber and re-MAC every entry with the attacker's key (a correct-looking chain)."""
    prev = "0" * 64
    for i, entry in enumerate(entries):
        entry["index"], entry["prev"] = i, prev
        entry["mac"] = attacker_mac(entry)
        prev = entry["mac"]
    return entries


def forge_head(path: Path, entries: list[dict]) -> None:
    last = entries[-1]["mac"]
    head = hmac.new(ATTACKER_KEY, f"head:{len(entries)}:{last}".encode(), hashlib.sha256)
    path.with_name(path.name + ".head").write_text(
        json.dumps({"count": len(entries), "mac": last, "head_mac": head.hexdigest()})
    )


def head_file(path: Path) -> Path:
    return path.with_name(path.name + ".head")


def replay_genuine_head(env, entries: list[dict], count: int) -> None:
    """Put back the head file as the real writer made it at `count` entries (an attacker who
    copied it then), without reading the key now."""
    key = env["log"].keys.hmac_key
    mac = entries[count - 1]["mac"]
    head_file(env["path"]).write_text(
        json.dumps({"count": count, "mac": mac, "head_mac": _head_mac(key, count, mac)})
    )


def problems_text(result) -> str:
    return "\n".join(result.problems)


def test_untouched_log_verifies_against_local_and_shipped_checkpoints(env):
    result = verify(env, checkpoints=[env["shipped"]])
    assert result.ok, result.problems
    assert (result.entries, result.checkpoints) == (10, 4)  # 2 local + the 2 shipped copies
    assert [r["count"] for r in map(json.loads, env["shipped"].read_text().splitlines())] == [4, 8]


def test_appended_entry_with_correct_prev_and_sha256_hash(env):
    entries = rows(env["path"])
    fake = {"index": 10, "ts": entries[-1]["ts"], "event": "request", "principal": "mallory"}
    fake["prev"] = entries[-1]["mac"]
    canonical = json.dumps(fake, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    fake["hash"] = hashlib.sha256(canonical.encode()).hexdigest()  # the old format, "valid"
    write_rows(env["path"], [*entries, fake])
    result = verify(env)
    assert result.first_bad == 10 and "unauthenticated" in result.problems[0]


def test_appended_entry_maced_with_another_key(env):
    entries = rows(env["path"])
    fake = {**entries[-1], "index": 10, "principal": "mallory", "prev": entries[-1]["mac"]}
    fake["mac"] = attacker_mac(fake)
    write_rows(env["path"], [*entries, fake])
    forge_head(env["path"], [*entries, fake])
    result = verify(env)
    assert result.first_bad == 10 and "MAC does not match" in result.problems[0]


def test_middle_edit_with_the_chain_recomputed(env):
    entries = rows(env["path"])
    entries[5]["principal"] = "mallory"
    write_rows(env["path"], rechain(entries))
    forge_head(env["path"], entries)
    result = verify(env)
    assert result.first_bad == 0  # every MAC is now the attacker's: the first one fails
    assert "MAC does not match" in result.problems[0]


def test_middle_edit_rechained_as_legacy_sha256_entries(env):
    """Downgrading the whole log to the unauthenticated legacy format needs no key, but the
    signed checkpoints name another first entry (docs/AUDIT.md: only checkpoints catch it)."""
    entries = rows(env["path"])
    prev = "0" * 64
    for i, entry in enumerate(entries):
        entry.pop("mac"), entry.pop("v")
        entry["prev"] = prev
        if i == 5:
            entry["principal"] = "mallory"
        canonical = json.dumps(
            {k: v for k, v in entry.items() if k != "hash"},
            sort_keys=True, separators=(",", ":"), ensure_ascii=False,
        )  # fmt: skip
        entry["hash"] = prev = hashlib.sha256(canonical.encode()).hexdigest()
    write_rows(env["path"], entries)
    head_file(env["path"]).write_text(json.dumps({"count": 10, "hash": prev}))
    result = verify(env)
    assert not result.ok
    assert "signed for a log whose first entry differs" in problems_text(result)
    assert "legacy plain-sha256" in result.notes[0]


def test_legacy_entries_rewritten_before_an_authenticated_one(tmp_path):
    """A log written before entries were MACed keeps verifying (its entries noted as legacy);
    once an authenticated entry follows, editing a legacy entry breaks its link."""
    path = audit_log_path(tmp_path / "ws")
    path.parent.mkdir(parents=True)
    prev, legacy = "0" * 64, []
    for i in range(3):
        entry = {"index": i, "ts": "2024-01-01T00:00:00+00:00", "event": "request", "n": i}
        entry["prev"] = prev
        canonical = json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        entry["hash"] = prev = hashlib.sha256(canonical.encode()).hexdigest()
        legacy.append(entry)
    write_rows(path, legacy)
    head_file(path).write_text(json.dumps({"count": 3, "hash": prev}))
    keys = tmp_path / "keys"
    old = verify_audit_log(path, key_dir=keys)
    assert old.ok and old.entries == 3 and "entries 0-2 are legacy" in old.notes[0]
    log = AuditLog(path, fsync=False, key_dir=keys)
    entry = log.append("request", n=3)
    assert entry["index"] == 3 and entry["prev"] == prev and "mac" in entry
    assert verify_audit_log(path, key_dir=keys).ok
    entries = rows(path)
    entries[1]["n"] = 100
    canonical = json.dumps(
        {k: v for k, v in entries[1].items() if k != "hash"},
        sort_keys=True, separators=(",", ":"), ensure_ascii=False,
    )  # fmt: skip
    entries[1]["hash"] = hashlib.sha256(canonical.encode()).hexdigest()
    write_rows(path, entries)
    assert verify_audit_log(path, key_dir=keys).first_bad == 2


def test_deleted_entry_with_the_chain_recomputed(env):
    entries = rows(env["path"])
    del entries[5]
    write_rows(env["path"], rechain(entries))
    forge_head(env["path"], entries)
    result = verify(env)
    assert result.first_bad == 0 and "MAC does not match" in result.problems[0]


def test_deleted_entry_without_rechaining(env):
    entries = rows(env["path"])
    del entries[5]
    write_rows(env["path"], entries)
    result = verify(env)
    assert result.first_bad == 5


def test_reordered_entries(env):
    entries = rows(env["path"])
    entries[2], entries[6] = entries[6], entries[2]
    write_rows(env["path"], entries)
    assert verify(env).first_bad == 2


def test_reordered_and_renumbered_entries(env):
    entries = rows(env["path"])
    entries[2], entries[6] = entries[6], entries[2]
    entries[2]["index"], entries[6]["index"] = 2, 6
    write_rows(env["path"], entries)
    result = verify(env)
    assert result.first_bad == 2


def test_truncated_tail_with_the_head_file_left(env):
    write_rows(env["path"], rows(env["path"])[:6])
    text = problems_text(verify(env))
    assert "head file records 10" in text


def test_truncated_tail_with_the_head_file_deleted(env):
    write_rows(env["path"], rows(env["path"])[:6])
    head_file(env["path"]).unlink()
    result = verify(env)
    text = problems_text(result)
    assert "head file audit.jsonl.head is missing" in text
    assert "checkpoint signed at" in text and "entries 6-7 were deleted" in text


def test_truncated_tail_with_the_head_file_rewritten(env):
    entries = rows(env["path"])[:6]
    write_rows(env["path"], entries)
    forge_head(env["path"], entries)
    text = problems_text(verify(env))
    assert "head file audit.jsonl.head was rewritten without the audit key" in text
    assert "entries 6-7 were deleted" in text


def test_truncated_tail_with_an_old_head_file_replayed(env):
    """A head file copied when the log had 6 entries is genuine; the checkpoint of 8 entries
    still catches the log cut back to 6."""
    path, entries = env["path"], rows(env["path"])
    write_rows(path, entries[:6])
    replay_genuine_head(env, entries, 6)
    text = problems_text(verify(env))
    assert "head file" not in text
    assert "log has 6 entries but the checkpoint" in text and "entries 6-7 were deleted" in text


def test_head_rewritten_alone(env):
    entries = rows(env["path"])
    forge_head(env["path"], entries)
    assert "rewritten without the audit key" in problems_text(verify(env))


def test_log_and_head_deleted_with_checkpoints_present(env):
    env["path"].unlink()
    head_file(env["path"]).unlink()
    result = verify(env)
    assert not result.ok
    assert "is missing but a checkpoint" in problems_text(result)
    assert "covers 8 entries: the log was deleted" in problems_text(result)


def test_log_deleted_with_the_head_file_left(env):
    env["path"].unlink()
    text = problems_text(verify(env))
    assert "its head file records 10 entries: the log was deleted" in text
    assert "covers 8 entries: the log was deleted" in text


def test_log_deleted_and_started_again(env):
    """The server keeps appending after the files are deleted: a fresh chain from index 0,
    MACed with the real key, but the local checkpoints name another first entry."""
    env["path"].unlink()
    head_file(env["path"]).unlink()
    env["log"].append("request", principal="after")
    text = problems_text(verify(env, checkpoints=[env["shipped"]]))
    assert "signed for a log whose first entry differs" in text
    assert f"none of the 2 checkpoint(s) in {env['shipped']} belongs to this log" in text


def test_everything_local_deleted_but_a_shipped_copy_remains(env):
    for p in (env["path"], head_file(env["path"]), checkpoints_path(env["path"])):
        p.unlink()
    assert verify(env).ok  # the documented limit without the shipped copy (see below)
    result = verify(env, checkpoints=[env["shipped"]])
    assert not result.ok
    assert "covers 8 entries: the log was deleted" in problems_text(result)


def test_local_checkpoints_truncated_and_log_cut_to_match(env):
    """The attacker cuts the log back to 4 entries, replays a genuine head of 4 and keeps
    only the first local checkpoint: consistent locally, caught by the shipped copy."""
    path, entries = env["path"], rows(env["path"])
    write_rows(path, entries[:4])
    replay_genuine_head(env, entries, 4)
    local = checkpoints_path(path)
    local.write_text(local.read_text().splitlines()[0] + "\n")
    assert verify(env).ok  # without the shipped copy: the documented limit
    text = problems_text(verify(env, checkpoints=[env["shipped"]]))
    assert "entries 4-7 were deleted" in text
    assert "lacks 1 checkpoint(s) found in" in text


def test_truncation_after_the_last_shipped_checkpoint_is_a_documented_limit(env):
    """docs/AUDIT.md: entries written after the last checkpoint that left the machine can be
    cut, together with the local head and checkpoints, without a trace. Entries 8 and 9 go."""
    path, entries = env["path"], rows(env["path"])
    write_rows(path, entries[:8])
    replay_genuine_head(env, entries, 8)
    assert verify(env, checkpoints=[env["shipped"]]).ok


def test_attacker_writes_a_whole_new_log_and_checkpoints_with_own_keys(env, tmp_path):
    """Write access to the audit folder, not the keys: a complete log made by forgeml itself
    under the attacker's own key folder, checkpoints included, is rejected."""
    forged = AuditLog(
        tmp_path / "forgery" / "audit" / "audit.jsonl", fsync=False,
        key_dir=tmp_path / "mallory-keys", checkpoint_every=4,
    )  # fmt: skip
    for _ in range(10):
        forged.append("request", principal="nobody")
    for src in (forged.path, head_file(forged.path), checkpoints_path(forged.path)):
        shutil.copy(src, env["path"].parent / src.name)
    result = verify(env)
    text = problems_text(result)
    assert result.first_bad == 0 and "MAC does not match" in text
    assert "bad signature" in text


def test_forged_checkpoint_signature(env):
    local = checkpoints_path(env["path"])
    records = [json.loads(x) for x in local.read_text().splitlines()]
    records[1]["count"] = 9  # claims more entries than were signed
    local.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert "bad signature" in problems_text(verify(env))


def test_missing_keys_are_reported_not_minted(env, tmp_path):
    result = verify_audit_log(env["path"], key_dir=tmp_path / "empty")
    assert result.first_bad == 0 and "no audit key" in result.problems[0]
    assert "no public key" in problems_text(result)
    assert not (tmp_path / "empty").exists()


def test_checkpoints_shipped_to_syslog_over_loopback_udp(tmp_path):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    port = sock.getsockname()[1]
    try:
        log = AuditLog(
            audit_log_path(tmp_path / "ws"), fsync=False, key_dir=tmp_path / "keys",
            checkpoint_every=3, ship_to=[f"syslog://127.0.0.1:{port}"],
        )  # fmt: skip
        for i in range(6):
            log.append("request", n=i)
        messages = [sock.recv(65536).decode() for _ in range(2)]
    finally:
        sock.close()
    assert all("forgeml-audit-checkpoint: {" in m for m in messages)
    collected = tmp_path / "syslog.txt"  # what a syslog collector would have kept
    collected.write_text("\n".join(messages) + "\n")
    for p in (log.path, head_file(log.path), checkpoints_path(log.path)):
        p.unlink()
    result = verify_audit_log(log.path, key_dir=tmp_path / "keys", checkpoints=[collected])
    assert "covers 6 entries: the log was deleted" in problems_text(result)


def test_cli_checkpoint_ship_and_verify(tmp_path, monkeypatch):
    from forgeml.cli import app
    from forgeml.core.workspace import init_workspace

    ws = init_workspace(tmp_path / "ws")
    monkeypatch.setenv("FORGEML_AUDIT_KEY_DIR", str(tmp_path / "keys"))
    log = AuditLog(audit_log_path(ws.root), fsync=False)
    for i in range(3):
        log.append("request", n=i)
    runner = CliRunner()
    offsite = tmp_path / "offsite.jsonl"
    made = runner.invoke(
        app, ["-w", str(ws.root), "audit", "checkpoint", "--ship-to", str(offsite)]
    )
    assert made.exit_code == 0, made.output
    assert "checkpoint: 3 entries" in made.output
    good = runner.invoke(app, ["-w", str(ws.root), "audit", "verify"])
    assert good.exit_code == 0 and "audit log intact: 3 entries" in good.output
    for p in (log.path, head_file(log.path), checkpoints_path(log.path)):
        p.unlink()
    bad = runner.invoke(app, ["-w", str(ws.root), "audit", "verify", "--checkpoints", str(offsite)])
    assert bad.exit_code == 1
    assert "covers 3 entries: the log was deleted" in bad.output


def test_cli_checkpoint_reports_a_failed_shipment(tmp_path, monkeypatch):
    from forgeml.cli import app
    from forgeml.core.workspace import init_workspace

    ws = init_workspace(tmp_path / "ws")
    monkeypatch.setenv("FORGEML_AUDIT_KEY_DIR", str(tmp_path / "keys"))
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    res = CliRunner().invoke(
        app, ["-w", str(ws.root), "audit", "checkpoint", "--ship-to", str(blocked / "x.jsonl")]
    )
    assert res.exit_code == 1
    assert f"could not ship the audit checkpoint to {blocked / 'x.jsonl'}" in res.output
