"""Reinforcement learning with GRPO (Shao et al., DeepSeekMath, arXiv:2402.03300) against
reward plugins (forgeml.train.rewards), starting from a model folder and a prompts JSONL.

One readable loop: per step, take the next prompts, sample a group of completions per prompt
with the kv cache, score them, normalise rewards per group into advantages, then take the
clipped policy-gradient step(s) with a k3 KL penalty to the frozen base model. Checkpoints
resume exactly. out_dir: checkpoints/, metrics.jsonl, model/, summary.json.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from forgeml.core.config import Recipe, config_hash, save_resolved
from forgeml.core.errors import DataError, NotFoundError
from forgeml.core.io import atomic_write_text
from forgeml.core.runtime import autocast, pick_device, seed_everything
from forgeml.models.hf_io import load_model, save_model
from forgeml.models.sampling import filter_logits, sample_indices
from forgeml.tokenizer.chat import END, EOS
from forgeml.tokenizer.train import load_tokenizer
from forgeml.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from forgeml.train.metrics import MetricsLogger
from forgeml.train.optim import build_optimizer, lr_at
from forgeml.train.pretrain import RESULT_NEUTRAL_TRAIN_FIELDS, _check_same_run, _deterministic
from forgeml.train.rewards import RewardPlugin, build_rewards, score_completions
from forgeml.train.rl_data import load_prompts, prompts_for_step
from forgeml.train.rl_losses import LOSSES, group_advantages, token_logps

# how the work is split, not what it computes: a resumed run may change them
RESULT_NEUTRAL_RL_FIELDS = {"micro_batch_size": True, "rewards": {"__all__": {"workers"}}}
SPARE_SEED = 7919  # the spare prompts of dynamic sampling: their own seeded order


@contextlib.contextmanager
def _decode_threads(device: str) -> Iterator[None]:
    # One token per step is hundreds of tiny ops: on CPU one intra-op thread beats two
    # (measured on the 2-core box, 8 x 128 tokens of a 2.4M model: 0.7 s vs 6.0 s CPU time).
    before = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def sample_group(
    model: nn.Module, prompt_ids: list[int], n: int, *, max_new_tokens: int, stop_ids: set[int],
    temperature: float, top_k: int | None, top_p: float | None, generator: torch.Generator,
    device: str, dtype: str,
) -> list[list[int]]:  # fmt: skip
    """`n` sampled completions of one prompt (`sample_groups` of one prompt)."""
    return sample_groups(
        model, [prompt_ids], n, max_new_tokens=max_new_tokens, stop_ids=stop_ids,
        temperature=temperature, top_k=top_k, top_p=top_p, generator=generator, device=device,
        dtype=dtype,
    )[0]  # fmt: skip


@torch.inference_mode()
def sample_groups(
    model: nn.Module, prompts: list[list[int]], n: int, *, max_new_tokens: int,
    stop_ids: set[int], temperature: float, top_k: int | None, top_p: float | None,
    generator: torch.Generator, device: str, dtype: str, reserve: int = 0,
) -> list[list[list[int]]]:  # fmt: skip
    """`n` sampled completions of each prompt, all decoded together as one batch with the kv
    cache: each prompt is prefilled once and its cache copied to its n rows, then every live
    row takes one token per step at its own position (the model's `decode_rows`, as in
    serving). A row ends at its first stop token (kept) or after its token budget, and leaves
    the batch; `reserve` context positions stay free after each. Returns, per prompt, its n
    completions."""
    budgets = []
    for ids in prompts:
        budget = min(max_new_tokens, model.cfg.max_seq_len - len(ids) - reserve)
        if budget < 1:
            raise DataError(
                f"a prompt of {len(ids)} tokens leaves no room in the model's context "
                f"({model.cfg.max_seq_len})",
                hint="shorten the prompts",
            )
        budgets.append(budget)
    width = max(len(ids) + b for ids, b in zip(prompts, budgets, strict=True))
    rows_total = len(prompts) * n
    cache = model.new_kv_cache(rows_total, width, device=device)
    out: list[list[int]] = [[] for _ in range(rows_total)]
    stops = torch.tensor(sorted(stop_ids), device=device)
    with autocast(device, dtype), _decode_threads(device):
        first = []
        for p, ids in enumerate(prompts):
            one = model.new_kv_cache(1, len(ids), device=device, dtype=cache.k.dtype)
            logits = model(torch.tensor([ids], device=device), kv_cache=one, start_pos=0)[:, -1]
            rows = slice(p * n, (p + 1) * n)
            cache.k[:, rows, :, : len(ids)] = one.k
            cache.v[:, rows, :, : len(ids)] = one.v
            first.append(logits.expand(n, -1))
        logits = torch.cat(first)
        live = torch.arange(rows_total, device=device)  # the output row of each cache row
        positions = torch.tensor(
            [len(ids) for ids in prompts for _ in range(n)], device=device
        )  # fmt: skip
        left = torch.tensor([b for b in budgets for _ in range(n)], device=device)
        while True:
            scaled = logits.float() / temperature
            if top_k is not None or top_p is not None:
                scaled = torch.stack(
                    [filter_logits(row, top_k=top_k, top_p=top_p) for row in scaled]
                )
            token = sample_indices(torch.softmax(scaled, -1), generator)
            for r, t in zip(live.tolist(), token.tolist(), strict=True):
                out[r].append(t)
            left -= 1
            keep = ~torch.isin(token, stops) & (left > 0)
            if not bool(keep.any()):
                break
            if not bool(keep.all()):  # finished rows leave the batch and its cache
                idx = keep.nonzero()[:, 0]
                live, token, positions, left = live[idx], token[idx], positions[idx], left[idx]
                cache = type(cache)(cache.k[:, idx], cache.v[:, idx])
            logits = model.decode_rows(token, cache, positions)
            positions = positions + 1
    return [out[p * n : (p + 1) * n] for p in range(len(prompts))]


def sequence_logps(
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
    return [sequence_logps(model, prompt_lens[b], sequences[b], device, dtype)[0] for b in batches]


def results_config(recipe: Recipe) -> dict[str, Any]:
    """The part of a recipe that decides the trained weights (hashed into checkpoints)."""
    return {
        "optim": recipe.optim.model_dump(mode="json"),
        "train": recipe.train.model_dump(mode="json", exclude=RESULT_NEUTRAL_TRAIN_FIELDS),
        "rl": recipe.rl.model_dump(mode="json", exclude=RESULT_NEUTRAL_RL_FIELDS),
    }


def train_rl(
    recipe: Recipe, *, base_model: Path, prompts: Path, out_dir: Path, resume: bool = False,
    rewards: list[RewardPlugin] | None = None, workspace: Any = None, progress: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """GRPO-train the model in `base_model` (a model folder with its tokenizer) on the
    prompts JSONL; `rewards` defaults to the plugins of `recipe.rl.rewards`."""
    device = pick_device(recipe.train.device)
    with _deterministic(device == "cpu"):
        return _train_rl(
            recipe, Path(base_model), Path(prompts), Path(out_dir), resume,
            rewards or build_rewards(recipe.rl.rewards, workspace), device, progress,
        )  # fmt: skip


def _train_rl(
    recipe: Recipe, base_model: Path, prompts_path: Path, out_dir: Path, resume: bool,
    rewards: list[RewardPlugin], device: str, progress: bool,
) -> dict[str, Any]:  # fmt: skip
    rcfg, tcfg, ocfg = recipe.rl, recipe.train, recipe.optim
    tok = load_tokenizer(base_model)
    eos_id = tok.token_to_id(EOS)
    if eos_id is None:
        raise DataError(f"{base_model}: the tokenizer has no {EOS}", hint="use a forgeml tokenizer")
    # A reply to a chat prompt ends with the template's end of turn, plain text with EOS.
    stop_ids = {eos_id, tok.token_to_id(END)} - {None}
    records = load_prompts(prompts_path, rcfg.prompt_format)
    encoded = [tok.encode(p.text, add_special_tokens=False).ids for p in records]
    run_config = results_config(recipe)
    ckpt_dir = out_dir / "checkpoints"

    seed_everything(tcfg.seed)
    model = load_model(base_model, device=device)
    too_long = [n for n, ids in enumerate(encoded, 1) if len(ids) >= model.cfg.max_seq_len]
    if too_long:
        raise DataError(
            f"{len(too_long)} of {len(encoded)} prompts leave no room for a completion in the "
            f"model's context of {model.cfg.max_seq_len} tokens (first: record {too_long[0]})",
            hint="drop or shorten them (e.g. forgeml demo acme-rl --max-chars)",
        )
    # The reference is the frozen starting policy; with kl_coef 0 it is never needed.
    reference = (
        load_model(base_model, device=device).requires_grad_(False).eval()
        if rcfg.kl_coef > 0 else None
    )  # fmt: skip
    optimizer = build_optimizer(model, ocfg, device)
    start_step, saved = 0, {}
    if resume:
        path = latest_checkpoint(ckpt_dir)
        if path is None:
            raise NotFoundError(
                f"--resume: no checkpoint in {ckpt_dir}", hint="run without --resume"
            )
        state = load_checkpoint(path, model=model, optimizer=optimizer)
        saved = state["extra"]
        _check_same_run(saved, run_config, path)
        start_step = state["step"]
    loss_fn = LOSSES["grpo"]
    metrics = MetricsLogger(
        out_dir / "metrics.jsonl", max_steps=tcfg.max_steps, progress=False,
        resume_step=start_step if resume else None,
    )  # fmt: skip
    elapsed_before = saved.get("elapsed", 0.0)
    t_start = time.perf_counter()
    record: dict[str, Any] = saved.get("last_record", {})
    G = rcfg.group_size
    for step in range(start_step, tcfg.max_steps):
        t_step = time.perf_counter()
        lr = lr_at(step, tcfg.max_steps, ocfg)
        for group in optimizer.param_groups:
            group["lr"] = lr

        # 1. Sample G completions per prompt from the current policy (seeded per step), and
        # 2. score them. With dynamic sampling a group of equal rewards (no signal) is swapped
        # for a group of a fresh prompt, while the step's spare prompts last.
        model.eval()
        gen = torch.Generator(device=device).manual_seed(tcfg.seed * 1_000_003 + step)
        chosen = prompts_for_step(len(records), step, rcfg.prompts_per_step, tcfg.seed)
        spare = iter(prompts_for_step(
            len(records), step, rcfg.dynamic_sampling, tcfg.seed + SPARE_SEED
        ))  # fmt: skip
        kept: list[dict[str, Any]] = []
        drawn: list[float] = []
        resampled = 0
        t_sample = t_score = 0.0
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
        reward_list = [r for k in kept for r in k["rewards"]]
        per_plugin = {name: [r for k in kept for r in k["each"][name]] for name in kept[0]["each"]}
        rewards_t = torch.tensor(reward_list)
        advantages = group_advantages(rewards_t, G, rcfg.scale_rewards).to(device)

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
                logps, mask = sequence_logps(
                    model, prompt_lens[b], sequences[b], device, tcfg.dtype
                )
                old_j = old[j] if old[j] is not None else logps.detach()
                loss, parts = loss_fn(logps, old_j, ref[j], advantages[b], mask, rcfg)
                share = len(sequences[b]) / len(sequences)
                (loss * share).backward()
                sums["loss"] += loss.item() * share / rcfg.inner_steps
                for key in ("kl", "clip_fraction"):
                    if key in parts:
                        sums[key] += parts[key].item() * share / rcfg.inner_steps
            grad_norm = torch.nn.utils.clip_grad_norm_(
                model.parameters(), ocfg.grad_clip or float("inf")
            )
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        done = step + 1
        final = done == tcfg.max_steps
        lengths = [len(s) - p for s, p in zip(sequences, prompt_lens, strict=True)]
        record = {
            "step": done, "loss": sums["loss"], "lr": lr, "grad_norm": grad_norm.item(),
            "reward_mean": rewards_t.mean().item(), "reward_std": rewards_t.std().item(),
            # every group sampled this step, the swapped-out ones too: the policy's own rate
            "reward_mean_drawn": sum(drawn) / len(drawn), "groups_resampled": resampled,
            **{f"reward/{k}": sum(v) / len(v) for k, v in per_plugin.items()},
            "kl": sums["kl"] if reference is not None else None,
            "clip_fraction": sums["clip_fraction"],
            "completion_len": sum(lengths) / len(lengths),
            "sample_s": t_sample, "score_s": t_score, "step_s": time.perf_counter() - t_step,
            "elapsed": elapsed_before + time.perf_counter() - t_start,
        }  # fmt: skip
        if final or done % tcfg.log_every == 0:
            metrics.log(record)
            if progress:
                kl = f"  kl {record['kl']:.4f}" if record["kl"] is not None else ""
                print(
                    f"rl  step {done}/{tcfg.max_steps}  reward {record['reward_mean']:.3f}"
                    f"±{record['reward_std']:.3f}{kl}  clip {record['clip_fraction']:.3f}"
                    f"  len {record['completion_len']:.1f}  {record['step_s']:.1f}s/step",
                    file=sys.stderr, flush=True,
                )  # fmt: skip
        if final or (tcfg.checkpoint_every and done % tcfg.checkpoint_every == 0):
            save_checkpoint(
                ckpt_dir, done, model=model, optimizer=optimizer, data_state={"step": done},
                keep=tcfg.keep_checkpoints, extra={
                    "config_hash": config_hash(run_config), "results_config": run_config,
                    "elapsed": elapsed_before + time.perf_counter() - t_start,
                    "last_record": record,
                },
            )  # fmt: skip
    metrics.close()
    summary = {
        "steps": tcfg.max_steps, "final_reward_mean": record.get("reward_mean"),
        "final_kl": record.get("kl"), "reference": "base model" if reference else None,
        "rewards": [p.name for p in rewards], "n_prompts": len(records),
        "config_hash": config_hash(run_config), "model_dir": str(out_dir / "model"),
        "metrics_path": str(out_dir / "metrics.jsonl"), "checkpoint_dir": str(ckpt_dir),
        "seconds": time.perf_counter() - t_start,
    }  # fmt: skip
    save_model(model, out_dir / "model", base_model)
    save_resolved(recipe, out_dir / "recipe.yaml")
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary
