"""A stand-in for vLLM's OpenAI server, run as a subprocess by the `--engine vllm` tests
(`python tests/test_serve_vllm_standin.py <vLLM's arguments>`); it holds no tests itself.

It parses the arguments forgeml passes vLLM, answers /health, /v1/models (the served model and
its LoRA modules), /v1/completions and /v1/chat/completions (streamed too) with an echo that
names its port, requires VLLM_API_KEY on /v1 as vLLM does, and reports what it saw on /stats.
POST /fail/STATUS makes it answer every generation request with STATUS (0: answer again).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--served-model-name", nargs="+", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--generation-config")
    parser.add_argument("--enable-lora", action="store_true")
    parser.add_argument("--lora-modules", nargs="+", default=[])
    parser.add_argument("--max-lora-rank", type=int)
    parser.add_argument("--fail-start", action="store_true")
    return parser.parse_known_args(argv)


def build_app(args: argparse.Namespace, rest: list[str]) -> FastAPI:
    loras = dict(m.split("=", 1) for m in args.lora_modules) if args.enable_lora else {}
    names = [*args.served_model_name, *loras]
    eos = None
    if args.generation_config:
        path = Path(args.generation_config) / "generation_config.json"
        eos = json.loads(path.read_text()).get("eos_token_id")
    api_key = os.environ.get("VLLM_API_KEY")
    seen: list[dict] = []
    failing = {"status": 0, "answered": 0}
    app = FastAPI()

    @app.middleware("http")
    async def require_key(request: Request, call_next):
        if api_key and request.url.path.startswith("/v1"):
            if request.headers.get("authorization") != f"Bearer {api_key}":
                return JSONResponse({"error": "Unauthorized"}, 401)
        return await call_next(request)

    @app.get("/health")
    async def health():
        return {}

    @app.get("/stats")
    async def stats():
        return {
            "requests": len(seen),
            "seen": seen,
            "eos_token_id": eos,
            "args": vars(args),
            "rest": rest,
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "logging_level": os.environ.get("VLLM_LOGGING_LEVEL"),
            "failed": failing["answered"],
        }

    @app.post("/fail/{status}")
    async def fail(status: int):
        failing["status"] = status
        return {}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": n, "object": "model"} for n in names]}

    async def generate(request: Request, chat: bool):
        body = await request.json()
        if failing["status"]:
            failing["answered"] += 1
            message = f"stand-in failing with {failing['status']}"
            return JSONResponse({"error": {"message": message}}, failing["status"])
        if body.get("model") not in names:
            message = f"The model `{body.get('model')}` does not exist."
            return JSONResponse({"error": {"message": message, "code": 404}}, 404)
        prompt = body["messages"][-1]["content"] if chat else body["prompt"]
        seen.append({"model": body["model"], "prompt": prompt, "stream": bool(body.get("stream"))})
        words = f"[{args.port}] {prompt}".split(" ")
        limit = body.get("max_tokens") or body.get("max_completion_tokens") or len(words)
        out, finish = words[:limit], "length" if len(words) > limit else "stop"
        usage = {
            "prompt_tokens": len(prompt.split()),
            "completion_tokens": len(out),
            "total_tokens": len(prompt.split()) + len(out),
        }
        if not body.get("stream"):
            text = " ".join(out)
            choice = {"index": 0, "finish_reason": finish}
            choice |= (
                {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
            )
            return {"id": "standin", "model": body["model"], "choices": [choice], "usage": usage}

        def chunk(piece: str, reason: str | None) -> str:
            choice = {"index": 0, "finish_reason": reason}
            choice |= {"delta": {"content": piece}} if chat else {"text": piece}
            return f"data: {json.dumps({'model': body['model'], 'choices': [choice]})}\n\n"

        async def sse():
            for i, word in enumerate(out):
                yield chunk(word if i == 0 else " " + word, None)
            yield chunk("", finish)
            if (body.get("stream_options") or {}).get("include_usage"):
                yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(sse(), media_type="text/event-stream")

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await generate(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await generate(request, chat=True)

    return app


def main(argv: list[str]) -> None:
    args, rest = parse_args(argv)
    if args.fail_start:
        print("stand-in refused to start: --fail-start", flush=True)
        sys.exit(3)
    import uvicorn

    uvicorn.run(build_app(args, rest), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main(sys.argv[1:])
