"""Greedy answers from a vision/audio LM (forgeml.models.multimodal) for media eval tasks:
the chat prompt with the image/audio placeholders is prefilled through the model's forward
(features spliced in, keys/values into the kv cache), then text is decoded one token a step.

The prompt is built as multimodal SFT builds it (placeholders before the prompt text in the
user turn), so a trained model is asked exactly what it was taught. `score_media_answers`
scores answers for a media task (forgeml.eval.media_suite); `run_media_task` does both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from forgeml.core.errors import DataError
from forgeml.eval.media_scoring import CORPUS_SCORERS, LOWER_IS_BETTER
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
    device = next(model.parameters()).device
    cache = model.new_kv_cache(1, len(ids) + limit, device=device)
    pixels = pixels.to(device) if pixels is not None else None
    audio = audio.to(device) if audio is not None else None
    logits = model(
        torch.tensor([ids], device=device), pixel_values=pixels, audio_features=audio,
        kv_cache=cache, logits_at=torch.tensor([len(ids) - 1], device=device),
    )  # fmt: skip
    out: list[int] = []
    for step in range(limit):
        token = int(logits.reshape(-1, logits.shape[-1])[0].argmax())
        if token in stops:
            break
        out.append(token)
        if step + 1 < limit:
            logits = model.decode_rows(
                torch.tensor([token], device=device), cache,
                torch.tensor([len(ids) + step], device=device),
            )  # fmt: skip
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


def media_references(task: TaskSpec, record: dict[str, Any]) -> list[str]:
    """A record's reference texts: the list in its `task.answer` field (several references,
    as captions have), else `task.target` rendered over it."""
    value = record.get(task.answer)
    if isinstance(value, list):
        if not value or not all(isinstance(v, str) for v in value):
            raise DataError(f"task {task.name}: record {record.get('id')}: '{task.answer}' "
                            "must be a non-empty list of reference strings")  # fmt: skip
        return value
    return [render(task.target, record, task.name)]


def score_media_answers(
    task: TaskSpec,
    records: Sequence[dict[str, Any]],
    items: Sequence[MediaPrompt],
    outputs: Sequence[str],
) -> TaskResult:
    """Per-example scores of the answers (cut at `task.stop`) by each of `task.scorers`: a
    pair scorer takes the best over the record's references (the lowest for CER/WER), a corpus
    scorer (cider) scores all answers at once. Records as `run_generate` writes them."""
    answers = [_cut_at_stop(out, task.stop) for out in outputs]
    refs = [media_references(task, r) for r in records]
    scores: dict[str, list[float]] = {}
    for name in task.scorers:
        if name in CORPUS_SCORERS:
            scores[name] = CORPUS_SCORERS[name](answers, refs)
            continue
        fn, best = resolve_scorer(name), min if name in LOWER_IS_BETTER else max
        scores[name] = [best(fn(a, ref) for ref in rs) for a, rs in zip(answers, refs, strict=True)]
    examples = []
    for n, (rec, item, out, rs) in enumerate(zip(records, items, answers, refs, strict=True)):
        examples.append(
            {"id": rec.get("id", n), "scores": {k: float(v[n]) for k, v in scores.items()},
             "prompt": item.prompt, "media": [*item.images, *item.audio], "output": out,
             "reference": rs[0] if len(rs) == 1 else rs}
        )  # fmt: skip
    return _aggregate(task.name, task.kind, task.scorers[0], examples)


def run_media_task(
    model: MultimodalLM,
    tokenizer: Any,
    task: TaskSpec,
    records: Sequence[dict[str, Any]],
    root: str | Path,
) -> TaskResult:
    """A generate task over media records (image/audio paths relative to `root`): greedy
    answers to `task.prompt`, cut at `task.stop` (give `stop: []` for multi-line page
    transcriptions), scored by `score_media_answers` (CER/WER gate lower-is-better by
    default: forgeml.eval.media_scoring.LOWER_IS_BETTER)."""
    items = [
        media_prompt({**r, "prompt": render(task.prompt, r, task.name)}, root) for r in records
    ]
    outputs = generate_media_answers(model, tokenizer, items, max_new_tokens=task.max_new_tokens)
    return score_media_answers(task, records, items, outputs)
