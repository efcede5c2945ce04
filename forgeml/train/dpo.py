"""Offline preference optimisation (DPO / IPO) of a language model on preference pairs.

One readable loop: load the policy and a frozen copy as the reference, compute the
reference's completion log-probs once per dataset (cached on disk, keyed by the reference
weights and the tokenized pairs), then per step the policy's log-probs of chosen and rejected,
the loss named by `dpo.loss` (forgeml.train.losses), clip, step, log reward margins/accuracies.
out_dir: checkpoints/, metrics.jsonl, model/, summary.json. Online DPO: forgeml.train.online_dpo.
"""

from __future__ import annotations

import io
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from forgeml.core.config import Recipe, config_hash
from forgeml.core.io import atomic_write_bytes, sha256_file
from forgeml.core.runtime import autocast, seed_everything
from forgeml.models.hf_io import load_model, save_model
from forgeml.models.registry import build_model
from forgeml.tokenizer.train import load_tokenizer, special_token_ids
from forgeml.train import kit
from forgeml.train.losses import PairLogps, preference_loss, sequence_logps
from forgeml.train.preference_data import (
    PreferencePair,
    batch_indices,
    collate_pairs,
    load_preference_pairs,
    split_heldout,
)


def results_config(recipe: Recipe) -> dict[str, Any]:
    """The run's identity: the settings that decide the trained weights. `dpo.train.max_steps`
    may grow on resume (a run is extended); the batch split decides which pairs a step sees."""
    dcfg = recipe.dpo
    return {
        "dpo": dcfg.model_dump(mode="json", exclude={"optim", "train"}),
        "optim": dcfg.optim.model_dump(mode="json"),
        "train": dcfg.train.model_dump(
            mode="json", exclude=kit.RESULT_NEUTRAL_TRAIN_FIELDS | {"max_steps"}
        ),
    }


