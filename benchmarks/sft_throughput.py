"""SFT training throughput: forgeml's `sft` vs TRL 1.16 `SFTTrainer`, same model, same data.

The model is the PEERS.md tiny Mistral (vocab 8192, hidden 256, intermediate 768, 6 layers,
8 heads, 4 KV heads, tied embeddings), built once from a config and saved with a BPE tokenizer
trained on the ACME corpus; both trainers start from that folder. The data are the ACME chat
SFT records (policy Q&A, translation requests, tool-use traces) rendered through forgeml's chat
template; TRL gets each conversation as prompt (everything before the last assistant turn, with
the generation prompt) / completion (the last assistant text, `<|end|>` appended as TRL's EOS),
so both see the same tokens. Both: AdamW at a constant lr, no gradient checkpointing, the same
dtype, sequences of at most 768 tokens, packing with correct document boundaries (forgeml:
block-diagonal mask; TRL: "bfd" packing, padding-free with per-document position ids) and, as a
second peer, TRL without packing (padded batches). Reported: median over steps (after warm-up)
of non-padding tokens per second, step-end to step-end, the runs back to back.

    .venv/bin/python benchmarks/sft_throughput.py --record
    .venv/bin/python benchmarks/sft_throughput.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
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
from acme_sft import build_sft_records  # noqa: E402

from forgeml.core.config import SFTConfig  # noqa: E402
from forgeml.tokenizer.chat import render_chat  # noqa: E402
from forgeml.tokenizer.train import load_tokenizer, train_bpe_tokenizer  # noqa: E402
from forgeml.train.chat_data import tokenize_conversation  # noqa: E402
from forgeml.train.sft import sft  # noqa: E402

BENCH_MD = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
SEQ = 768
LR = 1e-4


def build_inputs(root: Path, n_records: int) -> tuple[Path, Path]:
    """Tokenizer (BPE 8192 on the ACME corpus), the tiny Mistral saved with it, chat JSONL."""
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
    # Whole conversations that fit (TRL would otherwise keep examples truncated to no label).
    records = [
        r
        for r in build_sft_records(seed=0, scale=1.0)
        if len(tokenize_conversation(tok, r["messages"], r.get("tools"))[0]) <= SEQ - 8
    ]
    step = max(1, len(records) // n_records)  # every task, in proportion
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records[::step][:n_records]))
    return model_dir, data


def run_forgeml(model_dir: Path, data: Path, out: Path, steps: int, batch: int, dtype: str) -> list[float]:  # fmt: skip
    cfg = SFTConfig.model_validate({
        "optim": {"lr": LR, "warmup_steps": 0, "schedule": "constant", "weight_decay": 0.0},
        "train": {"max_steps": steps, "micro_batch_size": batch, "seq_len": SEQ, "dtype": dtype,
                  "log_every": 1, "eval_every": 0, "checkpoint_every": 0},
    })  # fmt: skip
    sft(cfg, base_model_dir=model_dir, train_data=data, out_dir=out, progress=False)
    logged = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    return [r["tok_per_s"] for r in logged]


def trl_rows(data: Path) -> list[dict[str, str]]:
    rows = []
    for line in data.read_text().splitlines():
        record = json.loads(line)
        messages, tools = record["messages"], record.get("tools")
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        prompt = render_chat(messages[:last], add_generation_prompt=True, tools=tools)
        rows.append({"prompt": prompt, "completion": messages[last]["content"]})
    return rows


def run_trl(model_dir: Path, data: Path, out: Path, steps: int, batch: int, dtype: str, packing: bool) -> list[float]:  # fmt: skip
    from datasets import Dataset
    from trl import SFTConfig as TRLConfig
    from trl import SFTTrainer

    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.MistralForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa")
    args = TRLConfig(
        output_dir=str(out), per_device_train_batch_size=batch, max_steps=steps,
        learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        bf16=dtype == "bf16", gradient_checkpointing=False, logging_steps=1, report_to="none",
        save_strategy="no", max_length=SEQ, packing=packing, packing_strategy="bfd",
        eos_token="<|end|>", use_cpu=True, dataloader_num_workers=0, disable_tqdm=True,
        seed=1337,
    )  # fmt: skip
    ends: list[float] = []

    class StepTimes(transformers.TrainerCallback):
        def on_step_end(self, *a, **kw):
            ends.append(time.perf_counter())

    trainer = SFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(trl_rows(data)),
        processing_class=tokenizer, callbacks=[StepTimes()],
    )  # fmt: skip
    ends.append(time.perf_counter())  # a stand-in "step 0 end": its interval is warm-up
    trainer.train()
    tokens = [h["num_tokens"] for h in trainer.state.log_history if "num_tokens" in h]
    per_step = [b - a for a, b in zip([0, *tokens], tokens, strict=False)]
    return [n / (t1 - t0) for n, t0, t1 in zip(per_step, ends, ends[1:], strict=False)]


SECTION = "## SFT throughput: forgeml `sft` vs TRL `SFTTrainer`"
SECTION_TEXT = f"""{SECTION}

