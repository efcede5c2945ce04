"""The serving API's endpoints: health, schema, metrics, the model list, and the two
generation routes, which run the request pipeline (`serve/gateway.py`, `serve/generation.py`)
and shape its answer as OpenAI's chat and completion objects, whole or streamed.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import PurePath
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse, StreamingResponse
from starlette.datastructures import UploadFile

from forgeml.governance.keys import Principal
from forgeml.serve.gateway import Call, Gateway
from forgeml.serve.generation import complete, stream
from forgeml.serve.media import AUDIO_FORMATS, echo, too_large
from forgeml.serve.metrics import CONTENT_TYPE
from forgeml.serve.requests import ApiError, RequestLimits
from forgeml.serve.schemas import ChatRequest, CompletionRequest

# The instruction a transcription request without `prompt` sends with its audio (the one the
# ACME demo's speech data trains with: the audio, then this text, in the user turn).
TRANSCRIPTION_PROMPT = "transcribe the recording"


def _response_base(id_prefix: str, call: Call) -> dict[str, Any]:
    """The fields every chunk and answer of one generation call share (OpenAI's shape)."""
    return {
        "id": f"{id_prefix}-{call.request_id}",
        "created": int(time.time()),
        "model": call.model.name,
        "system_fingerprint": call.model.asset_id,
    }


def api_routes(gateway: Gateway) -> APIRouter:
    """Every route of the serving API, each behind the key scope it needs."""
    router = APIRouter()
    require = gateway.authenticated

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/openapi.json", include_in_schema=False)
    async def openapi_schema(
        request: Request, _p: Principal = Depends(require("models"))
    ) -> dict[str, Any]:
        return request.app.openapi()

    @router.get("/metrics")
    async def metrics_text(_p: Principal = Depends(require("metrics"))) -> PlainTextResponse:
        return PlainTextResponse(gateway.metrics.render(), media_type=CONTENT_TYPE)

    @router.get("/v1/models")
    async def list_models(principal: Principal = Depends(require("models"))) -> dict[str, Any]:
        data = [
            {"id": m.name, "object": "model", "created": m.created, "owned_by": "forgeml"}
            for m in gateway.models.values()
            if principal.may_use_model(m.names)
        ]
        return {"object": "list", "data": data}

    @router.post("/v1/chat/completions")
    async def chat_completions(
        body: ChatRequest, request: Request, principal: Principal = Depends(require("chat"))
    ):
        call = await gateway.prepare(principal, "chat", body, request)
        base = _response_base("chatcmpl", call)

        def chunk(text: str | None, finish: str | None) -> dict:
            delta = {"content": text} if text is not None else {}
            return {
                **base,
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }

        def usage_chunk(usage: dict[str, int]) -> dict:
            return {**base, "object": "chat.completion.chunk", "choices": [], "usage": usage}

        if body.stream and not call.tools:
            first = {
                **base,
                "object": "chat.completion.chunk",
                "choices": [
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": ""},
                        "finish_reason": None,
                    }
                ],
            }
            return await stream(gateway, call, request, chunk, usage_chunk, first)
        answer = await complete(gateway, call, request)
        if body.stream:
            # With tools the output is parsed whole, then sent as one chunk sequence.
            message = answer.message
            delta = {"role": "assistant", **{k: v for k, v in message.items() if k != "role"}}
            if "tool_calls" in delta:
                delta["tool_calls"] = [{"index": i, **c} for i, c in enumerate(delta["tool_calls"])]
            chunks = [
                {
                    **base,
                    "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
                },
                chunk(None, answer.finish),
            ]
            if call.include_usage:
                chunks.append(usage_chunk(answer.usage))
            body_text = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
            return StreamingResponse(iter([body_text]), media_type="text/event-stream")
        return {
            **base,
            "object": "chat.completion",
            "usage": answer.usage,
            "choices": [
                {
                    "index": 0,
                    "message": answer.message,
                    "finish_reason": answer.finish,
                    "logprobs": None,
                }
            ],
        }

    @router.post("/v1/completions")
    async def completions(
        body: CompletionRequest,
        request: Request,
        principal: Principal = Depends(require("completions")),
    ):
        call = await gateway.prepare(principal, "completions", body, request)
        base = _response_base("cmpl", call)

        def chunk(text: str | None, finish: str | None) -> dict:
            return {
                **base,
                "object": "text_completion",
                "choices": [
                    {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
                ],
            }

        def usage_chunk(usage: dict[str, int]) -> dict:
            return {**base, "object": "text_completion", "choices": [], "usage": usage}

        if body.stream:
            return await stream(gateway, call, request, chunk, usage_chunk)
        answer = await complete(gateway, call, request)
        return {
            **base,
            "object": "text_completion",
            "usage": answer.usage,
            "choices": [
                {"index": 0, "text": answer.text, "finish_reason": answer.finish, "logprobs": None}
            ],
        }

    @router.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request, principal: Principal = Depends(require("chat"))):
        """OpenAI's transcription endpoint (multipart form: `file`, `model`, optional `prompt`,
        `response_format` json or text, `temperature`; `language` is accepted and unused) for
        a model with an audio tower: a greedy chat turn of the audio and the instruction."""
        form = await _transcription_form(request, gateway.limits)
        served = gateway.find_model(form["model"])
        if served is not None and principal.may_use_model(served.names):
            if served.multimodal is None or served.multimodal.audio is None:
                raise ApiError(
                    400,
                    f"model {form['model']} has no audio tower, so it cannot transcribe; send "
                    "the audio to a model that reads audio",
                    code="unsupported_content",
                )
        content = [
            {"type": "input_audio", "input_audio": {"data": form["data"], "format": form["fmt"]}},
            {"type": "text", "text": form["prompt"] or TRANSCRIPTION_PROMPT},
        ]
        body = ChatRequest(
            model=form["model"],
            messages=[{"role": "user", "content": content}],
            temperature=form["temperature"],
        )
        call = await gateway.prepare(principal, "transcriptions", body, request)
        answer = await complete(gateway, call, request)
        if form["response_format"] == "text":
            return PlainTextResponse(answer.text)
        usage = answer.usage
        media = usage.get("prompt_tokens_details", {})
        return {
            "text": answer.text,
            "usage": {
                "type": "tokens",
                "input_tokens": usage["prompt_tokens"],
                "output_tokens": usage["completion_tokens"],
                "total_tokens": usage["total_tokens"],
                "input_token_details": {
                    "audio_tokens": media.get("audio_tokens", 0),
                    "text_tokens": usage["prompt_tokens"] - media.get("audio_tokens", 0),
                },
            },
        }

    return router