def pair_logps(
    model: nn.Module, pairs: Sequence[PreferencePair], pad_id: int, device: str, dtype: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion log-probs and completion token counts, [chosen rows; rejected rows]."""
    ids, mask = collate_pairs(pairs, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    with autocast(device, dtype):
        logits = model(ids)
    return sequence_logps(logits, ids, mask)


@torch.no_grad()
def _reference_forward(
    ref: nn.Module, pairs: Sequence[PreferencePair], pad_id: int, batch_size: int,
    device: str, dtype: str,
) -> dict[str, tuple[float, float]]:  # fmt: skip
    """The reference's log-probs of every pair: each process computes its share (all of them
    in lockstep when the reference is sharded), and the shares are merged on every process."""
    ref.eval()
    out = {}
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    starts = range(0, len(pairs), batch_size)
    for start, counted in kit.rank_share(starts, rank=rank, world_size=world, lockstep=world > 1):
        chunk = pairs[start : start + batch_size]
        sums, _ = pair_logps(ref, chunk, pad_id, device, dtype)
        chosen, rejected = sums.chunk(2)
        for pair, c, r in zip(chunk, chosen.tolist(), rejected.tolist(), strict=True):
            if counted:
                out[pair.key] = (c, r)
    if world > 1:
        shares: list[dict[str, tuple[float, float]]] = [{} for _ in range(world)]
        dist.all_gather_object(shares, out)
        out = {key: value for share in shares for key, value in share.items()}
    return out


def reference_logps(
    ref_dir: Path, pairs: Sequence[PreferencePair], *, cache_dir: Path, pad_id: int,
    batch_size: int, device: str, dtype: str, strategy: kit.Strategy = "single",
) -> tuple[dict[str, tuple[float, float]], bool]:  # fmt: skip
    """(pair key -> reference log-probs of chosen and rejected, cache hit?).

    The reference is frozen, so its log-probs depend only on its weights, the dtype and the
    tokenized pairs: they are computed once and read from `cache_dir` by every later run
    (and every step) on the same data. Training never holds the reference: under FSDP it is
    sharded like the policy for this one pass without gradients, then freed.
    """
    weights = sha256_file(ref_dir / "model.safetensors")
    key = config_hash({"ref": weights, "dtype": dtype, "pairs": sorted(p.key for p in pairs)})
    path = Path(cache_dir) / f"ref_logps-{key[:24]}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True), True
    ref = load_model(ref_dir, device=device)
    if strategy == "fsdp":
        ref = kit.parallelize(ref, device=device, strategy="fsdp", dtype=dtype)
    table = _reference_forward(ref, pairs, pad_id, batch_size, device, dtype)
    if not dist.is_initialized() or dist.get_rank() == 0:
        buf = io.BytesIO()
        torch.save(table, buf)
        atomic_write_bytes(path, buf.getvalue())
    return table, False


def _pair_logps_with_ref(
    policy: nn.Module, chunk: Sequence[PreferencePair], table: dict[str, tuple[float, float]],
    pad_id: int, device: str, dtype: str,
) -> PairLogps:  # fmt: skip
    sums, counts = pair_logps(policy, chunk, pad_id, device, dtype)
    ref = torch.tensor([table[p.key] for p in chunk], device=device)
    (pc, pr), (nc, nr) = sums.chunk(2), counts.chunk(2)
    return PairLogps(pc, pr, ref[:, 0], ref[:, 1], nc, nr)


@torch.no_grad()
def evaluate_preferences(
    policy: nn.Module, pairs: Sequence[PreferencePair], table: dict[str, tuple[float, float]],
    cfg: Any, *, pad_id: int, batch_size: int, device: str, dtype: str,
) -> dict[str, float]:  # fmt: skip
    """Held-out loss, implicit-reward margin and accuracy (chosen reward > rejected), averaged
    (split over processes, in lockstep)."""
    was_training = policy.training
    policy.eval()
    totals: dict[str, float] = {}
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    starts = range(0, len(pairs), batch_size)
    for start, counted in kit.rank_share(starts, rank=rank, world_size=world, lockstep=world > 1):
        chunk = pairs[start : start + batch_size]
        lp = _pair_logps_with_ref(policy, chunk, table, pad_id, device, dtype)
        loss, m = preference_loss(lp, cfg)
        for key, value in {"loss": loss, **m}.items():
            totals[key] = totals.get(key, 0.0) + value.item() * len(chunk) * counted
    policy.train(was_training)
    totals = kit.all_reduce_sum(totals)
    return {key: value / max(len(pairs), 1) for key, value in totals.items()}


def train_dpo(
    recipe: Recipe,
    *,
    base_model_dir: str | Path,
    pairs_path: str | Path,
    out_dir: str | Path,
    cache_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """DPO/IPO from the model in `base_model_dir` (also the reference) on `pairs_path`."""
    dcfg, tcfg, ocfg = recipe.dpo, recipe.dpo.train, recipe.dpo.optim
    base_dir, out_dir = Path(base_model_dir), Path(out_dir)
    procs = kit.init_distributed(tcfg.device)
    device = procs.device
    kit.check_inputs_agree(recipe, base=base_dir, data=pairs_path)
    tok = load_tokenizer(base_dir)
    pad_id = special_token_ids(tok)["pad"]
    seed_everything(tcfg.seed)
    policy = load_model(base_dir, device=device)
    pairs, report = load_preference_pairs(
        pairs_path, tok, max_length=min(dcfg.max_length, policy.cfg.max_seq_len),
        over_length=dcfg.over_length,
    )  # fmt: skip
    train, held = split_heldout(pairs, dcfg.heldout_fraction)
    strategy = kit.choose_strategy(policy.cfg, tcfg, **kit.placement(device, procs.world_size))
    table, cache_hit = reference_logps(
        base_dir, pairs, cache_dir=Path(cache_dir or out_dir / "cache"), pad_id=pad_id,
        batch_size=recipe.eval.batch_size, device=device, dtype=tcfg.dtype, strategy=strategy,
    )  # fmt: skip
    train_policy = kit.parallelize_for_training(policy, tcfg, device=device, strategy=strategy)
    run_config = results_config(recipe)
    optimizer, ckpt_dir, start, metrics = kit.open_run(
        out_dir, run_config, model=policy, optim=ocfg, device=device, resume=resume,
        max_steps=tcfg.max_steps, progress=progress, is_main=procs.is_main,
    )  # fmt: skip
    eval_kw = dict(
        pad_id=pad_id, batch_size=recipe.eval.batch_size, device=device, dtype=tcfg.dtype
    )
    before = evaluate_preferences(policy, held, table, dcfg, **eval_kw) if held else {}
    accum, micro = tcfg.grad_accum_steps, tcfg.micro_batch_size
    t_start = t_log = time.perf_counter()
    tokens, step_metrics = 0, {}
    policy.train()
    for step in range(start.step, tcfg.max_steps):
        lr = kit.set_lr(optimizer, step, tcfg.max_steps, ocfg)
        # The global batch is micro x accum x processes pairs; each process takes its slice.
        order = batch_indices(len(train), micro * accum * procs.world_size, step, tcfg.seed)
        order = order[procs.rank * micro * accum : (procs.rank + 1) * micro * accum]
        sums: dict[str, float] = {}
        for i in range(accum):
            chunk = [train[j] for j in order[i * micro : (i + 1) * micro]]
            with kit.gradient_sync(train_policy, i == accum - 1):
                lp = _pair_logps_with_ref(train_policy, chunk, table, pad_id, device, tcfg.dtype)
                loss, m = preference_loss(lp, dcfg)
                (loss / accum).backward()
            for key, value in {"loss": loss.detach(), **m}.items():
                sums[key] = sums.get(key, 0.0) + value.item() / accum / procs.world_size
            tokens += sum(len(p.prompt_ids) * 2 + len(p.chosen_ids) + len(p.rejected_ids) for p in chunk)  # fmt: skip
        sums = kit.all_reduce_sum(sums)
        grad_norm = kit.clip_and_step(optimizer, policy.parameters(), ocfg.grad_clip)
        step_metrics = sums
        done = step + 1
        if done % tcfg.log_every == 0 or done == tcfg.max_steps:
            now = time.perf_counter()
            metrics.log({
                "step": done, "lr": lr, "grad_norm": grad_norm.item(), **step_metrics,
                "tok_per_s": tokens / max(now - t_log, 1e-9), "elapsed": now - t_start,
            })  # fmt: skip
            t_log, tokens = now, 0
        kit.checkpoint_if_due(ckpt_dir, done, tcfg, run_config, model=policy, optimizer=optimizer)
    metrics.close()
    after = evaluate_preferences(policy, held, table, dcfg, **eval_kw) if held else {}
    final_policy = kit.gathered_model(policy, lambda: build_model(policy.cfg))  # every rank
    if procs.is_main:
        save_model(final_policy, out_dir / "model", base_dir)
    summary = {
        "loss": dcfg.loss, "final_train_loss": step_metrics.get("loss"), "steps": tcfg.max_steps,
        "train_pairs": len(train), "heldout_pairs": len(held), "reference_cache_hit": cache_hit,
        **{f"heldout_{k.replace('/', '_')}_before": v for k, v in before.items()},
        **{f"heldout_{k.replace('/', '_')}": v for k, v in after.items()},
        "train_rewards_margins": step_metrics.get("rewards/margins"),
        "seconds": time.perf_counter() - t_start, "data_report": report.to_dict(),
        "model_dir": str(out_dir / "model"), "world_size": procs.world_size, "strategy": strategy,
    }  # fmt: skip
    kit.finish_run(out_dir, summary, is_main=procs.is_main, recipe=recipe)
    return summary
