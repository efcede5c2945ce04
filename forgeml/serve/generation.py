"""The generating end of the request pipeline (`serve/gateway.py`): a prepared call goes to the
model's engine or to its upstream, whole or as a server-sent event stream, its output through
the policy's output rules, and its outcome into the audit log.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse

from forgeml.serve.engine import EngineBusy, GenerationHandle, StreamEvent
from forgeml.serve.gateway import Call, Gateway
from forgeml.serve.output import OutputFilter, parse_tool_calls
from forgeml.serve.requests import ApiError, error_body
from forgeml.serve.upstream import UpstreamError, upstream_stream_events

Chunk = Callable[[str | None, str | None], dict]
UsageChunk = Callable[[dict[str, Any]], dict]


@dataclass
class Answer:
    """A whole answer: its text, finish reason, token usage and (chat) assistant message."""

    text: str
    finish: str
    usage: dict[str, Any]
    message: dict[str, Any]


def usage_of(prompt: int, completion: int, call: Call | None = None) -> dict[str, Any]:
    """OpenAI's usage object; a call with media adds `prompt_tokens_details` with the image
    and audio tokens among the prompt tokens."""
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if call is not None and call.media is not None:
        usage["prompt_tokens_details"] = {
            "image_tokens": call.media.image_tokens,
            "audio_tokens": call.media.audio_tokens,
        }
    return usage


async def complete(gateway: Gateway, call: Call, request: Request) -> Answer:
    """Generate the whole answer to `call`, through the output rules, and record it."""
    if call.model.upstream is not None:
        done = await _upstream_to_end(gateway, call, request)
    else:
        done = await _engine_to_end(gateway, call, request)
    gateway.record_call(
        call, request, 200, usage=done.usage, finish_reason=done.finish, completion=done.text
    )
    return done


def _submit(gateway: Gateway, call: Call, request: Request) -> GenerationHandle:
    try:
        return call.model.engine.submit(
            call.prompt_ids,
            call.params,
            stop_ids=call.stop_ids,
            loop=asyncio.get_running_loop(),
            media=call.media.prefill if call.media is not None else None,
        )
    except EngineBusy as busy:
        err = ApiError(
            429,
            "the server is busy, retry later",
            "rate_limit_error",
            "server_busy",
            headers={"Retry-After": str(busy.retry_after)},
        )
        gateway.record_call(call, request, 429, exc=err)
        raise err from None


async def _engine_to_end(gateway: Gateway, call: Call, request: Request) -> Answer:
    handle = _submit(gateway, call, request)
    out = OutputFilter(gateway.policy, call.rules)
    parts: list[str] = []
    try:
        async for event in handle.events():
            parts.append(event.text)
            last = event
    finally:
        handle.cancel()
    if last.error:
        err = ApiError(500, "generation failed", "server_error", "engine_error")
        gateway.record_call(call, request, 500, exc=err)
        raise err
    text = out.feed("".join(parts), final=True)
    finish = "content_filter" if out.blocked else last.finish_reason
    call.decisions += out.decisions
    usage = usage_of(last.prompt_tokens, last.completion_tokens, call)
    if call.principal.tokens_per_minute is not None:
        gateway.limiter.add_tokens(call.principal, last.completion_tokens)
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if call.tools:
        content, tool_calls, errors = parse_tool_calls(text)
        message["content"] = content
        if tool_calls:
            message["tool_calls"] = tool_calls
            finish = "tool_calls" if finish == "stop" else finish
        if errors:
            message["invalid_tool_calls"] = errors
    return Answer(text, finish, usage, message)


def _upstream_failure(
    gateway: Gateway, call: Call, request: Request, exc: UpstreamError
) -> ApiError:
    """The client's answer to an upstream failure, recorded; never the upstream's key."""
    kind = {400: "invalid_request_error", 429: "rate_limit_error"}.get(exc.status, "api_error")
    retry = exc.retry_after if exc.retry_after and exc.retry_after.isdigit() else None
    err = ApiError(
        exc.status, exc.message, kind, exc.code, headers={"Retry-After": retry} if retry else {}
    )
    gateway.record_call(call, request, exc.status, exc=err)
    return err


def _upstream_path(call: Call) -> str:
    return "/chat/completions" if call.endpoint == "chat" else "/completions"


async def _upstream_to_end(gateway: Gateway, call: Call, request: Request) -> Answer:
    """A non-streaming upstream call, its text and tool-call arguments governed. The upstream
    parsed its own tool calls; they come back in its message."""
    payload = {**call.payload, "stream": False}
    payload.pop("stream_options", None)
    try:
        data = await call.model.upstream.post(_upstream_path(call), payload)
    except UpstreamError as exc:
        raise _upstream_failure(gateway, call, request, exc) from None
    choice = data["choices"][0] if data["choices"] else {}
    choice = choice if isinstance(choice, dict) else {}
    upstream_message = choice.get("message")
    upstream_message = upstream_message if isinstance(upstream_message, dict) else {}
    raw = upstream_message.get("content") if call.endpoint == "chat" else choice.get("text")
    out = OutputFilter(gateway.policy, call.rules)
    text = out.feed(raw if isinstance(raw, str) else "", final=True)
    call.decisions += out.decisions
    blocked = out.blocked
    message: dict[str, Any] = {
        "role": "assistant",
        "content": text if isinstance(raw, str) else None,
    }
    tool_calls = upstream_message.get("tool_calls")
    if isinstance(tool_calls, list) and tool_calls:
        message["tool_calls"] = []
        for tc in tool_calls:
            fn = tc.get("function") if isinstance(tc, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("arguments"), str):
                continue
            args = OutputFilter(gateway.policy, call.rules)
            governed = args.feed(fn["arguments"], final=True)
            call.decisions += args.decisions
            blocked = blocked or args.blocked
            message["tool_calls"].append({**tc, "function": {**fn, "arguments": governed}})
    finish = choice.get("finish_reason")
    finish = "content_filter" if blocked else finish if isinstance(finish, str) else "stop"
    reported = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    usage = usage_of(
        _count(reported.get("prompt_tokens")), _count(reported.get("completion_tokens"))
    )
    if call.principal.tokens_per_minute is not None:
        gateway.limiter.add_tokens(call.principal, usage["total_tokens"])
    return Answer(text, finish, usage, message)


def _count(value: Any) -> int:
    """A token count reported by an upstream, 0 if it sent none or nonsense."""
    return value if isinstance(value, int) and value >= 0 else 0


async def stream(
    gateway: Gateway,
    call: Call,
    request: Request,
    chunk: Chunk,
    usage_chunk: UsageChunk,
    first: dict | None = None,
) -> StreamingResponse:
    """SSE of the engine's or the upstream's events for `call`, through the output rules;
    recorded in the audit log when it ends. A refusal to start (a busy engine, a failing
    upstream) is answered before any byte is sent."""
    handle = None
    if call.model.upstream is not None:
        payload = {**call.payload, "stream": True, "stream_options": {"include_usage": True}}
        try:
            opened = await call.model.upstream.open_stream(_upstream_path(call), payload)
        except UpstreamError as exc:
            raise _upstream_failure(gateway, call, request, exc) from None
        source: AsyncIterator[StreamEvent] = upstream_stream_events(
            opened, chat=call.endpoint == "chat"
        )
    else:
        handle = _submit(gateway, call, request)
        source = handle.events()
    out = OutputFilter(gateway.policy, call.rules)

    def sse(obj: dict) -> str:
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

    async def events() -> AsyncIterator[str]:
        finish, usage, completion = None, None, []
        status = 200
        recorded = False

        def finish_record() -> None:
            # Recorded before `[DONE]` is sent, so a client that has read the whole stream
            # finds it in the audit log; still recorded once when the client goes away.
            nonlocal recorded
            if recorded:
                return
            recorded = True
            call.decisions += out.decisions
            if usage and call.principal.tokens_per_minute is not None:
                # Locally the prompt was counted before generating; an upstream reports both.
                counted = "total_tokens" if call.model.upstream else "completion_tokens"
                gateway.limiter.add_tokens(call.principal, usage[counted])
            gateway.record_call(
                call,
                request,
                status,
                usage=usage,
                finish_reason=finish,
                completion="".join(completion),
            )

        try:
            if first is not None:
                yield sse(first)
            try:
                async for event in source:
                    if event.error:
                        status, finish = 500, "error"
                        yield sse(error_body("generation failed", "server_error", "engine_error"))
                        break
                    piece = out.feed(event.text, final=event.finish_reason is not None)
                    completion.append(piece)
                    if out.blocked:
                        finish = "content_filter"
                    elif event.finish_reason is not None:
                        finish = event.finish_reason
                    if piece:
                        yield sse(chunk(piece, None))
                    if finish is not None:
                        usage = usage_of(event.prompt_tokens, event.completion_tokens, call)
                        break
            except UpstreamError as exc:
                status, finish = exc.status, "error"
                yield sse(error_body(exc.message, "api_error", exc.code))
            if finish is not None and status == 200:
                yield sse(chunk(None, finish))
                if call.include_usage and usage:
                    yield sse(usage_chunk(usage))
            finish_record()
            yield "data: [DONE]\n\n"
        finally:
            if handle is not None:
                handle.cancel()
            await source.aclose()
            finish_record()

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )
