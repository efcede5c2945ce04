"""The serving API's endpoints: health, schema, metrics, the model list, and the two
generation routes, which run the request pipeline (`serve/gateway.py`, `serve/generation.py`)
and shape its answer as OpenAI's chat and completion objects, whole or streamed.
"""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse, StreamingResponse

from forgeml.governance.keys import Principal
from forgeml.serve.gateway import Call, Gateway
from forgeml.serve.generation import complete, stream
from forgeml.serve.metrics import CONTENT_TYPE
from forgeml.serve.schemas import ChatRequest, CompletionRequest


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

    return router
