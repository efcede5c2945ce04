"""examples/agent_session.py end to end: an MCP client takes a tiny experiment from a corpus to a
model, and `champion` points at it only after a human approved the agent's request."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_agent_session_example_ends_with_its_model_promoted(tmp_path) -> None:
    from forgeml.control.approvals import list_approvals
    from forgeml.core.workspace import open_workspace
    from forgeml.governance.audit import audit_log_path, verify_audit_log
    from forgeml.registry import open_registry

    ws_root = tmp_path / "ws"
    r = subprocess.run(
        [sys.executable, str(REPO / "examples" / "agent_session.py"),
         "--workspace", str(ws_root), "--max-steps", "30"],
        capture_output=True, text=True, timeout=400, cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert "over the limit of 200,000" in r.stdout  # the budget refused the oversized plan

    ws = open_workspace(ws_root)
    reg = open_registry(ws)
    models = reg.list_assets("model")
    assert len(models) == 1
    model = models[0].id
    assert reg.resolve_alias("candidate") == model
    assert reg.resolve_alias("champion") == model
    evals = [a for a in reg.list_assets("eval") if model in reg.get_run(a.producer_run).inputs]
    assert evals, "the pipeline job evaluated the model it trained"
    decided = [(a.action, a.status, a.requested_by, a.decided_by) for a in list_approvals(reg)]
    assert decided == [("promote", "executed", "agent-1", "alice")]
    assert f"champion -> {model}" in r.stdout
    assert verify_audit_log(audit_log_path(ws.root)).ok
