"""Vision- and audio-language SFT: projector alignment (encoders and LM frozen), then joint
training (projectors and LM; encoders too when asked), on prompt/answer records that name an
image or a recording. The loss is on the answer tokens only; resume, checkpoints, metrics and
DDP/FSDP2 (under torchrun) come from the training kit as for text.

Records (JSONL): {"image": "page.png" | [...], "audio": "call.wav" | [...], "prompt": str,
"answer": str}; media paths are relative to the JSONL file.
out_dir: checkpoints/, metrics.jsonl, model/ (save_multimodal), summary.json.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from forgeml.core.config import MultimodalPhaseConfig, OptimConfig, TrainConfig
from forgeml.core.errors import ConfigError, DataError
from forgeml.core.runtime import autocast, seed_everything
from forgeml.core.seeds import derive_seed
from forgeml.eval.media_generate import media_inputs
from forgeml.models.dense import IGNORE_INDEX
from forgeml.models.hf_multimodal_io import save_multimodal
from forgeml.models.multimodal import MultimodalConfig, MultimodalLM
from forgeml.tokenizer.train import load_tokenizer
from forgeml.train import kit
from forgeml.train.chat_data import pad_token_id, tokenize_conversation
from forgeml.train.distributed import file_fingerprint


class MultimodalSFTConfig(BaseModel):
    """One multimodal SFT stage: `align` trains only the projectors (LLaVA's stage 1);
    `joint` trains the projectors and the LM, and the encoders with `train_encoders`."""

    model_config = ConfigDict(extra="forbid")

    stage: Literal["align", "joint"] = "align"
    train_encoders: bool = False
    heldout_fraction: float = Field(0.1, ge=0, lt=1)
    optim: OptimConfig = OptimConfig(lr=1e-3, warmup_steps=5, weight_decay=0.0)
    train: TrainConfig = TrainConfig(
        max_steps=100, micro_batch_size=4, eval_every=0, checkpoint_every=50
    )

    @classmethod
    def for_phase(
        cls, phase: Literal["align", "joint"], section: MultimodalPhaseConfig, heldout: float
    ) -> MultimodalSFTConfig:
        """The loop's config from a recipe's `multimodal.align` / `multimodal.joint`."""
        return cls(stage=phase, heldout_fraction=heldout, **section.model_dump())


@dataclass
class MediaExample:
    ids: list[int]
    labels: list[int]
    pixels: torch.Tensor | None  # [images, C, H, W]
    audio: torch.Tensor | None  # [windows, n_mels, frames]


def _media_list(record: dict[str, Any], key: str) -> list[str]:
    value = record.get(key) or []
    return [value] if isinstance(value, str) else list(value)


def load_media_examples(
    path: str | Path, tokenizer: Any, model: MultimodalLM, max_len: int
) -> list[MediaExample]:
    """Tokenized examples with their pixels / log-mel windows; each image becomes
    `tokens_per_image` placeholders (each audio window `tokens_per_window`) before the prompt."""
    path, cfg = Path(path), model.cfg
    examples = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            record = json.loads(line)
            images, clips = _media_list(record, "image"), _media_list(record, "audio")
            prompt, answer = str(record["prompt"]), str(record["answer"])
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise DataError(
                f"{where}: {type(err).__name__}", "give prompt, answer, image/audio"
            ) from None
        try:
            marks, pixels, audio = media_inputs(
                model,
                tokenizer,
                [path.parent / p for p in images],
                [path.parent / c for c in clips],
            )
        except DataError as err:
            raise DataError(f"{where}: {err.message}", err.hint) from None
        messages = [
            {"role": "user", "content": marks + prompt},
            {"role": "assistant", "content": answer},
        ]
        ids, labels = tokenize_conversation(tokenizer, messages)
        placeholders = sum(i in (cfg.image_token_id, cfg.audio_token_id) for i in ids)
        want = (cfg.vision.tokens_per_image * len(images) if images else 0) + (
            cfg.audio.tokens_per_window * audio.shape[0] if clips else 0
        )
        if placeholders != want:
            raise DataError(f"{where}: the prompt or answer holds a media placeholder token")
        if len(ids) > max_len + 1:
            raise DataError(f"{where}: {len(ids)} tokens, more than train.seq_len + 1")
        examples.append(MediaExample(ids, labels, pixels, audio))
    if not examples:
        raise DataError(f"{path}: no records")
    return examples


def _batch(
    examples: list[MediaExample], pad_id: int, cfg: MultimodalConfig | None = None
) -> dict[str, torch.Tensor | None]:
    """Right-padded inputs and next-token targets (IGNORE_INDEX on padding and prompts).
    With the model's `cfg` (training), a modality it has but the batch lacks gets an empty
    tensor: its encoder and projector then run on nothing and get zero gradients, not none,
    so every process reduces the same parameters under DDP/FSDP (images only in one
    process's batch, audio in another's) and AdamW steps them as one process would."""
    width = max(len(e.ids) for e in examples) - 1
    idx = torch.full((len(examples), width), pad_id)
    targets = torch.full((len(examples), width), IGNORE_INDEX)
    for row, e in enumerate(examples):
        n = len(e.ids) - 1
        idx[row, :n] = torch.tensor(e.ids[:-1])
        targets[row, :n] = torch.tensor(e.labels[1:])
    pixels = [e.pixels for e in examples if e.pixels is not None]
    audio = [e.audio for e in examples if e.audio is not None]
    empty = {}
    if cfg is not None and cfg.vision is not None:
        v = cfg.vision
        empty["pixel_values"] = torch.zeros(0, v.channels, v.image_size, v.image_size)
    if cfg is not None and cfg.audio is not None:
        empty["audio_features"] = torch.zeros(0, cfg.audio.n_mels, cfg.audio.window_frames)
    return {
        "idx": idx,
        "targets": targets,
        "pixel_values": torch.cat(pixels) if pixels else empty.get("pixel_values"),
        "audio_features": torch.cat(audio) if audio else empty.get("audio_features"),
    }


def _trainable(model: MultimodalLM, cfg: MultimodalSFTConfig) -> int:
    """Freeze what the stage does not train; return the number of trained parameters."""
    encoders = ("vision.", "audio.")
    for name, param in model.named_parameters():
        projector = "_projector." in name
        encoder = name.startswith(encoders)
        param.requires_grad_(
            projector or (cfg.stage == "joint" and (not encoder or cfg.train_encoders))
        )
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _to(batch: dict[str, torch.Tensor | None], device: str) -> dict[str, torch.Tensor | None]:
    return {k: None if v is None else v.to(device) for k, v in batch.items()}


@torch.no_grad()
def heldout_loss(
    model: MultimodalLM, examples: list[MediaExample], pad_id: int, dtype: str,
    device: str = "cpu", rank: int = 0, world_size: int = 1,
) -> float:  # fmt: skip
    """Mean answer-token loss over `examples`, one at a time (no padding in the mean), split
    over the processes (under FSDP each runs as many forwards as the others)."""
    model.eval()
    total = {"loss": 0.0, "tokens": 0.0}
    shares = kit.rank_share(examples, rank=rank, world_size=world_size, lockstep=kit.is_fsdp(model))
    for e, counted in shares:
        b = _to(_batch([e], pad_id), device)
        with autocast(device, dtype):
            loss = model(b["idx"], b["targets"], pixel_values=b["pixel_values"],
                         audio_features=b["audio_features"])  # fmt: skip
        if counted:
            n = int((b["targets"] != IGNORE_INDEX).sum())
            total["loss"] += loss.item() * n
            total["tokens"] += n
    model.train()
    total = kit.all_reduce_sum(total)
    return total["loss"] / max(total["tokens"], 1)


# `train` settings that never change the weights, nor the batch split (the checkpoint keeps
# the global batch): a resumed run may change them.
_NEUTRAL = kit.RESULT_NEUTRAL_TRAIN_FIELDS | kit.BATCH_SPLIT_FIELDS


def _identity(model: MultimodalLM, cfg: MultimodalSFTConfig, data_path: Path, n: int) -> dict:
    """The run's identity: the settings that decide the trained weights (the batch split may
    change on resume; the checkpoint keeps the global batch)."""
    tcfg = cfg.train
    return {
        "stage": cfg.stage, "train_encoders": cfg.train_encoders,
        "heldout_fraction": cfg.heldout_fraction, "model": model.cfg.model_dump(mode="json"),
        "optim": cfg.optim.model_dump(mode="json"),
        "train": tcfg.model_dump(mode="json", exclude=_NEUTRAL),
        "data": {"records": n, "fingerprint": file_fingerprint(data_path)},
    }  # fmt: skip


def _rank_batches(
    train: list[MediaExample], step: int, global_batch: int, tcfg: TrainConfig, dist: kit.DistInfo
) -> list[list[MediaExample]]:
    """This process's micro-batches of step `step`'s global batch: `global_batch` examples
    drawn without replacement from a generator seeded by (seed, step), so the batches do not
    depend on where a run resumed nor on how many processes split them."""
    rng = np.random.default_rng(derive_seed(tcfg.seed, "mm.batch", step))
    picked = sorted(rng.choice(len(train), size=global_batch, replace=False))
    per_rank = global_batch // dist.world_size
    mine = picked[dist.rank * per_rank : (dist.rank + 1) * per_rank]
    mbs = tcfg.micro_batch_size
    return [[train[i] for i in mine[k : k + mbs]] for k in range(0, per_rank, mbs)]


def train_multimodal_sft(
    model: MultimodalLM,
    tokenizer_dir: str | Path,
    data_path: str | Path,
    out_dir: str | Path,
    cfg: MultimodalSFTConfig | None = None,
    *,
    resume: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Train `model` for one stage and write out_dir/model; returns the summary. Under
    torchrun every process calls it (DDP or FSDP2 as `train.strategy` picks; `model` is
    then sharded in place under FSDP) and the main process writes the model."""
    cfg = cfg or MultimodalSFTConfig()
    dist = kit.init_distributed(cfg.train.device)
    with kit.deterministic(dist.device == "cpu"):
        return _train(model, Path(tokenizer_dir), Path(data_path), Path(out_dir), cfg, dist,
                      resume, progress)  # fmt: skip


