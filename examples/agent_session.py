"""An agent's session with forgeml over MCP: from a corpus to a promoted model in about a minute.

A human sets the stage (workspace, demo corpus, tiny recipe, an agent key and budget, a
worker; done with the Python functions those `forgeml` commands call, to keep it short); the
agent then drives `forgeml mcp` over stdio with the official MCP SDK client: plan, submit,
poll, read the eval, promote to `candidate`, ask for `champion`; a human approves that with
`forgeml approvals approve`. Prints the transcript of every tool call, results trimmed.

    python examples/agent_session.py [--workspace DIR] [--max-steps N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mcp
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent / "acme"))  # the ACME demo domain
from acme import generate_corpus  # noqa: E402

from forgeml.control.budgets import set_budget  # noqa: E402
from forgeml.core.workspace import init_workspace  # noqa: E402
from forgeml.governance.keys import create_api_key  # noqa: E402
from forgeml.registry import open_registry  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
AGENT = "agent-1"
FORGEML = [sys.executable, "-m", "forgeml.cli", "-q"]
# The quickstart recipe at toy size: a ~100k-parameter model, short sequences, small evals.
TINY = {
    "tokenizer": {"vocab_size": 512},
    "model": {
        "dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "ffn_hidden": 128,
        "max_seq_len": 64,
    },
    "train": {
        "micro_batch_size": 8, "seq_len": 64, "eval_every": 0, "checkpoint_every": 0,
        "dtype": "fp32",
    },
    "eval": {"max_batches": 4, "infill_examples": 8},
    "fim": {"rate": 0.0},
    "generate": {"prompts": ["All employees must"], "max_new_tokens": 12},
}  # fmt: skip
T0 = time.monotonic()


def say(line: str = "") -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {line}" if line else "", flush=True)


def trim(value: Any, depth: int = 0) -> Any:
    """A result cut to what a reader scans: short strings, the first items of long lists,
    rounded floats, nesting four levels deep."""
    if isinstance(value, str):
        value = value.strip()
        return value if len(value) <= 80 else value[:77] + "..."
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, list):
        head = [trim(v, depth + 1) for v in value[:5]]
        return head + ([f"... {len(value) - 5} more"] if len(value) > 5 else [])
    if isinstance(value, dict):
        if depth >= 4:
            return "{...}"
        return {k: trim(v, depth + 1) for k, v in value.items()}
    return value


def show(value: Any, max_lines: int = 14) -> None:
    text = yaml.safe_dump(trim(value), sort_keys=False, width=96, default_flow_style=None)
    lines = text.rstrip().splitlines()
    if len(lines) > max_lines:
        lines = [*lines[:max_lines], f"... ({len(lines) - max_lines} more lines)"]
    for line in lines:
        print(f"          {line}", flush=True)


def pick(*keys: str) -> Callable[[Any], Any]:
    """A view of a result: only these keys of a dict, or of each dict in a list."""

    def view(data: Any) -> Any:
        if isinstance(data, list):
            return [view(d) for d in data]
        return {k: data[k] for k in keys if k in data}

    return view


async def call(
    client: mcp.Client,
    tool: str,
    args: dict[str, Any],
    *,
    view: Callable[[Any], Any] | None = None,
    quiet: bool = False,
) -> Any:
    """Call a tool and print `agent -> tool(args)` and its trimmed result (through `view`
    when given). An error result is printed and returned as None."""
    if not quiet:
        shown = ", ".join(f"{k}={v!r}" for k, v in args.items())
        say(f"agent -> {tool}({shown})")
    result = await client.call_tool(tool, args)
    if result.is_error:
        say(f"  <- ERROR {result.content[0].text.splitlines()[0]}")
        return None
    data = result.structured_content
    data = data.get("result", data) if isinstance(data, dict) and len(data) == 1 else data
    if not quiet:
        say("  <-")
        show(view(data) if view else data)
    return data


def human(line: str) -> None:
    say(f"human $ {line}")


def mcp_server(ws_root: Path, key: str) -> mcp.StdioServerParameters:
    """`forgeml mcp` as the client's subprocess, acting for the agent's key."""
    return mcp.StdioServerParameters(
        command=sys.executable,
        args=["-m", "forgeml.cli", "-q", "-w", str(ws_root), "mcp"],
        env={"FORGEML_API_KEY": key, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")},
        cwd=str(REPO),
    )


def setup(ws_root: Path, max_steps: int) -> tuple[list[str], str, subprocess.Popen]:
    """What a human does once: workspace, corpus, recipe, agent key and budget, a worker."""
    say("== setup, by a human ==")
    ws = init_workspace(ws_root)
    human(f"forgeml init {ws.root}")
    corpus = ws.root / "acme-corpus"
    manifest = generate_corpus(corpus, seed=3, scale=0.05)
    human(f"python examples/acme/generate.py --out {corpus} --seed 3 --scale 0.05")
    say(f"  {manifest['files']} files, {manifest['bytes']:,} bytes")
    recipe = yaml.safe_load((REPO / "recipes" / "quickstart.yaml").read_text())
    for section, values in TINY.items():
        recipe[section] = {**recipe.get(section, {}), **values}
    for section in ("sft", "posttrain"):  # the toy run pre-trains only
        recipe.pop(section, None)
    recipe["data"]["curate"] = False
    recipe["name"] = "acme-tiny"
    recipe["data"]["sources"] = [str(corpus)]
    recipe["train"]["max_steps"] = max_steps
    recipe_path = ws.root / "acme-tiny.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    say(f"  wrote {recipe_path.name}: recipes/quickstart.yaml at toy size ({max_steps} steps)")
    key, info = create_api_key(ws.root, AGENT, roles=["agent", "aliases:write"])
    human(f"forgeml keys create --principal {AGENT} --role agent --role aliases:write")
    say(f"  key {info.id} for {AGENT}: {key[:12]}... (into the MCP client's env)")
    set_budget(
        open_registry(ws), AGENT, cpu_hours=0.5, max_concurrent_jobs=1, max_model_params=200_000
    )
    human(f"forgeml budgets set {AGENT} --cpu-hours 0.5 --max-jobs 1 --max-params 200000")
    with (ws.root / "worker.log").open("w") as log:
        worker = subprocess.Popen(
            [*FORGEML, "-w", str(ws.root), "worker", "--max-jobs", "1"],
            stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
        )  # fmt: skip
    human("forgeml worker --max-jobs 1 &")
    return ["pipeline", "run", recipe_path.name], key, worker  # paths relative to the workspace


async def agent_session(ws_root: Path, job_args: list[str], key: str) -> tuple[str, str]:
    """The agent's side: returns (model id, approval id)."""
    say()
    say("== agent, through `forgeml mcp` over stdio (MCP Python SDK client) ==")
    async with mcp.Client(mcp_server(ws_root, key), read_timeout_seconds=120) as client:
        tools = (await client.list_tools()).tools
        say("agent -> list_tools()")
        say(f"  <- {len(tools)} tools: {', '.join(t.name for t in tools)}")
        await call(
            client,
            "my_budget",
            {},
            view=lambda b: {
                "budget": pick("cpu_hours", "max_concurrent_jobs", "max_model_params")(b["budget"]),
                "used": b["used"],
            },
        )
        await call(client, "list_assets", {})

        big = [*job_args, "model.dim=512", "model.n_layers=8", "model.ffn_hidden=1024"]
        await call(client, "plan", {"args": big}, view=pick("ok", "model_params", "refusals"))
        plan = await call(
            client,
            "plan",
            {"args": job_args},
            view=lambda p: {
                "ok": p["ok"],
                "stages": {s["name"]: f"~{s['seconds']:.0f} s" for s in p["stages"]},
                "estimated_hours": p["estimated_hours"],
                "model_params": p["model_params"],
            },
        )
        if not plan or not plan["ok"]:
            raise SystemExit("the tiny job should fit the agent's budget")
        submitted = await call(
            client, "submit_job", {"args": job_args}, view=lambda r: pick("id", "status")(r["job"])
        )
        job_id = submitted["job"]["id"]

        say(f"agent -> job_status(job={job_id!r})  ... polling every 3 s")
        status, polls, started = None, 0, time.monotonic()
        while status not in ("succeeded", "failed", "cancelled"):
            await asyncio.sleep(3)
            polls += 1
            job = await call(client, "job_status", {"job": job_id}, quiet=True)
            if job is None:
                raise SystemExit(f"job_status of {job_id} failed")
            if job["status"] != status:
                status = job["status"]
                say(f"  <- status: {status} (poll {polls}, {time.monotonic() - started:.0f} s)")
        if status != "succeeded":
            await call(client, "job_logs", {"job": job_id, "tail_chars": 2000})
            raise SystemExit(f"job {job_id} {status}")
        say("  <- summary:")
        for stage in job["summary"]["stages"]:
            print(f"{'':10}{stage['stage']:<12} -> {', '.join(stage['outputs'])}", flush=True)
        model = next(s["outputs"][0] for s in job["summary"]["stages"] if s["stage"] == "pretrain")

        await call(client, "list_assets", {"kind": "model"})
        record = await call(
            client,
            "read_eval",
            {"ref": model},
            view=lambda r: {e["name"]: e.get("metrics") for e in r["evals"]},
        )
        if not record or not record.get("evals"):
            raise SystemExit(f"model {model} has no evals")
        await call(
            client,
            "lineage",
            {"ref": model, "depth": 2},
            view=lambda g: [f"{n['id']} ({n.get('name')})" for n in g["nodes"]],
        )
        await call(client, "promote", {"model": model, "alias": "candidate"})
        asked = await call(
            client,
            "promote",
            {"model": model, "alias": "champion", "reason": "first model of the ACME toy run"},
            view=lambda r: {
                "status": r["status"],
                "approval": pick("id", "action", "params", "status")(r["approval"]),
            },
        )
        if not asked or asked["status"] != "pending_approval":
            raise SystemExit(f"promoting to champion should wait for a human: {asked}")
        return model, asked["approval"]["id"]


