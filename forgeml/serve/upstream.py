"""Upstream mode: the gateway's client for any OpenAI-compatible server (vLLM, another forgeml).

The request pipeline (`gateway.py`) authenticates, applies policies and rate limits and audits
every request; this module only talks to the upstream: list its models, forward a body, stream
its SSE chunks, and balance requests over several replicas of one server (`ReplicaPool`).
Upstream failures become `UpstreamError` (502, 503 when no replica answers, 504 on a timeout)
whose text never holds the upstream key or the upstream's own error details beyond a short,
scrubbed message.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpx

from forgeml.core.errors import ConfigError
from forgeml.serve.engine import StreamEvent

T = TypeVar("T")

# Characters of an upstream's own 4xx message passed on to the client.
UPSTREAM_MESSAGE_CHARS = 300
# Seconds a replica that could not be reached is passed over before it is tried again.
REPLICA_COOLDOWN_S = 5.0
# Transport failures after which nothing was generated for the client: another replica may
# answer the same request (a read timeout is not one: the replica may still be generating).
_UNREACHABLE = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.RemoteProtocolError,
    httpx.ReadError,
    httpx.WriteError,
)

log = logging.getLogger(__name__)


class UpstreamError(Exception):
    """The upstream failed: `status` is what the gateway answers (400, 429, 502, 503, 504).
    `unreachable`: the upstream could not be reached or dropped the connection before it
    answered; `replica_failed`: it answered 502, 503 or 504 itself (overloaded, restarting, a
    proxy in front of it failed) before generating anything. Either way another replica of it
    may serve the request."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        retry_after: str | None = None,
        *,
        unreachable: bool = False,
        replica_failed: bool = False,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.retry_after = status, message, code, retry_after
        self.unreachable, self.replica_failed = unreachable, replica_failed


