"""DPO training throughput: forgeml's `train_dpo` vs TRL 1.16 `DPOTrainer`, same model, same pairs.

The model is the PEERS.md tiny Mistral (vocab 8192, hidden 256, intermediate 768, 6 layers,
8 heads, 4 KV heads), built once from a config and saved; both trainers start from that
folder. The pairs are ACME translation preferences (examples/acme/acme_prefs.py) rendered through
forgeml's chat template; TRL gets the same rendered prompt/chosen/rejected strings. Both use
the sigmoid loss, beta 0.1, AdamW at a constant lr, the same batch of pairs, the same dtype,
no gradient checkpointing, and reference log-probs precomputed before training (TRL:
`precompute_ref_log_probs=True`, ours: the cache), so each step is one policy forward and
backward on [chosen; rejected]. Reported: median over steps (after warm-up) of non-padding
tokens per second, step-end to step-end wall time, with the two runs back to back and repeated.

    .venv/bin/python benchmarks/dpo_throughput.py --record
    .venv/bin/python benchmarks/dpo_throughput.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "acme"))
from acme import build_corpus  # noqa: E402
from acme_prefs import write_translation_preferences  # noqa: E402

from forgeml.core.config import validate_recipe  # noqa: E402
from forgeml.tokenizer.train import load_tokenizer, train_bpe_tokenizer  # noqa: E402
from forgeml.train.dpo import train_dpo  # noqa: E402
from forgeml.train.preference_data import completion_text, load_preference_pairs, prompt_text  # noqa: E402

BENCH_MD = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
MAX_LENGTH = 512
LR = 5e-5
TABLE_HEADER = "| date | CPU | torch / trl | mode | forgeml tok/s | TRL tok/s | ratio |"


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip().split(" @")[0]
    return platform.machine()


def record(row: str) -> None:
    """Insert `row` after the last row of this benchmark's table in BENCHMARKS.md."""
    lines = BENCH_MD.read_text().splitlines() if BENCH_MD.is_file() else []
    if TABLE_HEADER not in lines:
        lines += ["", TABLE_HEADER, "|" + "---|" * TABLE_HEADER.count(" | ")]
    at = lines.index(TABLE_HEADER) + 2
    while at < len(lines) and lines[at].startswith("|"):
        at += 1
    lines.insert(at, row)
    BENCH_MD.write_text("\n".join(lines) + "\n")


def build_inputs(root: Path, n_programs: int) -> tuple[Path, Path]:
    """Tokenizer (BPE 8192 on the ACME corpus), the tiny Mistral saved with it, the pairs."""
    files, _ = build_corpus(seed=0, scale=0.3)
    texts = [b.decode("utf-8", "replace") for p, b in files.items() if p.endswith((".md", ".acl", ".py", ".txt"))]  # fmt: skip
    tok_dir = train_bpe_tokenizer(texts, vocab_size=8192, out_dir=root / "tok")
    tok = load_tokenizer(tok_dir)
    torch.manual_seed(0)
    config = transformers.MistralConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=256, intermediate_size=768,
        num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=4,
        max_position_embeddings=1024, tie_word_embeddings=True, sliding_window=None,
        pad_token_id=tok.token_to_id("<|pad|>"), eos_token_id=tok.token_to_id("<|eos|>"),
        bos_token_id=None,
    )  # fmt: skip
    model_dir = root / "model"
    transformers.MistralForCausalLM(config).save_pretrained(model_dir)
    for f in tok_dir.iterdir():
        shutil.copy(f, model_dir / f.name)
    pairs = root / "pairs.jsonl"
    write_translation_preferences(pairs, seed=0, count=n_programs)
    return model_dir, pairs


