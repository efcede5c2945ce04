"""Training throughput: forgeml's dense Transformer vs transformers' MistralForCausalLM.

Same architecture, same initial weights, same random batches, same dtype (bf16 autocast by
default) and AdamW, in one process; timed windows alternate between the two so that machine
noise hits both alike. Reports the median tokens/s of each and their ratio.

    .venv/bin/python benchmarks/train_throughput.py --dtype fp32 --compile --record
    .venv/bin/python benchmarks/train_throughput.py --quick   # smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch
import transformers

from forgeml.core.config import ModelConfig
from forgeml.models.dense import Transformer
from forgeml.models.hf_io import to_hf_state_dict
from forgeml.train.parallelize import parallelize

# The PEERS.md tiny config: large enough to show real costs, small enough for 2 CPU cores.
CFG = ModelConfig(
    dim=256,
    n_layers=6,
    n_heads=8,
    n_kv_heads=4,
    ffn_hidden=768,
    vocab_size=8192,
    max_seq_len=256,
    tie_embeddings=True,
    norm_eps=1e-5,
)
BENCH_MD = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
TABLE_HEADER = (
    "| date | CPU | torch / transformers | mode | forgeml variant | forgeml tok/s | HF tok/s "
    "| ratio (window range) |"
)


def hf_model(model: Transformer) -> torch.nn.Module:
    """transformers' Mistral with our config and our initial weights, run fairly (sdpa)."""
    cfg = model.cfg
    config = transformers.MistralConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.dim,
        intermediate_size=cfg.ffn_hidden,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=cfg.norm_eps,
        tie_word_embeddings=cfg.tie_embeddings,
        sliding_window=None,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        use_cache=False,
        attn_implementation="sdpa",
    )
    hf = transformers.MistralForCausalLM(config)
    assert hf.config._attn_implementation == "sdpa"
    hf.load_state_dict(to_hf_state_dict(model), strict=False)
    if cfg.tie_embeddings:
        hf.tie_weights()
    return hf.train()


def make_step(
    model: torch.nn.Module, loss_fn: Callable, dtype: str
) -> Callable[[torch.Tensor, torch.Tensor], float]:
    # Fused AdamW for both sides: transformers' Trainer default, and ~8x faster than foreach
    # on CPU here, so the comparison is not diluted by a slow optimizer common to both.
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1, fused=True)

    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        ctx = (
            torch.autocast("cpu", dtype=torch.bfloat16)
            if dtype == "bf16"
            else contextlib.nullcontext()
        )
        with ctx:
            loss = loss_fn(model, x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return step


def forgeml_loss(model, x, y):
    return model(x, y)


def hf_loss(model, x, y):
    # labels = the inputs: transformers shifts them inside, the usual way to train with it.
    return model(input_ids=x, labels=x).loss


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def cpu_has_bf16() -> bool:
    """Native bf16 matmuls (AVX512-BF16 or AMX); without them bf16 is emulated and slow."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def record(row: str) -> None:
    """Insert `row` after the last row of the results table in BENCHMARKS.md."""
    lines = BENCH_MD.read_text().splitlines() if BENCH_MD.is_file() else []
    if TABLE_HEADER not in lines:
        lines += ["", TABLE_HEADER, "|" + "---|" * TABLE_HEADER.count(" | ")]
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
    ap.add_argument(
        "--dtype", choices=["bf16", "fp32"], default="bf16", help="bf16 = autocast, both sides"
    )
    ap.add_argument("--compile", action="store_true", help="also time forgeml under torch.compile")
    ap.add_argument("--windows", type=int, default=None, help="timed windows per model")
    ap.add_argument("--window-s", type=float, default=None, help="seconds per window")
    ap.add_argument("--record", action="store_true", help="add a result row to BENCHMARKS.md")
    args = ap.parse_args()
    windows = args.windows or (2 if args.quick else 6)
    window_s = args.window_s or (8.0 if args.quick else 30.0)
    warmup = 2 if args.quick else 3
    if args.dtype == "bf16" and not cpu_has_bf16():
        print("note: this CPU has no native bf16 (AVX512-BF16/AMX): bf16 matmuls are emulated")

    torch.manual_seed(0)
    ours = Transformer(CFG).train()
    theirs = hf_model(ours)
    runs = {"forgeml": make_step(ours, forgeml_loss, args.dtype)}
    if args.compile:
        compiled = parallelize(copy.deepcopy(ours), compile=True, device="cpu")
        runs["forgeml+compile"] = make_step(compiled, forgeml_loss, args.dtype)
    runs["HF"] = make_step(theirs, hf_loss, args.dtype)
    gen = torch.Generator().manual_seed(1)
    data = torch.randint(0, CFG.vocab_size, (16, args.batch, args.seq + 1), generator=gen)
    batches = [(d[:, :-1].contiguous(), d[:, 1:].contiguous()) for d in data]
    # Same first batch, same weights: the losses must agree before anything is timed.
    first = {}
    for name, step in runs.items():
        t0 = time.perf_counter()
        first[name] = step(*batches[0])
        print(f"first step {name:16s} loss {first[name]:.4f}  {time.perf_counter() - t0:6.1f}s")
    if max(first.values()) - min(first.values()) > 0.05:
        raise SystemExit("losses differ: the models are not the same computation")
    # Warm-up steps, then an untimed settling period: the first seconds after compiling were
    # consistently slow (inductor's compile workers winding down).
    for step in runs.values():
        for i in range(warmup):
            step(*batches[(i + 1) % len(batches)])
        start = time.perf_counter()
        while time.perf_counter() - start < window_s / 3:
            step(*batches[0])

    tokens = args.batch * args.seq
    rates: dict[str, list[float]] = {name: [] for name in runs}
    counter = 0
    for w in range(windows):
        # Alternate the order so that slow drifts of the machine do not favour one side.
        order = list(runs) if w % 2 == 0 else list(runs)[::-1]
        for name in order:
            steps, start = 0, time.perf_counter()
            while time.perf_counter() - start < window_s:
                runs[name](*batches[counter % len(batches)])
                counter += 1
                steps += 1
            rates[name].append(steps * tokens / (time.perf_counter() - start))
        print(
            f"window {w + 1}/{windows}: "
            + "  ".join(f"{name} {rates[name][-1]:6.0f}" for name in runs)
            + " tok/s"
        )
    med = {name: statistics.median(r) for name, r in rates.items()}
    mode = f"{args.dtype}, b{args.batch}x{args.seq}, fused AdamW{', quick' if args.quick else ''}"
    print(f"\n{mode}, {windows} windows of {window_s:.0f}s per model")
    print("| model | median tok/s | vs HF (median) | vs HF (window range) |\n|---|---|---|---|")
    rows = []
    for name in runs:
        pair = sorted(a / b for a, b in zip(rates[name], rates["HF"], strict=True))
        ratio = med[name] / med["HF"]
        print(f"| {name} | {med[name]:.0f} | {ratio:.2f}x | {pair[0]:.2f}-{pair[-1]:.2f} |")
        if name != "HF":
            rows.append(
                f"| {dt.date.today().isoformat()} | {cpu_name()} | {torch.__version__} / "
                f"{transformers.__version__} | {mode} | {name} | {med[name]:.0f} | "
                f"{med['HF']:.0f} | {ratio:.2f}x ({pair[0]:.2f}-{pair[-1]:.2f}) |"
            )
    if args.record:
        for row in rows:
            record(row)
        print(f"recorded in {BENCH_MD}")


if __name__ == "__main__":
    main()
