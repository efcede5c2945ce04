"""GRPO losses: hand-computed cases, naive loop references, and TRL 1.16's GRPOTrainer loss
(its own `_compute_loss` run on the same tensors)."""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from forgeml.core.config import RLConfig
from forgeml.train.losses import token_logps
from forgeml.train.rl_losses import AGGREGATIONS, group_advantages, grpo_loss, kl_k3


def test_advantages_hand_computed():
    # One group of 4 with rewards 0, 0, 1, 1: mean 0.5, unbiased std sqrt(1/3).
    adv = group_advantages(torch.tensor([0.0, 0.0, 1.0, 1.0]), 4)
    expected = 0.5 / (math.sqrt(1 / 3) + 1e-4)
    torch.testing.assert_close(adv, torch.tensor([-expected, -expected, expected, expected]))
    # A group with equal rewards has no signal: all zeros, not NaN.
    adv = group_advantages(torch.tensor([2.0, 2.0, 0.0, 1.0]), 2)
    assert adv[:2].tolist() == [0.0, 0.0]
    assert adv[2] < 0 < adv[3]
    assert group_advantages(torch.tensor([0.0, 3.0]), 2, "none").tolist() == [-1.5, 1.5]


def test_advantages_naive_loop():
    torch.manual_seed(0)
    rewards = torch.rand(12)
    for scale in ("group", "batch", "none"):
        got = group_advantages(rewards, 4, scale)
        all_r = rewards.tolist()
        mean_all = sum(all_r) / len(all_r)
        std_all = math.sqrt(sum((r - mean_all) ** 2 for r in all_r) / (len(all_r) - 1))
        for g in range(3):
            r = all_r[4 * g : 4 * g + 4]
            mean = sum(r) / 4
            std = math.sqrt(sum((x - mean) ** 2 for x in r) / 3)
            denom = {"group": std + 1e-4, "batch": std_all + 1e-4, "none": 1.0}[scale]
            for i in range(4):
                assert got[4 * g + i].item() == pytest.approx((r[i] - mean) / denom, rel=1e-5)
    with pytest.raises(ValueError):
        group_advantages(rewards, 5)


def test_kl_k3_is_zero_at_equal_and_positive_else():
    a = torch.tensor([-1.0, -2.0, -0.5])
    assert kl_k3(a, a).abs().max() == 0
    b = torch.tensor([-1.5, -1.0, -0.5])
    k3 = kl_k3(a, b)
    assert (k3[:2] > 0).all() and k3[2] == 0
    # exp(d) - d - 1 for d = -0.5 by hand
    assert k3[0].item() == pytest.approx(math.exp(-0.5) + 0.5 - 1)


def _naive_grpo(logps, old, ref, adv, mask, eps_lo, eps_hi, beta, aggregation):
    """Token-by-token loops of arXiv:2402.03300 eq. 3 (with the k3 KL)."""
    per_seq, tot, n_tok = [], 0.0, 0
    for i in range(len(logps)):
        s, n = 0.0, 0
        for t in range(len(logps[i])):
            if mask[i][t] == 0:
                continue
            r = math.exp(logps[i][t] - old[i][t])
            c = min(max(r, 1 - eps_lo), 1 + eps_hi)
            term = -min(r * adv[i], c * adv[i])
            if beta:
                d = ref[i][t] - logps[i][t]
                term += beta * (math.exp(d) - d - 1)
            s, n = s + term, n + 1
        per_seq.append(s / max(n, 1))
        tot, n_tok = tot + s, n_tok + n
    return sum(per_seq) / len(per_seq) if aggregation == "sequence" else tot / n_tok


def _case(seed=0, b=6, t=7):
    g = torch.Generator().manual_seed(seed)
    logps = -torch.rand(b, t, generator=g) * 3
    old = logps + torch.randn(b, t, generator=g) * 0.3  # ratios well outside 1 +- 0.2
    ref = logps + torch.randn(b, t, generator=g) * 0.2
    adv = torch.randn(b, generator=g)
    mask = torch.ones(b, t)
    for i in range(b):
        mask[i, t - i % 4 :] = 0  # ragged lengths
    return logps, old, ref, adv, mask


