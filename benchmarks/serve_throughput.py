"""Generation throughput: forgeml's serving engine vs transformers' `generate`, in one process.

The same tiny Mistral weights (ours, exported through `hf_io` and loaded by
`MistralForCausalLM`, sdpa attention), the same dtype, greedy decoding (or, with
`--temperature T`, sampling from the whole distribution: seeded per request in forgeml, HF's
`do_sample` with top-k and top-p off), the same prompts (stdlib text through a BPE tokenizer
trained here), exactly `--new` tokens each (no stop).
Three workloads, timed round-robin (every round runs each contender once, in a rotating
order) so load bursts from other jobs hit all alike; the ratios are medians of per-round ratios:

- single stream: one request at a time (forgeml `Engine.generate` vs HF `generate` batch 1);
- N concurrent: N requests submitted at once to the engine (continuous batching) vs HF
  `generate` on the batch of the N prompts (its best case: equal lengths, no padding), and vs
  HF serving them one at a time (its batch-1 rate: what a plain HF server does per request).

    .venv/bin/python benchmarks/serve_throughput.py --dtype bf16 --record
    .venv/bin/python benchmarks/serve_throughput.py --dtype bf16 --temperature 0.8
    .venv/bin/python benchmarks/serve_throughput.py --quick   # smoke run

`--profile` also times the decode step's matmuls alone (every linear of the model, the
output head included, on 1 and on N rows, with the engine's thread count): no decoder of these
weights can step faster, so HF's time per step over it is the most any engine could gain.
It then adds the attention of every layer alone (SDPA at the engine's shapes, over the mean
number of keys of a request), the other kernel every decoder runs, for a tighter ceiling.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import cpu_has_bf16, cpu_name  # noqa: E402

from forgeml.core.config import ModelConfig  # noqa: E402
from forgeml.models.dense import Transformer  # noqa: E402
from forgeml.models.hf_io import save_model  # noqa: E402
from forgeml.serve.engine import Engine, SamplingParams  # noqa: E402
from forgeml.tokenizer.train import load_tokenizer, train_bpe_tokenizer  # noqa: E402

# The PEERS.md tiny model: vocab 8192, hidden 256, intermediate 768, 6 layers, 8/4 heads.
CFG = ModelConfig(
    dim=256,
    n_layers=6,
    n_heads=8,
    n_kv_heads=4,
    ffn_hidden=768,
    vocab_size=8192,
    max_seq_len=1024,
    tie_embeddings=True,
    norm_eps=1e-5,
)
BENCH_MD = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
TABLE_HEADER = (
    "| date | CPU | torch / transformers | dtype, prompt+new | forgeml 1 stream tok/s "
    "| HF batch 1 tok/s | ratio | forgeml N concurrent tok/s | HF batch N tok/s "
    "| vs HF batch N | vs HF one at a time |"
)


def stdlib_texts(max_bytes: int) -> list[str]:
    """Real local text without downloads: the Python standard library's sources."""
    texts, total = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        text = path.read_text(errors="replace")
        texts.append(text)
        total += len(text)
        if total >= max_bytes:
            break
    return texts


