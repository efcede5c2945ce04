"""Checks on a serving request before any model work: body size, lone surrogates, message
count, media parts and prompt length against the model's context, all cheap and done before
tokenizing, so one oversized or malformed request cannot stall or crash the server; and the
per-key rate limits.

`RequestGuard` is the ASGI middleware around the app (body cap, an audit entry for every
response no route recorded); the rest are plain checks the request pipeline
(`serve/gateway.py`) calls.
"""

from __future__ import annotations

import json
import re
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
from starlette.responses import JSONResponse
from tokenizers import Tokenizer

from forgeml.governance.keys import Principal

# The body cap when none is configured: the larger of this and what the largest prompt a
# served model's context can hold takes as JSON (`derived_max_body_bytes`).
MIN_MAX_BODY_BYTES = 4 * 2**20
# Messages per chat request: a hard cap in the request schema (validating each costs time);
# `RequestLimits.max_messages` may lower it.
MAX_MESSAGES = 4096
# OpenAI's media content part types and the encoder ("tower") a model needs to read each.
MEDIA_PART_TOWERS = {"image_url": "vision", "input_audio": "audio"}
# Items in a completion prompt given as a list (token ids): a hard cap in the request schema.
MAX_PROMPT_ITEMS = 2**18
# JSON may spell one character as a 6-byte `\uXXXX` escape.
JSON_BYTES_PER_CHAR = 6
# A `\uD800`-`\uDFFF` escape not in a high-low pair: the only way a body can hold a lone
# surrogate (raw UTF-8 cannot encode one). Escaped backslashes may make it a false alarm, which
# the exact check then clears.
_LONE_SURROGATE_ESCAPE = re.compile(
    rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    rb"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}"
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class ApiError(Exception):
    """An OpenAI-style error response."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        code: str | None = None,
        headers: dict[str, str] | None = None,
        decisions: list | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.code = status, message, kind, code
        self.headers = headers or {}
        self.decisions = decisions or []


def error_body(message: str, kind: str, code: str | None) -> dict[str, Any]:
    """The OpenAI error object."""
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


@dataclass(frozen=True)
class RequestLimits:
    """What one request may send. `None` derives the limit from the served models' contexts:
    the body from the largest prompt any of them can hold, the prompt from each model's own."""

    max_body_bytes: int | None = None
    max_messages: int = MAX_MESSAGES
    max_prompt_chars: int | None = None
    # Media content parts (models with a vision or audio tower): per request, and per part.
    max_media_parts: int = 8
    max_media_bytes: int = 8 * 2**20
    max_image_pixels: int = 4096 * 4096
    max_audio_seconds: float = 300.0

    def __post_init__(self) -> None:
        for name in (
            "max_body_bytes",
            "max_messages",
            "max_prompt_chars",
            "max_media_parts",
            "max_media_bytes",
            "max_image_pixels",
        ):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.max_audio_seconds <= 0:
            raise ValueError(f"max_audio_seconds must be > 0, got {self.max_audio_seconds}")
        if self.max_messages > MAX_MESSAGES:
            raise ValueError(f"max_messages must be <= {MAX_MESSAGES}, got {self.max_messages}")


class RateLimiter:
    """Per-key requests and tokens in the last 60 s (a sliding window, in memory)."""

    WINDOW = 60.0

    def __init__(self) -> None:
        self._requests: dict[str, deque[float]] = defaultdict(deque)
        self._tokens: dict[str, deque[tuple[float, int]]] = defaultdict(deque)

    def _trim(self, key: str, now: float) -> None:
        reqs, toks = self._requests[key], self._tokens[key]
        while reqs and reqs[0] <= now - self.WINDOW:
            reqs.popleft()
        while toks and toks[0][0] <= now - self.WINDOW:
            toks.popleft()

    def admit(self, principal: Principal) -> None:
        """Count one request, or raise a 429 saying when to retry."""
        now = time.monotonic()
        key = principal.key_id
        self._trim(key, now)
        reqs, toks = self._requests[key], self._tokens[key]
        rpm, tpm = principal.requests_per_minute, principal.tokens_per_minute
        if rpm is not None and len(reqs) >= rpm:
            self._refuse(reqs[0] + self.WINDOW - now, "requests per minute")
        if tpm is not None and sum(n for _, n in toks) >= tpm:
            self._refuse(toks[0][0] + self.WINDOW - now, "tokens per minute")
        reqs.append(now)

    def add_tokens(self, principal: Principal, n: int) -> None:
        self._tokens[principal.key_id].append((time.monotonic(), n))

    @staticmethod
    def _refuse(wait: float, what: str) -> None:
        raise ApiError(
            429,
            f"rate limit reached ({what}) for this key",
            "rate_limit_error",
            "rate_limit_exceeded",
            headers={"Retry-After": str(max(1, int(wait + 0.999)))},
        )


def context_char_bound(tokenizer: Tokenizer, context: int) -> int:
    """A length in characters past which a prompt cannot fit in `context` tokens, so it can be
    refused without tokenizing it.

    Byte-level BPE spells every token as at most its vocabulary string's length in bytes and
    every character takes at least one byte, so `context` tokens hold at most
    `context * longest token` characters. A tokenizer with a normalizer (which may shorten text
    before splitting it) gets four times that margin.
    """
    longest = max((len(t) for t in tokenizer.get_vocab(with_added_tokens=True)), default=1)
    margin = 1 if tokenizer.normalizer is None else 4
    return context * max(longest, 1) * margin


def derived_max_body_bytes(char_bounds: Sequence[int], media_bytes: int = 0) -> int:
    """The default body cap: room for the longest prompt any served model accepts, as JSON,
    and for `media_bytes` of media (base64 takes 4 bytes for 3)."""
    return max([MIN_MAX_BODY_BYTES, *(JSON_BYTES_PER_CHAR * b for b in char_bounds)]) + (
        -(-media_bytes // 3) * 4
    )


def find_lone_surrogate(value: Any) -> str | None:
    """The JSON path of the first string (or key) in `value` holding a lone UTF-16 surrogate:
    JSON's `"\\ud800"` parses to one in Python, which is not Unicode text and cannot be encoded
    as UTF-8 (for the tokenizer, the audit log or a response). None when there is none."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, str):
            if not _encodable(item):
                return where or "body"
        elif isinstance(item, Mapping):
            for key, v in reversed(list(item.items())):
                inner = f"{where}.{_printable(key)}" if where else _printable(key)
                if isinstance(key, str) and not _encodable(key):
                    return inner
                stack.append((inner, v))
        elif isinstance(item, list | tuple):
            stack.extend((f"{where}[{i}]", v) for i, v in reversed(list(enumerate(item))))
    return None


def lone_surrogate_in_json(body: bytes) -> str | None:
    """`find_lone_surrogate` of a JSON body; None also when it is not JSON (the app's parser
    then answers that). A body with no surrogate escape is not parsed."""
    if not _LONE_SURROGATE_ESCAPE.search(body):
        return None
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return find_lone_surrogate(data)
    except (ValueError, RecursionError):
        return None
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _printable(key: Any) -> str:
    return str(key).encode("utf-8", "backslashreplace").decode("utf-8")


def check_chat_messages(
    messages: Sequence[Mapping[str, Any]],
    model: str,
    *,
    max_messages: int,
    context: int,
    media: Mapping[str, str] | None = None,
) -> None:
    """Refuse, before rendering, too many messages, more than the context can hold, and content
    parts the model cannot read: anything but text, and the media part types in `media`
    (part type -> the tower that reads it, e.g. "image_url" -> "vision") where it has that
    tower."""
    n = len(messages)
    if n > max_messages:
        raise ApiError(
            400,
            f"messages: {n} messages; this server accepts at most {max_messages} per request",
            code="too_many_messages",
        )
    # Every message takes at least two tokens of its own: its role marker and `<|end|>`.
    if 2 * n >= context:
        raise ApiError(
            400,
            f"messages: {n} messages take at least {2 * n} tokens; this model's context is "
            f"{context} tokens",
            code="context_length_exceeded",
        )
    for i, message in enumerate(messages):
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            kind = part.get("type")
            if media and kind in media:
                continue
            if media is not None and kind in MEDIA_PART_TOWERS:
                raise ApiError(
                    400,
                    f"model {model} has no {MEDIA_PART_TOWERS[kind]} tower; content part type "
                    f"{json.dumps(kind)} is not supported (messages[{i}].content[{j}]); send "
                    f"it to a model that reads {MEDIA_PART_TOWERS[kind]} input",
                    code="unsupported_content",
                )
            if kind != "text":
                raise ApiError(
                    400,
                    f"model {model} takes text only; content part type {json.dumps(kind)} is "
                    f"not supported (messages[{i}].content[{j}]); send "
                    '{"type": "text", "text": ...} parts or a string',
                    code="unsupported_content",
                )
            if not isinstance(part.get("text"), str):
                raise ApiError(
                    400, f"messages[{i}].content[{j}].text: give the text part's text as a string"
                )


def check_prompt_chars(chars: int, *, context_bound: int, limit: int | None, context: int) -> None:
    """Refuse a prompt of `chars` characters that cannot fit the context (`context_bound`, see
    `context_char_bound`) or is over the server's configured `limit`, without tokenizing it."""
    if chars > context_bound:
        raise ApiError(
            400,
            f"the prompt is {chars} characters, more than this model's context of {context} "
            f"tokens can hold (at most {context_bound} characters); shorten it",
            code="context_length_exceeded",
        )
    if limit is not None and chars > limit:
        raise ApiError(
            400,
            f"the prompt is {chars} characters; this server accepts at most {limit}",
            code="prompt_too_long",
        )


class RequestGuard:
    """ASGI middleware around the serving app.

    Refuses a body over `max_body_bytes` with 413 before anything parses it (on its
    Content-Length, and on the bytes actually streamed, so a chunked body is capped too), a
    JSON body holding a lone surrogate with 400 (it is not text: the tokenizer, the audit log
    and any echo of it would fail on it), and calls `record_unrecorded(scope, status)` for every response that no route recorded in the
    audit log (a route marks its request with `mark_recorded`): unknown paths, invalid bodies,
    refused bodies and crashes alike. A crash is recorded as 500, then re-raised for the app's
    catch-all handler to answer.
    """

    def __init__(
        self,
        app: Callable[[Scope, Receive, Send], Awaitable[None]],
        *,
        max_body_bytes: int,
        record_unrecorded: Callable[[Scope, int], None],
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.record_unrecorded = record_unrecorded

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})
        status = 500

        async def send_tracked(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif not message.get("more_body", False) and not is_recorded(scope):
                # Before the last byte goes out: a client that has the answer finds its entry.
                mark_recorded(scope)
                self.record_unrecorded(scope, status)
            await send(message)

        try:
            body = await self._read_body(scope, receive)
            where = None
            if body is not None and b"\\u" in body:  # a fast scan; the regex is off the loop
                where = await anyio.to_thread.run_sync(lone_surrogate_in_json, body)
            if body is None:
                await self._too_large(scope, receive, send_tracked)
            elif where is not None:
                message = (
                    f"{where} holds a lone UTF-16 surrogate (like \\ud800), which is not "
                    "text; send valid Unicode (surrogates only in high-low pairs)"
                )
                response = JSONResponse(
                    error_body(message, "invalid_request_error", "invalid_unicode"), 400
                )
                await response(scope, receive, send_tracked)
            else:
                await self.app(scope, _replay(body, receive), send_tracked)
        except Exception:
            if not is_recorded(scope):
                mark_recorded(scope)
                self.record_unrecorded(scope, 500)
            raise
        if not is_recorded(scope):
            self.record_unrecorded(scope, status)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes | None:
        """The whole body, or None when it is over the cap (declared or streamed)."""
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_body_bytes:
                return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return b"".join(chunks)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.max_body_bytes
        response = JSONResponse(
            error_body(
                f"the request body is larger than the {limit} bytes this server accepts; "
                "send a shorter prompt, fewer messages or smaller media",
                "invalid_request_error",
                "request_too_large",
            ),
            413,
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the already-read body once, then defers to the real one."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def mark_recorded(scope: Scope) -> None:
    """Note that this request's audit entry is written (so `RequestGuard` writes none)."""
    scope.setdefault("state", {})["audit_recorded"] = True


def is_recorded(scope: Scope) -> bool:
    return bool(scope.get("state", {}).get("audit_recorded"))
