"""The serving benchmark's decode-step floor: one step's matmuls and attention alone, each
through the fastest kernel this machine has for it, and the engine's eager and compiled steps
timed against it (`serve_throughput.py --profile` / `--step-only`).
"""

from __future__ import annotations

import collections
import functools
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from forgeml.models.dense import KVCache
from forgeml.serve.engine import Engine
from forgeml.serve.prepack import packed_linear, packer_for
from forgeml.serve.step import decode_attention


def linear_kernels(linear: torch.nn.Linear, rows: int) -> dict[str, Callable]:
    """Every kernel a decode step may multiply by `linear`'s weight with, called directly (no
    module code): `F.linear`, `mm` by the weight transposed once, and the weight packed for
    `rows` rows by oneDNN and by MKL where this torch and CPU pack that dtype (the eager step
    uses a bitwise-equal one, the compiled step any within tolerance)."""
    w, bias = linear.weight.detach(), linear.bias
    kernels = {"F.linear": functools.partial(F.linear, weight=w, bias=bias)}
    transposed = w.t().contiguous()
    kernels["mm"] = (
        functools.partial(torch.mm, mat2=transposed)
        if bias is None
        else functools.partial(torch.addmm, bias, mat2=transposed)
    )
    for library in ("onednn", "mkl"):
        packer = packer_for(torch.float32 if library == "mkl" else torch.bfloat16)
        if packer is None or packer.name != library:
            continue
        try:
            packed = packer.pack(w, rows)
            x = torch.zeros(rows, linear.in_features, dtype=w.dtype)
            packed_linear(x, packed, w, bias, library, rows)
        except RuntimeError:  # a dtype or CPU the library does not pack
            continue
        kernels[library] = functools.partial(packed_linear, packed=packed, weight=w, bias=bias,
                                             library=library, max_rows=rows)  # fmt: skip
    return kernels


