"""Preference losses: each against a naive loop, and against TRL 1.16's own code on the same
inputs (DPOTrainer._compute_loss for DPO/IPO, RewardTrainer.compute_loss for Bradley-Terry)."""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from forgeml.train.losses import (
    PREFERENCE_LOSSES,
    PairLogps,
    apo_zero_loss,
    bradley_terry_loss,
    dpo_sigmoid_loss,
    ipo_loss,
    preference_loss,
    sequence_logps,
)


def _logsig(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def _random_pairs(n: int = 6, seed: int = 0) -> PairLogps:
    g = torch.Generator().manual_seed(seed)
    t = lambda: -torch.rand(n, generator=g, dtype=torch.float64) * 20  # noqa: E731
    return PairLogps(
        t(), t(), t(), t(),
        torch.randint(1, 9, (n,), generator=g).double(),
        torch.randint(1, 9, (n,), generator=g).double(),
    )  # fmt: skip


@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_dpo_sigmoid_matches_naive_loop(eps: float) -> None:
    lp = _random_pairs()
    cfg = SimpleNamespace(beta=0.3, label_smoothing=eps)
    loss, metrics = dpo_sigmoid_loss(lp, cfg)
    total, correct = 0.0, 0
    for i in range(len(lp.policy_chosen)):
        rc = cfg.beta * (lp.policy_chosen[i].item() - lp.ref_chosen[i].item())
        rr = cfg.beta * (lp.policy_rejected[i].item() - lp.ref_rejected[i].item())
        total += -(1 - eps) * _logsig(rc - rr) - eps * _logsig(rr - rc)
        correct += rc > rr
    n = len(lp.policy_chosen)
    assert loss.item() == pytest.approx(total / n, rel=1e-12)
    assert metrics["rewards/accuracies"].item() == pytest.approx(correct / n)


def test_ipo_matches_naive_loop() -> None:
    lp = _random_pairs(seed=1)
    cfg = SimpleNamespace(beta=0.5, label_smoothing=0.0)
    loss, _ = ipo_loss(lp, cfg)
    total = 0.0
    for i in range(len(lp.policy_chosen)):
        c = (lp.policy_chosen[i] - lp.ref_chosen[i]).item() / lp.chosen_tokens[i].item()
        r = (lp.policy_rejected[i] - lp.ref_rejected[i]).item() / lp.rejected_tokens[i].item()
        total += (c - r - 1 / (2 * cfg.beta)) ** 2
    assert loss.item() == pytest.approx(total / len(lp.policy_chosen), rel=1e-12)


def test_apo_zero_matches_naive_loop() -> None:
    lp = _random_pairs(seed=2)
    cfg = SimpleNamespace(beta=0.2, label_smoothing=0.0)
    loss, _ = apo_zero_loss(lp, cfg)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    total = 0.0
    for i in range(len(lp.policy_chosen)):
        rc = cfg.beta * (lp.policy_chosen[i].item() - lp.ref_chosen[i].item())
        rr = cfg.beta * (lp.policy_rejected[i].item() - lp.ref_rejected[i].item())
        total += (1 - sig(rc)) + sig(rr)
    assert loss.item() == pytest.approx(total / len(lp.policy_chosen), rel=1e-12)


def test_apo_zero_raises_the_chosen_likelihood_where_dpo_may_lower_it() -> None:
    # The chosen completion already below the reference, the rejected far below it: the
    # loss still pushes the chosen log-prob up (a negative gradient), on its own anchor.
    chosen = torch.tensor([-12.0], dtype=torch.float64, requires_grad=True)
    lp = PairLogps(chosen, torch.tensor([-30.0]).double(), torch.tensor([-10.0]).double(),
                   torch.tensor([-10.0]).double(), torch.ones(1), torch.ones(1))  # fmt: skip
    loss, _ = apo_zero_loss(lp, SimpleNamespace(beta=0.1, label_smoothing=0.0))
    loss.backward()
    assert chosen.grad.item() < 0


def test_losses_are_chosen_by_name() -> None:
    assert PREFERENCE_LOSSES == {
        "sigmoid": dpo_sigmoid_loss, "ipo": ipo_loss, "apo_zero": apo_zero_loss,
    }  # fmt: skip


@pytest.mark.parametrize("margin,center", [(False, 0.0), (True, 0.01)])
def test_bradley_terry_matches_naive_loop(margin: bool, center: float) -> None:
    g = torch.Generator().manual_seed(3)
    rc, rr = torch.randn(7, generator=g).double(), torch.randn(7, generator=g).double()
    m = torch.rand(7, generator=g).double() if margin else None
    loss, metrics = bradley_terry_loss(rc, rr, margin=m, center_coef=center)
    total = 0.0
    for i in range(7):
        total += -_logsig(rc[i].item() - rr[i].item() - (m[i].item() if margin else 0.0)) / 7
        total += center * (rc[i].item() + rr[i].item()) ** 2 / 7
    assert loss.item() == pytest.approx(total, rel=1e-12)
    assert metrics["accuracy"].item() == pytest.approx((rc > rr).double().mean().item())


def test_sequence_logps_matches_naive_loop() -> None:
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(3, 7, 11, generator=g)
    ids = torch.randint(0, 11, (3, 7), generator=g)
    mask = torch.tensor([[0, 0, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1, 0]])
    sums, counts = sequence_logps(logits, ids, mask)
    for b in range(3):
        want, n = 0.0, 0
        for t in range(1, 7):
            if mask[b, t]:
                want += torch.log_softmax(logits[b, t - 1].double(), -1)[ids[b, t]].item()
                n += 1
        assert sums[b].item() == pytest.approx(want, abs=1e-5)
        assert counts[b].item() == n


# ---- TRL parity: TRL's own loss code on the same model and the same batch ----------------


def _tiny_hf_model(tmp_path):
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    cfg = MistralConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        tie_word_embeddings=False, attn_implementation="eager",
    )  # fmt: skip
    model = MistralForCausalLM(cfg).float()
    model.save_pretrained(tmp_path / "hf")
    return model


