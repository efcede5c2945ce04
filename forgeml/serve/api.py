"""The OpenAI-compatible HTTP API (FastAPI) in front of the batching engines, with governance:
`create_app` builds the app around the request pipeline (`serve/gateway.py`) and its routes
(`serve/routes.py`); `serve` loads the models and runs it (`forgeml serve`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from forgeml.governance.audit import AuditLog
from forgeml.governance.keys import KeyStore
from forgeml.governance.policy import Policy
from forgeml.registry.store import Registry
from forgeml.serve.gateway import DEFAULT_CHAT_TOKENS, Gateway
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


def create_app(
    models: dict[str, ServedModel],
    *,
    keys: KeyStore | None,
    policy: Policy | None = None,
    audit: AuditLog | None = None,
    log_bodies: bool = False,
    max_default_tokens: int = DEFAULT_CHAT_TOKENS,
    limits: RequestLimits | None = None,
) -> FastAPI:
    """The API over loaded `models`. `keys=None` turns authentication off (local development
    only): every request then acts as an `anonymous` admin. `limits` caps what one request may
    send (default: derived from the models' contexts, see `RequestLimits`).

    There is no /docs page (Swagger UI loads from a CDN); the schema is at /openapi.json, for
    keys with the `models` scope."""
    gateway = Gateway(
        models,
        keys=keys,
        policy=policy,
        audit=audit,
        log_bodies=log_bodies,
        max_default_tokens=max_default_tokens,
        limits=limits,
    )

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
    app.add_middleware(
        RequestGuard,
        max_body_bytes=gateway.limits.max_body_bytes
        or derived_max_body_bytes(list(gateway.char_bounds.values())),
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
) -> None:
    """Run the server until interrupted (the `forgeml serve` command).

    Binds 127.0.0.1 unless `host` says otherwise; give `ssl_certfile`/`ssl_keyfile` for TLS.
    With `upstream` (an OpenAI base URL, e.g. a vLLM server) nothing is loaded: the upstream's
    models (or those in `refs`) are served through the same keys, policies, limits and audit;
    its key is read from the environment variable named `upstream_key_env`. `alias` serves the
    one model under that name too (`served_under_alias`).
    """
    import uvicorn

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
            registry, refs or ["champion"], max_batch=max_batch, max_queue=max_queue, device=device
        )
    if alias is not None and alias not in models:
        models = served_under_alias(models, alias)
    audit = AuditLog(audit_log_path(ws.root))
    keys = None if no_auth else KeyStore(registry.engine)
    app = create_app(
        models, keys=keys, policy=policy, audit=audit, log_bodies=log_bodies, limits=limits
    )
    audit.append(
        "server_started",
        models={m.name: m.asset_id for m in models.values()},
        host=host,
        port=port,
        auth=not no_auth,
        upstream=upstream_base_url(upstream) if upstream else None,
        tls=ssl_certfile is not None,
    )
    try:
        uvicorn.run(
            app,
            host=host,
            port=port,
            ssl_certfile=ssl_certfile,
            ssl_keyfile=ssl_keyfile,
            log_level="info",
        )
    finally:
        for m in models.values():
            if m.engine is not None:
                m.engine.close()
        audit.append("server_stopped")
        registry.close()
