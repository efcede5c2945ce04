"""The OpenAI-compatible HTTP API (FastAPI) in front of the batching engines, with governance:
`create_app` builds the app around the request pipeline (`serve/gateway.py`) and its routes
(`serve/routes.py`); `serve` loads the models and runs it (`forgeml serve`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from forgeml.governance.audit import AuditLog
from forgeml.governance.keys import KeyStore
from forgeml.governance.policy import Policy
from forgeml.registry.store import Registry
from forgeml.serve.gateway import Gateway
from forgeml.serve.loading import (
    ServedModel,
    load_served_models,
    served_under_alias,
    upstream_served_models,
)
from forgeml.serve.requests import (
    ApiError,
    RequestGuard,
    RequestLimits,
    derived_max_body_bytes,
    error_body,
)
from forgeml.serve.routes import api_routes
from forgeml.serve.upstream import Upstream


def create_app(models: dict[str, ServedModel], **gateway_options: Any) -> FastAPI:
    """The API over loaded `models`, behind a `Gateway` built with `gateway_options` (its
    keyword arguments: `keys`, required, where None turns authentication off for local
    development, every request then acting as an `anonymous` admin; `policy`, `audit`,
    `log_bodies`, `max_default_tokens`; `limits`, what one request may send, by default
    derived from the models' contexts, see `RequestLimits`).

    There is no /docs page (Swagger UI loads from a CDN); the schema is at /openapi.json, for
    keys with the `models` scope."""
    gateway = Gateway(models, **gateway_options)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        for m in models.values():
            if m.upstream is not None:
                await m.upstream.aclose()

    app = FastAPI(
        title="forgeml serve",
        version="1",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.metrics = gateway.metrics
    gateway.metrics.gauge(
        "forgeml_engine_requests",
        "Requests in each engine by state (queued, active) and the slot count.",
        lambda: {
            (("model", m.name), ("state", state)): float(v)
            for m in models.values()
            if m.engine is not None
            for state, v in m.engine.stats().items()
        },
    )
    limits = gateway.limits
    # Room for the most media a request may carry, when a served model reads any.
    media_bytes = limits.max_media_parts * limits.max_media_bytes
    app.add_middleware(
        RequestGuard,
        max_body_bytes=limits.max_body_bytes
        or derived_max_body_bytes(
            list(gateway.char_bounds.values()),
            media_bytes if any(m.multimodal for m in models.values()) else 0,
        ),
        record_unrecorded=gateway.record_unrecorded,
    )
    _add_error_handlers(app)
    app.include_router(api_routes(gateway))
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every error as an OpenAI error object."""

    @app.exception_handler(Exception)
    async def _crash(_request: Request, _exc: Exception) -> JSONResponse:
        # Recorded as a 500 by `RequestGuard`; the traceback goes to the server's log.
        return JSONResponse(
            error_body(
                "internal error while handling the request; it is recorded in the audit log",
                "server_error",
                "internal_error",
            ),
            500,
        )

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(
            error_body(exc.message, exc.kind, exc.code), exc.status, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
        return JSONResponse(error_body(message, "invalid_request_error", None), 400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            error_body(str(exc.detail), "invalid_request_error", None), exc.status_code
        )


@dataclass(frozen=True)
class ServerOptions:
    """How a server listens and what it applies to every request."""

    host: str
    port: int
    policy: Policy | None
    log_bodies: bool
    limits: RequestLimits | None
    ssl_certfile: str | None
    ssl_keyfile: str | None


def run_server(
    models: dict[str, ServedModel],
    keys: KeyStore | None,
    audit: AuditLog,
    options: ServerOptions,
    **started: Any,
) -> None:
    """Serve `models` behind `keys` (None: no authentication), the policy, limits and `audit`
    until interrupted; the start is audited with what serves them (`started`). Shared by the
    local engines, upstream mode and vLLM replicas."""
    import uvicorn

    app = create_app(
        models,
        keys=keys,
        policy=options.policy,
        audit=audit,
        log_bodies=options.log_bodies,
        limits=options.limits,
    )
    audit.append(
        "server_started",
        models={m.name: m.asset_id for m in models.values()},
        host=options.host,
        port=options.port,
        auth=keys is not None,
        **started,
        tls=options.ssl_certfile is not None,
    )
    uvicorn.run(
        app,
        host=options.host,
        port=options.port,
        ssl_certfile=options.ssl_certfile,
        ssl_keyfile=options.ssl_keyfile,
        log_level="info",
    )


def serve(
    workspace_root: str | Path,
    refs: list[str] | None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    policy_path: str | Path | None = None,
    no_auth: bool = False,
    log_bodies: bool = False,
    max_batch: int = 8,
    max_queue: int = 64,
    device: str = "cpu",
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
    upstream: str | None = None,
    upstream_key_env: str | None = None,
    upstream_timeout: float = 120.0,
    alias: str | None = None,
    limits: RequestLimits | None = None,
    compile_step: bool = False,
) -> None:
    """Run the server until interrupted (the `forgeml serve` command).

    Binds 127.0.0.1 unless `host` says otherwise; give `ssl_certfile`/`ssl_keyfile` for TLS.
    With `upstream` (an OpenAI base URL, e.g. a vLLM server) nothing is loaded: the upstream's
    models (or those in `refs`) are served through the same keys, policies, limits and audit;
    its key is read from the environment variable named `upstream_key_env`. `alias` serves the
    one model under that name too (`served_under_alias`).
    """
    from forgeml.core.workspace import open_workspace
    from forgeml.governance.audit import audit_log_path
    from forgeml.governance.policy import load_policy
    from forgeml.serve.upstream import upstream_base_url, upstream_key_from_env

    ws = open_workspace(workspace_root)
    policy = load_policy(policy_path)
    if upstream is not None:
        target = Upstream(
            upstream_base_url(upstream), upstream_key_from_env(upstream_key_env), upstream_timeout
        )
        models = upstream_served_models(target, refs)
    registry = Registry(ws.registry_url, ws.artifacts_dir)
    if upstream is None:
        models = load_served_models(
            registry, refs or ["champion"], max_batch=max_batch, max_queue=max_queue,
            device=device, compile_step=compile_step,
        )  # fmt: skip
    if alias is not None and alias not in models:
        models = served_under_alias(models, alias)
    audit = AuditLog(audit_log_path(ws.root))
    try:
        run_server(
            models,
            None if no_auth else KeyStore(registry.engine),
            audit,
            ServerOptions(host, port, policy, log_bodies, limits, ssl_certfile, ssl_keyfile),
            upstream=upstream_base_url(upstream) if upstream else None,
        )
    finally:
        for m in models.values():
            if m.engine is not None:
                m.engine.close()
        audit.append("server_stopped")
        registry.close()
