"""Preference losses as pure functions: DPO (sigmoid, with conservative label smoothing), IPO
and the Bradley-Terry reward-model loss, plus the per-token and masked sequence log-probs
that every post-training loss starts from (DPO here, GRPO in forgeml.train.rl_losses).

Used by the offline/online DPO loop (forgeml.train.dpo) and reward-model training
(forgeml.train.reward_model); `PREFERENCE_LOSSES` picks a DPO-family loss by name and
`preference_loss` adds the optional NLL term on the chosen completions (RPO).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F


class PreferenceLossConfig(Protocol):
    """What the DPO-family losses read from the config (forgeml.core.config.DPOConfig)."""

    beta: float
    label_smoothing: float
    sft_coef: float


@dataclass
class PairLogps:
    """Summed completion log-probs of each pair under the policy and the frozen reference,
    and the number of completion tokens each sum covers (all shape [B])."""

    policy_chosen: torch.Tensor
    policy_rejected: torch.Tensor
    ref_chosen: torch.Tensor
    ref_rejected: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor


Metrics = dict[str, torch.Tensor]


def token_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[targets] in fp32: logits [B, T, V], targets [B, T] -> [B, T]."""
    logits = logits.float()
    picked = torch.gather(logits, -1, targets.clamp(min=0)[..., None])[..., 0]
    return picked - torch.logsumexp(logits, dim=-1)