async def _transcription_form(request: Request, limits: RequestLimits) -> dict[str, Any]:
    """The fields of a transcription request's multipart form, checked: 400 for what is
    missing, not supported, or not where it should be (a file for a text field); the audio is
    read only when it is within the media byte limit."""
    try:
        form = await request.form(max_files=1, max_fields=16)
    except AssertionError:  # starlette's way of saying python-multipart is missing
        raise ApiError(
            500, "this server cannot read multipart forms (install python-multipart)",
            "server_error",
        ) from None  # fmt: skip
    except Exception as exc:  # a malformed form body is the client's
        why = getattr(exc, "detail", type(exc).__name__)  # starlette's words, not the body's
        raise ApiError(400, f"the body is not a valid multipart form ({why})") from None
    upload = form.get("file")
    fields = {k: form.get(k) for k in ("model", "prompt", "response_format", "temperature")}
    for name, value in fields.items():
        if value is not None and not isinstance(value, str):
            raise ApiError(400, f"{name}: send it as a form field, not a file")
    if not isinstance(upload, UploadFile):
        raise ApiError(400, "file: send the audio as the multipart form's `file` field")
    if not fields["model"]:
        raise ApiError(400, "model: name the model that transcribes")
    suffix = PurePath(upload.filename or "").suffix.lower().lstrip(".")
    if suffix not in AUDIO_FORMATS:
        raise ApiError(
            400,
            f"file: {echo(upload.filename)} is not a {', '.join(AUDIO_FORMATS)} file",
            code="invalid_media",
        )
    if upload.size is not None and upload.size > limits.max_media_bytes:
        raise too_large("file", upload.size, limits)
    response_format = fields["response_format"] or "json"
    if response_format not in ("json", "text"):
        raise ApiError(
            400, f"response_format: {echo(response_format)} is not supported; give json or text"
        )
    try:
        temperature = float(fields["temperature"] or 0.0)
    except ValueError:
        raise ApiError(400, "temperature: give a number in [0, 2]") from None
    if not 0 <= temperature <= 2:
        raise ApiError(400, "temperature: give a number in [0, 2]")
    return {
        "model": fields["model"],
        "data": base64.b64encode(await upload.read()).decode("ascii"),
        "fmt": suffix,
        "prompt": fields["prompt"],
        "response_format": response_format,
        "temperature": temperature,
    }
