"""`forgeml mcp`: the control plane as MCP tools (official `mcp` SDK, MCPServer), over stdio
or streamable HTTP, so an agent can run experiments within the limits a human set.

Over stdio the server acts for the key in $FORGEML_API_KEY, checked at start; over HTTP each
request carries `Authorization: Bearer fml_...` and a request without a valid key gets 401.
Every tool is one `ControlPlane` method: same scopes, budgets, approvals and audit as REST.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations
from pydantic import Field

from forgeml.control.ops import BudgetExceeded, ControlPlane
from forgeml.core.errors import ForgeError
from forgeml.governance.keys import Principal

KEY_ENV = "FORGEML_API_KEY"
INSTRUCTIONS = """\
forgeml is an on-premises model factory. Typical session: list_assets and read_eval to see
where things stand; plan a job (a forgeml command such as
["pipeline", "run", "/abs/recipe.yaml", "train.max_steps=200"]) to see its stages, cost and
whether your budget allows it; submit_job; poll job_status (job_logs on failure; a finished
pipeline job's `summary` lists the assets each stage made); read_eval of the new model; promote it (moving a production alias such as `champion` waits for a human's
approval: the result says so; so does every delete_asset). You only see your own jobs."""

T = TypeVar("T")
READ = ToolAnnotations(read_only_hint=True, open_world_hint=False)
WRITE = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False)

Args = Annotated[
    list[str] | None,
    Field(
        description="A forgeml command line without `forgeml` and without -w, e.g. "
        '["pipeline", "run", "/abs/path/recipe.yaml", "train.max_steps=50"] or '
        '["eval", "run", "MODEL_ID"]. Paths are absolute or relative to the workspace. '
        "Give this or `spec`."
    ),
]
Spec = Annotated[
    dict[str, Any] | None,
    Field(
        description="Or the typed job spec instead of a command line: {command, params, "
        'recipe_file, overrides}, e.g. {"command": "eval run", "params": {"model": "m"}} or '
        '{"command": "pipeline run", "params": {}, "recipe_file": "/abs/r.yaml", '
        '"overrides": ["train.max_steps=50"]}.'
    ),
]


def _job(args: list[str] | None, spec: dict[str, Any] | None) -> list[str] | dict[str, Any]:
    if (args is None) == (spec is None):
        raise ToolError("give either `args` (a command line) or `spec` (a job spec)")
    return args if args is not None else spec or {}


Ref = Annotated[str, Field(description="Asset id, unique id prefix, name, or alias")]
JobRef = Annotated[str, Field(description="Job id (or unique prefix) from submit_job")]


def build_mcp_server(control: ControlPlane, principal: Principal | None = None) -> MCPServer:
    """Tools over `control`; `principal` fixed (stdio) or None to read each request's key."""
    mcp = MCPServer(name="forgeml", instructions=INSTRUCTIONS, log_level="WARNING")

    def caller(ctx: Context) -> Principal:
        if principal is not None:
            return principal
        scheme, _, token = ((ctx.headers or {}).get("authorization") or "").partition(" ")
        who = control.authenticate(token.strip()) if scheme.lower() == "bearer" else None
        if who is None:
            raise ToolError("missing or invalid API key")
        return who

    def run(fn: Callable[[], T]) -> T:
        try:
            return fn()
        except BudgetExceeded as exc:
            raise ToolError(
                f"{exc}\n\nplan:\n{exc.plan.summary()}\n{json.dumps(exc.plan.to_dict())}"
            ) from None
        except ForgeError as exc:
            raise ToolError(str(exc)) from None

    @mcp.tool(annotations=READ)
    def list_assets(
        ctx: Context,
        kind: Annotated[
            str | None, Field(description="dataset, tokenizer, model, adapter, eval, ...")
        ] = None,
    ) -> list[dict[str, Any]]:
        """List registered assets (datasets, tokenizers, models, evals), oldest first."""
        return run(lambda: control.list_assets(caller(ctx), kind))

    @mcp.tool(annotations=READ)
    def show_asset(ctx: Context, ref: Ref) -> dict[str, Any]:
        """One asset: metadata, size, files, and the run (stage, config hash, inputs) that made it."""
        return run(lambda: control.show_asset(caller(ctx), ref))

    @mcp.tool(annotations=READ)
    def lineage(
        ctx: Context,
        ref: Ref,
        direction: Annotated[
            Literal["up", "down"],
            Field(description="up: what it was made from; down: what was made from it"),
        ] = "up",
        depth: Annotated[int | None, Field(description="Stop after this many hops", ge=1)] = None,
    ) -> dict[str, Any]:
        """Walk the lineage graph of an asset or run: nodes (assets and runs) and edges."""
        return run(lambda: control.lineage(caller(ctx), ref, direction, depth))

    @mcp.tool(annotations=READ)
    def list_runs(
        ctx: Context,
        stage: Annotated[str | None, Field(description="ingest, pretrain, eval, ...")] = None,
    ) -> list[dict[str, Any]]:
        """List runs (every stage execution), newest first, with inputs and outputs."""
        return run(lambda: control.list_runs(caller(ctx), stage))

    @mcp.tool(annotations=READ)
    def read_eval(ctx: Context, ref: Ref) -> dict[str, Any]:
        """Numbers of an eval asset (metrics, results); for a model, all of its evals."""
        return run(lambda: control.read_eval(caller(ctx), ref))

    @mcp.tool(annotations=READ)
    def plan(ctx: Context, args: Args = None, spec: Spec = None) -> dict[str, Any]:
        """Dry-run a job: stages, estimated time and memory, cost against your budget, and the
        reasons it would be refused (`ok` false). Nothing is queued."""
        return run(lambda: control.plan(caller(ctx), _job(args, spec)).to_dict())

    @mcp.tool(annotations=WRITE)
    def submit_job(
        ctx: Context,
        args: Args = None,
        spec: Spec = None,
        max_attempts: Annotated[int, Field(ge=1, le=10, description="Tries before failing")] = 3,
    ) -> dict[str, Any]:
        """Queue a forgeml command (or a job spec) as a job for the workers. It is planned
        first (its recipe validated) and refused with the reason if over your budget. Returns
        the job (with the spec it will run) and its plan."""
        return run(lambda: control.submit_job(caller(ctx), _job(args, spec), max_attempts))

    @mcp.tool(annotations=READ)
    def list_jobs(
        ctx: Context,
        status: Annotated[
            str | None, Field(description="queued, running, succeeded, failed, cancelled")
        ] = None,
    ) -> list[dict[str, Any]]:
        """Your jobs, newest first."""
        return run(lambda: control.list_jobs(caller(ctx), status))

    @mcp.tool(annotations=READ)
    def job_status(ctx: Context, job: JobRef) -> dict[str, Any]:
        """A job's status (queued, running, succeeded, failed-retryable, failed, cancelled),
        attempts, exit code, error, the plan it was admitted with, and for a finished pipeline
        job its `summary`: each stage's run and output assets, and the metrics."""
        return run(lambda: control.show_job(caller(ctx), job))

    @mcp.tool(annotations=READ)
    def job_logs(
        ctx: Context,
        job: JobRef,
        tail_chars: Annotated[int, Field(ge=1, description="Last characters of the log")] = 8000,
    ) -> str:
        """The output of a job's latest attempt (its last `tail_chars` characters)."""
        return run(lambda: control.job_logs(caller(ctx), job, tail_chars))

    @mcp.tool(annotations=ToolAnnotations(destructive_hint=True, open_world_hint=False))
    def cancel_job(ctx: Context, job: JobRef) -> dict[str, Any]:
        """Cancel a queued job, or stop a running one."""
        return run(lambda: control.cancel_job(caller(ctx), job))

    @mcp.tool(annotations=WRITE)
    def promote(
        ctx: Context,
        model: Ref,
        alias: Annotated[str, Field(description="Alias to move, e.g. candidate or champion")],
        suite: Annotated[
            str | None, Field(description="KPI suite YAML the model must pass against the alias")
        ] = None,
        force: Annotated[bool, Field(description="Ignore a failing gate (needs reason)")] = False,
        reason: str = "",
    ) -> dict[str, Any]:
        """Point an alias at a model. Production aliases (champion, production, prod) are not
        moved at once: a pending approval is returned, executed when a human approves it."""
        return run(
            lambda: control.promote(
                caller(ctx), model, alias, suite=suite, force=force, reason=reason
            )
        )

    @mcp.tool(annotations=WRITE)
    def rollback(ctx: Context, alias: str, reason: str = "") -> dict[str, Any]:
        """Move an alias back to its previous target."""
        return run(lambda: control.rollback(caller(ctx), alias, reason))

    @mcp.tool(annotations=WRITE)
    def export_model(
        ctx: Context,
        model: Ref,
        out: Annotated[str, Field(description="Folder to write (outside the workspace: approval)")],
        reason: str = "",
    ) -> dict[str, Any]:
        """Write a model in HF format; outside the workspace it waits for a human's approval."""
        return run(lambda: control.export(caller(ctx), model, out, reason))

    @mcp.tool(annotations=ToolAnnotations(destructive_hint=True, open_world_hint=False))
    def delete_asset(ctx: Context, ref: Ref, reason: str = "") -> dict[str, Any]:
        """Ask to delete an asset (its stored files; the registry keeps a deleted record). It
        is refused at once, with the reason, while other assets were made from it or an alias
        points at it; otherwise a pending approval is returned, executed when a human approves
        it. The files it was registered from are never touched."""
        return run(lambda: control.delete_asset(caller(ctx), ref, reason))

    @mcp.tool(annotations=READ)
    def list_approvals(
        ctx: Context,
        status: Annotated[
            str | None, Field(description="pending, executed, failed, denied")
        ] = None,
    ) -> list[dict[str, Any]]:
        """Approvals you requested (all of them with the approvals:read scope)."""
        return run(lambda: control.list_approvals(caller(ctx), status))

    @mcp.tool(annotations=READ)
    def my_budget(ctx: Context) -> dict[str, Any]:
        """Your budget (CPU/GPU-hours, concurrent jobs, model size, data clearance) and usage."""
        return run(lambda: control.budget(caller(ctx)))

    return mcp


