"""Supervised fine-tuning (full or LoRA) of a model on chat data, loss on assistant turns only.

One readable loop, like pretrain.py: load the base model (and wrap it with LoRA), tokenize and
pack the conversations (`chat_data`), then per step set the lr, accumulate token-weighted
gradients over micro-batches, clip, step, log, evaluate on held-out conversations and
checkpoint. out_dir: checkpoints/, metrics.jsonl, data_report.json, and model/ (full) or
adapter/ (LoRA, PEFT format).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from forgeml.core.config import SFTConfig, config_hash
from forgeml.core.errors import ConfigError
from forgeml.core.io import atomic_write_bytes
from forgeml.core.runtime import autocast, pick_device, seed_everything
from forgeml.models.dense import IGNORE_INDEX
from forgeml.models.hf_io import load_model, save_model
from forgeml.models.lora import apply_lora, save_adapter, trainable_parameters
from forgeml.models.moe import router_metrics
from forgeml.models.registry import build_model
from forgeml.tokenizer.train import TOKENIZER_FILES, load_tokenizer
from forgeml.train import kit
from forgeml.train.chat_data import (
    PAD_DOC,
    PackedRows,
    SFTBatches,
    load_chat_examples,
    pack_examples,
    pad_token_id,
    rows_to_batch,
)


def results_config(cfg: SFTConfig, base_hash: str) -> dict[str, Any]:
    """The run's identity: the settings that decide the fine-tuned weights. The batch split
    may change on resume (the checkpoint keeps the global batch)."""
    body = cfg.model_dump(mode="json", exclude={"train", "optim", "data", "heldout"})
    return {
        "base": {"weights_sha256": base_hash},
        "sft": body,
        "optim": cfg.optim.model_dump(mode="json"),
        "train": cfg.train.model_dump(
            mode="json", exclude=kit.RESULT_NEUTRAL_TRAIN_FIELDS | kit.BATCH_SPLIT_FIELDS
        ),
    }


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


@torch.no_grad()
def evaluate_loss(
    model: nn.Module, rows: PackedRows, *, batch_size: int, device: str, dtype: str,
    packing: bool, rank: int = 0, world_size: int = 1,
) -> float:  # fmt: skip
    """Mean loss per assistant token over all held-out rows (split over processes; under
    FSDP every process runs as many forwards as the others)."""
    model.eval()
    total = torch.zeros(2, device=device)  # loss * label tokens, label tokens
    lockstep = kit.is_fsdp(model)
    starts = range(0, len(rows), batch_size)
    for start, counted in kit.rank_share(
        starts, rank=rank, world_size=world_size, lockstep=lockstep
    ):
        index = range(start, min(start + batch_size, len(rows)))
        x, y, docs = (t.to(device) for t in rows_to_batch(rows, index))
        n = (y != IGNORE_INDEX).sum() if counted else 0
        if n == 0 and not lockstep:
            continue
        with autocast(device, dtype):
            loss = model(x, y, doc_ids=docs if packing else None)
        if n:
            total += torch.stack([loss.float() * n, n.float()])
    model.train()
    total = kit.all_reduce_mean(total)
    return (total[0] / total[1]).item()


def _empty_like(model: nn.Module, cfg: SFTConfig) -> nn.Module:
    """A fresh module of `model`'s architecture (with its LoRA layers) to gather weights into."""
    empty = build_model(model.cfg)
    if cfg.method == "lora":
        lc = cfg.lora
        apply_lora(empty, list(lc.targets), lc.rank, lc.alpha, lc.dropout)
    return empty


