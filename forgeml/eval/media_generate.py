"""Greedy answers from a vision/audio LM (forgeml.models.multimodal) for media eval tasks:
the chat prompt with the image/audio placeholders is prefilled through the model's forward
(features spliced in, keys/values into the kv cache), then text is decoded one token a step.

The prompt is built as multimodal SFT builds it (placeholders before the prompt text in the
user turn), so a trained model is asked exactly what it was taught. `run_media_task` scores a
suite's generate task (scorers such as cer, wer, f1) on records that name media.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from forgeml.core.errors import DataError
from forgeml.eval.scoring import resolve_scorer
from forgeml.eval.suite import TaskSpec
from forgeml.eval.tasks import TaskResult, _aggregate, _cut_at_stop, render
from forgeml.models.audio import log_mel_windows
from forgeml.models.multimodal import MultimodalLM
from forgeml.models.vision import image_to_pixels
from forgeml.tokenizer.chat import END, EOS, render_chat


@dataclass(frozen=True)
class MediaPrompt:
    """One question about media: image and audio file paths, and the prompt text."""

    prompt: str
    images: tuple[str, ...] = ()
    audio: tuple[str, ...] = ()


def media_prompt(record: dict[str, Any], root: str | Path = ".") -> MediaPrompt:
    """A record {"image": path|[...], "audio": path|[...], "prompt": str} with paths
    relative to `root` (the JSONL file's folder in multimodal SFT data)."""

    def paths(key: str) -> tuple[str, ...]:
        value = record.get(key) or []
        return tuple(str(Path(root) / p) for p in ([value] if isinstance(value, str) else value))

    return MediaPrompt(str(record["prompt"]), paths("image"), paths("audio"))


def _read_audio(path: str, sample_rate: int) -> np.ndarray:
    import soundfile

    audio, rate = soundfile.read(path, dtype="float32", always_2d=True)
    if rate != sample_rate:
        raise DataError(f"{path}: {rate} Hz audio, the encoder takes {sample_rate} Hz")
    return audio.mean(axis=1)


def media_inputs(
    model: MultimodalLM, tokenizer: Any, images: Sequence[str | Path], clips: Sequence[str | Path]
) -> tuple[str, torch.Tensor | None, torch.Tensor | None]:
    """The placeholder text for `images` and audio `clips` (each image `tokens_per_image`
    placeholders, each audio window `tokens_per_window`), their pixel values [images, C, H, W]
    and log-mel windows [windows, n_mels, frames] (None where there are none)."""
    from PIL import Image

    cfg = model.cfg
    if (images and cfg.vision is None) or (clips and cfg.audio is None):
        raise DataError("media the model has no encoder for")
    pixels = audio = None
    marks = ""
    if images:
        pixels = torch.stack([image_to_pixels(Image.open(p), cfg.vision) for p in images])
        marks += tokenizer.id_to_token(cfg.image_token_id) * (
            cfg.vision.tokens_per_image * len(images)
        )
    if clips:
        audio = torch.cat(
            [log_mel_windows(_read_audio(p, cfg.audio.sample_rate), cfg.audio) for p in clips]
        )
        marks += tokenizer.id_to_token(cfg.audio_token_id) * (
            cfg.audio.tokens_per_window * audio.shape[0]
        )
    return marks, pixels, audio


def encode_media_prompt(
    model: MultimodalLM, tokenizer: Any, item: MediaPrompt
) -> tuple[list[int], torch.Tensor | None, torch.Tensor | None]:
    """Prompt token ids ending in the assistant header, pixel values [images, C, H, W] and
    log-mel windows [windows, n_mels, frames] (None where the prompt has none)."""
    marks, pixels, audio = media_inputs(model, tokenizer, item.images, item.audio)
    text = render_chat(
        [{"role": "user", "content": marks + item.prompt}], add_generation_prompt=True
    )
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    return ids, pixels, audio


@torch.inference_mode()
def greedy_media_tokens(
    model: MultimodalLM,
    ids: list[int],
    pixels: torch.Tensor | None,
    audio: torch.Tensor | None,
    max_new_tokens: int,
    stops: frozenset[int] = frozenset(),
) -> list[int]:
    """Greedy continuation of one prompt: prefill the prompt and its media into a kv cache,
    then decode a token a step until a stop id (not returned) or `max_new_tokens`."""
    limit = min(max_new_tokens, model.cfg.lm.max_seq_len - len(ids))
    if limit <= 0:
        raise DataError(f"prompt of {len(ids)} tokens fills the model's {model.cfg.lm.max_seq_len}")
    cache = model.new_kv_cache(1, len(ids) + limit)
    logits = model(
        torch.tensor([ids]), pixel_values=pixels, audio_features=audio, kv_cache=cache,
        logits_at=torch.tensor([len(ids) - 1]),
    )  # fmt: skip
    out: list[int] = []
    for step in range(limit):
        token = int(logits.reshape(-1, logits.shape[-1])[0].argmax())
        if token in stops:
            break
        out.append(token)
        if step + 1 < limit:
            logits = model.decode_rows(
                torch.tensor([token]), cache, torch.tensor([len(ids) + step])
            )
    return out


def generate_media_answers(
    model: MultimodalLM,
    tokenizer: Any,
    items: Sequence[MediaPrompt],
    *,
    max_new_tokens: int = 64,
) -> list[str]:
    """Greedy answer text for each prompt (one at a time), stopping at `<|end|>`/`<|eos|>`
    or after `max_new_tokens`; special tokens are left out of the text."""
    was_training = model.training
    model.eval()
    stops = frozenset({tokenizer.token_to_id(END), tokenizer.token_to_id(EOS)} - {None})
    answers = []
    for item in items:
        ids, pixels, audio = encode_media_prompt(model, tokenizer, item)
        out = greedy_media_tokens(model, ids, pixels, audio, max_new_tokens, stops)
        answers.append(tokenizer.decode(out, skip_special_tokens=True))
    model.train(was_training)
    return answers


def run_media_task(
    model: MultimodalLM,
    tokenizer: Any,
    task: TaskSpec,
    records: Sequence[dict[str, Any]],
    root: str | Path,
) -> TaskResult:
    """A generate task over media records (image/audio paths relative to `root`): greedy
    answers to `task.prompt`, cut at `task.stop` (give `stop: []` for multi-line page
    transcriptions), scored against `task.target` by each of `task.scorers`; per-example
    records as `run_generate` writes them, so the gate can bootstrap them (CER/WER gate
    lower-is-better by default: forgeml.eval.media_scoring.LOWER_IS_BETTER)."""
    scorers = {name: resolve_scorer(name) for name in task.scorers}
    items = [
        media_prompt({**r, "prompt": render(task.prompt, r, task.name)}, root) for r in records
    ]
    outputs = generate_media_answers(model, tokenizer, items, max_new_tokens=task.max_new_tokens)
    examples = []
    for n, (rec, item, out) in enumerate(zip(records, items, outputs, strict=True)):
        out = _cut_at_stop(out, task.stop)
        ref = render(task.target, rec, task.name)
        examples.append(
            {"id": rec.get("id", n), "scores": {k: float(fn(out, ref)) for k, fn in scorers.items()},
             "prompt": item.prompt, "media": [*item.images, *item.audio], "output": out,
             "reference": ref}
        )  # fmt: skip
    return _aggregate(task.name, task.kind, task.scorers[0], examples)
