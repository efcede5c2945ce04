"""Pre-training (and continued pre-training) of a dense decoder on packed token shards.

One readable loop, nanoGPT-style: build model and optimizer, optionally resume, then per
step set the lr, accumulate gradients over micro-batches, clip, step, log, evaluate and
checkpoint. Runs as one process or under `torchrun` (DDP or FSDP2, `train.strategy`);
checkpoints resume exactly, also on a different number of processes.
out_dir: checkpoints/, metrics.jsonl, model/.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from forgeml.core.config import ModelConfig, Recipe, config_hash, load_recipe
from forgeml.core.errors import ConfigError, ForgeError
from forgeml.core.runtime import autocast, pick_device, seed_everything
from forgeml.models.hf_io import load_model, save_model
from forgeml.models.moe import router_metrics
from forgeml.models.registry import build_model
from forgeml.tokenizer.pack import TokenShards
from forgeml.train import kit
from forgeml.train.data import PretrainBatches, eval_batches


def results_config(recipe: Recipe, model_cfg: ModelConfig) -> dict[str, Any]:
    """The run's identity: the part of a recipe that decides the trained weights. The batch
    split may change on resume as long as the global batch, which the checkpoint records,
    stays the same."""
    return {
        "model": model_cfg.model_dump(mode="json"),
        "optim": recipe.optim.model_dump(mode="json"),
        "train": recipe.train.model_dump(
            mode="json", exclude=kit.RESULT_NEUTRAL_TRAIN_FIELDS | kit.BATCH_SPLIT_FIELDS
        ),
    }


@torch.no_grad()
def evaluate_loss(
    model: nn.Module, shards: TokenShards, *, seq_len: int, batch_size: int,
    max_batches: int, device: str, dtype: str, rank: int = 0, world_size: int = 1,
) -> float:  # fmt: skip
    """Token-weighted mean loss on fixed held-out windows, split over processes.

    Under FSDP every process runs as many forwards as the others (each gathers weights)."""
    model.eval()
    total = torch.zeros(2, device=device)  # loss * tokens, tokens
    windows = list(eval_batches(shards, seq_len, batch_size, max_batches))
    share = kit.rank_share(windows, rank=rank, world_size=world_size, lockstep=kit.is_fsdp(model))
    for (x, y), counted in share:
        tokens = y.numel() if counted else 0
        with autocast(device, dtype):
            loss = model(x.to(device), y.to(device))
        total += torch.stack([loss.float() * tokens, torch.tensor(tokens, device=device)])
    model.train()
    total = kit.all_reduce_mean(total)
    return (total[0] / total[1]).item()


def pretrain(
    recipe: Recipe,
    *,
    train_shards: Path,
    out_dir: Path,
    eval_shards: Path | None = None,
    tokenizer_dir: Path | None = None,
    resume: bool | Literal["auto"] = False,
    progress: bool = True,
    on_eval: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """Train `recipe.model` on `train_shards`; return a summary (losses, steps, tokens, ...).

    `resume`: continue the latest checkpoint in `out_dir`; "auto": continue it if there is
    one, else start (what an elastic restart or a requeued job wants).

    `on_eval(step, eval_loss)` is called after every evaluation, on every process (a
    hyper-parameter search reports to its trial there; an exception it raises, such as a
    pruned trial, stops the run after its last checkpoint).
    """
    with kit.deterministic(pick_device(recipe.train.device) == "cpu"):
        return _pretrain(
            recipe, Path(train_shards), Path(out_dir), eval_shards, tokenizer_dir, resume,
            progress, on_eval,
        )  # fmt: skip


def _pretrain(
    recipe: Recipe, train_shards: Path, out_dir: Path, eval_shards: Path | None,
    tokenizer_dir: Path | None, resume: bool | Literal["auto"], progress: bool,
    on_eval: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:  # fmt: skip
    tcfg, ocfg = recipe.train, recipe.optim
    dist = kit.init_distributed(tcfg.device)
    device = dist.device
    train_data = TokenShards(train_shards)
    eval_data = TokenShards(eval_shards) if eval_shards is not None else None
    kit.check_inputs_agree(recipe, data=train_shards, eval_data=eval_shards)
    model_cfg = recipe.model.model_copy(
        update={"vocab_size": recipe.model.vocab_size or train_data.vocab_size}
    )
    if model_cfg.vocab_size < train_data.vocab_size:
        raise ConfigError(
            f"model.vocab_size {model_cfg.vocab_size} < the shards' vocab_size "
            f"{train_data.vocab_size}",
            hint="leave model.vocab_size unset to take it from the tokenizer",
        )
    if tcfg.seq_len > model_cfg.max_seq_len:
        raise ConfigError(
            f"train.seq_len {tcfg.seq_len} > model.max_seq_len {model_cfg.max_seq_len}",
            hint="lower train.seq_len or raise model.max_seq_len",
        )
    # Refuse a run that will not fit before spending anything on it (says what to change).
    fit = kit.placement(device, dist.world_size)
    strategy = kit.choose_strategy(model_cfg, tcfg, **fit)
    kit.preflight(model_cfg, tcfg, strategy=strategy, **fit)
    run_config = results_config(recipe, model_cfg)

    seed_everything(tcfg.seed)
    model = build_model(model_cfg).to(device)
    if tcfg.init_from and resume is not True:  # "auto": a checkpoint found replaces them
        # The caller resolved `train.init_from` (pipeline/pretrain_stage.resolve_init_from, or
        # cpt): a model folder whose architecture `recipe.model` already is.
        init = load_model(tcfg.init_from, device=device)
        if init.cfg != model_cfg:
            raise ConfigError(
                f"train.init_from {tcfg.init_from} is not the recipe's `model` architecture",
                hint="start through `forgeml train pretrain`/`pipeline run`, which resolve it",
            )
        model.load_state_dict(init.state_dict())
    # Compilation and DDP/FSDP are applied from outside, before the optimizer sees the
    # parameters (FSDP replaces them with shards). `model` stays the module that is
    # checkpointed, evaluated and exported; `train_model` the one a training step calls
    # (the DDP wrapper, or `model` itself when sharded).
    train_model = kit.parallelize_for_training(model, tcfg, device=device, strategy=strategy)
    optimizer, ckpt_dir, start, metrics = kit.open_run(
        out_dir, run_config, model=model, optim=ocfg, device=device, resume=resume,
        max_steps=tcfg.max_steps, progress=progress, is_main=dist.is_main,
    )  # fmt: skip
    start_step, saved = start.step, start.saved
    global_batch, grad_accum = kit.global_batch_split(
        start, tcfg, dist.world_size, unit="sequences", section="train", is_main=dist.is_main
    )
    batches = PretrainBatches(
        train_data, seq_len=tcfg.seq_len, global_batch_size=global_batch, seed=tcfg.seed,
        rank=dist.rank, world_size=dist.world_size,
    )  # fmt: skip
    if start.resumed:
        batches.load_state_dict(start.data)

    tokens_per_step = global_batch * tcfg.seq_len
    eval_kw = dict(
        seq_len=recipe.eval.seq_len or tcfg.seq_len, batch_size=recipe.eval.batch_size,
        max_batches=tcfg.eval_batches, device=device, dtype=tcfg.dtype, rank=dist.rank,
        world_size=dist.world_size,
    )  # fmt: skip
    train_loss, eval_loss = saved.get("train_loss"), saved.get("eval_loss")
    elapsed_before = saved.get("elapsed", 0.0)
    t_start = t_log = time.perf_counter()
    step_log = start_step
    for step in range(start_step, tcfg.max_steps):
        lr = kit.set_lr(optimizer, step, tcfg.max_steps, ocfg)
        loss_sum = torch.zeros((), device=device)
        micro_batches = batches.next_micro_batches(tcfg.micro_batch_size, grad_accum)
        for i, (x, y) in enumerate(micro_batches):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            # Reduce gradients over processes only once, on the last micro-batch.
            with kit.gradient_sync(train_model, i == grad_accum - 1):
                with autocast(device, tcfg.dtype):
                    loss = train_model(x, y)
                (loss / grad_accum).backward()
            loss_sum += loss.detach().float()
        grad_norm = kit.clip_and_step(optimizer, model.parameters(), ocfg.grad_clip)

        done = step + 1
        final = done == tcfg.max_steps
        evaluate = eval_data is not None and kit.eval_due(done, tcfg)
        if evaluate:
            eval_loss = evaluate_loss(model, eval_data, **eval_kw)
        if final or evaluate or done % tcfg.log_every == 0:
            train_loss = kit.all_reduce_mean(loss_sum / grad_accum).item()
            now = time.perf_counter()
            metrics.log({
                "step": done, "loss": train_loss, "lr": lr, "tokens": done * tokens_per_step,
                "tok_per_s": (done - step_log) * tokens_per_step / max(now - t_log, 1e-9),
                "grad_norm": grad_norm.item(), "eval_loss": eval_loss if evaluate else None,
                "elapsed": elapsed_before + now - t_start,
                **router_metrics(model),  # MoE: per-expert load, aux/z losses (last micro-batch)
            })  # fmt: skip
            t_log, step_log = now, done
        kit.checkpoint_if_due(
            ckpt_dir, done, tcfg, run_config, model=model, optimizer=optimizer,
            data_state=batches.state_dict, async_save=tcfg.async_checkpoint,
            extra={
                "train_loss": train_loss, "eval_loss": eval_loss,
                "elapsed": elapsed_before + time.perf_counter() - t_start,
            },
        )  # fmt: skip
        if evaluate and on_eval is not None:
            try:
                on_eval(done, eval_loss)
            except BaseException:
                metrics.close()  # stop the progress display before the run ends early
                raise
    metrics.close()
    seconds = time.perf_counter() - t_start
    trained_tokens = (tcfg.max_steps - start_step) * tokens_per_step

    summary = {
        "final_train_loss": train_loss, "final_eval_loss": eval_loss, "steps": tcfg.max_steps,
        "tokens": tcfg.max_steps * tokens_per_step, "tokens_per_s": trained_tokens / seconds,
        "params": model.num_params(), "world_size": dist.world_size, "strategy": strategy,
        "config_hash": config_hash(run_config), "model_dir": str(out_dir / "model"),
        "checkpoint_dir": str(ckpt_dir), "metrics_path": str(out_dir / "metrics.jsonl"),
    }  # fmt: skip
    final_model = kit.gathered_model(model, lambda: build_model(model_cfg))  # every rank: gathers
    if dist.is_main:
        save_model(final_model, out_dir / "model", tokenizer_dir)
    kit.finish_run(out_dir, summary, is_main=dist.is_main, recipe=recipe)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m forgeml.train.pretrain",
        description="Pre-train a model on token shards (run under torchrun for DDP).",
    )
    parser.add_argument("--recipe", type=Path, help="recipe YAML (defaults when omitted)")
    parser.add_argument("--train-shards", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="run folder")
    parser.add_argument("--eval-shards", type=Path)
    parser.add_argument("--tokenizer-dir", type=Path, help="copied next to the final weights")
    parser.add_argument("--resume", action="store_true", help="continue the latest checkpoint")
    parser.add_argument(
        "--auto-resume", action="store_true",
        help="continue the latest checkpoint if there is one, else start (what a torchrun "
        "elastic restart or a requeued Slurm job wants)",
    )  # fmt: skip
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    parser.add_argument("overrides", nargs="*", help="dotted key=value, e.g. train.max_steps=50")
    args = parser.parse_args(argv)
    try:
        recipe = load_recipe(args.recipe, args.overrides)
        summary = pretrain(
            recipe, train_shards=args.train_shards, out_dir=args.out,
            eval_shards=args.eval_shards, tokenizer_dir=args.tokenizer_dir,
            resume="auto" if args.auto_resume and not args.resume else args.resume,
            progress=not args.quiet,
        )  # fmt: skip
    except ForgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        kit.cleanup()
    if not args.quiet and os.environ.get("RANK", "0") == "0":
        print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
