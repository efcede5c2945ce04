"""Online-DPO lift on the ACME demo over several training seeds, measured on more samples than
the quickstart's win-rate: each seed trains online DPO from one SFT model (the recipe's `dpo`
section and its `dpo.train`/`dpo.optim` loop, with `--set` overrides), then the sampled win-rate against
that SFT model on the held-out prompts, `--samples` seeded samples a prompt, with its standard
error over prompts. The eval seed is the same for every arm, so arms differ only in training.

    .venv/bin/python benchmarks/dpo_lift.py --sft build/quickstart/artifacts/model/model-XXXX \\
        --seeds 0 1 --samples 32 --set dpo.sft_coef=1.0 --set dpo.optim.lr=1e-4
    .venv/bin/python benchmarks/dpo_lift.py --sft ... --policy DIR   # evaluate a DPO model only
    .venv/bin/python benchmarks/dpo_lift.py --sft ... --policy DIR --diagnose 32

`--diagnose N` also samples the policy's best-vs-worst pairs on N training prompts as online
DPO does and reports their lengths and each side's log-ratio to the SFT model.

Writes one JSON line per seed to --out (default build/dpo-lift/results.jsonl) and prints them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from forgeml.core.config import load_recipe
from forgeml.core.runtime import pick_device
from forgeml.models.hf_io import load_model
from forgeml.tokenizer.chat import END
from forgeml.tokenizer.train import load_tokenizer, special_token_ids
from forgeml.train.dpo import pair_logps
from forgeml.train.online_dpo import (
    _prompt_split,
    build_ranker,
    heldout_prompt_records,
    model_win_rate,
    rank_pairs,
    sample_completions,
    train_online_dpo,
)
from forgeml.train.preference_data import (
    PreferencePair,
    end_of_turn_ids,
    parse_prompt_record,
    prompt_text,
    read_preference_records,
)

ROOT = Path(__file__).resolve().parent.parent
EVAL_SEED = 424242


def win_rate(recipe, policy_dir: Path, sft_dir: Path, prompts: Path, samples: int) -> dict:
    """The quickstart's held-out win-rate with `samples` a prompt, at the training dtype."""
    dcfg = recipe.dpo.model_copy(update={"samples_per_prompt": samples})
    heldout = heldout_prompt_records(prompts, dcfg, recipe.posttrain.eval_limit)
    judge = recipe.posttrain.dpo.judge or dcfg.reward_function
    result = model_win_rate(
        policy_dir, sft_dir, heldout, dcfg, judge, seed=EVAL_SEED, device=pick_device(),
        dtype=recipe.dpo.train.dtype,
    )  # fmt: skip
    return {"prompts": len(heldout), **result}


def diagnose_pairs(recipe, policy_dir: Path, sft_dir: Path, prompts: Path, n: int) -> dict:
    """The policy's online-DPO pairs on `n` training prompts: mean completion length, share
    that stopped, mean log(pi/pi_sft) of chosen and rejected, and the share ranked right."""
    dcfg = recipe.dpo
    tok = load_tokenizer(sft_dir)
    stop, tail, pad = tok.token_to_id(END), end_of_turn_ids(tok), special_token_ids(tok)["pad"]
    train, _ = _prompt_split(read_preference_records(prompts, parse_prompt_record), dcfg.heldout_fraction)  # fmt: skip
    batch = [(r, tok.encode(prompt_text(r.messages), add_special_tokens=False).ids) for r in train[:n]]  # fmt: skip
    policy, ref = load_model(policy_dir), load_model(sft_dir)
    k = dcfg.samples_per_prompt
    samples = sample_completions(policy, [ids for _, ids in batch], k, dcfg, stop_id=stop, seed=EVAL_SEED, device="cpu")  # fmt: skip
    texts = [tok.decode(g, skip_special_tokens=True) for group in samples for g, _ in group]
    recs = [r for r, _ in batch for _ in range(k)]
    rewards = build_ranker(dcfg)([r.prompt for r in recs], texts, [r.metadata for r in recs])
    rows = []
    for i, (rec, ids) in enumerate(batch):
        for best, worst in rank_pairs(rewards[i * k : (i + 1) * k], 1):
            full = [g + tail if stopped else g for g, stopped in samples[i]]
            pair = [PreferencePair(rec, ids, full[best], full[worst])]
            with torch.no_grad():
                pol, counts = pair_logps(policy, pair, pad, "cpu", "fp32")
                sft, _ = pair_logps(ref, pair, pad, "cpu", "fp32")
            delta = (pol - sft).tolist()
            stopped = [samples[i][best][1], samples[i][worst][1]]
            rows.append((counts.tolist(), stopped, delta))
    mean = lambda xs: sum(xs) / max(len(xs), 1)  # noqa: E731
    return {
        "diagnosed_prompts": len(batch), "pairs": len(rows),
        "length_chosen": mean([c[0] for c, _, _ in rows]),
        "length_rejected": mean([c[1] for c, _, _ in rows]),
        "stopped_chosen": mean([s[0] for _, s, _ in rows]),
        "stopped_rejected": mean([s[1] for _, s, _ in rows]),
        "log_ratio_chosen": mean([d[0] for _, _, d in rows]),
        "log_ratio_rejected": mean([d[1] for _, _, d in rows]),
        "ranked_right": mean([d[0] > d[1] for _, _, d in rows]),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default=str(ROOT / "recipes" / "quickstart.yaml"))
    ap.add_argument("--sft", required=True, type=Path, help="the SFT model folder (DPO's start)")
    ap.add_argument("--prompts", type=Path, default=ROOT / "build" / "acme-prefs.jsonl")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--samples", type=int, default=32, help="win-rate samples a held-out prompt")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="key=value")
    ap.add_argument("--policy", type=Path, help="only evaluate this DPO model folder")
    ap.add_argument("--diagnose", type=int, default=0, metavar="N", help="pairs on N prompts")
    ap.add_argument("--label", default="")
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "dpo-lift" / "results.jsonl")
    args = ap.parse_args()
    recipe = load_recipe(args.recipe, args.overrides)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for seed in [None] if args.policy else args.seeds:
        t0 = time.perf_counter()
        row: dict = {"label": args.label, "overrides": args.overrides, "seed": seed}
        policy = args.policy
        if policy is None:
            dpo = recipe.dpo.model_copy(update={"train": recipe.dpo.train.model_copy(update={"seed": seed})})  # fmt: skip
            sub = recipe.model_copy(update={"dpo": dpo})
            out = args.out.parent / f"{args.label or 'run'}-seed{seed}"
            summary = train_online_dpo(sub, base_model_dir=args.sft, prompts_path=args.prompts, out_dir=out, progress=False)  # fmt: skip
            row["train"] = {k: summary[k] for k in ("final_train_loss", "seconds")}
            policy = out / "model"
        row["policy"] = str(policy)
        row.update(win_rate(recipe, policy, args.sft, args.prompts, args.samples))
        if args.diagnose:
            row.update(diagnose_pairs(recipe, policy, args.sft, args.prompts, args.diagnose))
        row["seconds"] = round(time.perf_counter() - t0, 1)
        print(json.dumps(row), flush=True)
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
