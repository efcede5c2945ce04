"""Deleting assets: refused while anything depends on it, the registry keeps a deleted record,
the store's copy goes and the user's files stay, atomic on failure, revived by re-registering;
the CLI path and migration 0004."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy import event
from sqlalchemy.orm import Session
from test_migrations_0003 import _alembic
from typer.testing import CliRunner

from forgeml.cli import app
from forgeml.core.errors import ForgeError, NotFoundError
from forgeml.registry import Registry


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    registry = Registry(f"sqlite:///{tmp_path / 'ws' / 'registry.db'}", tmp_path / "ws" / "art")
    yield registry
    registry.close()


def _folder(path: Path, text: str) -> Path:
    path.mkdir(parents=True)
    (path / "data.txt").write_text(text)
    return path


def test_refused_while_children_aliases_or_running_readers_depend_on_it(reg, tmp_path) -> None:
    data = reg.add_asset("dataset", "docs", _folder(tmp_path / "d", "hello"))
    tok = reg.add_asset("tokenizer", "bpe", _folder(tmp_path / "t", "vocab"), parents=[data.id])
    run = reg.start_run("pretrain", {"lr": 1}, inputs=[tok.id])
    model = reg.add_asset("model", "m", _folder(tmp_path / "m", "w"), run_id=run.id)
    with pytest.raises(ForgeError, match=f"running run\\(s\\) read it: {run.id}"):
        reg.delete_asset(tok.id)
    reg.finish_run(run.id, status="succeeded", outputs=[model.id])
    with pytest.raises(ForgeError, match=f"made from it: {tok.id}") as exc:
        reg.delete_asset("docs")  # parent edge
    assert "delete those first" in str(exc.value)
    with pytest.raises(ForgeError, match=f"made from it: {model.id}"):
        reg.delete_asset(tok.id)  # consumed by the run that made the model
    reg.set_alias("champion", model.id)
    with pytest.raises(ForgeError, match="alias\\(es\\) point at it: champion"):
        reg.delete_asset("m")
    # Nothing was changed by the refusals.
    assert all(reg.verify_asset(a.id) for a in (data, tok, model))
    assert {a.id for a in reg.list_assets()} == {data.id, tok.id, model.id}


def test_delete_keeps_the_record_and_the_users_files(reg, tmp_path) -> None:
    src = _folder(tmp_path / "d", "hello")
    data = reg.add_asset("dataset", "docs", src)
    tok = reg.add_asset("tokenizer", "bpe", _folder(tmp_path / "t", "v"), parents=[data.id])
    run = reg.start_run("tokenizer", {"v": 1}, inputs=[data.id])
    reg.finish_run(run.id, status="succeeded", outputs=[tok.id])
    stored = data.path

    gone = reg.delete_asset(tok.id, actor="alice", reason="superseded")
    assert gone.deleted_by == "alice" and gone.delete_reason == "superseded"
    assert (
        not gone.path.exists()
        and reg.find_cached_run("tokenizer", run.config_hash, [data.id]) is None
    )
    reg.delete_asset("docs")  # bottom-up: its only child is deleted now
    assert not stored.exists() and not list(stored.parent.glob(".deleting-*"))
    assert (src / "data.txt").read_text() == "hello"  # the user's input is untouched
    assert reg.list_assets() == []
    with pytest.raises(NotFoundError, match="unknown asset"):
        reg.get_asset("docs")  # names and prefixes no longer find it
    with pytest.raises(NotFoundError, match=f"{data.id} was deleted .* by user"):
        reg.get_asset(data.id)
    assert reg.get_asset(data.id, deleted_ok=True).deleted_at is not None
    down = reg.lineage(data.id, "down")  # lineage still walks through deleted assets
    assert [(n["id"], n.get("deleted")) for n in down.nodes if n["type"] == "asset"] == [
        (data.id, True),
        (tok.id, True),
    ]
    with pytest.raises(NotFoundError):
        reg.start_run("pretrain", {}, inputs=[data.id])
    with pytest.raises(ForgeError, match="was deleted"):
        reg.delete_asset(data.id)

    again = reg.add_asset("dataset", "docs-v2", src)  # the same content registers again
    assert again.id == data.id and again.name == "docs-v2" and again.deleted_at is None
    assert reg.verify_asset(again.id)


def test_a_failed_commit_leaves_asset_and_files_as_they_were(reg, tmp_path) -> None:
    data = reg.add_asset("dataset", "docs", _folder(tmp_path / "d", "hello"))

    def fail(session: Session) -> None:
        raise RuntimeError("disk full")

    event.listen(Session, "before_commit", fail)
    try:
        with pytest.raises(RuntimeError, match="disk full"):
            reg.delete_asset(data.id)
    finally:
        event.remove(Session, "before_commit", fail)
    assert reg.get_asset(data.id).deleted_at is None
    assert reg.verify_asset(data.id) and not list(data.path.parent.glob(".deleting-*"))


def test_rollback_to_a_deleted_target_is_refused(reg, tmp_path) -> None:
    a = reg.add_asset("model", "a", _folder(tmp_path / "a", "1"))
    b = reg.add_asset("model", "b", _folder(tmp_path / "b", "2"))
    reg.set_alias("candidate", a.id)
    reg.set_alias("candidate", b.id)
    reg.delete_asset(a.id)  # no alias points at it now, only the history does
    with pytest.raises(NotFoundError, match=f"{a.id} was deleted"):
        reg.rollback_alias("candidate")
    assert reg.resolve_alias("candidate") == b.id


def test_cli_assets_delete(workspace, tmp_path) -> None:
    from forgeml.governance.audit import audit_log_path, verify_audit_log
    from forgeml.registry import open_registry

    reg = open_registry(workspace)
    data = reg.add_asset("dataset", "docs", _folder(tmp_path / "d", "hello"))
    model = reg.add_asset("model", "m", _folder(tmp_path / "m", "w"), parents=[data.id])
    runner, w = CliRunner(), ["-w", str(workspace.root)]
    r = runner.invoke(app, [*w, "assets", "delete", "docs", "--yes"])
    assert isinstance(r.exception, ForgeError) and model.id in str(r.exception)
    r = runner.invoke(app, [*w, "assets", "delete", "m"], input="n\n")  # not confirmed
    assert r.exit_code == 1 and reg.verify_asset(model.id)
    r = runner.invoke(app, [*w, "assets", "delete", "m", "--reason", "bad run", "--yes"])
    assert r.exit_code == 0 and f"deleted {model.id}" in r.output, r.output
    assert runner.invoke(app, [*w, "assets", "delete", "docs", "-y"]).exit_code == 0
    assert "docs" not in runner.invoke(app, [*w, "assets", "list"]).output
    events = [json.loads(x) for x in audit_log_path(workspace.root).read_text().splitlines()]
    deleted = [(e["asset"], e["reason"]) for e in events if e["event"] == "asset_deleted"]
    assert deleted == [(model.id, "bad run"), (data.id, "")]
    assert verify_audit_log(audit_log_path(workspace.root)).ok


def test_migration_0004_upgrades_in_place_and_downgrades(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    cfg = _alembic(url)
    command.upgrade(cfg, "0003")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO assets (id, kind, name, sha256, size_bytes, n_files, created_at, "
                "metadata, path) VALUES ('dataset-aaa', 'dataset', 'old', 'aaa', 1, 1, "
                "'2026-01-01 00:00:00', '{}', 'dataset/dataset-aaa')"
            )
        )
    engine.dispose()
    with Registry(url, tmp_path / "art") as reg:  # migrates to head on open
        assert reg.get_asset("old").deleted_at is None
        live = reg.add_asset("dataset", "live", _folder(tmp_path / "l", "1"))
        reg.delete_asset(reg.add_asset("dataset", "gone", _folder(tmp_path / "g", "2")).id)
    command.downgrade(cfg, "0003")
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        columns = {c["name"] for c in sa.inspect(conn).get_columns("assets")}
        ids = {r[0] for r in conn.execute(sa.text("SELECT id FROM assets"))}
    engine.dispose()
    assert "deleted_at" not in columns
    assert ids == {"dataset-aaa", live.id}  # a deleted asset would read as live at 0003


def test_revived_content_keeps_its_classification(reg, tmp_path) -> None:
    """Registering deleted content again without a label must not make it unlabelled."""
    src = _folder(tmp_path / "d", "salaries")
    data = reg.add_asset("dataset", "hr", src, metadata={"classification": "restricted"})
    reg.delete_asset(data.id, actor="admin")
    again = reg.add_asset("dataset", "hr-again", src)
    assert again.id == data.id and again.metadata["classification"] == "restricted"


def test_a_deletion_cut_off_before_its_commit_is_undone_or_finished(tmp_path) -> None:
    """A process killed between moving the files aside and the commit: on the next open the
    files of the still-live asset come back, those of a deleted one go."""
    import os

    def open_reg() -> Registry:
        return Registry(f"sqlite:///{tmp_path / 'ws' / 'registry.db'}", tmp_path / "ws" / "art")

    reg = open_reg()
    live = reg.add_asset("dataset", "live", _folder(tmp_path / "a", "kept"))
    gone = reg.add_asset("dataset", "gone", _folder(tmp_path / "b", "removed"))
    moved_live = reg.artifacts.detach("dataset", live.id)  # killed before the commit
    moved_gone = reg.artifacts.detach("dataset", gone.id)
    reg.delete_asset(gone.id, actor="admin")  # its row was committed as deleted
    fresh = reg.artifacts.detach(
        "dataset", reg.add_asset("dataset", "x", _folder(tmp_path / "c", "x")).id
    )
    reg.close()
    for path in (moved_live, moved_gone):
        os.utime(path, (0, 0))  # detached long ago; `fresh` may still be committing
    reg = open_reg()
    assert reg.verify_asset(live.id)
    assert not moved_live.exists() and not moved_gone.exists() and fresh.exists()
    reg.close()