def gemm_floor(
    model: torch.nn.Module, rows: int, repeats: int = 50
) -> tuple[Callable[[], None], str]:
    """One decode step's matmuls alone at `rows` rows, as a pass to time: every linear of
    `model` (with tied embeddings the output head too) once, in the model's order, each
    through the fastest of `linear_kernels` for it (by per-call medians of `repeats` calls,
    in CPU time of this thread: other jobs' load does not count); and which kernels."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    kernels = [linear_kernels(m, rows) for m in linears]
    inputs = [torch.randn(rows, m.in_features, dtype=m.weight.dtype) for m in linears]
    names = list(dict.fromkeys(name for k in kernels for name in k))
    times = [{name: [] for name in k} for k in kernels]
    with torch.inference_mode():
        for _ in range(repeats + 5):
            for name in names:  # a pass per kernel: the weights leave the cache in between
                for x, k, t in zip(inputs, kernels, times, strict=True):
                    if name in k:
                        start = time.thread_time()
                        k[name](x)
                        t[name].append(time.thread_time() - start)
    best = [min((statistics.median(v[5:]), name) for name, v in t.items()) for t in times]
    used = collections.Counter(name for _, name in best)
    chosen = [k[name] for k, (_, name) in zip(kernels, best, strict=True)]

    def one_pass() -> None:
        for x, kernel in zip(inputs, chosen, strict=True):
            kernel(x)

    return one_pass, ", ".join(f"{n} {c}" for n, c in used.items())


def attention_floor(
    model: torch.nn.Module, rows: int, keys: int, repeats: int = 50
) -> tuple[Callable[[], None], str]:
    """One decode step's attention alone at `rows` rows over `keys` cached keys, as a pass to
    time: every layer at the engine's shapes (one query per row, GQA, an additive mask, keys
    a slice of a max-length cache), through the faster (median of `repeats`) of SDPA and the
    compiled step's fused attention (`forgeml.serve.step.decode_attention`, compiled for
    exactly these shapes); and which one that was."""
    cfg = model.cfg
    head_dim = cfg.dim // cfg.n_heads
    dtype = next(model.parameters()).dtype
    q = torch.randn(rows, cfg.n_heads, 1, head_dim, dtype=dtype)
    shape = (cfg.n_layers, rows, cfg.n_kv_heads, cfg.max_seq_len, head_dim)
    cache_k, cache_v = torch.randn(shape, dtype=dtype), torch.randn(shape, dtype=dtype)
    mask = torch.zeros(rows, 1, 1, keys, dtype=dtype)

    def sdpa() -> None:
        for layer in range(cfg.n_layers):
            F.scaled_dot_product_attention(
                q, cache_k[layer, :, :, :keys], cache_v[layer, :, :, :keys], attn_mask=mask,
                enable_gqa=cfg.n_kv_heads != cfg.n_heads,
            )  # fmt: skip

    def fused(q, cache_k, cache_v, mask) -> list[torch.Tensor]:
        return [
            decode_attention(q, cache_k[layer, :, :, :keys], cache_v[layer, :, :, :keys], mask)
            for layer in range(cfg.n_layers)
        ]

    compiled = torch.compile(fused, dynamic=False, fullgraph=True)
    candidates = {"SDPA": sdpa, "fused": lambda: compiled(q, cache_k, cache_v, mask)}
    times = median_seconds(candidates, repeats)
    name = min(times, key=times.get)
    return candidates[name], name


def median_seconds(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median CPU seconds of this thread of each function, called in turn `repeats` times
    (after 5 untimed turns), each call timed whole: on a loaded machine all see the same
    load, and a longer call holds more of the other jobs' time slices (their cache misses)
    than a sum of short ones would."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    with torch.inference_mode():
        for turn in range(repeats + 5):
            for name, fn in fns.items():
                start = time.thread_time()
                fn()
                if turn >= 5:
                    times[name].append(time.thread_time() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def step_vs_floor(
    engine: Engine, compiled: Engine | None, threads: int | None, n: int, keys: int,
    repeats: int = 30,
) -> None:  # fmt: skip
    """The decode step alone, eager (`decode_rows`) and compiled (the engine's whole call:
    bucket lookup, padding, graph), against its floor, at 1 and n rows with `keys` cached
    keys: CPU seconds of this thread, medians of `repeats` alternating passes, printed as a
    markdown table. The floor is the step's matmuls and attention alone, each through the
    fastest kernel this machine has for it (`gemm_floor`, `attention_floor`), their passes
    timed in turn with the steps."""
    model = engine.model
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    print(f"\n| rows | eager step ms | compiled step ms | matmuls ms | attention ms ({keys} keys) "
          "| floor ms | eager / floor | compiled / floor |\n|---|---|---|---|---|---|---|---|")  # fmt: skip
    notes = []
    try:
        for rows in (1, n):
            tokens = torch.randint(0, model.cfg.vocab_size, (rows,))
            positions = torch.full((rows,), keys - 1)
            live = KVCache(engine.cache.k[:, :rows], engine.cache.v[:, :rows])
            steps = {"eager": lambda t=tokens, p=positions, c=live: model.decode_rows(t, c, p)}
            if compiled is not None and compiled_ready(compiled, tokens, positions, notes):
                steps["compiled"] = lambda t=tokens, p=positions, s=compiled.compiled_step: s(t, p)
            steps["gemm"], gemm_kernels = gemm_floor(model, rows)
            steps["attention"], attention_kernel = attention_floor(model, rows, keys)
            notes.append(
                f"{rows} row(s): linears through {gemm_kernels}; attention: {attention_kernel}"
            )
            # The steps and the floor's passes in turn: the same load for all.
            ms = {name: t * 1e3 for name, t in median_seconds(steps, repeats).items()}
            floor = ms["gemm"] + ms["attention"]
            ours = ms.get("compiled")
            print(
                f"| {rows} | {ms['eager']:.2f} | {'-' if ours is None else f'{ours:.2f}'} | "
                f"{ms['gemm']:.2f} | {ms['attention']:.2f} | {floor:.2f} | "
                f"{ms['eager'] / floor:.2f}x | {'-' if ours is None else f'{ours / floor:.2f}x'} |"
            )
    finally:
        torch.set_num_threads(before)
    print("\n".join(notes))


def compiled_ready(
    engine: Engine, tokens: torch.Tensor, positions: torch.Tensor, notes: list[str]
) -> bool:
    """Compile and probe the compiled engine's bucket for these rows (if not yet done) as the
    engine would; whether its graph is used (else the verdict goes to `notes`)."""
    stepper = engine.compiled_step
    with torch.inference_mode():
        for _ in range(3):  # first call: compile; second: probe; third: the verdict's path
            if stepper(tokens, positions) is None:
                stepper.wait(timeout=1800)
    key = stepper.bucket_of(len(tokens), int(positions.max()) + 1)
    found = stepper.buckets[key]
    notes.append(
        f"compiled bucket {key}: {found.state} after {found.compile_seconds:.0f} s of compile "
        f"({found.verdict}); {stepper.step_kernels} linears with a step-only copy"
    )
    return found.state == "fast"
