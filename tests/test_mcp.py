"""MCP server, driven by the official SDK's own client: tools and schemas, auth over HTTP,
and an agent's session over stdio (plan, refusals, a tiny training job run by a worker, its
eval, a promotion that waits for a human)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import httpx2
import mcp
import pytest
import uvicorn
from mcp.client.streamable_http import streamable_http_client

from forgeml.control.budgets import set_budget
from forgeml.control.mcp_server import build_mcp_server, mcp_http_app
from forgeml.control.ops import ControlPlane
from forgeml.governance.audit import audit_log_path, verify_audit_log
from forgeml.governance.keys import Principal, create_api_key

REPO = Path(__file__).resolve().parents[1]
TOOLS = {
    "list_assets", "show_asset", "lineage", "list_runs", "read_eval", "plan", "submit_job",
    "list_jobs", "job_status", "job_logs", "cancel_job", "promote", "rollback", "export_model",
    "delete_asset", "list_approvals", "my_budget",
}  # fmt: skip


def _data(result) -> object:
    assert not result.is_error, result.content[0].text
    data = result.structured_content
    return data.get("result", data) if isinstance(data, dict) and len(data) == 1 else data


def test_tools_have_descriptions_and_schemas(workspace) -> None:
    control = ControlPlane(workspace)
    server = build_mcp_server(control, Principal("bot", "k", roles=("agent",)))

    async def session():
        async with mcp.Client(server) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            assert set(tools) == TOOLS
            for t in tools.values():
                assert t.description and len(t.description) > 20, t.name
                assert t.input_schema["type"] == "object"
            args = tools["submit_job"].input_schema["properties"]["args"]
            assert {"type": "null"} in args["anyOf"] and "pipeline" in args["description"]
            assert any(a.get("type") == "array" for a in args["anyOf"])
            assert "required" not in tools["submit_job"].input_schema  # args or spec
            spec = tools["submit_job"].input_schema["properties"]["spec"]
            assert "eval run" in spec["description"]
            lineage = tools["lineage"].input_schema["properties"]["direction"]
            assert lineage["enum"] == ["up", "down"]
            assert tools["list_assets"].annotations.read_only_hint
            refused = await client.call_tool("submit_job", {"args": ["eval", "run", "m"]})
            assert refused.is_error and "has no budget" in refused.content[0].text
            spec = {"command": "eval run", "params": {"model": "m"}}
            refused = await client.call_tool("submit_job", {"spec": spec})
            assert refused.is_error and "has no budget" in refused.content[0].text
            neither = await client.call_tool("plan", {})
            assert neither.is_error and "either `args`" in neither.content[0].text
            forbidden = await client.call_tool("promote", {"model": "m", "alias": "candidate"})
            assert forbidden.is_error and "aliases:write" in forbidden.content[0].text
            assert _data(await client.call_tool("list_assets", {})) == []

    try:
        asyncio.run(session())
    finally:
        control.close()


def test_delete_asset_tool_asks_a_human(workspace, tmp_path) -> None:
    from forgeml.control.approvals import approve, list_approvals

    control = ControlPlane(workspace)
    reg = control.reg
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("x")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "w").write_text("1")
    data = reg.add_asset("dataset", "docs", tmp_path / "d")
    model = reg.add_asset("model", "m", tmp_path / "m", parents=[data.id])
    bot = Principal("bot", "k", roles=("agent", "assets:delete"))

    async def session() -> str:
        async with mcp.Client(build_mcp_server(control, bot)) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            assert tools["delete_asset"].annotations.destructive_hint
            refused = await client.call_tool("delete_asset", {"ref": "docs"})
            assert refused.is_error and model.id in refused.content[0].text
            asked = _data(await client.call_tool("delete_asset", {"ref": "m", "reason": "old"}))
            assert asked["status"] == "pending_approval"
            return asked["approval"]["id"]

    try:
        approval = asyncio.run(session())
        assert reg.verify_asset(model.id)  # nothing deleted before a human approved
        create_api_key(workspace.root, "alice", roles=["approver"])
        audit = control.audit
        assert approve(workspace, reg, audit, approval, decided_by="alice").status == "executed"
        assert [a.action for a in list_approvals(reg)] == ["delete"]
        assert [a.id for a in reg.list_assets()] == [data.id]
    finally:
        control.close()


def test_streamable_http_needs_a_key(workspace) -> None:
    key, _ = create_api_key(workspace.root, "bot", roles=["agent"])
    control = ControlPlane(workspace)
    set_budget(control.reg, "bot", cpu_hours=2.0)
    # Port 0: the OS picks a free port as the server binds, so no other process can take it
    # between choosing and binding.
    server = uvicorn.Server(
        uvicorn.Config(mcp_http_app(control), host="127.0.0.1", port=0, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            assert thread.is_alive(), "the MCP server failed to start"
            assert time.monotonic() < deadline, "the MCP server did not start"
            time.sleep(0.05)
        url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}/mcp"
        for headers in ({}, {"Authorization": "Bearer fml_x_y"}, {"Authorization": key}):
            r = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"

        async def session():
            auth = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=30)
            transport = streamable_http_client(url, http_client=auth)
            async with mcp.Client(transport) as client:
                assert {t.name for t in (await client.list_tools()).tools} == TOOLS
                budget = _data(await client.call_tool("my_budget", {}))
                assert budget["budget"]["cpu_hours"] == 2.0 and budget["used"]["active_jobs"] == 0

        asyncio.run(session())
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        control.close()
    events = [
        json.loads(x)["event"] for x in audit_log_path(workspace.root).read_text().split("\n") if x
    ]
    assert events.count("control_auth_denied") == 3


TINY = [
    "tokenizer.vocab_size=400", "model.dim=32", "model.n_heads=2", "model.n_kv_heads=1",
    "model.n_layers=1", "model.ffn_hidden=64", "train.max_steps=5", "train.seq_len=32",
    "train.micro_batch_size=2", "train.eval_every=0", "train.checkpoint_every=0",
    "train.dtype=fp32", "eval.max_batches=1", "eval.infill_examples=2", "generate.prompts=[]",
    "fim.rate=0", "data.curate=false", "sft=null", "posttrain=null",  # pre-training only
]  # fmt: skip


@pytest.mark.slow
def test_agent_session_over_stdio_trains_evaluates_and_asks_to_promote(workspace, tmp_path) -> None:
    from acme import generate_corpus

    from forgeml.control.approvals import approve
    from forgeml.control.roots import set_data_roots
    from forgeml.registry import open_registry

    corpus = tmp_path / "acme"
    generate_corpus(corpus, seed=3, scale=0.05)
    key, _ = create_api_key(workspace.root, "agent-1", roles=["agent", "aliases:write"])
    reg = open_registry(workspace)
    set_budget(reg, "agent-1", cpu_hours=0.5, max_concurrent_jobs=1, max_model_params=200_000)
    set_data_roots(workspace, [corpus, REPO / "recipes"])  # what the agent may read
    recipe = str(REPO / "recipes" / "quickstart.yaml")
    job_args = ["pipeline", "run", recipe, f"data.sources=[{corpus}]", *TINY]
    params = mcp.StdioServerParameters(
        command=sys.executable,
        args=["-m", "forgeml.cli", "-q", "-w", str(workspace.root), "mcp"],
        env={"FORGEML_API_KEY": key, "OMP_NUM_THREADS": "2"},
        cwd=str(REPO),
    )

    async def session() -> dict:
        async with mcp.Client(params, read_timeout_seconds=120) as client:
            assert {t.name for t in (await client.list_tools()).tools} == TOOLS
            plan = _data(await client.call_tool("plan", {"args": job_args}))
            assert plan["ok"], plan["refusals"]
            assert [s["name"] for s in plan["stages"]][:4] == [
                "ingest", "tokenizer", "pack", "pretrain",
            ]  # fmt: skip
            assert 0 < plan["model_params"] < 200_000 and plan["peak_memory_bytes"] > 0
            big = [*job_args, "model.dim=512", "model.n_layers=8", "model.ffn_hidden=1024"]
            refused = await client.call_tool("submit_job", {"args": big})
            assert refused.is_error and "over the limit of 200,000" in refused.content[0].text
            submitted = _data(await client.call_tool("submit_job", {"args": job_args}))
            job_id = submitted["job"]["id"]
            busy = await client.call_tool("submit_job", {"args": job_args})
            assert busy.is_error and "at most 1 at once" in busy.content[0].text

            worker = subprocess.run(
                [sys.executable, "-m", "forgeml.cli", "-q", "-w", str(workspace.root),
                 "worker", "--max-jobs", "1"],
                capture_output=True, text=True, timeout=300, cwd=REPO,
            )  # fmt: skip
            assert worker.returncode == 0, worker.stdout + worker.stderr
            status = _data(await client.call_tool("job_status", {"job": job_id}))
            logs = _data(await client.call_tool("job_logs", {"job": job_id}))
            assert status["status"] == "succeeded", logs
            assert "pretrain" in logs

            models = _data(await client.call_tool("list_assets", {"kind": "model"}))
            assert len(models) == 1
            model = models[0]["id"]
            made = {s["stage"]: s["outputs"] for s in status["summary"]["stages"]}
            assert made["pretrain"] == [model]  # the job names what it made
            evals = _data(await client.call_tool("read_eval", {"ref": model}))["evals"]
            ppl = [e["metrics"]["perplexity"] for e in evals if "perplexity" in e["metrics"]]
            assert ppl and ppl[0] > 1.0
            up = _data(await client.call_tool("lineage", {"ref": model}))
            assert {n.get("kind") for n in up["nodes"]} >= {"dataset", "tokenizer"}
            promoted = _data(
                await client.call_tool("promote", {"model": model, "alias": "champion"})
            )
            assert promoted["status"] == "pending_approval"
            used = _data(await client.call_tool("my_budget", {}))["used"]
            assert 0 < used["cpu_hours"] < 0.5 and used["active_jobs"] == 0
            return {"model": model, "approval": promoted["approval"]["id"]}

    out = asyncio.run(session())
    assert reg.resolve_alias("champion") is None  # nothing moved before a human approved
    from forgeml.governance.audit import AuditLog

    create_api_key(workspace.root, "alice", roles=["approver"])
    done = approve(
        workspace, reg, AuditLog(audit_log_path(workspace.root)), out["approval"],
        decided_by="alice",
    )  # fmt: skip
    assert done.status == "executed" and reg.resolve_alias("champion") == out["model"]
    assert verify_audit_log(audit_log_path(workspace.root)).ok


@pytest.mark.parametrize("key", [None, "fml_bad_key"])
def test_stdio_server_refuses_to_start_without_a_valid_key(workspace, key) -> None:
    env = {"OMP_NUM_THREADS": "2", "PATH": "/usr/bin:/bin"}
    if key:
        env["FORGEML_API_KEY"] = key
    r = subprocess.run(
        [sys.executable, "-m", "forgeml.cli", "-w", str(workspace.root), "mcp"],
        capture_output=True, text=True, timeout=60, cwd=REPO, env=env, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert r.returncode == 2 and "FORGEML_API_KEY holds no valid API key" in r.stderr
    assert r.stdout == ""
