"""Training throughput: forgeml's MoE vs transformers' MixtralForCausalLM, and vs a dense model.

Same Mixtral config, same initial weights, same random batches, same dtype and fused AdamW, in
one process. Timing is round-robin by step (each round runs one step of every contender, in a
rotating order), so bursts of load from other jobs hit all alike; the reported ratios are
medians of the per-round ratios, robust to the multi-second stalls of shared machines.
transformers is timed with both of its expert kernels: its default `grouped_mm` and `eager`
(the classic Python loop over experts). The dense model has the MoE's active FFN width
(ffn_hidden = top_k x expert width), which gives the dense-vs-MoE active-parameter ratio.

`--profile` also profiles one step of forgeml's MoE and of HF's `grouped_mm` Mixtral and
prints the time each spends in matrix multiplies (`mm`, `addmm`, `bmm`, `_grouped_mm`, self
time) and the ceiling they set: HF's step time over forgeml's GEMM time, the ratio forgeml
would reach if everything but its GEMMs took no time at all. `--compile` adds forgeml's MoE
under torch.compile as a contender.

    .venv/bin/python benchmarks/moe_throughput.py --dtype fp32 --record
    .venv/bin/python benchmarks/moe_throughput.py --dtype fp32 --profile --compile
    .venv/bin/python benchmarks/moe_throughput.py --quick   # smoke run
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import cpu_has_bf16, cpu_name, forgeml_loss, hf_loss, make_step  # noqa: E402

from forgeml.core.config import ModelConfig  # noqa: E402
from forgeml.models.dense import Transformer  # noqa: E402
from forgeml.models.hf_io import save_model  # noqa: E402
from forgeml.models.moe import MoETransformer  # noqa: E402
from forgeml.train.parallelize import parallelize  # noqa: E402

# The PEERS.md tiny MoE: vocab 8192, hidden 256, 6 layers, 8 heads, 4 KV heads, 8 experts of
# width 384, top-2.
MOE = ModelConfig(
    arch="moe",
    dim=256,
    n_layers=6,
    n_heads=8,
    n_kv_heads=4,
    ffn_hidden=384,
    moe_ffn_hidden=384,
    n_experts=8,
    top_k=2,
    vocab_size=8192,
    max_seq_len=256,
    tie_embeddings=True,
    norm_eps=1e-5,
)
# Same active FFN width per token (2 experts x 384 = 768): the PEERS.md dense model.
DENSE = MOE.model_copy(update={"arch": "dense", "ffn_hidden": 768})
BENCH_MD = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
TABLE_HEADER = (
    "| date | CPU | torch / transformers | mode | forgeml MoE tok/s | HF grouped_mm tok/s "
    "| HF eager tok/s | vs HF grouped_mm | vs HF eager | MoE / dense tok/s "
    "| MoE / dense active-param tok/s |"
)


def hf_models(model: MoETransformer) -> dict[str, torch.nn.Module]:
    """transformers' Mixtral with our weights (through our HF export), one per expert kernel."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        save_model(model, tmp)
        for kernel in ("grouped_mm", "eager"):
            hf = transformers.MixtralForCausalLM.from_pretrained(
                tmp, attn_implementation="sdpa", experts_implementation=kernel, use_cache=False
            )
            assert hf.config._experts_implementation == kernel
            out[f"HF {kernel}"] = hf.train()
    return out


