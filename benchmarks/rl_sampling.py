"""GRPO's sampling: one step's groups decoded as one kv-cache batch vs one group at a time.

A GRPO step samples `--group` completions for each of `--prompts` prompts. Both contenders
use forgeml.models.sampling on the same model and prompts, in one process, round-robin:
- `together`: `sample_groups` on all prompts (what `train_rl` does): every prompt prefilled
  once, then all rows step together, each at its own position;
- `per group`: `sample_group` on one prompt after another (what `train_rl` did before), each
  group of rows decoded as its own batch.

The model is the quickstart's shape (2.4M parameters) with random weights, so no row stops
early and both do exactly `--new` tokens per row: the same work. Prompts are random tokens of
the ACME snippet prompts' lengths (80-150 tokens).

    .venv/bin/python benchmarks/rl_sampling.py --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from forgeml.core.config import ModelConfig
from forgeml.models.dense import Transformer
from forgeml.models.sampling import sample_group, sample_groups

CFG = ModelConfig(
    dim=192, n_layers=4, n_heads=6, n_kv_heads=2, ffn_hidden=512, vocab_size=4096,
    max_seq_len=768,
)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = Transformer(CFG).eval()
    lengths = torch.randint(80, 151, (args.prompts,)).tolist()
    prompts = [torch.randint(0, CFG.vocab_size, (n,)).tolist() for n in lengths]
    kw = dict(
        max_new_tokens=args.new, stop_ids={-1}, temperature=1.0, top_k=None, top_p=None,
        device="cpu", dtype=args.dtype,
    )  # fmt: skip

    def together() -> int:
        gen = torch.Generator().manual_seed(0)
        return sum(
            len(r)
            for g in sample_groups(model, prompts, args.group, generator=gen, **kw)
            for r in g
        )

    def per_group() -> int:
        gen = torch.Generator().manual_seed(0)
        return sum(
            len(r) for p in prompts for r in sample_group(model, p, args.group, generator=gen, **kw)
        )

    contenders = {"together": together, "per group": per_group}
    for fn in contenders.values():  # warm-up
        fn()
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for r in range(args.rounds):
        for name in names[r % 2 :] + names[: r % 2]:
            start = time.perf_counter()
            tokens = contenders[name]()
            rates[name].append(tokens / (time.perf_counter() - start))
        print(f"round {r + 1}: " + "  ".join(f"{k} {v[-1]:.0f} tok/s" for k, v in rates.items()))
    ratio = statistics.median(
        a / b for a, b in zip(rates["together"], rates["per group"], strict=True)
    )
    print(
        f"{args.prompts} prompts x {args.group} samples x {args.new} tokens, {args.dtype}: "
        f"together {statistics.median(rates['together']):.0f} tok/s, per group "
        f"{statistics.median(rates['per group']):.0f} tok/s, ratio {ratio:.2f}x"
    )


if __name__ == "__main__":
    main()
