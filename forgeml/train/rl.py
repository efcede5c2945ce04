"""Reinforcement learning with GRPO (Shao et al., DeepSeekMath, arXiv:2402.03300) against
reward plugins (forgeml.train.rewards), starting from a model folder and a prompts JSONL.

One readable loop: per step, take the next prompts, sample a group of completions per prompt
with the kv cache, score them, normalise rewards per group into advantages, then take the
clipped policy-gradient step(s) with a k3 KL penalty to the frozen base model. Checkpoints
resume exactly. out_dir: checkpoints/, metrics.jsonl, model/, summary.json.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from forgeml.core.config import Recipe, config_hash
from forgeml.core.errors import ConfigError, DataError
from forgeml.core.runtime import autocast, seed_everything
from forgeml.core.seeds import derive_seed
from forgeml.models.hf_io import load_model, save_model
from forgeml.models.registry import build_model
from forgeml.models.sampling import sample_groups
from forgeml.tokenizer.chat import END, EOS
from forgeml.tokenizer.train import load_tokenizer
from forgeml.train import kit
from forgeml.train.losses import token_logps
from forgeml.train.rewards import RewardPlugin, build_rewards, score_completions
from forgeml.train.rl_data import load_prompts, prompts_for_step
from forgeml.train.rl_losses import LOSSES, group_advantages

# how the work is split, not what it computes: a resumed run may change them
RESULT_NEUTRAL_RL_FIELDS = {"micro_batch_size": True, "rewards": {"__all__": {"workers"}}}


def completion_token_logps(
    model: nn.Module, prompt_lens: list[int], sequences: list[list[int]], device: str, dtype: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs of each sequence's completion tokens and their mask: [B, T-1] each
    (right-padded; position t scores token t+1)."""
    width = max(len(s) for s in sequences)
    ids = torch.zeros(len(sequences), width, dtype=torch.long)
    mask = torch.zeros(len(sequences), width - 1)
    for i, (plen, seq) in enumerate(zip(prompt_lens, sequences, strict=True)):
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, plen - 1 : len(seq) - 1] = 1.0
    ids, mask = ids.to(device), mask.to(device)
    with autocast(device, dtype):
        logits = model(ids[:, :-1])
    return token_logps(logits, ids[:, 1:]), mask


@torch.no_grad()
def _frozen_logps(
    model: nn.Module | None, batches: list[slice], prompt_lens: list[int],
    sequences: list[list[int]], device: str, dtype: str,
) -> list[torch.Tensor | None]:  # fmt: skip
    """Per micro-batch completion log-probs without gradients; Nones when there is no model."""
    if model is None:
        return [None] * len(batches)
    return [
        completion_token_logps(model, prompt_lens[b], sequences[b], device, dtype)[0]
        for b in batches
    ]


def results_config(recipe: Recipe) -> dict[str, Any]:
    """The run's identity: the part of a recipe that decides the trained weights (GRPO
    batches by `rl.*`; `rl.train.micro_batch_size`/`grad_accum_steps` are unused)."""
    rcfg = recipe.rl
    return {
        "optim": rcfg.optim.model_dump(mode="json"),
        "train": rcfg.train.model_dump(
            mode="json", exclude=kit.RESULT_NEUTRAL_TRAIN_FIELDS | kit.BATCH_SPLIT_FIELDS
        ),
        "rl": rcfg.model_dump(
            mode="json", exclude={**RESULT_NEUTRAL_RL_FIELDS, "optim": True, "train": True}
        ),
    }


