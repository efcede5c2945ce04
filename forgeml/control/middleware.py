"""The control plane's outermost layer: every request is audited with its outcome, bodies are
capped, and an error no handler expected still answers a JSON 500 (and is audited) instead of
a bare traceback. Pure ASGI, so it sees the status of every response, streaming or not."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from forgeml.control.limits import MAX_BODY_BYTES
from forgeml.governance.audit import AuditLog

_log = logging.getLogger(__name__)
MAX_AUDITED_PATH = 512


class BodyTooLarge(HTTPException):
    """Raised while a body streams in past the cap (FastAPI answers it as a 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            413, f"request body over {limit:,} bytes; send less (put long lists in a file)"
        )


class AuditedRequests:
    """Wrap an ASGI app: cap request bodies at `max_body` bytes (413), answer unexpected errors
    with a JSON 500, and append one `control_request` audit entry per HTTP request."""

    def __init__(self, app: ASGIApp, audit: AuditLog, max_body: int = MAX_BODY_BYTES) -> None:
        self.app, self.audit, self.max_body = app, audit, max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})
        started, status, error = False, 500, None
        received = 0
        t0 = time.monotonic()

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise BodyTooLarge(self.max_body)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started, status
            if message["type"] == "http.response.start":
                started, status = True, message["status"]
            await send(message)

        try:
            declared = _content_length(scope)
            if declared is not None and declared > self.max_body:
                error = "body_too_large"
                await _json(watched_send, 413, "too_large", BodyTooLarge(self.max_body).detail)
            else:
                await self.app(scope, counted_receive, watched_send)
        except Exception as exc:  # the last line of defence: no input should get here
            error = f"{type(exc).__name__}: {str(exc)[:200]}"
            _log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if not started:
                await _json(
                    watched_send, 500, "internal_error",
                    "the control plane failed on this request (it was logged and audited); "
                    "tell an operator if it happens again",
                )  # fmt: skip
        finally:
            self._record(scope, status, error, time.monotonic() - t0)

    def _record(self, scope: Scope, status: int, error: str | None, seconds: float) -> None:
        state: dict[str, Any] = scope.get("state") or {}
        client = scope.get("client")
        fields: dict[str, Any] = {
            "method": scope.get("method"),
            "path": str(scope.get("path", ""))[:MAX_AUDITED_PATH],
            "status": status,
            "principal": state.get("principal"),
            "key_id": state.get("key_id"),
            "client": client[0] if client else "-",
            "ms": round(seconds * 1000, 1),
        }
        if error is not None:
            fields["error"] = error
        try:
            self.audit.append("control_request", **fields)
        except Exception:  # an audit failure must not turn an answer into a crash
            _log.exception("could not audit control request %s", fields)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _json(send: Send, status: int, kind: str, message: str) -> None:
    body = json.dumps({"error": {"type": kind, "message": message}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
