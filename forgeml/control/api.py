"""`forgeml control serve`: the REST control plane (FastAPI; schema at /openapi.json).

Jobs (plan, submit, list, show, logs, cancel), assets and lineage, runs and metrics, eval
numbers and HTML reports, alias moves, asset deletion, exports and approvals — each route one
`ControlPlane` method, behind the serving API keys (`Authorization: Bearer fml_...`) and their
scopes. The schema is served to a valid key only, and no docs page loads scripts from a CDN.
Every request is audited with its status (forgeml.control.middleware).
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field, StringConstraints, field_validator, model_validator

from forgeml.control.limits import (
    MAX_ARG_CHARS,
    MAX_JOB_ARGS,
    MAX_PATH_CHARS,
    SHUTDOWN,
    InvalidRequest,
    RequestTooLarge,
    ShuttingDown,
    check_text,
)
from forgeml.control.middleware import AuditedRequests
from forgeml.control.ops import BudgetExceeded, ControlPlane, Forbidden
from forgeml.core.errors import ForgeError, NotFoundError
from forgeml.governance.keys import Principal

Arg = Annotated[str, StringConstraints(max_length=MAX_ARG_CHARS)]


class _Body(BaseModel):
    """A request body: its strings must be clean text (no NUL byte, no lone surrogate)."""

    @field_validator("*", mode="after")
    @classmethod
    def _clean_text(cls, value: Any) -> Any:
        for text in value if isinstance(value, list) else [value]:
            if isinstance(text, str):
                try:
                    check_text(text, "a string")
                except InvalidRequest as exc:
                    raise ValueError(exc.message) from None
        return value


class JobRequest(_Body):
    args: list[Arg] | None = Field(
        None,
        max_length=MAX_JOB_ARGS,
        description="The forgeml command, e.g. ['pipeline', 'run', 'recipe.yaml', 'train.max_steps=50']",
    )
    spec: dict[str, Any] | None = Field(
        None,
        description="Or the typed job spec: {command, params, recipe_file, overrides} "
        "(forgeml.control.job_spec.JobSpec), e.g. {'command': 'eval run', 'params': {'model': 'm'}}",
    )
    max_attempts: int = Field(3, ge=1, le=10, description="Attempts before the job is failed")

    @model_validator(mode="after")
    def _one_job(self) -> JobRequest:
        if (self.args is None) == (self.spec is None):
            raise ValueError("give either `args` (a command line) or `spec` (a job spec)")
        return self

    @property
    def job(self) -> list[str] | dict[str, Any]:
        return self.args if self.args is not None else self.spec or {}


class PromoteRequest(_Body):
    model: str = Field(description="Model asset id, prefix or name")
    suite: str | None = Field(None, description="KPI suite YAML whose gate the move must pass")
    force: bool = Field(False, description="Move despite a failing gate (needs a reason)")
    reason: str = ""


class RollbackRequest(_Body):
    reason: str = ""


class ExportRequest(_Body):
    model: str
    out: str = Field(
        max_length=MAX_PATH_CHARS,
        description="Folder to write (outside the workspace: needs approval)",
    )
    reason: str = ""


class DecisionRequest(_Body):
    reason: str = ""


class LabelRequest(_Body):
    level: str = Field(max_length=64, description="Classification level, e.g. 'restricted'")
    reason: str = Field("", max_length=2000)


def create_control_app(control: ControlPlane) -> FastAPI:
    """The REST app over one workspace's control plane."""
    app = FastAPI(
        title="forgeml control plane",
        description="Drive a forgeml workspace: jobs, assets, lineage, evals, aliases, approvals.",
        version="1",
        docs_url=None,  # Swagger UI and ReDoc load scripts from a CDN: none in an air gap
        redoc_url=None,
        openapi_url=None,  # served below, to a valid key only: it lists every internal route
    )
    app.add_middleware(AuditedRequests, audit=control.audit)
    bearer = HTTPBearer(auto_error=False, description="A forgeml API key: fml_<id>_<secret>")

    def principal(
        request: Request, cred: HTTPAuthorizationCredentials | None = Depends(bearer)
    ) -> Principal:
        who = control.authenticate(cred.credentials if cred else None)
        if who is None:
            client = request.client.host if request.client else "-"
            control.audit.append(
                "control_auth_denied", path=request.url.path, client=client, status=401
            )
            raise _Unauthorized()
        request.state.principal, request.state.key_id = who.name, who.key_id
        return who

    @app.exception_handler(RequestValidationError)
    async def _invalid(_r: Request, exc: RequestValidationError) -> JSONResponse:
        # The caller's input is not echoed: it may be megabytes, or text with no UTF-8 form.
        problems = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))}
            for e in exc.errors()[:20]
        ]
        first = problems[0] if problems else {"loc": [], "msg": "invalid request"}
        message = f"{'.'.join(first['loc'][1:]) or 'request'}: {first['msg']}"
        body = {"type": "invalid_request", "message": message, "problems": problems}
        return JSONResponse({"error": body}, status_code=422)

    @app.exception_handler(_Unauthorized)
    async def _unauthorized(_r: Request, _e: _Unauthorized) -> JSONResponse:
        return JSONResponse(
            {"error": {"type": "unauthorized", "message": "missing or invalid API key"}},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )

    @app.exception_handler(ForgeError)
    async def _forge_error(request: Request, exc: ForgeError) -> JSONResponse:
        body: dict[str, Any] = {"type": "bad_request", "message": str(exc)}
        status = 400
        if isinstance(exc, BudgetExceeded):
            status, body["type"], body["plan"] = 403, "budget_exceeded", exc.plan.to_dict()
        elif isinstance(exc, Forbidden):
            status, body["type"] = 403, "forbidden"
            control.audit.append(
                "control_forbidden", path=request.url.path, status=403, message=str(exc)
            )
        elif isinstance(exc, NotFoundError):
            status, body["type"] = 404, "not_found"
        elif isinstance(exc, InvalidRequest):
            status = 413 if isinstance(exc, RequestTooLarge) else 422
            body["type"] = "too_large" if status == 413 else "invalid_request"
        elif isinstance(exc, ShuttingDown):
            status, body["type"] = 503, "shutting_down"
        return JSONResponse({"error": body}, status_code=status)

    Who = Depends(principal)

    @app.get("/openapi.json", tags=["meta"], include_in_schema=False)
    def openapi(_who: Principal = Who) -> dict[str, Any]:
        return app.openapi()

    @app.get("/healthz", tags=["meta"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/plan", tags=["jobs"], summary="Dry-run plan of a job (nothing is queued)")
    def plan(body: JobRequest, who: Principal = Who) -> dict[str, Any]:
        return control.plan(who, body.job).to_dict()

    @app.post("/v1/jobs", tags=["jobs"], summary="Plan, check the budget, and queue a job")
    def submit(body: JobRequest, who: Principal = Who) -> dict[str, Any]:
        return control.submit_job(who, body.job, body.max_attempts)

    @app.get("/v1/jobs", tags=["jobs"], summary="Your jobs, newest first")
    def jobs(status: str | None = None, who: Principal = Who) -> list[dict[str, Any]]:
        return control.list_jobs(who, status)

    @app.get("/v1/jobs/{job_id}", tags=["jobs"])
    def job(job_id: str, who: Principal = Who) -> dict[str, Any]:
        return control.show_job(who, job_id)

    @app.get("/v1/jobs/{job_id}/logs", tags=["jobs"], response_class=PlainTextResponse)
    def job_logs(job_id: str, tail: int = 20000, who: Principal = Who) -> str:
        return control.job_logs(who, job_id, tail)

    @app.post("/v1/jobs/{job_id}/cancel", tags=["jobs"])
    def cancel(job_id: str, who: Principal = Who) -> dict[str, Any]:
        return control.cancel_job(who, job_id)

    @app.get("/v1/budget", tags=["jobs"], summary="Your budget and usage")
    def budget(who: Principal = Who) -> dict[str, Any]:
        return control.budget(who)

    @app.get("/v1/assets", tags=["assets"])
    def assets(kind: str | None = None, who: Principal = Who) -> list[dict[str, Any]]:
        return control.list_assets(who, kind)

    @app.get("/v1/assets/{ref}", tags=["assets"])
    def asset(ref: str, who: Principal = Who) -> dict[str, Any]:
        return control.show_asset(who, ref)

    @app.delete(
        "/v1/assets/{ref}", tags=["assets"], summary="Ask to delete an asset (needs approval)"
    )
    def delete_asset(ref: str, reason: str = "", who: Principal = Who) -> dict[str, Any]:
        return control.delete_asset(who, ref, reason)

    @app.post(
        "/v1/assets/{ref}/label", tags=["assets"],
        summary="Set an asset's classification label (lowering it needs approval)",
    )  # fmt: skip
    def label_asset(ref: str, body: LabelRequest, who: Principal = Who) -> dict[str, Any]:
        return control.label_asset(who, ref, body.level, body.reason)

    @app.get("/v1/assets/{ref}/lineage", tags=["assets"])
    def lineage(
        ref: str, direction: str = "up", depth: int | None = None, who: Principal = Who
    ) -> dict[str, Any]:
        return control.lineage(who, ref, direction, depth)

    @app.get("/v1/runs", tags=["runs"])
    def runs(
        stage: str | None = None, status: str | None = None, who: Principal = Who
    ) -> list[dict[str, Any]]:
        return control.list_runs(who, stage, status)

    @app.get("/v1/runs/{run_id}", tags=["runs"], summary="A run: config, metrics, lineage ids")
    def run(run_id: str, who: Principal = Who) -> dict[str, Any]:
        return control.show_run(who, run_id)

    @app.get("/v1/evals/{ref}", tags=["evals"], summary="An eval's numbers (or a model's evals)")
    def read_eval(ref: str, who: Principal = Who) -> dict[str, Any]:
        return control.read_eval(who, ref)

    @app.get(
        "/v1/evals/{ref}/report", tags=["evals"], response_class=HTMLResponse,
        summary="An eval's HTML report",
    )  # fmt: skip
    def eval_report(ref: str, who: Principal = Who) -> str:
        return control.eval_report(who, ref)

    @app.get("/v1/aliases", tags=["aliases"])
    def aliases(who: Principal = Who) -> dict[str, str]:
        return control.aliases(who)

    @app.post("/v1/aliases/{alias}/promote", tags=["aliases"])
    def promote(alias: str, body: PromoteRequest, who: Principal = Who) -> dict[str, Any]:
        return control.promote(
            who, body.model, alias, suite=body.suite, force=body.force, reason=body.reason
        )

    @app.post("/v1/aliases/{alias}/rollback", tags=["aliases"])
    def rollback(alias: str, body: RollbackRequest, who: Principal = Who) -> dict[str, Any]:
        return control.rollback(who, alias, body.reason)

    @app.post("/v1/exports", tags=["aliases"], summary="Export a model (outside: needs approval)")
    def export(body: ExportRequest, who: Principal = Who) -> dict[str, Any]:
        return control.export(who, body.model, body.out, body.reason)

    @app.get("/v1/approvals", tags=["approvals"])
    def approvals(status: str | None = None, who: Principal = Who) -> list[dict[str, Any]]:
        return control.list_approvals(who, status)

    @app.post("/v1/approvals/{approval_id}/approve", tags=["approvals"])
    def approve(approval_id: str, who: Principal = Who) -> dict[str, Any]:
        return control.decide(who, approval_id, True)

    @app.post("/v1/approvals/{approval_id}/deny", tags=["approvals"])
    def deny(approval_id: str, body: DecisionRequest, who: Principal = Who) -> dict[str, Any]:
        return control.decide(who, approval_id, False, body.reason)

    return app


class _Unauthorized(Exception):
    pass


def _exit_quietly(_signum: int, _frame: Any) -> None:
    raise SystemExit(0)


SHUTDOWN_GRACE_S = 3  # in-flight requests get this long to finish after SIGTERM/SIGINT


def serve_control(
    workspace_root: str | Path | None, *, host: str = "127.0.0.1", port: int = 8100
) -> None:
    """Run the REST control plane until interrupted."""
    import uvicorn

    from forgeml.core.workspace import open_workspace

    class _Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            SHUTDOWN.set()  # planning loops stop at their next check (ShuttingDown, a 503)
            super().handle_exit(sig, frame)

    # The planner's memory estimate needs torch: imported now, not inside a first request
    # (an import cannot stop part-way, so a plan in flight could not end promptly on SIGTERM).
    import torch  # noqa: F401

    control = ControlPlane(open_workspace(workspace_root))
    control.audit.append("control_server_started", host=host, port=port)
    config = uvicorn.Config(
        create_control_app(control), host=host, port=port, log_level="warning",
        timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
    )  # fmt: skip
    # uvicorn re-raises the signal it caught once it has shut down: end with SystemExit, so
    # the stop is audited and the registry closed instead of the process dying on the spot
    signal.signal(signal.SIGTERM, _exit_quietly)
    try:
        _Server(config).run()
    finally:
        control.audit.append("control_server_stopped")
        control.close()
