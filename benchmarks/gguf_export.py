"""GGUF export of the ACME quickstart chat model: export time, file size, and agreement of
llama.cpp (llama-cpp-python) with forgeml on the same weights, per quantisation.

usage: .venv/bin/python benchmarks/gguf_export.py WORKSPACE MODEL OUT_DIR   (e.g. build/quickstart acme-quickstart-dense-sft /tmp/gguf)
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from forgeml.core.workspace import open_workspace
from forgeml.models.gguf_io import write_gguf
from forgeml.models.hf_io import load_model
from forgeml.registry import open_registry
from forgeml.tokenizer.chat import render_chat
from forgeml.tokenizer.train import load_tokenizer

ws_dir, ref, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
out.mkdir(parents=True, exist_ok=True)
asset = open_registry(open_workspace(ws_dir)).get_asset(ref)
model = load_model(asset.path).eval()
tok = load_tokenizer(asset.path)
torch.set_num_threads(2)

import llama_cpp  # noqa: E402

corpus = Path(ws_dir).parents[0] / "acme-corpus"
programs = sorted((corpus / "heldout" / "programs").glob("*.py"))[:6]
texts = [p.read_text() for p in programs]
qa = json.loads((corpus / "qa" / "policy_qa.json").read_text())[:8]
prompts = [render_chat([{"role": "user", "content": q["question"]}], True) for q in qa]


def our_logits(ids):
    with torch.no_grad():
        return model(torch.tensor([ids]))[0].numpy()


def our_greedy(ids, n, stop):
    out = list(ids)
    for _ in range(n):
        nxt = int(our_logits(out)[-1].argmax())
        out.append(nxt)
        if nxt in stop:
            break
    return out[len(ids) :]


def llama_greedy(llm, ids, n, stop):
    llm.reset()
    llm.eval(ids)
    out = []
    for _ in range(n):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(nxt)
        if nxt in stop:
            break
        llm.eval([nxt])
    return out


stop = {tok.token_to_id("<|end|>"), tok.token_to_id("<|eos|>")}
rows = []
for quant in ("f32", "f16", "q8_0", "q4_k_m"):
    path = out / f"model-{quant}.gguf"
    times = []
    for _ in range(3):
        path.unlink(missing_ok=True)
        t = time.perf_counter()
        write_gguf(model, path, asset.path, quant=quant, name=asset.name)
        times.append(time.perf_counter() - t)
    llm = llama_cpp.Llama(
        model_path=str(path), n_ctx=768, n_threads=2, logits_all=True, verbose=False
    )
    agree = total = 0
    max_diff = 0.0
    for text in texts:
        ids = tok.encode(text).ids[:512]
        llm.reset()
        llm.eval(ids)
        theirs = np.array(llm.scores[: len(ids)])
        ours = our_logits(ids)
        agree += int((theirs.argmax(-1) == ours.argmax(-1)).sum())
        total += len(ids)
        max_diff = max(max_diff, float(np.abs(theirs - ours).max()))
    same_greedy = 0
    for p in prompts:
        ids = tok.encode(p).ids
        same_greedy += our_greedy(ids, 64, stop) == llama_greedy(llm, ids, 64, stop)
    rows.append(
        (quant, statistics.median(times), path.stat().st_size, agree / total, total, max_diff,
         same_greedy, len(prompts))
    )  # fmt: skip
    print(rows[-1], flush=True)

print("| quant | export (s) | file (MB) | top-1 agreement (tokens) | max abs logit diff | "
      "greedy answers identical |")  # fmt: skip
print("|---|---|---|---|---|---|")
for q, t, size, a, n, d, g, np_ in rows:
    print(f"| {q} | {t:.2f} | {size / 1e6:.2f} | {a:.4f} ({n}) | {d:.3g} | {g}/{np_} |")
