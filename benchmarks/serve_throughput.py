"""Generation throughput: forgeml's serving engine vs llama.cpp and transformers' `generate`.

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

llama.cpp (through llama-cpp-python's low-level API, when installed) decodes the same weights
written as GGUF (`forgeml.models.gguf_io`, f16 and f32 by default, `--llama-cpp`) with the
engine's thread count, greedy: one sequence alone, and the N prompts as N parallel sequences of
one context (prefilled in one batch, then one token per sequence per `llama_decode`: its
server's continuous batching without the HTTP layer). `--compile` adds the engine with its
compiled decode step (`Engine(compile_step=True)`, its buckets compiled and probed before
timing) beside the eager one.

    .venv/bin/python benchmarks/serve_throughput.py --dtype bf16 --record
    .venv/bin/python benchmarks/serve_throughput.py --dtype bf16 --compile --profile
    .venv/bin/python benchmarks/serve_throughput.py --dtype bf16 --temperature 0.8
    .venv/bin/python benchmarks/serve_throughput.py --quick   # smoke run
    .venv/bin/python benchmarks/serve_throughput.py --dtype bf16 --threads 1 --compile --step-only

`--profile` also times the decode step's matmuls alone (every linear of the model, the
output head included, on 1 and on N rows, with the engine's thread count, each through the
fastest kernel this machine has for it): no decoder of these weights can step faster, so HF's
time per step over it is the most any engine could gain. It then adds the attention of every
layer alone (the faster of SDPA and the compiled step's fused attention, at the engine's
shapes, over the mean number of keys of a request), the other kernel every decoder runs, for
a tighter ceiling, and prints the eager and compiled steps against that floor (`--step-only`:
that table alone, without generating).
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
from serve_step_floor import attention_floor, gemm_floor, median_seconds, step_vs_floor  # noqa: E402
from train_throughput import cpu_has_bf16, cpu_name  # noqa: E402

from forgeml.core.config import ModelConfig  # noqa: E402
from forgeml.models.dense import Transformer  # noqa: E402
from forgeml.models.gguf_io import write_gguf  # noqa: E402
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


class LlamaCpp:
    """A GGUF model in one llama.cpp context of `n_seq` parallel sequences, decoded greedily
    with its own sampler (argmax in C), as llama.cpp's `batched` example and server slots."""

    def __init__(self, path: Path, n_seq: int, threads: int, ctx_per_seq: int) -> None:
        import llama_cpp as lc

        self.lc = lc
        # Keep llama.cpp's loading log off stdout and stderr (the callback must outlive it).
        self._quiet = lc.llama_log_callback(lambda level, text, data: None)
        lc.llama_log_set(self._quiet, None)
        lc.llama_backend_init()
        self.model = lc.llama_model_load_from_file(
            str(path).encode(), lc.llama_model_default_params()
        )
        params = lc.llama_context_default_params()
        params.n_ctx = n_seq * ctx_per_seq
        params.n_batch = params.n_ubatch = max(512, n_seq * ctx_per_seq)
        params.n_seq_max = n_seq
        params.n_threads = params.n_threads_batch = threads
        params.kv_unified = False  # llama.cpp's advice for parallel sequences with no shared prefix
        self.ctx = lc.llama_init_from_model(self.model, params)
        self.batch = lc.llama_batch_init(params.n_batch, 0, 1)
        self.sampler = lc.llama_sampler_init_greedy()

    def _decode(self, entries: list[tuple[int, int, int, bool]]) -> None:
        """One `llama_decode` of (token, position, sequence, wants logits) entries."""
        b = self.batch
        for i, (token, pos, seq, logits) in enumerate(entries):
            b.token[i], b.pos[i], b.n_seq_id[i] = token, pos, 1
            b.seq_id[i][0], b.logits[i] = seq, logits
        b.n_tokens = len(entries)
        if self.lc.llama_decode(self.ctx, b) != 0:
            raise RuntimeError("llama_decode failed")

    def generate(self, prompts: list[list[int]], new: int) -> list[list[int]]:
        """Greedy `new` tokens after each prompt, the prompts decoded as parallel sequences."""
        self.lc.llama_memory_clear(self.lc.llama_get_memory(self.ctx), True)
        entries = [
            (t, j, s, j == len(p) - 1) for s, p in enumerate(prompts) for j, t in enumerate(p)
        ]
        self._decode(entries)
        last = [i for i, e in enumerate(entries) if e[3]]
        out: list[list[int]] = [[] for _ in prompts]
        for step in range(new):
            for s, idx in enumerate(last):
                out[s].append(self.lc.llama_sampler_sample(self.sampler, self.ctx, idx))
            if step == new - 1:
                break
            self._decode([(out[s][-1], len(p) + step, s, True) for s, p in enumerate(prompts)])
            last = list(range(len(prompts)))
        return out

    def run(self, prompts: list[list[int]], new: int) -> int:
        return sum(len(t) for t in self.generate(prompts, new))


