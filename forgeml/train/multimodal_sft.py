"""Vision- and audio-language SFT: projector alignment (encoders and LM frozen), then joint
training (projectors and LM; encoders too when asked), on prompt/answer records that name an
image or a recording. The loss is on the answer tokens only; resume, checkpoints and metrics
come from the training kit (forgeml.train.resume) as for text.

Records (JSONL): {"image": "page.png" | [...], "audio": "call.wav" | [...], "prompt": str,
"answer": str}; media paths are relative to the JSONL file.
out_dir: checkpoints/, metrics.jsonl, model/ (save_multimodal), summary.json.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from forgeml.core.config import OptimConfig, TrainConfig
from forgeml.core.errors import DataError
from forgeml.core.runtime import autocast, seed_everything
from forgeml.core.seeds import derive_seed
from forgeml.eval.media_generate import media_inputs
from forgeml.models.dense import IGNORE_INDEX
from forgeml.models.hf_multimodal_io import save_multimodal
from forgeml.models.multimodal import MultimodalLM
from forgeml.tokenizer.train import load_tokenizer
from forgeml.train.chat_data import pad_token_id, tokenize_conversation
from forgeml.train.optim import clip_and_step, set_lr
from forgeml.train.resume import checkpoint_if_due, finish_run, open_run


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


def _batch(examples: list[MediaExample], pad_id: int) -> dict[str, torch.Tensor | None]:
    """Right-padded inputs and next-token targets (IGNORE_INDEX on padding and prompts)."""
    width = max(len(e.ids) for e in examples) - 1
    idx = torch.full((len(examples), width), pad_id)
    targets = torch.full((len(examples), width), IGNORE_INDEX)
    for row, e in enumerate(examples):
        n = len(e.ids) - 1
        idx[row, :n] = torch.tensor(e.ids[:-1])
        targets[row, :n] = torch.tensor(e.labels[1:])
    pixels = [e.pixels for e in examples if e.pixels is not None]
    audio = [e.audio for e in examples if e.audio is not None]
    return {
        "idx": idx,
        "targets": targets,
        "pixel_values": torch.cat(pixels) if pixels else None,
        "audio_features": torch.cat(audio) if audio else None,
    }


def _trainable(model: MultimodalLM, cfg: MultimodalSFTConfig) -> list[str]:
    """Freeze what the stage does not train; return the trained parameter names."""
    encoders = ("vision.", "audio.")
    for name, param in model.named_parameters():
        projector = "_projector." in name
        encoder = name.startswith(encoders)
        param.requires_grad_(
            projector or (cfg.stage == "joint" and (not encoder or cfg.train_encoders))
        )
    return [n for n, p in model.named_parameters() if p.requires_grad]


@torch.no_grad()
def heldout_loss(
    model: MultimodalLM, examples: list[MediaExample], pad_id: int, dtype: str
) -> float:
    """Mean answer-token loss over `examples`, one at a time (no padding in the mean)."""
    model.eval()
    total = count = 0.0
    for e in examples:
        b = _batch([e], pad_id)
        n = int((b["targets"] != IGNORE_INDEX).sum())
        with autocast("cpu", dtype):
            loss = model(b["idx"], b["targets"], pixel_values=b["pixel_values"],
                         audio_features=b["audio_features"])  # fmt: skip
        total, count = total + loss.item() * n, count + n
    model.train()
    return total / max(count, 1)


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
    """Train `model` in place for one stage and write out_dir/model; returns the summary."""
    cfg = cfg or MultimodalSFTConfig()
    tcfg, ocfg, out_dir = cfg.train, cfg.optim, Path(out_dir)
    tokenizer = load_tokenizer(tokenizer_dir)
    pad_id = pad_token_id(tokenizer)
    seed_everything(tcfg.seed)
    examples = load_media_examples(data_path, tokenizer, model, tcfg.seq_len)
    order = np.random.default_rng(derive_seed(tcfg.seed, "mm.heldout")).permutation(len(examples))
    n_held = int(len(examples) * cfg.heldout_fraction)
    held = [examples[i] for i in order[:n_held]]
    train = [examples[i] for i in order[n_held:]]
    trained = _trainable(model, cfg)
    identity = {
        "stage": cfg.stage, "train_encoders": cfg.train_encoders, "model": model.cfg.model_dump(mode="json"),
        "optim": ocfg.model_dump(mode="json"), "seed": tcfg.seed, "max_steps": tcfg.max_steps,
        "micro_batch_size": tcfg.micro_batch_size, "data": len(examples),
    }  # fmt: skip
    optimizer, ckpt_dir, start, metrics = open_run(
        out_dir, identity, model=model, optim=ocfg, device="cpu", resume=resume,
        max_steps=tcfg.max_steps, progress=progress, is_main=True,
    )  # fmt: skip
    before = heldout_loss(model, held, pad_id, tcfg.dtype) if held else None
    model.train()
    t_start, loss_value = time.perf_counter(), None
    for step in range(start.step, tcfg.max_steps):
        rng = np.random.default_rng(derive_seed(tcfg.seed, "mm.batch", step))
        picked = rng.choice(len(train), size=min(tcfg.micro_batch_size, len(train)), replace=False)
        b = _batch([train[i] for i in sorted(picked)], pad_id)
        lr = set_lr(optimizer, step, tcfg.max_steps, ocfg)
        with autocast("cpu", tcfg.dtype):
            loss = model(b["idx"], b["targets"], pixel_values=b["pixel_values"],
                         audio_features=b["audio_features"])  # fmt: skip
        loss.backward()
        grad_norm = clip_and_step(
            optimizer, (p for p in model.parameters() if p.requires_grad), ocfg.grad_clip
        )
        loss_value, done = loss.item(), step + 1
        tokens = int((b["idx"] != pad_id).sum())
        if done % tcfg.log_every == 0 or done == tcfg.max_steps:
            metrics.log({"step": done, "loss": loss_value, "lr": lr, "grad_norm": grad_norm.item(),
                         "tokens": tokens, "elapsed": time.perf_counter() - t_start})  # fmt: skip
        checkpoint_if_due(ckpt_dir, done, tcfg, identity, model=model, optimizer=optimizer)
    metrics.close()
    after = heldout_loss(model, held, pad_id, tcfg.dtype) if held else None
    save_multimodal(model, out_dir / "model", tokenizer_dir)
    summary = {
        "stage": cfg.stage, "trained_parameters": sum(
            p.numel() for n, p in model.named_parameters() if n in set(trained)),
        "steps": tcfg.max_steps, "final_train_loss": loss_value, "train_examples": len(train),
        "heldout_examples": len(held), "heldout_loss_before": before, "heldout_loss": after,
        "seconds": time.perf_counter() - t_start, "model_dir": str(out_dir / "model"),
    }  # fmt: skip
    finish_run(out_dir, summary, is_main=True)
    return summary