def sequence_logps(
    logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of log p(token_t | tokens_<t) over the positions t where `loss_mask` is 1.

    logits [B, T, V] (position t predicts token t+1), input_ids and loss_mask [B, T]; the
    mask marks completion tokens (prompt and padding are 0; position 0 is never scored).
    Returns (summed log-probs [B] in fp32, number of scored tokens [B]).
    """
    mask = loss_mask[:, 1:].to(torch.float32)
    return (token_logps(logits[:, :-1], input_ids[:, 1:]) * mask).sum(-1), mask.sum(-1)


def _reward_metrics(logps: PairLogps, beta: float) -> Metrics:
    """Implicit rewards r = beta * log(pi / pi_ref) of chosen and rejected, as DPO reports."""
    chosen = beta * (logps.policy_chosen - logps.ref_chosen).detach()
    rejected = beta * (logps.policy_rejected - logps.ref_rejected).detach()
    return {
        "rewards/chosen": chosen.mean(),
        "rewards/rejected": rejected.mean(),
        "rewards/margins": (chosen - rejected).mean(),
        "rewards/accuracies": (chosen > rejected).float().mean(),
        "logps/chosen": logps.policy_chosen.detach().mean(),
        "logps/rejected": logps.policy_rejected.detach().mean(),
    }


def dpo_sigmoid_loss(logps: PairLogps, cfg: PreferenceLossConfig) -> tuple[torch.Tensor, Metrics]:
    """Direct Preference Optimization (Rafailov et al., arXiv:2305.18290, eq. 7):

        h = (log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x))
        L = -(1 - eps) * log sigmoid(beta * h) - eps * log sigmoid(-beta * h)

    with eps = `cfg.label_smoothing`: conservative DPO (Mitchell, "A note on DPO with noisy
    preferences", 2023), which assumes each label is flipped with probability eps; eps = 0 is
    plain DPO. Mean over pairs.
    """
    h = (logps.policy_chosen - logps.ref_chosen) - (logps.policy_rejected - logps.ref_rejected)
    eps = cfg.label_smoothing
    losses = -(1 - eps) * F.logsigmoid(cfg.beta * h) - eps * F.logsigmoid(-cfg.beta * h)
    return losses.mean(), _reward_metrics(logps, cfg.beta)


def ipo_loss(logps: PairLogps, cfg: PreferenceLossConfig) -> tuple[torch.Tensor, Metrics]:
    """Identity Preference Optimisation (Azar et al., arXiv:2310.12036, eq. 17):

        h = log(pi(y_w)/pi_ref(y_w)) / |y_w| - log(pi(y_l)/pi_ref(y_l)) / |y_l|
        L = (h - 1 / (2 * beta))^2          (beta is the paper's tau)

    The log-ratios are averaged over completion tokens, as the IPO authors did for the
    paper's results (and TRL does), so beta means the same for short and long completions.
    """
    chosen = (logps.policy_chosen - logps.ref_chosen) / logps.chosen_tokens.clamp(min=1)
    rejected = (logps.policy_rejected - logps.ref_rejected) / logps.rejected_tokens.clamp(min=1)
    losses = (chosen - rejected - 1 / (2 * cfg.beta)) ** 2
    return losses.mean(), _reward_metrics(logps, cfg.beta)


def apo_zero_loss(logps: PairLogps, cfg: PreferenceLossConfig) -> tuple[torch.Tensor, Metrics]:
    """Anchored Preference Optimization, APO-zero (D'Oosterlinck et al., arXiv:2408.06266,
    eq. 7), TRL's `loss_type="apo_zero"`:

        r_w = beta * log(pi(y_w)/pi_ref(y_w)),  r_l = beta * log(pi(y_l)/pi_ref(y_l))
        L = (1 - sigmoid(r_w)) + sigmoid(r_l)

    Each completion is anchored to the reference on its own: the chosen one's likelihood is
    pushed up and the rejected one's down, where DPO's difference alone may lower both and
    move the mass to other outputs. For chosen completions better than what the model
    usually says (e.g. the best of its own samples by a verifier). Mean over pairs.
    """
    chosen = cfg.beta * (logps.policy_chosen - logps.ref_chosen)
    rejected = cfg.beta * (logps.policy_rejected - logps.ref_rejected)
    losses = (1 - torch.sigmoid(chosen)) + torch.sigmoid(rejected)
    return losses.mean(), _reward_metrics(logps, cfg.beta)


PreferenceLoss = Callable[[PairLogps, PreferenceLossConfig], tuple[torch.Tensor, Metrics]]

# `dpo.loss` in a recipe -> the loss function.
PREFERENCE_LOSSES: dict[str, PreferenceLoss] = {
    "sigmoid": dpo_sigmoid_loss,
    "ipo": ipo_loss,
    "apo_zero": apo_zero_loss,
}


def bradley_terry_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    *,
    margin: torch.Tensor | None = None,
    center_coef: float = 0.0,
) -> tuple[torch.Tensor, Metrics]:
    """Reward-model loss under the Bradley-Terry preference model (Bradley & Terry 1952; as
    used for RLHF reward models by Ouyang et al., arXiv:2203.02155, eq. 1):

        L = -log sigmoid(r(x, y_w) - r(x, y_l) - m)  +  c * (r(x, y_w) + r(x, y_l))^2

    m is an optional per-pair margin (Llama 2, Touvron et al., arXiv:2307.09288, eq. 2) and c
    an optional centering coefficient that keeps rewards near zero (Eisenstein et al.,
    arXiv:2312.09244). Mean over pairs.
    """
    diff = chosen_rewards - rejected_rewards
    if margin is not None:
        diff = diff - margin
    loss = -F.logsigmoid(diff).mean()
    if center_coef:
        loss = loss + center_coef * ((chosen_rewards + rejected_rewards) ** 2).mean()
    with torch.no_grad():
        metrics = {
            "accuracy": (chosen_rewards > rejected_rewards).float().mean(),
            "margin": (chosen_rewards - rejected_rewards).mean(),
            "mean_reward": torch.cat([chosen_rewards, rejected_rewards]).mean(),
        }
    return loss, metrics


def preference_loss(logps: PairLogps, cfg: PreferenceLossConfig) -> tuple[torch.Tensor, Metrics]:
    """The recipe's DPO-family loss (`cfg.loss`), plus `cfg.sft_coef` times the negative
    log-likelihood per chosen completion token (mean over the batch's tokens) when that is
    above 0: RPO (Pang et al., arXiv:2404.19733), TRL's `loss_type=["sigmoid", "sft"]`.
    The NLL term keeps the chosen completions likely; plain DPO may lower both."""
    loss, metrics = PREFERENCE_LOSSES[cfg.loss](logps, cfg)
    if cfg.sft_coef > 0:
        nll = -logps.policy_chosen.sum() / logps.chosen_tokens.sum().clamp(min=1)
        loss = loss + cfg.sft_coef * nll
        metrics["nll/chosen"] = nll.detach()
    return loss, metrics