def _train(
    model: MultimodalLM, tokenizer_dir: Path, data_path: Path, out_dir: Path,
    cfg: MultimodalSFTConfig, dist: kit.DistInfo, resume: bool, progress: bool,
) -> dict[str, Any]:  # fmt: skip
    tcfg, ocfg, device = cfg.train, cfg.optim, dist.device
    kit.check_inputs_agree(cfg, data=data_path, tokenizer=tokenizer_dir / "tokenizer.json")
    tokenizer = load_tokenizer(tokenizer_dir)
    pad_id = pad_token_id(tokenizer)
    seed_everything(tcfg.seed)
    examples = load_media_examples(data_path, tokenizer, model, tcfg.seq_len)
    order = np.random.default_rng(derive_seed(tcfg.seed, "mm.heldout")).permutation(len(examples))
    n_held = int(len(examples) * cfg.heldout_fraction)
    held = [examples[i] for i in order[:n_held]]
    train = [examples[i] for i in order[n_held:]]
    n_trained = _trainable(model, cfg)  # before DDP/FSDP: they see only trained parameters
    identity = _identity(model, cfg, data_path, len(examples))
    strategy = kit.choose_strategy(model.cfg.lm, tcfg, **kit.placement(device, dist.world_size))
    train_model = kit.parallelize_for_training(model, tcfg, device=device, strategy=strategy)
    optimizer, ckpt_dir, start, metrics = kit.open_run(
        out_dir, identity, model=model, optim=ocfg, device=device, resume=resume,
        max_steps=tcfg.max_steps, progress=progress, is_main=dist.is_main,
    )  # fmt: skip
    global_batch, _ = kit.global_batch_split(
        start, tcfg, dist.world_size, unit="examples", section=f"multimodal.{cfg.stage}.train",
        is_main=dist.is_main,
    )  # fmt: skip
    if global_batch > len(train):
        raise ConfigError(
            f"global batch of {global_batch} examples > the {len(train)} training examples",
            hint="lower train.micro_batch_size or grad_accum_steps, or add data",
        )
    eval_kw = dict(device=device, rank=dist.rank, world_size=dist.world_size)
    before = heldout_loss(model, held, pad_id, tcfg.dtype, **eval_kw) if held else None
    model.train()
    # the optimizer's (sharded) parameters: under FSDP the model holds the gathered ones
    # between a forward and its backward (the root stays gathered after forward)
    trained = [p for group in optimizer.param_groups for p in group["params"]]
    t_start, loss_value = time.perf_counter(), start.saved.get("train_loss")
    for step in range(start.step, tcfg.max_steps):
        batches = [
            _to(_batch(m, pad_id, model.cfg), device)
            for m in _rank_batches(train, step, global_batch, tcfg, dist)
        ]
        # Token-weighted mean over the global batch: the gradient does not depend on how
        # the batch is split into micro-batches and processes.
        counts = torch.stack([(b["targets"] != IGNORE_INDEX).sum() for b in batches]).float()
        batch_tokens = kit.all_reduce_mean(counts.sum().to(device)) * dist.world_size
        lr = kit.set_lr(optimizer, step, tcfg.max_steps, ocfg)
        loss_sum = torch.zeros((), device=device)
        for i, b in enumerate(batches):
            with kit.gradient_sync(train_model, i == len(batches) - 1):
                with autocast(device, tcfg.dtype):
                    loss = train_model(b["idx"], b["targets"], pixel_values=b["pixel_values"],
                                       audio_features=b["audio_features"])  # fmt: skip
                weight = counts[i].to(device) / batch_tokens * dist.world_size
                (loss * weight).backward()
            loss_sum += loss.detach().float() * weight
        grad_norm = kit.clip_and_step(optimizer, trained, ocfg.grad_clip)
        loss_value, done = kit.all_reduce_mean(loss_sum).item(), step + 1
        if done % tcfg.log_every == 0 or done == tcfg.max_steps:
            tokens = kit.all_reduce_sum(
                {"n": sum(int((b["idx"] != pad_id).sum()) for b in batches)}
            )
            metrics.log({
                "step": done, "loss": loss_value, "lr": lr, "grad_norm": grad_norm.item(),
                "tokens": int(tokens["n"]), "elapsed": time.perf_counter() - t_start,
            })  # fmt: skip
        kit.checkpoint_if_due(
            ckpt_dir, done, tcfg, identity, model=model, optimizer=optimizer,
            data_state=lambda done=done: {"step": done, "global_batch_size": global_batch},
            extra={"train_loss": loss_value},
        )  # fmt: skip
    metrics.close()
    after = heldout_loss(model, held, pad_id, tcfg.dtype, **eval_kw) if held else None
    final = kit.gathered_model(model, lambda: MultimodalLM(model.cfg))  # every process: gathers
    if dist.is_main:
        save_multimodal(final, out_dir / "model", tokenizer_dir)
    summary = {
        "stage": cfg.stage, "trained_parameters": n_trained, "steps": tcfg.max_steps,
        "final_train_loss": loss_value, "train_examples": len(train), "heldout_examples": len(held),
        "heldout_loss_before": before, "heldout_loss": after, "global_batch_size": global_batch,
        "world_size": dist.world_size, "strategy": strategy,
        "seconds": time.perf_counter() - t_start, "model_dir": str(out_dir / "model"),
    }  # fmt: skip
    kit.finish_run(out_dir, summary, is_main=dist.is_main)
    return summary


