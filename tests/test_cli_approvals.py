"""CLI approvals are proven by the approver's own API key (a key file or $FORGEML_API_KEY),
checked against the keys table as over REST: `--as NAME` alone proves nothing."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from forgeml.cli import app
from forgeml.core.errors import ForgeError
from forgeml.governance.audit import audit_log_path
from forgeml.governance.keys import Principal, create_api_key, revoke_api_key


@pytest.fixture
def pending(workspace, tmp_path):
    """A workspace with a pending promotion asked for by an agent."""
    from forgeml.control.ops import ControlPlane

    control = ControlPlane(workspace)
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "w").write_text("1")
    model = control.reg.add_asset("model", "m", folder)
    bot = Principal("bot", "k", roles=("aliases:write",))
    approval = control.promote(bot, "m", "champion")["approval"]["id"]
    yield control, model.id, approval
    control.close()


def _run(workspace, *args: str, env: dict[str, str] | None = None):
    env = {"FORGEML_API_KEY": "", **(env or {})}
    return CliRunner().invoke(app, ["-w", str(workspace.root), "approvals", *args], env=env)


def _error(result) -> str:
    assert isinstance(result.exception, ForgeError), result.output
    return str(result.exception)


def test_as_name_without_the_key_is_refused(workspace, pending, tmp_path) -> None:
    control, model, approval = pending
    create_api_key(workspace.root, "alice", roles=["approver"])
    assert "needs the approver's own API key" in _error(
        _run(workspace, "approve", approval, "--as", "alice")
    )
    mallory, _ = create_api_key(workspace.root, "mallory", roles=["viewer"])
    (tmp_path / "mallory.key").write_text(mallory)
    r = _run(
        workspace, "approve", approval, "--as", "alice", "--key-file", str(tmp_path / "mallory.key")
    )
    assert "does not match the key, which belongs to mallory" in _error(r)
    r = _run(workspace, "approve", approval, "--key-file", str(tmp_path / "mallory.key"))
    assert "neither the approver nor the admin role" in _error(r)
    forged = "fml_" + mallory.split("_")[1] + "_notthesecret"
    r = _run(workspace, "approve", approval, env={"FORGEML_API_KEY": forged})
    assert "not valid" in _error(r)
    r = _run(workspace, "deny", approval, "--as", "alice")
    assert "needs the approver's own API key" in _error(r)
    assert control.reg.resolve_alias("champion") is None
    assert control.reg.list_aliases() == {}


def test_the_approvers_key_approves_and_names_the_approver(workspace, pending, tmp_path) -> None:
    control, model, approval = pending
    alice, info = create_api_key(workspace.root, "alice", roles=["approver"])
    (tmp_path / "alice.key").write_text(alice + "\n")
    r = _run(
        workspace, "approve", approval, "--as", "alice", "--key-file", str(tmp_path / "alice.key")
    )
    assert r.exit_code == 0 and "executed" in r.output, r.output
    assert control.reg.resolve_alias("champion") == model
    events = [json.loads(x) for x in audit_log_path(workspace.root).read_text().splitlines()]
    approved = [e for e in events if e["event"] == "approval_approved"]
    assert [e["principal"] for e in approved] == ["alice"]


def test_deny_by_env_key_and_revoked_keys(workspace, pending) -> None:
    control, _, approval = pending
    alice, info = create_api_key(workspace.root, "alice", roles=["approver"])
    revoke_api_key(workspace.root, info.id)
    r = _run(workspace, "deny", approval, "--reason", "no", env={"FORGEML_API_KEY": alice})
    assert "not valid" in _error(r)
    bob, _ = create_api_key(workspace.root, "bob", roles=["admin"])
    r = _run(workspace, "deny", approval, "--reason", "no", env={"FORGEML_API_KEY": bob})
    assert r.exit_code == 0 and "denied" in r.output, r.output
    assert control.reg.list_aliases() == {}


def test_missing_key_file_says_what_to_do(workspace, pending, tmp_path) -> None:
    _, _, approval = pending
    r = _run(workspace, "approve", approval, "--key-file", str(tmp_path / "nope.key"))
    assert "cannot read the key file" in _error(r)
