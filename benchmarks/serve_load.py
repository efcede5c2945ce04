"""Bounded load test of the governed API on loopback: N requests at C concurrent, 0 errors?

One process: `forgeml serve`'s app (API key auth, a policy with input and output redaction,
the hash-chained audit log) over the PEERS.md tiny Mistral (random weights, continuous
batching with C slots) on a free 127.0.0.1 port, driven by an httpx client with C workers.
Reports errors by status, requests/s, generated tokens/s and p50/p99 latency, then verifies
the audit chain holds every request.

    .venv/bin/python benchmarks/serve_load.py --requests 2000 --concurrent 32
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import torch
import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_throughput import CFG, make_prompts, stdlib_texts  # noqa: E402

from forgeml.governance.audit import AuditLog, verify_audit_log  # noqa: E402
from forgeml.governance.keys import KeyStore  # noqa: E402
from forgeml.governance.policy import Policy, PolicyConfig  # noqa: E402
from forgeml.models.dense import Transformer  # noqa: E402
from forgeml.models.hf_io import save_model  # noqa: E402
from forgeml.registry.store import Registry  # noqa: E402
from forgeml.serve.api import create_app  # noqa: E402
from forgeml.serve.loading import load_served_models  # noqa: E402
from forgeml.tokenizer.train import load_tokenizer, train_bpe_tokenizer  # noqa: E402

POLICY = {"default": {"input": {"redact": ["email"]}, "output": {"redact": ["email", "secret"]}}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def drive(url: str, key: str, prompts: list[str], n: int, concurrent: int, tokens: int):
    """n completions from `concurrent` workers; (latencies s, statuses, generated tokens)."""
    latencies, statuses, generated = [], collections.Counter(), 0
    todo = iter(range(n))
    limits = httpx.Limits(max_connections=concurrent, max_keepalive_connections=concurrent)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=300) as c:

        async def worker() -> None:
            nonlocal generated
            for i in todo:
                body = {"model": "champion", "prompt": prompts[i % len(prompts)],
                        "max_tokens": tokens, "temperature": 0.8, "seed": i}  # fmt: skip
                started = time.perf_counter()
                try:
                    resp = await c.post("/v1/completions", json=body)
                    statuses[resp.status_code] += 1
                    if resp.status_code == 200:
                        generated += resp.json()["usage"]["completion_tokens"]
                except httpx.HTTPError as exc:
                    statuses[type(exc).__name__] += 1
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(worker() for _ in range(concurrent)))
    return latencies, statuses, generated


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrent", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=16, help="max_tokens per request")
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default="fp32")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        texts = stdlib_texts(2_000_000)
        tok_dir = train_bpe_tokenizer(texts, vocab_size=CFG.vocab_size, out_dir=root / "tok")
        tok = load_tokenizer(tok_dir)
        torch.manual_seed(0)
        model = Transformer(CFG.model_copy(update={"vocab_size": tok.get_vocab_size()}))
        if args.dtype == "bf16":
            model = model.to(torch.bfloat16)
        model_dir = save_model(model, root / "model", tok_dir)
        registry = Registry(f"sqlite:///{root / 'registry.db'}", root / "artifacts")
        registry.set_alias("champion", registry.add_asset("model", "tiny", model_dir).id)
        models = load_served_models(
            registry, ["champion"], max_batch=args.concurrent, max_queue=4 * args.concurrent
        )
        keys = KeyStore(registry.engine)
        key, _ = keys.create_key("load-test")
        audit = AuditLog(root / "audit.jsonl")
        app = create_app(
            models, keys=keys, policy=Policy(PolicyConfig.model_validate(POLICY)), audit=audit
        )
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
        threading.Thread(target=server.run, daemon=True).start()
        while not server.started:
            time.sleep(0.05)
        ids = make_prompts(tok, texts, 64, 24)
        prompts = [tok.decode(p) for p in ids]
        url = f"http://127.0.0.1:{port}"
        print(f"{args.requests} requests, {args.concurrent} concurrent, max_tokens {args.tokens}")
        asyncio.run(drive(url, key, prompts, 2 * args.concurrent, args.concurrent, args.tokens))
        started = time.perf_counter()
        latencies, statuses, generated = asyncio.run(
            drive(url, key, prompts, args.requests, args.concurrent, args.tokens)
        )
        wall = time.perf_counter() - started
        server.should_exit = True
        for m in models.values():
            m.engine.close()
        errors = sum(v for k, v in statuses.items() if k != 200)
        q = statistics.quantiles(latencies, n=100)
        print(
            f"statuses {dict(statuses)}  errors {errors}\n"
            f"{len(latencies) / wall:.1f} req/s  {generated / wall:.0f} generated tok/s  "
            f"latency p50 {q[49] * 1000:.0f} ms  p99 {q[98] * 1000:.0f} ms  wall {wall:.1f} s"
        )
        check = verify_audit_log(audit.path)
        entries = audit.path.read_text().count('"event": "request"')
        print(
            f"audit chain intact: {check.ok} (first bad entry {check.first_bad}), "
            f"request entries {entries}"
        )
        registry.close()
        if errors:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