`benchmarks/sft_throughput.py` (see its docstring): the PEERS.md tiny Mistral and ACME chat SFT
data (Q&A, translations, tool-use traces), the same tokens for both, sequences of at most 768
tokens, no gradient checkpointing; median non-padding tokens/s over steps after warm-up, back
to back in one process. Peers: TRL with "bfd" packing (padding-free, document boundaries kept,
as ours) and TRL without packing.

```
.venv/bin/python benchmarks/sft_throughput.py --dtype bf16 --record
.venv/bin/python benchmarks/sft_throughput.py --dtype fp32 --record
```

| date | CPU | torch / trl | mode | peer | forgeml tok/s | peer tok/s | ratio |
|---|---|---|---|---|---|---|---|
"""


def record_rows(rows: list[str]) -> None:
    """Add `rows` to this benchmark's table in BENCHMARKS.md (the section is made once)."""
    text = BENCH_MD.read_text() if BENCH_MD.exists() else "# Benchmarks\n"
    if SECTION not in text:
        text = text.rstrip("\n") + "\n\n" + SECTION_TEXT
    head, rest = text.split(SECTION, 1)
    lines = rest.split("\n")
    stop = next((i for i, line in enumerate(lines) if line.startswith("## ")), len(lines))
    end = max(i for i in range(stop) if lines[i].startswith("|"))
    lines[end + 1 : end + 1] = rows
    BENCH_MD.write_text(head + SECTION + "\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=14)
    ap.add_argument("--batch", type=int, default=4, help="rows (packed) or examples per step")
    ap.add_argument("--rounds", type=int, default=1, help="back-to-back runs of each")
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--records", type=int, default=240)
    ap.add_argument("--quick", action="store_true", help="3 steps (smoke run)")
    ap.add_argument("--record", action="store_true", help="add rows to BENCHMARKS.md")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.rounds, args.records = 4, 1, 40
    warm = 1 if args.quick else 3
    root = Path(tempfile.mkdtemp(prefix="forgeml-sft-bench-"))
    model_dir, data = build_inputs(root, args.records)
    runs: dict[str, list[float]] = {"forgeml": [], "trl_bfd": [], "trl_nopack": []}
    for r in range(args.rounds):
        kw = dict(steps=args.steps, batch=args.batch, dtype=args.dtype)
        runs["forgeml"] += run_forgeml(model_dir, data, root / f"ours{r}", **kw)[warm:]
        runs["trl_bfd"] += run_trl(model_dir, data, root / f"bfd{r}", packing=True, **kw)[warm:]
        runs["trl_nopack"] += run_trl(model_dir, data, root / f"pad{r}", packing=False, **kw)[warm:]  # fmt: skip
    med = {k: statistics.median(v) for k, v in runs.items()}
    a = med["forgeml"]
    print(
        f"forgeml sft: {a:,.0f} tok/s   TRL SFTTrainer bfd packing: {med['trl_bfd']:,.0f} tok/s "
        f"({a / med['trl_bfd']:.2f}x)   TRL no packing: {med['trl_nopack']:,.0f} tok/s "
        f"({a / med['trl_nopack']:.2f}x)"
    )
    if args.record:
        head = (
            f"| {dt.date.today()} | {platform.processor() or platform.machine()} | "
            f"{torch.__version__} / trl {__import__('trl').__version__} | {args.dtype}, "
            f"{args.batch}x{SEQ}, {args.steps} steps |"
        )
        rows = [f"{head} {p} | {a:,.0f} | {med[p]:,.0f} | {a / med[p]:.2f}x |" for p in ("trl_bfd", "trl_nopack")]  # fmt: skip
        record_rows(rows)
        print(f"recorded in {BENCH_MD}")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