def _pair_batch(n_pairs: int = 3, seq: int = 12):
    """[chosen rows; rejected rows], right-padded, prompt tokens first then a completion."""
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(1, 64, (2 * n_pairs, seq), generator=g)
    attn = torch.ones_like(ids)
    comp = torch.zeros_like(ids)
    for row in range(2 * n_pairs):
        prompt = 2 + row % 3
        end = seq - (row % 4)
        comp[row, prompt:end] = 1
        attn[row, end:] = 0
        ids[row, end:] = 0
    return ids, attn, comp


def _trl_dpo_loss(
    model, ids, attn, comp, ref_c, ref_r, loss_type: str, beta: float, sft_weight: float = 0.0
) -> float:
    """TRL's DPOTrainer loss on the batch; with `sft_weight`, loss_type [loss_type, "sft"]."""
    from trl.trainer.dpo_trainer import DPOTrainer
    from trl.trainer.utils import add_fused_lm_head

    add_fused_lm_head(model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    model.train()
    acc = SimpleNamespace(
        device=torch.device("cpu"), gather=lambda x: x, gather_for_metrics=lambda x: x
    )
    trainer = SimpleNamespace(
        model=model, accelerator=acc, aux_loss_enabled=False, ld_alpha=None,
        precompute_ref_logps=True, f_divergence_type="reverse_kl",
        loss_types=[loss_type, "sft"] if sft_weight else [loss_type],
        loss_weights=[1.0, sft_weight] if sft_weight else [1.0], beta=beta, label_smoothing=0.0, use_weighting=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0, _tp_size=1,
    )  # fmt: skip
    inputs = {
        "input_ids": ids, "attention_mask": attn, "completion_mask": comp,
        "ref_chosen_logps": ref_c, "ref_rejected_logps": ref_r,
    }  # fmt: skip
    return DPOTrainer._compute_loss(trainer, model, inputs, False).item()


@pytest.mark.parametrize("loss_type,beta", [("sigmoid", 0.1), ("ipo", 0.4), ("apo_zero", 0.3)])
def test_dpo_ipo_and_apo_zero_match_trl(tmp_path, loss_type: str, beta: float) -> None:
    from forgeml.models.hf_io import load_model

    hf = _tiny_hf_model(tmp_path)
    ours = load_model(tmp_path / "hf")
    ids, attn, comp = _pair_batch()
    ref = torch.tensor([-40.0, -35.5, -50.0, -42.0, -37.0, -47.5])
    ref_c, ref_r = ref[:3], ref[3:]
    want = _trl_dpo_loss(hf, ids, attn, comp, ref_c, ref_r, loss_type, beta)
    with torch.no_grad():
        sums, counts = sequence_logps(ours(ids), ids, comp)
    lp = PairLogps(sums[:3], sums[3:], ref_c, ref_r, counts[:3], counts[3:])
    loss, _ = PREFERENCE_LOSSES[loss_type](lp, SimpleNamespace(beta=beta, label_smoothing=0.0))
    assert loss.item() == pytest.approx(want, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_rpo_nll_term_matches_trl_sft_loss_type(tmp_path, loss_type: str) -> None:
    """dpo.sft_coef = TRL's loss_type [loss, "sft"] with loss_weights [1, sft_coef]."""
    from forgeml.models.hf_io import load_model

    hf = _tiny_hf_model(tmp_path)
    ours = load_model(tmp_path / "hf")
    ids, attn, comp = _pair_batch()
    ref = torch.tensor([-40.0, -35.5, -50.0, -42.0, -37.0, -47.5])
    want = _trl_dpo_loss(hf, ids, attn, comp, ref[:3], ref[3:], loss_type, 0.2, sft_weight=0.7)
    with torch.no_grad():
        sums, counts = sequence_logps(ours(ids), ids, comp)
    lp = PairLogps(sums[:3], sums[3:], ref[:3], ref[3:], counts[:3], counts[3:])
    cfg = SimpleNamespace(loss=loss_type, beta=0.2, label_smoothing=0.0, sft_coef=0.7)
    loss, metrics = preference_loss(lp, cfg)
    assert loss.item() == pytest.approx(want, rel=1e-5, abs=1e-6)
    plain, _ = preference_loss(lp, SimpleNamespace(**{**vars(cfg), "sft_coef": 0.0}))
    nll = -sums[:3].sum() / counts[:3].sum()
    assert loss.item() - plain.item() == pytest.approx(0.7 * nll.item(), rel=1e-5)
    assert metrics["nll/chosen"].item() == pytest.approx(nll.item(), rel=1e-6)


def test_label_smoothing_matches_trl_sigmoid_on_flipped_pairs(tmp_path) -> None:
    """Conservative DPO = (1-eps) * TRL-sigmoid(pairs) + eps * TRL-sigmoid(flipped pairs)."""
    from forgeml.models.hf_io import load_model

    hf = _tiny_hf_model(tmp_path)
    ours = load_model(tmp_path / "hf")
    ids, attn, comp = _pair_batch()
    ref = torch.tensor([-40.0, -35.5, -50.0, -42.0, -37.0, -47.5])
    flip = torch.cat([torch.arange(3, 6), torch.arange(0, 3)])
    straight = _trl_dpo_loss(hf, ids, attn, comp, ref[:3], ref[3:], "sigmoid", 0.2)
    flipped = _trl_dpo_loss(hf, ids[flip], attn[flip], comp[flip], ref[3:], ref[:3], "sigmoid", 0.2)
    with torch.no_grad():
        sums, counts = sequence_logps(ours(ids), ids, comp)
    lp = PairLogps(sums[:3], sums[3:], ref[:3], ref[3:], counts[:3], counts[3:])
    loss, _ = dpo_sigmoid_loss(lp, SimpleNamespace(beta=0.2, label_smoothing=0.25))
    assert loss.item() == pytest.approx(0.75 * straight + 0.25 * flipped, rel=1e-5)


@pytest.mark.parametrize("with_margin", [False, True])
def test_bradley_terry_matches_trl_reward_trainer(with_margin: bool) -> None:
    from trl.trainer.reward_trainer import RewardTrainer

    g = torch.Generator().manual_seed(6)
    rewards = torch.randn(8, 1, generator=g)
    margin = torch.rand(4, generator=g)
    model = lambda **kw: SimpleNamespace(logits=rewards)  # noqa: E731
    acc = SimpleNamespace(gather=lambda x: x, gather_for_metrics=lambda x: x)
    trainer = SimpleNamespace(
        model=SimpleNamespace(training=True), accelerator=acc,
        args=SimpleNamespace(center_rewards_coefficient=0.01), _tp_size=1,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, _total_train_tokens=0,
    )  # fmt: skip
    inputs = {"attention_mask": torch.ones(8, 5)}
    if with_margin:
        inputs["margin"] = margin
    want = RewardTrainer.compute_loss(trainer, model, inputs).item()
    loss, _ = bradley_terry_loss(
        rewards[:4, 0], rewards[4:, 0], margin=margin if with_margin else None, center_coef=0.01
    )
    assert loss.item() == pytest.approx(want, rel=1e-6)