def check_same_function(ours: MoETransformer, hf: torch.nn.Module, x: torch.Tensor) -> None:
    """Same weights, same batch: the cross-entropies must agree before anything is timed."""
    ours.eval()
    with torch.no_grad():
        mine = F.cross_entropy(ours(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten()).item()
        theirs = hf(input_ids=x, labels=x).loss.item()
    ours.train()
    print(f"first-batch CE: forgeml {mine:.5f}  HF {theirs:.5f}")
    if abs(mine - theirs) > 1e-3:
        raise SystemExit("losses differ: the models are not the same computation")


# The matrix-multiply kernels both implementations reach (self time, so a `linear` is counted
# once, through the `addmm`/`mm` under it).
GEMM_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_grouped_mm"}


def gemm_profile(step, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[float, float]:
    """(step seconds, seconds of GEMM self time) of one profiled training step."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        step(*batch)
        total = time.perf_counter() - start
    gemm_us = sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in GEMM_OPS)
    return total, gemm_us / 1e6


def report_gemm_ceiling(runs: dict, batches: list, repeats: int = 3) -> None:
    """Profile forgeml's MoE and HF's grouped_mm Mixtral (median of `repeats` steps each, in
    turn) and print the GEMM shares and the ceiling of forgeml's speed-up they imply."""
    names = ["forgeml MoE", "HF grouped_mm"]
    got: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for i in range(repeats):
        for name in names:
            got[name].append(gemm_profile(runs[name], batches[i % len(batches)]))
    med = {
        name: tuple(statistics.median(x[k] for x in got[name]) for k in (0, 1)) for name in names
    }
    for name, (total, gemm) in med.items():
        print(
            f"profile {name:14s} step {total:6.3f} s  GEMMs {gemm:6.3f} s "
            f"({100 * gemm / total:.0f}%)  rest {total - gemm:6.3f} s"
        )
    ceiling = med["HF grouped_mm"][0] / med["forgeml MoE"][1]
    print(
        f"ceiling: HF step / forgeml GEMMs = {ceiling:.2f}x (forgeml's ratio if all its "
        "non-GEMM work took no time; the profiler's own overhead is in both step times)"
    )


def record(row: str) -> None:
    """Insert `row` after the last row of this benchmark's table in BENCHMARKS.md."""
    lines = BENCH_MD.read_text().splitlines() if BENCH_MD.is_file() else []
    if TABLE_HEADER not in lines:
        lines += ["", TABLE_HEADER, "|" + "---|" * (TABLE_HEADER.count(" | ") + 1)]
    at = lines.index(TABLE_HEADER) + 2
    while at < len(lines) and lines[at].startswith("|"):
        at += 1
    lines.insert(at, row)
    BENCH_MD.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short smoke run")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default="fp32", help="bf16 = autocast")
    ap.add_argument("--no-eager", action="store_true", help="skip HF's Python expert loop")
    ap.add_argument("--rounds", type=int, default=None, help="timed steps per model")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    ap.add_argument("--record", action="store_true", help="add a result row to BENCHMARKS.md")
    ap.add_argument("--profile", action="store_true", help="GEMM share and speed-up ceiling")
    ap.add_argument("--compile", action="store_true", help="also time forgeml under compile")
    args = ap.parse_args()
    rounds = args.rounds or (3 if args.quick else 25)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.dtype == "bf16" and not cpu_has_bf16():
        print("note: this CPU has no native bf16 (AVX512-BF16/AMX): bf16 matmuls are emulated")

    torch.manual_seed(0)
    moe = MoETransformer(MOE).train()
    dense = Transformer(DENSE).train()
    theirs = hf_models(moe)
    if args.no_eager:
        del theirs["HF eager"]
    gen = torch.Generator().manual_seed(1)
    data = torch.randint(0, MOE.vocab_size, (16, args.batch, args.seq + 1), generator=gen)
    batches = [(d[:, :-1].contiguous(), d[:, 1:].contiguous()) for d in data]
    check_same_function(moe, theirs["HF grouped_mm"], data[0])
    runs = {"forgeml MoE": make_step(moe, forgeml_loss, args.dtype)}
    if args.compile:
        compiled = parallelize(copy.deepcopy(moe), compile=True, device="cpu")
        runs["forgeml+compile"] = make_step(compiled, forgeml_loss, args.dtype)
    runs.update({name: make_step(hf, hf_loss, args.dtype) for name, hf in theirs.items()})
    runs["forgeml dense"] = make_step(dense, forgeml_loss, args.dtype)
    for name, step in runs.items():
        t0 = time.perf_counter()
        for i in range(2):
            step(*batches[i])
        print(f"warm-up {name:14s} {(time.perf_counter() - t0) / 2:6.2f} s/step")

    if args.profile:
        report_gemm_ceiling(runs, batches)

    tokens = args.batch * args.seq
    rates: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for r in range(rounds):
        # Rotate the order so that no contender always runs right after the same one.
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            runs[name](*batches[r % len(batches)])
            rates[name].append(tokens / (time.perf_counter() - start))
        print(
            f"round {r + 1}/{rounds}: "
            + "  ".join(f"{name} {rates[name][-1]:5.0f}" for name in runs)
            + " tok/s"
        )
    med = {name: statistics.median(r) for name, r in rates.items()}

    def ratio(a: str, b: str) -> tuple[float, float, float]:
        """Median of the per-round ratios, with its interquartile range."""
        pair = [x / y for x, y in zip(rates[a], rates[b], strict=True)]
        q1, mid, q3 = statistics.quantiles(pair, n=4) if len(pair) > 1 else pair * 3
        return mid, q1, q3

    active_moe, active_dense = moe.active_params(), dense.num_params()
    mode = (
        f"{args.dtype}, b{args.batch}x{args.seq}, fused AdamW, {torch.get_num_threads()} threads"
        f"{', quick' if args.quick else ''}"
    )
    print(f"\n{mode}, {rounds} round-robin steps per model, {torch.get_num_threads()} threads")
    print(
        f"params: MoE {moe.num_params() / 1e6:.2f}M total, {active_moe / 1e6:.2f}M active; "
        f"dense {active_dense / 1e6:.2f}M"
    )
    print("| model | median tok/s | forgeml MoE vs it (median ratio, IQR) |\n|---|---|---|")
    for name in runs:
        r, lo, hi = ratio("forgeml MoE", name)
        print(f"| {name} | {med[name]:.0f} | {r:.2f}x ({lo:.2f}-{hi:.2f}) |")
    dense_ratio = ratio("forgeml MoE", "forgeml dense")[0]
    active_ratio = dense_ratio * active_moe / active_dense
    print(
        f"MoE / dense tokens/s: {dense_ratio:.2f}; active-parameter throughput: {active_ratio:.2f}"
    )

    if args.record:

        def vs(name: str) -> str:
            if name not in runs:
                return "-"
            r, lo, hi = ratio("forgeml MoE", name)
            return f"{r:.2f}x ({lo:.2f}-{hi:.2f})"

        eager = f"{med['HF eager']:.0f}" if "HF eager" in runs else "-"
        record(
            f"| {dt.date.today().isoformat()} | {cpu_name()} | {torch.__version__} / "
            f"{transformers.__version__} | {mode} | {med['forgeml MoE']:.0f} | "
            f"{med['HF grouped_mm']:.0f} | {eager} | {vs('HF grouped_mm')} | {vs('HF eager')} | "
            f"{dense_ratio:.2f} | {active_ratio:.2f} |"
        )
        print(f"recorded in {BENCH_MD}")


if __name__ == "__main__":
    main()