def train_rl(
    recipe: Recipe, *, base_model: Path, prompts: Path, out_dir: Path, resume: bool = False,
    rewards: list[RewardPlugin] | None = None, workspace: Any = None, progress: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """GRPO-train the model in `base_model` (a model folder with its tokenizer) on the
    prompts JSONL; `rewards` defaults to the plugins of `recipe.rl.rewards`.

    Under torchrun (`rl.train.strategy` ddp/fsdp) each process samples, scores and trains on
    its share of a step's prompts, whole groups each; the advantages see every process's
    rewards. Each process draws from its own generator (`sample.rank`), so N processes sample
    other completions than one: what is equal at any N is the update on the same samples."""
    procs = kit.init_distributed(recipe.rl.train.device)
    with kit.deterministic(procs.device == "cpu"):
        return _train_rl(
            recipe, Path(base_model), Path(prompts), Path(out_dir), resume,
            rewards or build_rewards(recipe.rl.rewards, workspace), procs, progress,
        )  # fmt: skip


def _train_rl(
    recipe: Recipe, base_model: Path, prompts_path: Path, out_dir: Path, resume: bool,
    rewards: list[RewardPlugin], procs: kit.DistInfo, progress: bool,
) -> dict[str, Any]:  # fmt: skip
    rcfg, tcfg, ocfg = recipe.rl, recipe.rl.train, recipe.rl.optim
    device, world = procs.device, procs.world_size
    kit.check_inputs_agree(recipe, base=base_model, prompts=prompts_path)
    if rcfg.prompts_per_step % world:
        raise ConfigError(
            f"rl.prompts_per_step {rcfg.prompts_per_step} does not split over {world} processes",
            hint=f"make it a multiple of {world}: each process takes whole groups",
        )
    tok = load_tokenizer(base_model)
    eos_id = tok.token_to_id(EOS)
    if eos_id is None:
        raise DataError(f"{base_model}: the tokenizer has no {EOS}", hint="use a forgeml tokenizer")
    # A reply to a chat prompt ends with the template's end of turn, plain text with EOS.
    stop_ids = {eos_id, tok.token_to_id(END)} - {None}
    records = load_prompts(prompts_path, rcfg.prompt_format)
    encoded = [tok.encode(p.text, add_special_tokens=False).ids for p in records]
    run_config = results_config(recipe)

    seed_everything(tcfg.seed)
    model = load_model(base_model, device=device)
    too_long = [n for n, ids in enumerate(encoded, 1) if len(ids) >= model.cfg.max_seq_len]
    if too_long:
        raise DataError(
            f"{len(too_long)} of {len(encoded)} prompts leave no room for a completion in the "
            f"model's context of {model.cfg.max_seq_len} tokens (first: record {too_long[0]})",
            hint="drop or shorten them (e.g. examples/acme/make_data.py rl --max-chars)",
        )
    # The reference is the frozen starting policy; with kl_coef 0 it is never needed.
    reference = (
        load_model(base_model, device=device).requires_grad_(False).eval()
        if rcfg.kl_coef > 0 else None
    )  # fmt: skip
    strategy = kit.choose_strategy(model.cfg, tcfg, **kit.placement(device, world))
    train_model, reference = kit.parallelize_for_sampling(
        model, reference, tcfg, device=device, strategy=strategy
    )
    optimizer, ckpt_dir, start, metrics = kit.open_run(
        out_dir, run_config, model=model, optim=ocfg, device=device, resume=resume,
        max_steps=tcfg.max_steps, progress=False, is_main=procs.is_main,
    )  # fmt: skip
    start_step, saved = start.step, start.saved
    loss_fn = LOSSES["grpo"]
    elapsed_before = saved.get("elapsed", 0.0)
    t_start = time.perf_counter()
    record: dict[str, Any] = saved.get("last_record", {})
    G = rcfg.group_size
    for step in range(start_step, tcfg.max_steps):
        t_step = time.perf_counter()
        lr = kit.set_lr(optimizer, step, tcfg.max_steps, ocfg)

        # 1. Sample G completions per prompt from the current policy (seeded per step), and
        # 2. score them. With dynamic sampling a group of equal rewards (no signal) is swapped
        # for a group of a fresh prompt, while the step's spare prompts last.
        # Each process takes whole groups: its slice of the step's prompts and of the spares,
        # sampled from its own generator (rank 0's is the one of a single process).
        model.eval()
        gen = torch.Generator(device=device).manual_seed(derive_seed(
            derive_seed(tcfg.seed, "rl.sample_step", step), "sample.rank", procs.rank
        ))  # fmt: skip
        chosen = prompts_for_step(len(records), step, rcfg.prompts_per_step, tcfg.seed)
        per_rank = len(chosen) // world
        chosen = chosen[procs.rank * per_rank : (procs.rank + 1) * per_rank]
        spare = iter(prompts_for_step(
            len(records), step, rcfg.dynamic_sampling, derive_seed(tcfg.seed, "rl.spare_prompts")
        )[procs.rank :: world])  # fmt: skip
        kept: list[dict[str, Any]] = []
        drawn: list[float] = []
        resampled = 0
        t_sample = t_score = 0.0
        # Under FSDP the weights are gathered once for the whole sampling: the processes
        # decode different numbers of tokens and rounds, without collectives.
        with kit.full_weights(model):
            while chosen:
                t0 = time.perf_counter()
                groups = list(zip(chosen, sample_groups(
                    model, [encoded[i] for i in chosen], G, max_new_tokens=rcfg.max_new_tokens,
                    stop_ids=stop_ids, temperature=rcfg.temperature, top_k=rcfg.top_k,
                    top_p=rcfg.top_p, generator=gen, device=device, dtype=tcfg.dtype,
                ), strict=True))  # fmt: skip
                t1 = time.perf_counter()
                completions = [
                    tok.decode([t for t in ids if t not in stop_ids])
                    for _, rows in groups
                    for ids in rows
                ]
                total, each = score_completions(
                    rewards, [records[i].text for i, _ in groups for _ in range(G)], completions,
                    [records[i].metadata for i, _ in groups for _ in range(G)],
                )  # fmt: skip
                t_sample += t1 - t0
                t_score += time.perf_counter() - t1
                drawn += total
                chosen = []
                for g, (i, rows) in enumerate(groups):
                    got = total[g * G : (g + 1) * G]
                    if max(got) == min(got) and (swap := next(spare, None)) is not None:
                        chosen.append(swap)
                        resampled += 1
                        continue
                    kept.append({
                        "prompt": i, "rows": rows, "rewards": got,
                        "each": {k: v[g * G : (g + 1) * G] for k, v in each.items()},
                    })  # fmt: skip
        prompt_lens = [len(encoded[k["prompt"]]) for k in kept for _ in range(G)]
        sequences = [encoded[k["prompt"]] + ids for k in kept for ids in k["rows"]]
        lengths = [len(s) - p for s, p in zip(sequences, prompt_lens, strict=True)]
        # Every process's groups, in rank order (the order of one process's step).
        every = kit.concat_over_ranks({
            "rewards": [r for k in kept for r in k["rewards"]], "drawn": drawn,
            "resampled": [resampled], "lengths": lengths, "sample_s": [t_sample],
            "score_s": [t_score],
            **{f"reward/{name}": [r for k in kept for r in k["each"][name]]
               for name in kept[0]["each"]},
        })  # fmt: skip
        rewards_t = torch.tensor(every["rewards"])
        # Advantages of every group (`scale_rewards: batch` takes the std over all of them);
        # this process keeps its own rows.
        mine = slice(procs.rank * len(sequences), (procs.rank + 1) * len(sequences))
        advantages = group_advantages(rewards_t, G, rcfg.scale_rewards)[mine].to(device)

        # 3. Log-probs of the sampling policy (old) and of the reference, without gradients.
        batches = [
            slice(s, s + rcfg.micro_batch_size)
            for s in range(0, len(sequences), rcfg.micro_batch_size)
        ]
        old = _frozen_logps(model if rcfg.inner_steps > 1 else None, batches, prompt_lens,
                            sequences, device, tcfg.dtype)  # fmt: skip
        ref = _frozen_logps(reference, batches, prompt_lens, sequences, device, tcfg.dtype)

        # 4. Clipped policy-gradient update(s) on this batch, micro-batch by micro-batch.
        model.train()
        sums = {"loss": 0.0, "kl": 0.0, "clip_fraction": 0.0}
        for _ in range(rcfg.inner_steps):
            for j, b in enumerate(batches):
                with kit.gradient_sync(train_model, j == len(batches) - 1):
                    logps, mask = completion_token_logps(
                        train_model, prompt_lens[b], sequences[b], device, tcfg.dtype
                    )
                    old_j = old[j] if old[j] is not None else logps.detach()
                    loss, parts = loss_fn(logps, old_j, ref[j], advantages[b], mask, rcfg)
                    # the micro-batch's share of the whole step's sequences, all processes';
                    # DDP and FSDP average the processes' gradients, hence x world
                    share = len(sequences[b]) / len(rewards_t)
                    (loss * share * world).backward()
                sums["loss"] += loss.item() * share / rcfg.inner_steps
                for key in ("kl", "clip_fraction"):
                    if key in parts:
                        sums[key] += parts[key].item() * share / rcfg.inner_steps
            grad_norm = kit.clip_and_step(optimizer, model.parameters(), ocfg.grad_clip)
        sums = kit.all_reduce_sum(sums)

        done = step + 1
        final = done == tcfg.max_steps
        drawn, lengths = every["drawn"], every["lengths"]
        record = {
            "step": done, "loss": sums["loss"], "lr": lr, "grad_norm": grad_norm.item(),
            "reward_mean": rewards_t.mean().item(), "reward_std": rewards_t.std().item(),
            # every group sampled this step, the swapped-out ones too: the policy's own rate
            "reward_mean_drawn": sum(drawn) / len(drawn),
            "groups_resampled": sum(every["resampled"]),
            **{k: sum(v) / len(v) for k, v in every.items() if k.startswith("reward/")},
            "kl": sums["kl"] if reference is not None else None,
            "clip_fraction": sums["clip_fraction"],
            "completion_len": sum(lengths) / len(lengths),
            # the slowest process's time: the step waits for it
            "sample_s": max(every["sample_s"]), "score_s": max(every["score_s"]),
            "step_s": time.perf_counter() - t_step,
            "elapsed": elapsed_before + time.perf_counter() - t_start,
        }  # fmt: skip
        if final or done % tcfg.log_every == 0:
            metrics.log(record)
            if progress and procs.is_main:
                kl = f"  kl {record['kl']:.4f}" if record["kl"] is not None else ""
                print(
                    f"rl  step {done}/{tcfg.max_steps}  reward {record['reward_mean']:.3f}"
                    f"±{record['reward_std']:.3f}{kl}  clip {record['clip_fraction']:.3f}"
                    f"  len {record['completion_len']:.1f}  {record['step_s']:.1f}s/step",
                    file=sys.stderr, flush=True,
                )  # fmt: skip
        kit.checkpoint_if_due(
            ckpt_dir, done, tcfg, run_config, model=model, optimizer=optimizer,
            extra={
                "elapsed": elapsed_before + time.perf_counter() - t_start, "last_record": record
            },
        )  # fmt: skip
    metrics.close()
    summary = {
        "steps": tcfg.max_steps, "final_reward_mean": record.get("reward_mean"),
        "final_kl": record.get("kl"), "reference": "base model" if reference is not None else None,
        "rewards": [p.name for p in rewards], "n_prompts": len(records),
        "config_hash": config_hash(run_config), "model_dir": str(out_dir / "model"),
        "metrics_path": str(out_dir / "metrics.jsonl"), "checkpoint_dir": str(ckpt_dir),
        "seconds": time.perf_counter() - t_start, "world_size": world, "strategy": strategy,
    }  # fmt: skip
    final_model = kit.gathered_model(model, lambda: build_model(model.cfg))  # every rank: gathers
    if procs.is_main:
        save_model(final_model, out_dir / "model", base_model)
    kit.finish_run(out_dir, summary, is_main=procs.is_main, recipe=recipe)
    return summary