def main(argv: list[str] | None = None) -> int:
    """`python -m forgeml.train.multimodal_sft --model DIR --data FILE.jsonl --out DIR
    --phase align|joint [--recipe R] [overrides]` (also under torchrun): one phase of the
    recipe's `multimodal` section on the model folder DIR (save_multimodal's, with its
    tokenizer)."""
    import argparse

    from forgeml.core.config import MultimodalStageConfig, load_recipe
    from forgeml.core.errors import ForgeError
    from forgeml.models.hf_multimodal_io import load_multimodal
    from forgeml.train.distributed import cleanup

    parser = argparse.ArgumentParser(prog="python -m forgeml.train.multimodal_sft")
    parser.add_argument("--recipe", type=Path)
    parser.add_argument("--model", type=Path, required=True, help="multimodal model folder")
    parser.add_argument("--data", type=Path, required=True, help="media JSONL")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--phase", choices=["align", "joint"], default="align")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("overrides", nargs="*", help="e.g. multimodal.align.train.max_steps=50")
    args = parser.parse_args(argv)
    try:
        recipe = load_recipe(args.recipe, args.overrides)
        section = recipe.multimodal or MultimodalStageConfig()
        phase = getattr(section, args.phase) or MultimodalPhaseConfig()
        cfg = MultimodalSFTConfig.for_phase(args.phase, phase, section.heldout_fraction)
        summary = train_multimodal_sft(
            load_multimodal(args.model), args.model, args.data, args.out, cfg,
            resume=args.resume, progress=not args.quiet,
        )  # fmt: skip
        if not args.quiet:
            print(json.dumps(summary, indent=2))
        return 0
    except ForgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        cleanup()


if __name__ == "__main__":
    sys.exit(main())
