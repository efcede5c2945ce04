"""A workspace is private whatever the umask: under umask 022 every folder and file a small
pipeline makes (settings, registry with its WAL, ingested and registered artifacts, the audit
log, serving keys, exports) has no group or other bits; `shared_group` gives one group read
access (0750/0640/0440) and nothing to others."""

from __future__ import annotations

import grp
import os
import stat
from pathlib import Path

import pytest
import yaml

from forgeml.core.errors import ForgeError
from forgeml.core.workspace import init_workspace, open_workspace
from forgeml.governance.audit import AuditLog, audit_log_path
from forgeml.governance.keys import create_api_key
from forgeml.pipeline.ingest_stage import ingest_stage
from forgeml.registry import open_registry
from forgeml.registry.artifacts import is_read_only


@pytest.fixture(autouse=True)
def umask_022():
    """The common default umask, under which files used to be 0644; restored afterwards."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def modes(root: Path) -> dict[str, int]:
    """Relative path -> permission bits (with set-group-ID) of `root` and all under it."""
    out = {".": stat.S_IMODE(root.stat().st_mode)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if not path.is_symlink():
                out[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return out


def small_pipeline(root: Path, docs: Path, shared_group: str | None = None) -> dict[str, int]:
    """init, ingest (a registered artifact), the registry (SQLite with WAL), audit entries and
    a serving key; returns the modes seen while the registry is still open."""
    ws = init_workspace(root, shared_group=shared_group)
    ds = ingest_stage(ws, [docs], name="docs")
    reg = open_registry(ws)
    reg.get_asset(ds.output)
    audit = AuditLog(audit_log_path(ws.root))
    audit.append("request", actor="test", prompt="a prompt kept with --log-bodies")
    create_api_key(ws.root, "alice")
    seen = modes(ws.root)
    assert any(name.endswith("registry.db-wal") for name in seen)  # WAL files were made
    assert any(name.startswith("artifacts/dataset/") for name in seen)
    assert "audit/audit.jsonl" in seen
    return seen


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(3):
        (folder / f"note_{i}.md").write_text(f"# Note {i}\n\nrestricted text {i}\n")
        (folder / f"note_{i}.md").chmod(0o644)  # the source's own mode is not copied
    return folder


def test_everything_a_pipeline_writes_is_private_under_umask_022(tmp_path, docs):
    seen = small_pipeline(tmp_path / "ws", docs)
    leaky = {name: oct(mode) for name, mode in seen.items() if mode & 0o077}
    assert not leaky
    root = tmp_path / "ws"
    for name in ("registry.db", "forge.yaml", "audit/audit.jsonl"):
        assert seen[name] == 0o600, name
    assert seen["."] == seen["artifacts"] == seen["runs"] == 0o700
    stored = next((root / "artifacts" / "dataset").iterdir())
    assert is_read_only(stored)
    assert stat.S_IMODE(stored.stat().st_mode) == 0o500
    assert stat.S_IMODE((stored / "data.parquet").stat().st_mode) == 0o400
    # the umask stays private for what the process writes next, e.g. an export folder
    (tmp_path / "export").mkdir()
    assert stat.S_IMODE((tmp_path / "export").stat().st_mode) == 0o700


def test_opening_an_older_workspace_tightens_its_top_level_files(tmp_path, docs):
    small_pipeline(tmp_path / "ws", docs)
    root = tmp_path / "ws"
    for name in ("registry.db", "forge.yaml"):
        (root / name).chmod(0o644)  # as a workspace made before this fix has them
    root.chmod(0o755)
    os.umask(0o022)
    open_workspace(root)
    assert stat.S_IMODE((root / "registry.db").stat().st_mode) == 0o600
    assert stat.S_IMODE((root / "forge.yaml").stat().st_mode) == 0o600
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert os.umask(0o022) == 0o077  # and the process umask is private again


def a_group_to_share_with() -> grp.struct_group:
    """A group other than the primary one where this user may give files to it (so the
    group really has to be set), else the primary group."""
    others = [g for g in os.getgroups() if g != os.getgid()]
    if not others and os.geteuid() == 0:
        others = [g.gr_gid for g in grp.getgrall() if g.gr_gid != os.getgid()]
    return grp.getgrgid(others[0] if others else os.getgid())


def test_a_shared_group_reads_but_others_do_not(tmp_path, docs):
    group = a_group_to_share_with()
    seen = small_pipeline(tmp_path / "ws", docs, shared_group=group.gr_name)
    root = tmp_path / "ws"
    assert yaml.safe_load((root / "forge.yaml").read_text())["shared_group"] == group.gr_name
    assert open_workspace(root).shared_group == group.gr_name
    keys = root / ".forgeml-keys"  # the audit keys are held apart: never the group's
    for name, mode in seen.items():
        path = root / name
        assert mode & 0o007 == 0, (name, oct(mode))
        if path == keys or keys in path.parents:
            assert mode & 0o070 == 0, (name, oct(mode))
            continue
        assert path.stat().st_gid == group.gr_gid, name
        assert mode & 0o020 == 0, (name, oct(mode))  # the group never writes
        assert mode & 0o040, (name, oct(mode))  # the group reads
    assert seen["registry.db"] == seen["audit/audit.jsonl"] == 0o640
    assert seen["."] & 0o777 == 0o750 and seen["."] & stat.S_ISGID
    stored = next((root / "artifacts" / "dataset").iterdir())
    assert stat.S_IMODE((stored / "data.parquet").stat().st_mode) == 0o440
    assert stat.S_IMODE(stored.stat().st_mode) == 0o550


def test_an_unknown_shared_group_is_refused_with_the_fix(tmp_path):
    ws = init_workspace(tmp_path / "ws")
    settings = ws.root / "forge.yaml"
    body = yaml.safe_load(settings.read_text())
    settings.chmod(0o600)
    settings.write_text(yaml.safe_dump({**body, "shared_group": "no-such-group-forgeml"}))
    with pytest.raises(ForgeError, match="not a group on this machine") as err:
        open_workspace(ws.root)
    assert "groupadd" in (err.value.hint or "")


def test_init_command_takes_a_shared_group(tmp_path):
    from typer.testing import CliRunner

    from forgeml.cli import app

    group = a_group_to_share_with()
    res = CliRunner().invoke(app, ["init", str(tmp_path / "ws"), "--shared-group", group.gr_name])
    assert res.exit_code == 0, res.output
    ws = open_workspace(tmp_path / "ws")
    assert ws.shared_group == group.gr_name
    assert stat.S_IMODE((ws.root / "registry.db").stat().st_mode) == 0o640
    assert (ws.root / "registry.db").stat().st_gid == group.gr_gid
