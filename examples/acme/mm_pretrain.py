"""Encoder pretraining for the ACME multimodal demo, where no pretrained tower exists: the ViT
learns which character sits in each 8-pixel cell of freshly rendered damaged pages (the
renderer knows where it typed each one), the audio encoder which words a clip holds (its
transcript knows; a max over frames, so no alignment is needed). The LM stages then start
from encoders whose features already carry the text, as LLaVA starts from a trained CLIP.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from acme_media import PAGE_SIZE, PageChars, form_text, is_heldout, render_page_chars
from torch import nn

from forgeml.core.config import OptimConfig
from forgeml.core.runtime import autocast
from forgeml.models.multimodal import MultimodalLM
from forgeml.models.vision import VisionConfig, image_to_pixels
from forgeml.train.optim import build_optimizer, clip_and_step, set_lr

CELL = 8  # pixels on a side of one labelled page cell
EMPTY_WEIGHT = 0.2  # most cells hold no character centre


def page_alphabet(texts: Sequence[str]) -> dict[str, int]:
    """Class id of each character typed on the pages (0 is 'no character here')."""
    chars = sorted({c for t in texts for c in t if not c.isspace()})
    return {c: i + 1 for i, c in enumerate(chars)}


def cell_targets(chars: PageChars, cfg: VisionConfig, alphabet: dict[str, int]) -> torch.Tensor:
    """[tokens_per_image, cells per token] class ids: the character whose centre lies in each
    cell, grouped by the image token (after pixel shuffle) that covers the cell."""
    cells = cfg.image_size // CELL
    grid = torch.zeros(cells, cells, dtype=torch.long)
    for ch, x, y in chars:
        col, row = int(x // CELL), int(y // CELL)
        if 0 <= col < cells and 0 <= row < cells:
            grid[row, col] = alphabet.get(ch, 0)
    span = cfg.patch_size * cfg.pixel_shuffle // CELL
    side = cells // span
    return grid.view(side, span, side, span).permute(0, 2, 1, 3).reshape(side * side, span * span)


def _optimizer(modules: dict[str, nn.Module], lr: float, steps: int):
    cfg = OptimConfig(lr=lr, warmup_steps=max(steps // 20, 1), weight_decay=0.0)
    return build_optimizer(nn.ModuleDict(modules), cfg, "cpu"), cfg


def _page_batch(rng: random.Random, n: int, cfg: VisionConfig, alphabet: dict[str, int]):
    pixels, targets = [], []
    while len(pixels) < n:
        text = form_text(rng)
        if is_heldout(text):  # never a page the demo scores (the split is by text)
            continue
        image, chars = render_page_chars(text, rng)
        pixels.append(image_to_pixels(image, cfg))
        targets.append(cell_targets(chars, cfg, alphabet))
    return torch.stack(pixels), torch.stack(targets)


def pretrain_vision(
    model: MultimodalLM, alphabet: dict[str, int], *, steps: int, batch: int, lr: float,
    seed: int, dtype: str,
) -> dict[str, float]:  # fmt: skip
    """Train model.vision (and a throwaway cell head) on pages rendered on the fly (never with
    a held-out page's text); return the loss and the character accuracy on 32 more pages'
    cells that hold a character."""
    cfg = model.cfg.vision
    if cfg.image_size != PAGE_SIZE or (cfg.patch_size * cfg.pixel_shuffle) % CELL:
        raise ValueError(f"the page encoder must take {PAGE_SIZE} px images in {CELL} px cells")
    span = cfg.patch_size * cfg.pixel_shuffle // CELL
    n_classes = len(alphabet) + 1
    head = nn.Linear(cfg.feature_dim, span * span * n_classes)
    weight = torch.ones(n_classes)
    weight[0] = EMPTY_WEIGHT
    optimizer, ocfg = _optimizer({"vision": model.vision, "head": head}, lr, steps)
    params = [*model.vision.parameters(), *head.parameters()]

    def logits(pixels: torch.Tensor) -> torch.Tensor:
        with autocast("cpu", dtype):
            out = head(model.vision(pixels))
        return out.float().view(*out.shape[:2], span * span, n_classes)

    rng, t0, loss = random.Random(f"acme-page-pretrain-{seed}"), time.perf_counter(), None
    model.vision.train()
    for step in range(steps):
        pixels, targets = _page_batch(rng, batch, cfg, alphabet)
        set_lr(optimizer, step, steps, ocfg)
        out = logits(pixels)
        loss = F.cross_entropy(out.reshape(-1, n_classes), targets.reshape(-1), weight=weight)
        loss.backward()
        clip_and_step(optimizer, params, ocfg.grad_clip)
    with torch.no_grad():
        pixels, targets = _page_batch(random.Random(f"acme-page-check-{seed}"), 32, cfg, alphabet)
        hit = logits(pixels).argmax(-1) == targets
        accuracy = hit[targets > 0].float().mean().item()
    return {"loss": loss.item(), "char_accuracy": accuracy, "steps": steps,
            "seconds": time.perf_counter() - t0}  # fmt: skip


def pretrain_audio(
    model: MultimodalLM, clips: Sequence[tuple[torch.Tensor, Sequence[str]]], *, steps: int,
    batch: int, lr: float, seed: int, dtype: str,
) -> dict[str, float]:  # fmt: skip
    """Train model.audio (and a throwaway word head) on (log-mel windows, transcript words)
    pairs: each word's score is its best frame's (multiple-instance learning); return the loss
    and the word F1 on the last fifth of the clips (held out). Each word's clip score is
    a softmax-over-frames weighted mean of frame scores (decision-level attention pooling)."""
    vocab = {w: i for i, w in enumerate(sorted({w for _, words in clips for w in words}))}
    head = nn.Linear(model.cfg.audio.dim, 2 * len(vocab))
    optimizer, ocfg = _optimizer({"audio": model.audio, "head": head}, lr, steps)
    params = [*model.audio.parameters(), *head.parameters()]
    n_check = max(len(clips) // 5, 1)
    train, check = clips[:-n_check], clips[-n_check:]

    def scores(items: Sequence[tuple[torch.Tensor, Sequence[str]]]):
        windows = torch.cat([mel for mel, _ in items])
        with autocast("cpu", dtype):
            frames = head(model.audio(windows)).float()
        best = []
        for f in frames.split([mel.shape[0] for mel, _ in items]):
            score, attend = f.reshape(-1, f.shape[-1]).chunk(2, dim=-1)
            best.append((score * attend.softmax(0)).sum(0))
        best = torch.stack(best)
        labels = torch.zeros_like(best)
        for row, (_, words) in enumerate(items):
            labels[row, [vocab[w] for w in words if w in vocab]] = 1.0
        return best, labels

    rng, t0, loss = random.Random(f"acme-audio-pretrain-{seed}"), time.perf_counter(), None
    model.audio.train()
    for step in range(steps):
        set_lr(optimizer, step, steps, ocfg)
        best, labels = scores(rng.sample(train, min(batch, len(train))))
        loss = F.binary_cross_entropy_with_logits(best, labels)
        loss.backward()
        clip_and_step(optimizer, params, ocfg.grad_clip)
    with torch.no_grad():
        best, labels = scores(check)
        found = (best > 0).float()
        f1 = (2 * (found * labels).sum() / (found.sum() + labels.sum())).item()
    return {"loss": loss.item(), "word_f1": f1, "steps": steps,
            "seconds": time.perf_counter() - t0}  # fmt: skip