def run_forgeml(model_dir: Path, pairs: Path, out: Path, steps: int, batch: int, dtype: str) -> list[float]:  # fmt: skip
    recipe = validate_recipe({
        "train": {"max_steps": steps, "micro_batch_size": batch, "log_every": 1, "dtype": dtype,
                  "checkpoint_every": 0},
        "optim": {"lr": LR, "warmup_steps": 0, "schedule": "constant", "weight_decay": 0.0},
        "dpo": {"beta": 0.1, "heldout_fraction": 0.0, "max_length": MAX_LENGTH},
        "eval": {"batch_size": batch},
    })  # fmt: skip
    train_dpo(recipe, base_model_dir=model_dir, pairs_path=pairs, out_dir=out, cache_dir=out.parent / "cache", progress=False)  # fmt: skip
    logged = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    return [r["tok_per_s"] for r in logged]


def run_trl(model_dir: Path, pairs: Path, out: Path, steps: int, batch: int, dtype: str) -> list[float]:  # fmt: skip
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    kept, _ = load_preference_pairs(pairs, load_tokenizer(model_dir), max_length=MAX_LENGTH)
    rows = [
        {
            "prompt": prompt_text(p.record.messages),
            "chosen": completion_text(p.record.messages, p.record.chosen),
            "rejected": completion_text(p.record.messages, p.record.rejected),
        }
        for p in kept
    ]
    model = transformers.MistralForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa")
    ref = copy.deepcopy(model).eval()
    args = DPOConfig(
        output_dir=str(out), per_device_train_batch_size=batch, max_steps=steps,
        learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        bf16=dtype == "bf16", gradient_checkpointing=False, logging_steps=1, report_to="none",
        save_strategy="no", precompute_ref_log_probs=True, max_length=MAX_LENGTH, beta=0.1,
        loss_type=["sigmoid"], use_cpu=True, dataloader_num_workers=0, disable_tqdm=True,
        seed=1337,
    )  # fmt: skip
    ends: list[float] = []

    class StepTimes(transformers.TrainerCallback):
        def on_step_end(self, *a, **kw):
            ends.append(time.perf_counter())

    trainer = DPOTrainer(
        model=model, ref_model=ref, args=args, train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer, callbacks=[StepTimes()],
    )  # fmt: skip
    ends.append(time.perf_counter())  # a stand-in "step 0 end": its interval is warm-up
    trainer.train()
    tokens = [h["num_tokens"] for h in trainer.state.log_history if "num_tokens" in h]
    per_step = [b - a for a, b in zip([0, *tokens], tokens, strict=False)]
    return [n / (t1 - t0) for n, t0, t1 in zip(per_step, ends, ends[1:], strict=False)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=14)
    ap.add_argument("--batch", type=int, default=4, help="pairs per step")
    ap.add_argument("--rounds", type=int, default=2, help="back-to-back runs of each")
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--programs", type=int, default=60)
    ap.add_argument("--quick", action="store_true", help="3 steps, 1 round (smoke run)")
    ap.add_argument("--record", action="store_true", help="add a row to BENCHMARKS.md")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.rounds, args.programs = 3, 1, 16
    warm = 1 if args.quick else 3
    root = Path(tempfile.mkdtemp(prefix="forgeml-dpo-bench-"))
    model_dir, pairs = build_inputs(root, args.programs)
    ours, theirs = [], []
    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds}", flush=True)
        ours += run_forgeml(model_dir, pairs, root / f"ours{r}", args.steps, args.batch, args.dtype)[warm:]  # fmt: skip
        theirs += run_trl(model_dir, pairs, root / f"trl{r}", args.steps, args.batch, args.dtype)[warm:]  # fmt: skip
    print("forgeml per-step tok/s:", [round(x) for x in ours])
    print("TRL per-step tok/s:", [round(x) for x in theirs])
    a, b = statistics.median(ours), statistics.median(theirs)
    print(
        f"forgeml train_dpo: {a:,.0f} tok/s   TRL DPOTrainer: {b:,.0f} tok/s   ratio {a / b:.2f}x"
    )
    if args.record:
        row = (
            f"| {dt.date.today()} | {cpu_name()} | "
            f"{torch.__version__} / trl {__import__('trl').__version__} | {args.dtype}, "
            f"{args.batch} pairs/step, ≤{MAX_LENGTH} tok | {a:,.0f} | {b:,.0f} | {a / b:.2f}x |"
        )
        record(row)
        print(f"recorded in {BENCH_MD}")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