class _RequireKey:
    """ASGI wrapper: HTTP requests without a valid API key get 401 before reaching MCP."""

    def __init__(self, app: Any, control: ControlPlane) -> None:
        self.app, self.control = app, control

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http":
            headers = dict(scope.get("headers") or [])
            scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
            ok = scheme.lower() == "bearer" and self.control.authenticate(token.strip())
            if not ok:
                client = (scope.get("client") or ("-",))[0]
                self.control.audit.append(
                    "control_auth_denied", path=scope.get("path"), client=client, status=401
                )
                body = json.dumps(
                    {"error": {"type": "unauthorized", "message": "missing or invalid API key"}}
                ).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"www-authenticate", b"Bearer"),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def mcp_http_app(control: ControlPlane, host: str = "127.0.0.1") -> Any:
    """The streamable-HTTP ASGI app (endpoint /mcp) behind API-key checks."""
    return _RequireKey(build_mcp_server(control).streamable_http_app(host=host), control)


def run_mcp(
    workspace_root: str | Path | None,
    *,
    http: bool = False,
    host: str = "127.0.0.1",
    port: int = 8200,
) -> None:
    """Serve the tools over stdio (key from $FORGEML_API_KEY) or streamable HTTP."""
    from forgeml.core.workspace import open_workspace

    control = ControlPlane(open_workspace(workspace_root))
    try:
        if http:
            import uvicorn

            control.audit.append("mcp_server_started", transport="http", host=host, port=port)
            uvicorn.run(mcp_http_app(control, host), host=host, port=port, log_level="warning")
            return
        who = control.authenticate(os.environ.get(KEY_ENV))
        if who is None:
            raise ForgeError(
                f"${KEY_ENV} holds no valid API key",
                hint="create one with `forgeml keys create --principal NAME --role agent`",
            )
        control.audit.append("mcp_server_started", transport="stdio", principal=who.name)
        build_mcp_server(control, who).run("stdio")
    finally:
        control.close()