def llama_cpp_runners(
    model: torch.nn.Module, tok_dir: Path, out_dir: Path, kinds: list[str], n: int,
    threads: int, ctx_per_seq: int,
) -> dict[str, tuple[LlamaCpp, LlamaCpp]]:  # fmt: skip
    """Per GGUF type: a one-sequence and an n-sequence llama.cpp context on `model`'s weights
    ({} when llama-cpp-python is not installed)."""
    try:
        import llama_cpp
    except ImportError:
        print("llama-cpp-python is not installed: llama.cpp is left out")
        return {}
    # Which SIMD it was built for (a portable wheel lacks AVX-512; LLAMA_CPP_LIB_PATH points
    # llama-cpp-python at a llama.cpp built with GGML_NATIVE=ON).
    print("llama.cpp " + llama_cpp.llama_print_system_info().decode().strip())
    runners = {}
    for kind in kinds:
        path = write_gguf(model, out_dir / f"model-{kind}.gguf", tok_dir, quant=kind)
        runners[kind] = (
            LlamaCpp(path, 1, threads, ctx_per_seq),
            LlamaCpp(path, n, threads, ctx_per_seq),
        )
    return runners


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


def report_ceiling(
    model: torch.nn.Module, threads: int | None, med: dict, n: int, keys: int
) -> None:
    """Print HF's time per decode step over the matmul floor, and over matmuls plus attention
    (the two kernels no decoder can skip), at 1 and at n rows; and forgeml's time per step."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        passes = {
            rows: {"gemm": gemm_floor(model, rows)[0], "attention": attention_floor(model, rows, keys)[0]}
            for rows in (1, n)
        }  # fmt: skip
        seconds = {rows: median_seconds(fns, 50) for rows, fns in passes.items()}
        floors = {rows: t["gemm"] for rows, t in seconds.items()}
        attention = {rows: t["attention"] for rows, t in seconds.items()}
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


def warm_compiled(engine: Engine, prompts: list[list[int]], new: int) -> None:
    """Run both workloads on the compiled engine until every bucket they use is compiled and
    probed, and print each bucket's verdict and compile time."""
    started = time.perf_counter()
    for _ in range(2):
        for batch in (prompts[:1], prompts):
            forgeml_run(engine, batch, new, 0.0)
        engine.compiled_step.wait()
    for batch in (prompts[:1], prompts):  # the probes run at each bucket's first step
        forgeml_run(engine, batch, new, 0.0)
    print(f"compiled step warmed in {time.perf_counter() - started:.0f} s:")
    for (rows, keys), b in sorted(engine.compiled_step.buckets.items()):
        print(
            f"  {rows:2d} rows x {keys:4d} keys: {b.state}, compiled in "
            f"{b.compile_seconds:.0f} s; {b.verdict}"
        )