async def agent_checks(ws_root: Path, key: str, model: str) -> None:
    """A second, short session: the agent sees the approved promotion."""
    say()
    say("== agent, later ==")
    async with mcp.Client(mcp_server(ws_root, key), read_timeout_seconds=120) as client:
        await call(
            client,
            "list_approvals",
            {},
            view=pick("id", "status", "action", "requested_by", "decided_by", "result"),
        )
        champion = await call(
            client,
            "show_asset",
            {"ref": "champion"},
            view=lambda a: {
                **pick("id", "kind", "name")(a),
                "made by": pick("stage", "inputs")(a["run"]),
            },
        )
        if not champion or champion["id"] != model:
            raise SystemExit(f"champion should point at {model}, got {champion}")
        await call(client, "my_budget", {}, view=lambda b: b["used"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, help="fresh folder (default: a temp dir)")
    parser.add_argument("--max-steps", type=int, default=150, help="training steps (default 150)")
    args = parser.parse_args()
    ws_root = (args.workspace or Path(tempfile.mkdtemp(prefix="forgeml-agent-")) / "ws").resolve()
    if ws_root.exists() and any(ws_root.iterdir()):
        raise SystemExit(f"{ws_root} is not empty: the session wants a fresh workspace")

    job_args, key, worker = setup(ws_root, args.max_steps)
    try:
        model, approval = asyncio.run(agent_session(ws_root, job_args, key))
    except BaseException:
        worker.terminate()
        raise
    finally:
        worker.wait(timeout=60)  # it exits after the one job

    say()
    say("== a human reviews the pending promotion ==")
    alice, _ = create_api_key(ws_root, "alice", roles=["approver"])  # approvers hold keys
    human("forgeml keys create --principal alice --role approver")
    approve = [*FORGEML, "-w", str(ws_root), "approvals", "approve", approval]
    human(f"FORGEML_API_KEY=$(cat alice.key) forgeml approvals approve {approval}")
    env = {**os.environ, "FORGEML_API_KEY": alice}  # the key proves who approves
    done = subprocess.run(approve, capture_output=True, text=True, cwd=REPO, timeout=120, env=env)
    for line in (done.stdout + done.stderr).strip().splitlines()[:8]:
        say(f"  {line}")
    if done.returncode != 0:
        raise SystemExit("the approval failed")

    asyncio.run(agent_checks(ws_root, key, model))
    say()
    say(f"champion -> {model}  (workspace {ws_root})")


if __name__ == "__main__":
    main()
