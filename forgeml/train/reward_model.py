"""Reward-model training: a scalar head on a pre-trained backbone, fitted to preference pairs
with the Bradley-Terry loss, held-out pair accuracy before and after (`forgeml train rm`).

`RewardScorer` is the trained model as a callable `(prompts, completions) -> rewards` that
online DPO and GRPO use as a ranker / reward plugin. out_dir: checkpoints/, metrics.jsonl, model/.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist

from forgeml.core.config import Recipe
from forgeml.core.errors import ForgeError
from forgeml.core.runtime import autocast, pick_device, seed_everything
from forgeml.core.workspace import Workspace
from forgeml.models.hf_io import load_model
from forgeml.models.reward import (
    RewardModel,
    is_reward_model_dir,
    load_reward_model,
    save_reward_model,
)
from forgeml.tokenizer.train import load_tokenizer, special_token_ids
from forgeml.train import kit
from forgeml.train.losses import bradley_terry_loss
from forgeml.train.preference_data import (
    PreferencePair,
    batch_indices,
    collate_pairs,
    collate_sequences,
    completion_text,
    load_preference_pairs,
    prompt_text,
    split_heldout,
)


def results_config(recipe: Recipe) -> dict[str, Any]:
    """The run's identity: the settings that decide the trained weights. `reward_model.train.
    max_steps` may grow on resume (a run is extended); the batch split decides which pairs a
    step sees."""
    rcfg = recipe.reward_model
    return {
        "reward_model": rcfg.model_dump(mode="json", exclude={"optim", "train"}),
        "optim": rcfg.optim.model_dump(mode="json"),
        "train": rcfg.train.model_dump(
            mode="json", exclude=kit.RESULT_NEUTRAL_TRAIN_FIELDS | {"max_steps"}
        ),
    }


def _rewards(model: RewardModel, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Rewards of right-padded rows whose completion (mask 1) runs to the row's last token."""
    positions = torch.arange(ids.shape[1], device=ids.device)
    lengths = (mask * positions).argmax(-1) + 1
    return model(ids, lengths)


@torch.no_grad()
def evaluate_reward_pairs(
    model: RewardModel, pairs: Sequence[PreferencePair], *, pad_id: int, batch_size: int,
    device: str, dtype: str,
) -> dict[str, float]:  # fmt: skip
    """Share of pairs where the chosen completion gets the higher reward, and the mean margin
    (split over processes, in lockstep)."""
    was_training = model.training
    model.eval()
    wins, margin = 0.0, 0.0
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    starts = range(0, len(pairs), batch_size)
    for start, counted in kit.rank_share(starts, rank=rank, world_size=world, lockstep=world > 1):
        chunk = pairs[start : start + batch_size]
        ids, mask = collate_pairs(chunk, pad_id)
        with autocast(device, dtype):
            chosen, rejected = _rewards(model, ids.to(device), mask.to(device)).chunk(2)
        wins += (chosen > rejected).float().sum().item() * counted
        margin += (chosen - rejected).sum().item() * counted
    model.train(was_training)
    n = max(len(pairs), 1)
    totals = kit.all_reduce_sum({"wins": wins, "margin": margin})
    return {"accuracy": totals["wins"] / n, "margin": totals["margin"] / n}


def train_reward_model(
    recipe: Recipe,
    *,
    base_model_dir: str | Path,
    pairs_path: str | Path,
    out_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Fit a reward model on the pairs in `pairs_path`, starting from the LM in `base_model_dir`
    (with its tokenizer); return a summary with held-out accuracy before and after."""
    rcfg, tcfg, ocfg = recipe.reward_model, recipe.reward_model.train, recipe.reward_model.optim
    base_dir, out_dir = Path(base_model_dir), Path(out_dir)
    procs = kit.init_distributed(tcfg.device)
    device = procs.device
    kit.check_inputs_agree(recipe, base=base_dir, data=pairs_path)
    tok = load_tokenizer(base_dir)
    pad_id = special_token_ids(tok)["pad"]
    lm = load_model(base_dir)
    pairs, report = load_preference_pairs(
        pairs_path, tok, max_length=min(rcfg.max_length, lm.cfg.max_seq_len),
        over_length=rcfg.over_length,
    )  # fmt: skip
    train, held = split_heldout(pairs, rcfg.heldout_fraction)
    seed_everything(tcfg.seed)
    model = RewardModel.from_language_model(lm).to(device)
    del lm
    strategy = kit.choose_strategy(model.cfg, tcfg, **kit.placement(device, procs.world_size))
    train_model = kit.parallelize_for_training(model, tcfg, device=device, strategy=strategy)
    run_config = results_config(recipe)
    optimizer, ckpt_dir, start, metrics = kit.open_run(
        out_dir, run_config, model=model, optim=ocfg, device=device, resume=resume,
        max_steps=tcfg.max_steps, progress=progress, is_main=procs.is_main,
    )  # fmt: skip
    eval_kw = dict(
        pad_id=pad_id, batch_size=recipe.eval.batch_size, device=device, dtype=tcfg.dtype
    )
    before = evaluate_reward_pairs(model, held, **eval_kw) if held else {}
    accum, micro = tcfg.grad_accum_steps, tcfg.micro_batch_size
    t_start = time.perf_counter()
    loss_value, step_metrics = None, {}
    model.train()
    for step in range(start.step, tcfg.max_steps):
        lr = kit.set_lr(optimizer, step, tcfg.max_steps, ocfg)
        # The global batch is micro x accum x processes pairs; each process takes its slice.
        order = batch_indices(len(train), micro * accum * procs.world_size, step, tcfg.seed)
        order = order[procs.rank * micro * accum : (procs.rank + 1) * micro * accum]
        loss_sum, sums = 0.0, {}
        for i in range(accum):
            chunk = [train[j] for j in order[i * micro : (i + 1) * micro]]
            ids, mask = collate_pairs(chunk, pad_id)
            margin = None
            if rcfg.use_margin and any(p.record.margin is not None for p in chunk):
                margin = torch.tensor([p.record.margin or 0.0 for p in chunk], device=device)
            with kit.gradient_sync(train_model, i == accum - 1):
                with autocast(device, tcfg.dtype):
                    rewards = _rewards(train_model, ids.to(device), mask.to(device))
                chosen, rejected = rewards.chunk(2)
                loss, m = bradley_terry_loss(
                    chosen, rejected, margin=margin, center_coef=rcfg.center_coef
                )
                (loss / accum).backward()
            loss_sum += loss.item() / accum / procs.world_size
            for key, value in m.items():
                sums[key] = sums.get(key, 0.0) + value.item() / accum / procs.world_size
        loss_sum = kit.all_reduce_sum({"loss": loss_sum})["loss"]
        sums = kit.all_reduce_sum(sums)
        grad_norm = kit.clip_and_step(optimizer, model.parameters(), ocfg.grad_clip)
        loss_value, step_metrics = loss_sum, sums
        done = step + 1
        if done % tcfg.log_every == 0 or done == tcfg.max_steps:
            metrics.log({
                "step": done, "loss": loss_value, "lr": lr, "grad_norm": grad_norm.item(),
                **step_metrics, "elapsed": time.perf_counter() - t_start,
            })  # fmt: skip
        kit.checkpoint_if_due(ckpt_dir, done, tcfg, run_config, model=model, optimizer=optimizer)
    metrics.close()
    after = evaluate_reward_pairs(model, held, **eval_kw) if held else {}
    final_model = kit.gathered_model(model, lambda: RewardModel(model.cfg))  # every rank
    if procs.is_main:
        save_reward_model(final_model, out_dir / "model", base_dir, pad_id=pad_id)
    summary = {
        "final_train_loss": loss_value, "steps": tcfg.max_steps,
        "train_pairs": len(train), "heldout_pairs": len(held),
        "heldout_accuracy_before": before.get("accuracy"),
        "heldout_margin_before": before.get("margin"),
        "heldout_accuracy": after.get("accuracy"), "heldout_margin": after.get("margin"),
        "train_accuracy": step_metrics.get("accuracy"),
        "seconds": time.perf_counter() - t_start, "data_report": report.to_dict(),
        "model_dir": str(out_dir / "model"), "world_size": procs.world_size, "strategy": strategy,
    }  # fmt: skip
    kit.finish_run(out_dir, summary, is_main=procs.is_main, recipe=recipe)
    return summary


class RewardScorer:
    """A trained reward model as a callable: `scorer(prompts, completions) -> list[float]`.

    `ref` is a model asset (id, name or alias) in workspace `ws`, or `ws=None` and `ref` a
    reward-model folder. With prompt_format "chat" a prompt is the user's text (or a list of
    OpenAI messages) and the completion the assistant's reply, rendered through the chat
    template as in training; "raw" scores the plain concatenation prompt + completion.
    Sequences longer than the model's context keep their last tokens (the reward is read
    at the end).
    """

    def __init__(
        self,
        ws: Workspace | None,
        ref: str | Path,
        *,
        prompt_format: Literal["chat", "raw"] = "chat",
        device: str = "auto",
        batch_size: int = 16,
        dtype: str = "fp32",
    ) -> None:
        path = Path(ref) if ws is None else Path(_asset_path(ws, str(ref)))
        if not is_reward_model_dir(path):
            raise ForgeError(
                f"{ref} is not a reward model", hint="train one with `forgeml train rm`"
            )
        self.device = pick_device(device)
        self.model = load_reward_model(path, self.device).eval()
        self.tokenizer = load_tokenizer(path)
        self.pad_id = special_token_ids(self.tokenizer)["pad"]
        self.prompt_format, self.batch_size, self.dtype = prompt_format, batch_size, dtype
        self.max_len = self.model.cfg.max_seq_len

    def _ids(
        self, prompt: str | list[dict[str, Any]], completion: str
    ) -> tuple[list[int], list[int]]:
        encode = lambda text: self.tokenizer.encode(text, add_special_tokens=False).ids  # noqa: E731
        if self.prompt_format == "raw":
            return encode(str(prompt)), encode(completion)
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        return encode(prompt_text(messages)), encode(completion_text(messages, completion))

    @torch.no_grad()
    def __call__(
        self, prompts: Sequence[str | list[dict[str, Any]]], completions: Sequence[str]
    ) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        out: list[float] = []
        for start in range(0, len(prompts), self.batch_size):
            heads, tails = [], []
            for p, c in zip(prompts[start : start + self.batch_size], completions[start : start + self.batch_size], strict=True):  # fmt: skip
                p_ids, c_ids = self._ids(p, c)
                c_ids = c_ids or [self.pad_id]
                keep = self.max_len - len(c_ids)
                heads.append(p_ids[-keep:] if keep > 0 else [])
                tails.append(c_ids[-self.max_len :])
            ids, mask = collate_sequences(heads, tails, self.pad_id)
            with autocast(self.device, self.dtype):
                rewards = _rewards(self.model, ids.to(self.device), mask.to(self.device))
            out += rewards.float().cpu().tolist()
        return out


def _asset_path(ws: Workspace, ref: str) -> str:
    from forgeml.registry import Registry

    asset = Registry(ws.registry_url, ws.artifacts_dir).get_asset(ref)
    if asset.kind != "model" or asset.metadata.get("task") != "reward":
        raise ForgeError(
            f"{asset.id} is not a reward model ({asset.kind}, task {asset.metadata.get('task')})",
            hint="pass a model asset made by `forgeml train rm`",
        )
    return asset.path