def print_table(rates: dict[str, list[float]], n: int, dtype: str, unit: str) -> None:
    """Median rate of every contender, and each over llama.cpp's best at the same load
    (median of per-round ratios), as a markdown table."""
    print(
        f"\n| {dtype} | 1 stream {unit} | vs best llama.cpp | {n} concurrent {unit} "
        "| vs best llama.cpp |"
    )
    print("|---|---|---|---|---|")
    names = dict.fromkeys(name.rsplit(" ", 1)[0] for name in rates)

    def versus(name: str, load: str) -> str:
        peers = [p for p in rates if p.startswith("llama.cpp") and p.endswith(f" {load}")]
        if not peers:
            return "-"
        best = max(peers, key=lambda p: statistics.median(rates[p]))
        ours = rates[f"{name} {load}"]
        return f"{statistics.median(a / b for a, b in zip(ours, rates[best], strict=True)):.2f}x"

    for name in names:
        print(
            f"| {name} | {statistics.median(rates[name + ' 1']):.0f} | {versus(name, '1')} | "
            f"{statistics.median(rates[name + ' N']):.0f} | {versus(name, 'N')} |"
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
    ap.add_argument(
        "--llama-cpp",
        default="f16,f32",
        help="GGUF types llama.cpp decodes, comma-separated (empty: leave llama.cpp out)",
    )
    ap.add_argument(
        "--compile", action="store_true", help="also time the engine's compiled decode step"
    )
    ap.add_argument("--record", action="store_true", help="add a result row to BENCHMARKS.md")
    ap.add_argument("--profile", action="store_true", help="matmul floor and speed-up ceiling")
    ap.add_argument(
        "--step-only",
        action="store_true",
        help="only the decode step against its floor (--profile's table), no generation",
    )
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
        # llama.cpp maps the file: it may go with the directory once loaded.
        kinds = [k for k in args.llama_cpp.split(",") if k and not args.step_only]
        ctx_per_seq = -(-(args.prompt + args.new) // 256) * 256
        llama = llama_cpp_runners(
            model, tok_dir, Path(tmp), kinds, args.concurrent, args.threads or 1, ctx_per_seq
        )
    model = model.to(dtype).eval()
    # All would stop at EOS; exactly --new tokens each keeps the work identical.
    engine = Engine(
        model, tok, max_batch=args.concurrent, max_queue=4 * args.concurrent, threads=args.threads
    )
    prompts = make_prompts(tok, texts, args.concurrent, args.prompt)
    compiled = None
    if args.compile:
        compiled = Engine(
            model, tok, max_batch=args.concurrent, max_queue=4 * args.concurrent,
            threads=args.threads, compile_step=True,
        )  # fmt: skip
    if args.step_only:
        step_vs_floor(
            engine, compiled, engine.threads, args.concurrent, args.prompt + args.new // 2
        )
        return
    if compiled is not None:
        warm_compiled(compiled, prompts, args.new)
    print(
        f"model {model.num_params() / 1e6:.1f}M params, {args.dtype}, "
        f"{'sampled at T=' + str(args.temperature) if args.temperature > 0 else 'greedy'}, "
        f"prompts {args.prompt} "
        f"tokens, {args.new} new each, N={args.concurrent}, HF {torch.get_num_threads()} threads, "
        f"engine {engine.threads} thread(s)"
    )
    agree = check_same_tokens(engine, hf, prompts[:2], min(args.new, 32))
    print(f"greedy tokens identical to HF (agreeing prefix): {agree:.0%}")
    for kind, (alone, _) in llama.items():
        theirs = alone.generate(prompts[:1], min(args.new, 32))[0]
        ours = engine.generate(prompts[0], SamplingParams(max_tokens=len(theirs), temperature=0))
        agree = next(
            (i for i, (a, b) in enumerate(zip(ours.token_ids, theirs, strict=True)) if a != b),
            len(theirs),
        )
        print(
            f"greedy tokens identical to llama.cpp {kind} (agreeing prefix): {agree}/{len(theirs)}"
        )

    contenders = {
        "forgeml 1": lambda: forgeml_run(engine, prompts[:1], args.new, args.temperature),
        "HF 1": lambda: hf_run(hf, prompts[:1], args.new, args.temperature),
        "forgeml N": lambda: forgeml_run(engine, prompts, args.new, args.temperature),
        "HF N": lambda: hf_run(hf, prompts, args.new, args.temperature),
    }
    if compiled is not None:
        contenders["forgeml compiled 1"] = lambda: forgeml_run(
            compiled, prompts[:1], args.new, args.temperature
        )
        contenders["forgeml compiled N"] = lambda: forgeml_run(
            compiled, prompts, args.new, args.temperature
        )
    if args.temperature == 0:  # llama.cpp decodes greedily here
        for kind, (alone, together) in llama.items():
            contenders[f"llama.cpp {kind} 1"] = lambda r=alone: r.run(prompts[:1], args.new)
            contenders[f"llama.cpp {kind} N"] = lambda r=together: r.run(prompts, args.new)
    for fn in contenders.values():  # warm-up (allocator, kernels, thread pools)
        fn()
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    # Tokens per CPU second of the whole process: on a machine shared with other jobs it
    # counts the work each contender does, not the time the scheduler gives it (fair when
    # every contender uses one thread, `--threads 1`).
    cpu_rates: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            started, cpu_started = time.perf_counter(), time.process_time()
            n = contenders[name]()
            rates[name].append(n / (time.perf_counter() - started))
            cpu_rates[name].append(n / (time.process_time() - cpu_started))
        print(
            f"round {r + 1}: " + "  ".join(f"{k} {v[-1]:.0f} tok/s" for k, v in rates.items()),
            flush=True,
        )
    engine.close()
    if compiled is not None:
        compiled.close()

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
    print_table(rates, args.concurrent, args.dtype, "tok/s")
    print_table(cpu_rates, args.concurrent, args.dtype, "tok per CPU s")
    if args.profile:
        keys = args.prompt + args.new // 2
        report_ceiling(model, engine.threads, med, args.concurrent, keys)
        step_vs_floor(engine, compiled, engine.threads, args.concurrent, keys)
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