def sft(
    cfg: SFTConfig,
    *,
    base_model_dir: Path,
    train_data: Path,
    out_dir: Path,
    heldout_data: Path | None = None,
    base_model_id: str | None = None,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune the model in `base_model_dir` on `train_data`; return a summary."""
    with kit.deterministic(pick_device(cfg.train.device) == "cpu"):
        return _sft(cfg, Path(base_model_dir), Path(train_data), Path(out_dir), heldout_data,
                    base_model_id, resume, progress)  # fmt: skip


def _sft(
    cfg: SFTConfig, base_dir: Path, train_data: Path, out_dir: Path, heldout_data: Path | None,
    base_model_id: str | None, resume: bool, progress: bool,
) -> dict[str, Any]:  # fmt: skip
    tcfg, ocfg = cfg.train, cfg.optim
    dist = kit.init_distributed(tcfg.device)
    device = dist.device
    kit.check_inputs_agree(cfg, base=base_dir, data=train_data, heldout=heldout_data)
    tok = load_tokenizer(base_dir)
    data_kw = dict(
        max_tokens=tcfg.seq_len + 1, overlength=cfg.overlength, on_invalid=cfg.on_invalid
    )
    examples, report = load_chat_examples(train_data, tok, **data_kw)
    rows = pack_examples(examples, tcfg.seq_len, pad_token_id(tok), packing=cfg.packing)
    eval_rows, eval_report = None, None
    if heldout_data is not None:
        held, eval_report = load_chat_examples(heldout_data, tok, **data_kw)
        eval_rows = pack_examples(held, tcfg.seq_len, pad_token_id(tok), packing=cfg.packing)

    seed_everything(tcfg.seed)
    model = load_model(base_dir, device=device)
    if tcfg.seq_len > model.cfg.max_seq_len:
        raise ConfigError(
            f"sft.train.seq_len {tcfg.seq_len} > the base model's max_seq_len {model.cfg.max_seq_len}",
            hint="lower sft.train.seq_len",
        )
    if cfg.method == "lora":
        lc = cfg.lora
        apply_lora(model, list(lc.targets), lc.rank, lc.alpha, lc.dropout)
    strategy = kit.choose_strategy(model.cfg, tcfg, **kit.placement(device, dist.world_size))
    # DDP/FSDP from outside, before the optimizer sees the parameters (FSDP shards them; LoRA
    # layers are sharded with their block, frozen base weights included).
    train_model = kit.parallelize_for_training(model, tcfg, device=device, strategy=strategy)
    run_config = results_config(cfg, _file_sha256(base_dir / "model.safetensors"))
    optimizer, ckpt_dir, start, metrics = kit.open_run(
        out_dir, run_config, model=model, optim=ocfg, device=device, resume=resume,
        max_steps=tcfg.max_steps, progress=progress, is_main=dist.is_main,
    )  # fmt: skip
    start_step, saved = start.step, start.saved
    global_batch, grad_accum = kit.global_batch_split(
        start, tcfg, dist.world_size, unit="rows", section="sft.train", is_main=dist.is_main
    )
    batches = SFTBatches(rows, global_batch_size=global_batch, seed=tcfg.seed, rank=dist.rank,
                         world_size=dist.world_size)  # fmt: skip
    if start.resumed:
        batches.load_state_dict(start.data)
    eval_kw = dict(batch_size=tcfg.micro_batch_size, device=device, dtype=tcfg.dtype,
                   packing=cfg.packing, rank=dist.rank, world_size=dist.world_size)  # fmt: skip
    train_loss, eval_loss = saved.get("train_loss"), saved.get("eval_loss")
    tokens_seen = saved.get("tokens", 0)
    elapsed_before = saved.get("elapsed", 0.0)
    t_start = t_log = time.perf_counter()
    tokens_log = tokens_seen
    for step in range(start_step, tcfg.max_steps):
        lr = kit.set_lr(optimizer, step, tcfg.max_steps, ocfg)
        micro_batches = batches.next_micro_batches(tcfg.micro_batch_size, grad_accum)
        # Token-weighted mean over the whole global batch: each micro-batch's mean loss is
        # weighted by its share of the batch's assistant tokens (over all processes), so the
        # gradient does not depend on how the batch is split.
        counts = torch.stack([(y != IGNORE_INDEX).sum() for _, y, _ in micro_batches]).float()
        batch_tokens = kit.all_reduce_mean(counts.sum().to(device)) * dist.world_size
        step_tokens = sum((docs != PAD_DOC).sum() for _, _, docs in micro_batches).float()
        tokens_seen += round(kit.all_reduce_mean(step_tokens.to(device)).item() * dist.world_size)
        loss_sum = torch.zeros((), device=device)
        for i, (x, y, docs) in enumerate(micro_batches):
            x, y, docs = x.to(device), y.to(device), docs.to(device)
            with kit.gradient_sync(train_model, i == grad_accum - 1):
                with autocast(device, tcfg.dtype):
                    loss = train_model(x, y, doc_ids=docs if cfg.packing else None)
                weight = counts[i].to(device) / batch_tokens
                (loss * weight * dist.world_size).backward()
            loss_sum += loss.detach().float() * weight * dist.world_size
        params = [p for p in model.parameters() if p.requires_grad]
        grad_norm = kit.clip_and_step(optimizer, params, ocfg.grad_clip)

        done = step + 1
        final = done == tcfg.max_steps
        evaluate = eval_rows is not None and kit.eval_due(done, tcfg)
        if evaluate:
            eval_loss = evaluate_loss(model, eval_rows, **eval_kw)
        if final or evaluate or done % tcfg.log_every == 0:
            train_loss = kit.all_reduce_mean(loss_sum).item()
            now = time.perf_counter()
            metrics.log({
                "step": done, "loss": train_loss, "lr": lr, "tokens": tokens_seen,
                "tok_per_s": (tokens_seen - tokens_log) / max(now - t_log, 1e-9),
                "grad_norm": grad_norm.item(), "eval_loss": eval_loss if evaluate else None,
                "elapsed": elapsed_before + now - t_start, **router_metrics(model),
            })  # fmt: skip
            t_log, tokens_log = now, tokens_seen
        kit.checkpoint_if_due(
            ckpt_dir, done, tcfg, run_config, model=model, optimizer=optimizer,
            data_state=batches.state_dict,
            extra={
                "train_loss": train_loss, "eval_loss": eval_loss, "tokens": tokens_seen,
                "elapsed": elapsed_before + time.perf_counter() - t_start,
            },
        )  # fmt: skip
    metrics.close()
    seconds = time.perf_counter() - t_start
    summary = {
        "method": cfg.method, "final_train_loss": train_loss, "final_eval_loss": eval_loss,
        "steps": tcfg.max_steps, "tokens": tokens_seen,
        "tokens_per_s": (tokens_seen - saved.get("tokens", 0)) / max(seconds, 1e-9),
        "params": model.num_params(), "trainable_params": trainable_parameters(model),
        "rows": len(rows), "examples": len(examples), "world_size": dist.world_size,
        "strategy": strategy,
        "config_hash": config_hash(run_config), "data": report.to_dict(),
        "heldout": eval_report.to_dict() if eval_report else None,
        "metrics_path": str(out_dir / "metrics.jsonl"),
    }  # fmt: skip
    final_model = kit.gathered_model(model, lambda: _empty_like(model, cfg))  # every rank: gathers
    if dist.is_main:
        if cfg.method == "lora":
            summary["adapter_dir"] = str(
                save_adapter(final_model, out_dir / "adapter", base_model=base_model_id)
            )
            for name in TOKENIZER_FILES:
                if (base_dir / name).is_file():
                    atomic_write_bytes(out_dir / "adapter" / name, (base_dir / name).read_bytes())
        else:
            summary["model_dir"] = str(save_model(final_model, out_dir / "model", base_dir))
    kit.finish_run(out_dir, summary, is_main=dist.is_main)
    return summary


def main(argv: list[str] | None = None) -> int:
    """`python -m forgeml.train.sft --base MODEL_DIR --data FILE.jsonl --out DIR [overrides]`
    (also under torchrun); the recipe's `sft` section, or defaults."""
    import argparse

    from forgeml.core.config import load_recipe
    from forgeml.core.errors import ForgeError
    from forgeml.train.distributed import cleanup

    parser = argparse.ArgumentParser(prog="python -m forgeml.train.sft")
    parser.add_argument("--recipe", type=Path)
    parser.add_argument("--base", type=Path, required=True, help="base model folder")
    parser.add_argument("--data", type=Path, help="training JSONL (default: sft.data)")
    parser.add_argument("--heldout", type=Path, help="held-out JSONL (default: sft.heldout)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument(
        "overrides", nargs="*", help="dotted key=value, e.g. sft.train.max_steps=50"
    )
    args = parser.parse_args(argv)
    try:
        recipe = load_recipe(args.recipe, args.overrides)
        cfg = recipe.sft or SFTConfig()
        data = args.data or (Path(cfg.data) if cfg.data else None)
        if data is None:
            raise ConfigError("no training data", hint="pass --data FILE.jsonl or set sft.data")
        heldout = args.heldout or (Path(cfg.heldout) if cfg.heldout else None)
        summary = sft(
            cfg,
            base_model_dir=args.base,
            train_data=data,
            out_dir=args.out,
            heldout_data=heldout,
            resume=args.resume,
            progress=not args.quiet,
        )
    except ForgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        cleanup()
    if not args.quiet:
        print(
            json.dumps({k: v for k, v in summary.items() if k not in ("data", "heldout")}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