@pytest.mark.parametrize("aggregation", ["sequence", "token"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_grpo_loss_matches_naive(aggregation, beta):
    logps, old, ref, adv, mask = _case()
    cfg = RLConfig(clip_eps=0.2, clip_eps_high=0.28, kl_coef=beta, loss_aggregation=aggregation)
    loss, metrics = grpo_loss(logps, old, ref if beta else None, adv, mask, cfg)
    expected = _naive_grpo(
        logps.tolist(), old.tolist(), ref.tolist(), adv.tolist(), mask.tolist(), 0.2, 0.28, beta,
        aggregation,
    )  # fmt: skip
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert 0 < metrics["clip_fraction"] < 1  # the case does clip some tokens
    assert ("kl" in metrics) == (beta > 0)


def test_grpo_first_step_gradient_is_advantage_weighted_logp():
    # old == current (one inner step): ratio 1, nothing clipped, gradient of -A * logp / n.
    logps, _, _, adv, mask = _case(1)
    logps.requires_grad_(True)
    cfg = RLConfig(kl_coef=0.0)
    loss, metrics = grpo_loss(logps, logps.detach(), None, adv, mask, cfg)
    loss.backward()
    expected = -adv[:, None] * mask / mask.sum(-1, keepdim=True) / mask.shape[0]
    torch.testing.assert_close(logps.grad, expected)
    assert metrics["clip_fraction"] == 0 and metrics["ratio"] == pytest.approx(1.0)


def test_padding_does_not_change_the_loss():
    logps, old, ref, adv, mask = _case(2)
    cfg = RLConfig(kl_coef=0.1)
    base, _ = grpo_loss(logps, old, ref, adv, mask, cfg)
    garbage = torch.where(mask.bool(), logps, torch.full_like(logps, 50.0))
    padded, _ = grpo_loss(garbage, old, ref, adv, mask, cfg)
    assert padded.item() == pytest.approx(base.item(), rel=1e-6)
    assert set(AGGREGATIONS) == {"sequence", "token"}


def test_token_logps_matches_trl_selective_log_softmax():
    from trl.trainer.utils import selective_log_softmax

    g = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 5, 11, generator=g)
    targets = torch.randint(0, 11, (3, 5), generator=g)
    torch.testing.assert_close(token_logps(logits, targets), selective_log_softmax(logits, targets))


# --- TRL 1.16 GRPOTrainer._compute_loss on the same tensors --------------------------


def _trl_loss(logps, old, ref, adv, mask, *, loss_type, beta, eps_lo, eps_hi):
    from trl.trainer.grpo_trainer import GRPOTrainer

    per_token = logps.clone().requires_grad_(True)
    b = logps.shape[0]
    fake = SimpleNamespace(
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level="token",
        beta=beta, loss_type=loss_type, epsilon_low=eps_lo, epsilon_high=eps_hi, use_vllm=False,
        vllm_importance_sampling_correction=False, model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1, _entropy_bonus_enabled=False,
        aux_loss_enabled=False, _metrics=defaultdict(lambda: defaultdict(list)),
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None),
        accelerator=SimpleNamespace(reduce=lambda x, reduction: x, gather=lambda x: x),
        _get_per_token_logps_and_entropies=lambda *a, **k: (per_token, torch.zeros_like(logps), None),
    )  # fmt: skip
    inputs = {
        "prompt_ids": torch.zeros(b, 2, dtype=torch.long), "prompt_mask": torch.ones(b, 2),
        "completion_ids": torch.zeros(b, logps.shape[1], dtype=torch.long),
        "completion_mask": mask, "advantages": adv, "old_per_token_logps": old,
        "ref_per_token_logps": ref,
    }  # fmt: skip
    loss = GRPOTrainer._compute_loss(fake, None, inputs)
    loss.backward()
    return loss, per_token.grad, fake._metrics["train"]


@pytest.mark.parametrize(
    ("aggregation", "loss_type"), [("sequence", "grpo"), ("token", "bnpo")]
)  # fmt: skip
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_grpo_loss_and_gradient_match_trl(aggregation, loss_type, beta):
    logps, old, ref, adv, mask = _case(4)
    trl_loss, trl_grad, trl_metrics = _trl_loss(
        logps, old, ref, adv, mask, loss_type=loss_type, beta=beta, eps_lo=0.2, eps_hi=0.28
    )
    ours_in = logps.clone().requires_grad_(True)
    cfg = RLConfig(clip_eps=0.2, clip_eps_high=0.28, kl_coef=beta, loss_aggregation=aggregation)
    loss, metrics = grpo_loss(ours_in, old, ref, adv, mask, cfg)
    loss.backward()
    torch.testing.assert_close(loss, trl_loss, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ours_in.grad, trl_grad, rtol=1e-6, atol=1e-8)
    assert metrics["clip_fraction"].item() == pytest.approx(
        trl_metrics["clip_ratio/region_mean"][0]
    )
    if beta:
        assert metrics["kl"].item() == pytest.approx(trl_metrics["kl"][0], rel=1e-6)


def test_advantages_match_trl_formula():
    # TRL computes group advantages inline in _generate_and_score_completions; this is that
    # code (trl 1.16, scale_rewards="group" and "batch") on the same rewards with its nanstd.
    from trl.trainer.utils import nanstd

    rewards = torch.tensor([0.0, 1.0, 1.0, 0.5, 2.0, 2.0, 2.0, 2.0, -1.0, 0.0, 3.0, 1.0])
    g = 4
    mean = torch.nanmean(rewards.view(-1, g), dim=1).repeat_interleave(g, dim=0)
    std_group = nanstd(rewards.view(-1, g), dim=1).repeat_interleave(g, dim=0)
    torch.testing.assert_close(
        group_advantages(rewards, g, "group"), (rewards - mean) / (std_group + 1e-4)
    )
    std_batch = nanstd(rewards).expand_as(rewards)
    torch.testing.assert_close(
        group_advantages(rewards, g, "batch"), (rewards - mean) / (std_batch + 1e-4)
    )