def upstream_base_url(url: str) -> str:
    """The OpenAI base URL (…/v1) of an upstream given as http://host:port[/v1]."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"--upstream {url!r} is not an http(s) URL",
            hint="give the OpenAI base URL, e.g. http://127.0.0.1:8001/v1",
        )
    if parts.username or parts.password:
        raise ConfigError(
            "the --upstream URL holds credentials",
            hint="pass the upstream key with --upstream-key ENV_VAR instead",
        )
    path = parts.path.rstrip("/") or "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def upstream_key_from_env(env_var: str | None) -> str | None:
    """The upstream key read from the environment variable named `env_var` (never argv)."""
    if env_var is None:
        return None
    key = os.environ.get(env_var)
    if not key:
        raise ConfigError(
            f"environment variable {env_var} (--upstream-key) is not set or empty",
            hint=f"export {env_var}=<the upstream's API key>",
        )
    return key


@dataclass
class Upstream:
    """One OpenAI-compatible upstream: base URL (…/v1), optional bearer key, timeouts (s)."""

    base_url: str
    api_key: str | None = field(default=None, repr=False)
    timeout: float = 120.0
    connect_timeout: float = 10.0
    _client: httpx.AsyncClient | None = field(default=None, init=False, repr=False)

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def _timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self.timeout, connect=self.connect_timeout)

    def client(self) -> httpx.AsyncClient:
        """One pooled client, made on first use inside the server's event loop."""
        if self._client is None or self._client.is_closed:
            self._client = httpx.AsyncClient(
                base_url=self.base_url, headers=self._headers(), timeout=self._timeout()
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def list_models(self) -> list[str]:
        """The upstream's model ids (`GET /models`), synchronously, at gateway start."""
        try:
            with httpx.Client(headers=self._headers(), timeout=self._timeout()) as client:
                resp = client.get(f"{self.base_url}/models")
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None
        if resp.status_code != 200:
            raise self._status_error(resp.status_code, resp.text, resp.headers)
        try:
            return [m["id"] for m in resp.json()["data"]]
        except (ValueError, KeyError, TypeError):
            raise UpstreamError(
                502, "the upstream's model list is malformed", "bad_upstream"
            ) from None

    async def post(self, path: str, body: dict) -> dict:
        """POST a non-streaming request; the upstream's JSON answer."""
        try:
            resp = await self.client().post(path, json=body)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None
        if resp.status_code != 200:
            raise self._status_error(resp.status_code, resp.text, resp.headers)
        try:
            data = resp.json()
        except ValueError:
            raise UpstreamError(
                502, "the upstream answered with invalid JSON", "bad_upstream"
            ) from None
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
            raise UpstreamError(502, "the upstream's answer has no choices", "bad_upstream")
        return data

    async def open_stream(
        self, path: str, body: dict, on_close: Callable[[], None] | None = None
    ) -> UpstreamStream:
        """Send a streaming request and wait for the upstream's status; then iterate chunks.
        `on_close` is handed to the stream (see `UpstreamStream`)."""
        client = self.client()
        try:
            resp = await client.send(client.build_request("POST", path, json=body), stream=True)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None
        if resp.status_code != 200:
            try:
                text = (await resp.aread()).decode("utf-8", "replace")
            except httpx.HTTPError:
                text = ""
            finally:
                await resp.aclose()
            raise self._status_error(resp.status_code, text, resp.headers)
        return UpstreamStream(resp, self, on_close)

    # -- error mapping --------------------------------------------------------------------

    def scrub(self, text: str) -> str:
        """Text with the upstream key (should an upstream echo it) removed, and shortened."""
        if self.api_key:
            text = text.replace(self.api_key, "[REDACTED]")
        return text[:UPSTREAM_MESSAGE_CHARS]

    @staticmethod
    def _transport_error(exc: httpx.HTTPError) -> UpstreamError:
        unreachable = isinstance(exc, _UNREACHABLE)
        if isinstance(exc, httpx.TimeoutException):
            return UpstreamError(
                504,
                "the upstream did not answer in time",
                "upstream_timeout",
                unreachable=unreachable,
            )
        return UpstreamError(
            502, "the upstream is unreachable", "upstream_unavailable", unreachable=unreachable
        )

    def _status_error(self, status: int, text: str, headers: httpx.Headers) -> UpstreamError:
        if status == 429:
            return UpstreamError(
                429,
                "the upstream is busy, retry later",
                "upstream_busy",
                headers.get("retry-after"),
            )
        if status in (400, 413, 422):
            # The client's request was wrong for the upstream (e.g. too many tokens for its
            # context): say why, in the upstream's words, scrubbed and short.
            try:
                detail = json.loads(text)["error"]["message"]
            except (ValueError, KeyError, TypeError):
                detail = "the upstream rejected the request"
            return UpstreamError(400, f"upstream: {self.scrub(str(detail))}", "upstream_rejected")
        if status in (401, 403):
            # The gateway's own credentials: the client can do nothing about it, the operator can.
            return UpstreamError(
                502, "the upstream refused the gateway's credentials", "upstream_auth"
            )
        return UpstreamError(
            502,
            f"the upstream failed (HTTP {status})",
            "upstream_error",
            replica_failed=status in (502, 503, 504),
        )


class UpstreamStream:
    """An open SSE response: iterate `chunks()` for the upstream's JSON chunks until [DONE].
    `on_close` runs once, when the response is closed."""

    def __init__(
        self,
        response: httpx.Response,
        upstream: Upstream,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.response, self.upstream, self._on_close = response, upstream, on_close

    async def chunks(self) -> AsyncIterator[dict]:
        try:
            async for line in self.response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                try:
                    obj = json.loads(data)
                except ValueError:
                    raise UpstreamError(
                        502, "the upstream sent an invalid stream chunk", "bad_upstream"
                    ) from None
                if isinstance(obj, dict) and "error" in obj:
                    raise UpstreamError(502, "the upstream failed mid-stream", "upstream_error")
                if isinstance(obj, dict):
                    yield obj
        except httpx.HTTPError as exc:
            raise Upstream._transport_error(exc) from None
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        try:
            await self.response.aclose()
        finally:
            on_close, self._on_close = self._on_close, None
            if on_close is not None:
                on_close()


@dataclass
class Replica:
    """One replica of a pool: its upstream, the requests it is answering now, and until when
    (monotonic seconds) it is passed over after it could not be reached."""

    upstream: Upstream
    outstanding: int = 0
    down_until: float = 0.0


class ReplicaPool:
    """Several replicas of one OpenAI-compatible server (e.g. vLLM on several GPUs) behind one
    `Upstream` interface. Each request goes to the live replica with the fewest outstanding
    requests (round-robin among equals); a replica that cannot be reached is passed over for
    `cooldown` seconds, and the request is tried on the next one, as it is when a replica
    answers 502/503/504 before any of its answer was passed on (not once a stream has begun,
    nor for a 4xx or 500: another replica would answer the same). Replicas that are down are
    tried last, so a request is refused (503, `upstream_unavailable`) only when no replica
    answered it."""

    def __init__(self, upstreams: list[Upstream], *, cooldown: float = REPLICA_COOLDOWN_S) -> None:
        if not upstreams:
            raise ConfigError("a replica pool needs at least one upstream")
        self.replicas = [Replica(u) for u in upstreams]
        self.cooldown = cooldown
        self._turn = 0

    @property
    def base_url(self) -> str:
        return ", ".join(r.upstream.base_url for r in self.replicas)

    def scrub(self, text: str) -> str:
        for replica in self.replicas:
            text = replica.upstream.scrub(text)
        return text

    def order(self) -> list[Replica]:
        """The replicas in the order this request tries them: live ones by outstanding
        requests (the rotation breaks ties), then those that are down, soonest back first."""
        n, now = len(self.replicas), time.monotonic()
        start, self._turn = self._turn, (self._turn + 1) % n
        rotated = [self.replicas[(start + i) % n] for i in range(n)]
        live = sorted((r for r in rotated if r.down_until <= now), key=lambda r: r.outstanding)
        down = sorted((r for r in rotated if r.down_until > now), key=lambda r: r.down_until)
        return live + down

    def _failed(self, replica: Replica, exc: UpstreamError) -> None:
        if replica.down_until <= time.monotonic():
            log.warning(
                "upstream replica %s unreachable (%s); passed over for %.0f s",
                replica.upstream.base_url,
                exc.message,
                self.cooldown,
            )
        replica.down_until = time.monotonic() + self.cooldown

    def _try_another(self, replica: Replica, exc: UpstreamError) -> bool:
        """Whether the request may go to the next replica after `exc` from `replica`."""
        if exc.unreachable:
            self._failed(replica, exc)
            return True
        if exc.replica_failed:
            log.warning(
                "upstream replica %s: %s; trying another", replica.upstream.base_url, exc.message
            )
            return True
        return False

    def _none_answered(self, failed: UpstreamError | None = None) -> UpstreamError:
        """The error when every replica was tried: the last answer of a replica that failed
        (it was reachable), else 503 (none was)."""
        if failed is not None:
            return failed
        n = len(self.replicas)
        return UpstreamError(
            503,
            f"no replica of the upstream is reachable ({n} of {n} down); retry shortly",
            "upstream_unavailable",
            str(math.ceil(self.cooldown)),
        )

    def list_models(self) -> list[str]:
        """The model ids of the first replica that answers (replicas serve the same models)."""
        tries = _Tries(self)
        for replica in self.order():
            with tries.on(replica):
                return replica.upstream.list_models()
        raise self._none_answered(tries.failed)

    async def _first_answer(self, attempt: Callable[[Replica], Awaitable[T]]) -> T:
        """`attempt` on each replica in `order()` until one answers; a replica that cannot
        answer (down, or 502/503/504 before any byte) is skipped, anything else is raised."""
        tries = _Tries(self)
        for replica in self.order():
            with tries.on(replica):
                return await attempt(replica)
        raise self._none_answered(tries.failed)

    async def post(self, path: str, body: dict) -> dict:
        """`Upstream.post` on the first replica that answers."""

        async def attempt(replica: Replica) -> dict:
            replica.outstanding += 1
            try:
                return await replica.upstream.post(path, body)
            finally:
                replica.outstanding -= 1

        return await self._first_answer(attempt)

    async def open_stream(self, path: str, body: dict) -> UpstreamStream:
        """`Upstream.open_stream` on the first replica that answers (its status, before any
        chunk: a stream that fails once begun is not retried); the replica counts the stream
        as outstanding until it is closed."""

        async def attempt(replica: Replica) -> UpstreamStream:
            replica.outstanding += 1

            def done() -> None:
                replica.outstanding -= 1

            try:
                return await replica.upstream.open_stream(path, body, on_close=done)
            except UpstreamError:
                done()
                raise

        return await self._first_answer(attempt)

    async def aclose(self) -> None:
        for replica in self.replicas:
            await replica.upstream.aclose()


async def upstream_stream_events(
    stream: UpstreamStream, *, chat: bool
) -> AsyncIterator[StreamEvent]:
    """The upstream's chunks as engine `StreamEvent`s: text deltas, then one final event with
    the finish reason and the token counts the upstream reported (`include_usage`)."""
    finish, usage = None, {}
    try:
        async for obj in stream.chunks():
            if isinstance(obj.get("usage"), dict):
                usage = obj["usage"]
            for choice in obj.get("choices") or []:
                if not isinstance(choice, dict):
                    continue
                delta = choice.get("delta") if chat else choice
                text = delta.get("content" if chat else "text") if isinstance(delta, dict) else None
                if isinstance(text, str) and text:
                    yield StreamEvent(text, [])
                if isinstance(choice.get("finish_reason"), str):
                    finish = choice["finish_reason"]
    finally:
        await stream.aclose()
    counts = [usage.get(k) for k in ("prompt_tokens", "completion_tokens")]
    prompt, completion = (c if isinstance(c, int) and c >= 0 else 0 for c in counts)
    yield StreamEvent("", [], finish or "stop", prompt_tokens=prompt, completion_tokens=completion)


class _Tries:
    """One request's walk over a pool's replicas: `with tries.on(replica):` around a call
    swallows an error after which another replica may answer (remembering the last one from
    a reachable replica for `_none_answered`), re-raises any other, and marks the replica up
    when the call returns."""

    def __init__(self, pool: ReplicaPool) -> None:
        self.pool = pool
        self.failed: UpstreamError | None = None
        self.replica: Replica | None = None

    def on(self, replica: Replica) -> _Tries:
        self.replica = replica
        return self

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> bool:
        assert self.replica is not None
        if exc is None:
            self.replica.down_until = 0.0
            return False
        if not isinstance(exc, UpstreamError) or not self.pool._try_another(self.replica, exc):
            return False
        self.failed = exc if exc.replica_failed else self.failed
        return True
