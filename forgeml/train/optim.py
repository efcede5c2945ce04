"""Optimizer and learning-rate schedule shared by every training loop.

AdamW with decoupled weight decay on matrices only, and a warmup followed by cosine,
WSD (warmup-stable-decay) or constant learning rate.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from forgeml.core.config import OptimConfig


def build_optimizer(model: nn.Module, cfg: OptimConfig, device: str) -> torch.optim.AdamW:
    """AdamW where every parameter of 2+ dimensions (linear weights and the embedding,
    which is also the output head when tied) is decayed, and 1-D ones (norm gains,
    biases) are not: decaying a norm gain towards 0 only fights the normalisation
    (as in nanoGPT). The fused kernel everywhere: on CPU it measured faster than the
    default on the benchmark model (BENCHMARKS.md)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=True
    )


def lr_at(step: int, max_steps: int, cfg: OptimConfig) -> float:
    """Learning rate for optimizer step `step` (0-based) of `max_steps`.

    Linear warmup reaches `cfg.lr` at step `warmup_steps - 1`; then
    - cosine: half a cosine down to `lr * min_lr_ratio` at the last step;
    - wsd: constant, then a linear decay over the last `decay_fraction` of the steps to
      `lr * min_lr_ratio` (warmup-stable-decay, MiniCPM, arXiv 2404.06395): the stable
      phase can be extended or branched without knowing the final step count;
    - constant: `cfg.lr` after warmup.
    """
    peak, floor = cfg.lr, cfg.lr * cfg.min_lr_ratio
    if step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return peak
    last = max_steps - 1
    if cfg.schedule == "cosine":
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, last - cfg.warmup_steps))
        return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    decay_steps = max(1, round(cfg.decay_fraction * max_steps))
    decay_start = max(cfg.warmup_steps, max_steps - decay_steps)
    if step < decay_start:
        return peak
    progress = min(1.0, (step - decay_start + 1) / max(1, last - decay_start + 1))
    return peak + (floor - peak) * progress


def set_lr(optimizer: torch.optim.Optimizer, step: int, max_steps: int, cfg: OptimConfig) -> float:
    """Set every parameter group's learning rate to `lr_at(step, max_steps, cfg)`; return it."""
    lr = lr_at(step, max_steps, cfg)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def clip_and_step(
    optimizer: torch.optim.Optimizer, params: Iterable[torch.Tensor], grad_clip: float
) -> torch.Tensor:
    """One optimizer step: clip the gradients' global norm to `grad_clip` (0: no clipping),
    step, and free the gradients. Returns the norm before clipping, for the metrics log."""
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip or float("inf"))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm
