"""GRPO pieces as pure functions: group-normalised advantages and the clipped policy-ratio
objective with a k3 KL penalty to the reference (per-token log-probs: forgeml.train.losses).

Used by the RL loop (forgeml.train.rl); tested against naive references and against TRL's
GRPOTrainer loss on the same tensors (tests/test_rl_losses.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

# A group whose rewards are all equal has std 0: the epsilon keeps its advantages at 0
# instead of 0/0 (the same 1e-4 as TRL, so advantages agree to the last digit).
ADV_EPS = 1e-4


def _std(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Unbiased (Bessel-corrected) standard deviation, as DeepSeekMath and TRL use."""
    return x.std(dim=dim, unbiased=True) if x.numel() > 1 else torch.zeros((), dtype=x.dtype)


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale: str = "group", eps: float = ADV_EPS
) -> torch.Tensor:
    """Outcome-supervised GRPO advantages (Shao et al., DeepSeekMath, arXiv:2402.03300, §4.1.2).

    rewards: [N] with N = prompts x group_size, the completions of one prompt contiguous.
    For completion i of group g::

        A_i = (r_i - mean(r_g)) / (std(r_g) + eps)      scale="group"
        A_i = (r_i - mean(r_g)) / (std(r) + eps)        scale="batch"  (std over all N)
        A_i =  r_i - mean(r_g)                          scale="none"   (Dr. GRPO, arXiv:2503.20783)

    Every token of a completion gets its completion's advantage.
    """
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be [prompts * {group_size}], got {tuple(rewards.shape)}")
    grouped = rewards.float().view(-1, group_size)
    centred = (grouped - grouped.mean(dim=1, keepdim=True)).view(-1)
    if scale == "none":
        return centred
    if scale == "group":
        std = _std(grouped, dim=1).repeat_interleave(group_size)
    elif scale == "batch":
        std = _std(rewards.float())
    else:
        raise ValueError(f"scale must be group, batch or none, got {scale!r}")
    return centred / (std + eps)


def kl_k3(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(pi_theta || pi_ref) on samples from pi_theta (Schulman,
    "Approximating KL divergence", 2020; used by GRPO, arXiv:2402.03300 eq. 4)::

        k3 = exp(log pi_ref - log pi_theta) - (log pi_ref - log pi_theta) - 1   (>= 0, unbiased)
    """
    delta = ref_logps - logps
    return torch.exp(delta) - delta - 1


def _sequence_mean(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over each completion's tokens, then over completions (GRPO as published)."""
    return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()


def _token_mean(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over every completion token of the batch, so long completions weigh more
    (DAPO's token-level loss, Yu et al., arXiv:2503.14476)."""
    return (per_token * mask).sum() / mask.sum().clamp(min=1.0)


AGGREGATIONS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "sequence": _sequence_mean,
    "token": _token_mean,
}


def grpo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    ref_logps: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cfg: Any,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GRPO objective (arXiv:2402.03300 eq. 3) as a loss to minimise, per completion token t::

        ratio_t = exp(log pi_theta(o_t) - log pi_old(o_t))
        L_t     = -min(ratio_t * A, clip(ratio_t, 1 - eps_low, 1 + eps_high) * A)
                  + kl_coef * k3(pi_theta, pi_ref)_t

    the PPO clipped surrogate (Schulman et al., arXiv:1707.06347) with the group advantage A,
    aggregated by `AGGREGATIONS[cfg.loss_aggregation]`. logps/old_logps/ref_logps/mask:
    [B, T] over completion tokens (mask 1 on real tokens); advantages: [B]. `cfg` needs
    clip_eps, clip_eps_high (None: clip_eps), kl_coef (0: ref_logps unused, may be None) and
    loss_aggregation. Metrics (detached): kl, clip_fraction (share of tokens whose gradient
    the clip removed), ratio.
    """
    eps_low = cfg.clip_eps
    eps_high = cfg.clip_eps if cfg.clip_eps_high is None else cfg.clip_eps_high
    mask = mask.to(logps.dtype)
    adv = advantages[:, None].to(logps.dtype)
    ratio = torch.exp(logps - old_logps)
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    per_token = -torch.min(ratio * adv, clipped * adv)
    aggregate = AGGREGATIONS[cfg.loss_aggregation]
    metrics: dict[str, torch.Tensor] = {}
    if cfg.kl_coef != 0:
        if ref_logps is None:
            raise ValueError("kl_coef > 0 needs ref_logps")
        kl = kl_k3(logps, ref_logps)
        per_token = per_token + cfg.kl_coef * kl
        metrics["kl"] = _token_mean(kl, mask).detach()
    region = ((ratio < 1 - eps_low) & (adv < 0)) | ((ratio > 1 + eps_high) & (adv > 0))
    metrics["clip_fraction"] = _token_mean(region.to(logps.dtype), mask).detach()
    metrics["ratio"] = _token_mean(ratio, mask).detach()
    return aggregate(per_token, mask), metrics


LOSSES = {"grpo": grpo_loss}