def make_prompts(tok, texts: list[str], n: int, length: int) -> list[list[int]]:
    """n prompts of exactly `length` tokens, from different places of the corpus."""
    ids = tok.encode("\n".join(texts)).ids
    stride = max(length, (len(ids) - length) // n)
    return [ids[i * stride : i * stride + length] for i in range(n)]


def forgeml_run(engine: Engine, prompts: list[list[int]], new: int, temperature: float) -> int:
    """Submit every prompt at once, wait for all; generated tokens. Sampled requests are
    seeded (each its own generator, as a server's seeded requests)."""
    handles = [
        engine.submit(p, SamplingParams(max_tokens=new, temperature=temperature, seed=i))
        for i, p in enumerate(prompts)
    ]
    return sum(len(h.result().token_ids) for h in handles)


@torch.inference_mode()
def hf_run(model, prompts: list[list[int]], new: int, temperature: float) -> int:
    """One `generate` call on the batch of prompts (all the same length: no padding); sampled
    from the whole distribution at `temperature` > 0 (top-k and top-p off, as ours)."""
    x = torch.tensor(prompts)
    sampling = (
        {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
        if temperature > 0
        else {"do_sample": False}
    )
    out = model.generate(
        x,
        attention_mask=torch.ones_like(x),
        max_new_tokens=new,
        min_new_tokens=new,
        pad_token_id=0,
        **sampling,
    )
    return (out.shape[1] - x.shape[1]) * out.shape[0]


def check_same_tokens(engine: Engine, hf, prompts: list[list[int]], new: int) -> float:
    """Share of greedy tokens both produce identically (before timing anything)."""
    same = total = 0
    for p in prompts:
        ours = engine.generate(p, SamplingParams(max_tokens=new, temperature=0)).token_ids
        with torch.inference_mode():
            theirs = hf.generate(
                torch.tensor([p]), max_new_tokens=new, min_new_tokens=new, do_sample=False,
                pad_token_id=0,
            )[0, len(p) :].tolist()  # fmt: skip
        # Count the agreeing prefix: after a first near-tie the continuations differ legitimately.
        agree = next(
            (i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b), len(ours)
        )
        same, total = same + agree, total + len(ours)
    return same / total


def gemm_floor(model: torch.nn.Module, rows: int, repeats: int = 50) -> float:
    """Seconds of one decode step's matmuls alone at `rows` rows: every linear of `model`
    applied once to random inputs of its width (median of `repeats` passes). With tied
    embeddings the output head is a linear too."""
    # Called as modules: the engine's prepacked linears multiply as they do in decoding.
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    inputs = [torch.randn(rows, m.in_features, dtype=m.weight.dtype) for m in linears]
    times = []
    with torch.inference_mode():
        for _ in range(repeats + 5):
            start = time.perf_counter()
            for x, linear in zip(inputs, linears, strict=True):
                linear(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times[5:])


def attention_floor(model: torch.nn.Module, rows: int, keys: int, repeats: int = 50) -> float:
    """Seconds of one decode step's attention alone at `rows` rows over `keys` cached keys:
    the SDPA call of every layer, at the engine's shapes (one query per row, GQA, an additive
    mask, keys a slice of a max-length cache), median of `repeats` passes."""
    cfg = model.cfg
    head_dim = cfg.dim // cfg.n_heads
    dtype = next(model.parameters()).dtype
    q = torch.randn(rows, cfg.n_heads, 1, head_dim, dtype=dtype)
    shape = (cfg.n_layers, rows, cfg.n_kv_heads, cfg.max_seq_len, head_dim)
    cache_k, cache_v = torch.randn(shape, dtype=dtype), torch.randn(shape, dtype=dtype)
    mask = torch.zeros(rows, 1, 1, keys, dtype=dtype)
    times = []
    with torch.inference_mode():
        for _ in range(repeats + 5):
            start = time.perf_counter()
            for layer in range(cfg.n_layers):
                torch.nn.functional.scaled_dot_product_attention(
                    q,
                    cache_k[layer, :, :, :keys],
                    cache_v[layer, :, :, :keys],
                    attn_mask=mask,
                    enable_gqa=cfg.n_kv_heads != cfg.n_heads,
                )
            times.append(time.perf_counter() - start)
    return statistics.median(times[5:])


def report_ceiling(
    model: torch.nn.Module, threads: int | None, med: dict, n: int, keys: int
) -> None:
    """Print HF's time per decode step over the matmul floor, and over matmuls plus attention
    (the two kernels no decoder can skip), at 1 and at n rows; and forgeml's time per step."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        floors = {rows: gemm_floor(model, rows) for rows in (1, n)}
        attention = {rows: attention_floor(model, rows, keys) for rows in (1, n)}
    finally:
        torch.set_num_threads(before)
    for rows, ours, hf_rate in (
        (1, med["forgeml 1"], med["HF 1"]),
        (n, med["forgeml N"], med["HF N"]),
    ):
        hf_step = rows / hf_rate
        both = floors[rows] + attention[rows]
        print(
            f"ceiling at {rows:2d} row(s): HF {hf_step * 1e3:6.2f} ms a step (forgeml "
            f"{rows / ours * 1e3:.2f}) / matmuls alone {floors[rows] * 1e3:6.2f} ms = "
            f"{hf_step / floors[rows]:.2f}x; / matmuls + attention ({keys} keys) "
            f"{both * 1e3:6.2f} ms = {hf_step / both:.2f}x (an engine's ratio to HF if everything "
            "else took no time)"
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
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default="fp32", help="model weights")
    ap.add_argument("--concurrent", type=int, default=16, help="N concurrent requests")
    ap.add_argument("--prompt", type=int, default=32, help="prompt tokens")
    ap.add_argument("--new", type=int, default=128, help="generated tokens per request")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads of both (default: HF all, the engine its own default, 1 on CPU)",
    )
    ap.add_argument(
        "--temperature", type=float, default=0.0, help="sample at this temperature (0: greedy)"
    )
    ap.add_argument("--record", action="store_true", help="add a result row to BENCHMARKS.md")
    ap.add_argument("--profile", action="store_true", help="matmul floor and speed-up ceiling")
    args = ap.parse_args()
    if args.quick:
        args.new, args.rounds, args.concurrent = 16, 1, 4
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.dtype == "bf16" and not cpu_has_bf16():
        print("warning: no native bf16 on this CPU; bf16 matmuls are emulated and slow")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]

    with tempfile.TemporaryDirectory() as tmp:
        texts = stdlib_texts(4_000_000)
        tok_dir = train_bpe_tokenizer(texts, vocab_size=CFG.vocab_size, out_dir=Path(tmp) / "tok")
        tok = load_tokenizer(tok_dir)
        torch.manual_seed(0)
        model = Transformer(CFG.model_copy(update={"vocab_size": tok.get_vocab_size()}))
        model_dir = save_model(model, Path(tmp) / "model", tok_dir)
        hf = transformers.MistralForCausalLM.from_pretrained(
            model_dir, attn_implementation="sdpa", dtype=dtype
        ).eval()
    model = model.to(dtype).eval()
    # Both would stop at EOS; exactly --new tokens each keeps the work identical.
    engine = Engine(
        model, tok, max_batch=args.concurrent, max_queue=4 * args.concurrent, threads=args.threads
    )
    prompts = make_prompts(tok, texts, args.concurrent, args.prompt)
    print(
        f"model {model.num_params() / 1e6:.1f}M params, {args.dtype}, "
        f"{'sampled at T=' + str(args.temperature) if args.temperature > 0 else 'greedy'}, "
        f"prompts {args.prompt} "
        f"tokens, {args.new} new each, N={args.concurrent}, HF {torch.get_num_threads()} threads, "
        f"engine {engine.threads} thread(s)"
    )
    agree = check_same_tokens(engine, hf, prompts[:2], min(args.new, 32))
    print(f"greedy tokens identical to HF (agreeing prefix): {agree:.0%}")

    contenders = {
        "forgeml 1": lambda: forgeml_run(engine, prompts[:1], args.new, args.temperature),
        "HF 1": lambda: hf_run(hf, prompts[:1], args.new, args.temperature),
        "forgeml N": lambda: forgeml_run(engine, prompts, args.new, args.temperature),
        "HF N": lambda: hf_run(hf, prompts, args.new, args.temperature),
    }
    for fn in contenders.values():  # warm-up (allocator, kernels, thread pools)
        fn()
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            started = time.perf_counter()
            n = contenders[name]()
            rates[name].append(n / (time.perf_counter() - started))
        print(
            f"round {r + 1}: " + "  ".join(f"{k} {v[-1]:.0f} tok/s" for k, v in rates.items()),
            flush=True,
        )
    engine.close()

    def median_ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(rates[a], rates[b], strict=True))

    med = {k: statistics.median(v) for k, v in rates.items()}
    single = median_ratio("forgeml 1", "HF 1")
    batched = median_ratio("forgeml N", "HF N")
    serial = median_ratio("forgeml N", "HF 1")
    print(
        f"single stream   forgeml {med['forgeml 1']:7.0f} tok/s   HF batch 1 {med['HF 1']:7.0f}"
        f" tok/s   ratio {single:.2f}x\n"
        f"{args.concurrent:2d} concurrent   forgeml {med['forgeml N']:7.0f} tok/s   HF batch "
        f"{args.concurrent} {med['HF N']:7.0f} tok/s   ratio {batched:.2f}x   vs HF one at a "
        f"time {serial:.2f}x"
    )
    if args.profile:
        report_ceiling(model, engine.threads, med, args.concurrent, args.prompt + args.new // 2)
    if args.record:
        record(
            f"| {dt.date.today()} | {cpu_name()} | {torch.__version__} / "
            f"{transformers.__version__} | {args.dtype}, {args.prompt}+{args.new}"
            f"{f', sampled T={args.temperature}' if args.temperature > 0 else ''} | "
            f"{med['forgeml 1']:.0f} | {med['HF 1']:.0f} | {single:.2f}x | "
            f"{med['forgeml N']:.0f} | {med['HF N']:.0f} | {batched:.2f}x | {serial:.2f}x |"
        )
        print(f"recorded in {BENCH_MD}")


if __name__ == "__main__":
    main()
