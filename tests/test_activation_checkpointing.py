"""Activation checkpointing applied from outside (`parallelize`): the same gradients as without
it for dense and MoE models, unchanged parameter names, a lower measured peak memory, and a
preflight estimate that follows it."""

from __future__ import annotations

import copy

import pytest
import torch

from forgeml.core.config import ModelConfig, TrainConfig
from forgeml.models.registry import build_model
from forgeml.train.parallelize import apply_activation_checkpointing, parallelize
from forgeml.train.preflight import GiB, estimate_memory, measure_peak_memory

DENSE = ModelConfig(
    dim=64, n_layers=3, n_heads=4, n_kv_heads=2, ffn_hidden=160, vocab_size=300, max_seq_len=64
)  # fmt: skip
MOE = DENSE.model_copy(update={"arch": "moe", "n_experts": 4, "top_k": 2, "shared_expert": True})


def grads_after_one_backward(model: torch.nn.Module, x, y) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    model(x, y).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("cfg", [DENSE, MOE], ids=["dense", "moe"])
def test_gradients_equal_without_checkpointing(cfg):
    torch.manual_seed(0)
    plain = build_model(cfg)
    ckpt = copy.deepcopy(plain)
    names = list(plain.state_dict())
    train_model = parallelize(ckpt, compile=False, device="cpu", activation_checkpointing=True)
    assert list(ckpt.state_dict()) == names  # checkpoints and exports see no wrapper
    x = torch.randint(0, cfg.vocab_size, (4, 48))
    y = torch.randint(0, cfg.vocab_size, (4, 48))
    ref = grads_after_one_backward(plain, x, y)
    got = grads_after_one_backward(train_model, x, y)
    assert ref.keys() == got.keys()
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], atol=1e-6, rtol=1e-5, msg=name)
    # Applying it twice does not nest checkpoints; eval under no_grad runs unchanged.
    apply_activation_checkpointing(ckpt)
    torch.testing.assert_close(
        grads_after_one_backward(ckpt, x, y)["norm.weight"], ref["norm.weight"]
    )
    with torch.no_grad():
        torch.testing.assert_close(ckpt(x), plain(x))


def test_recomputation_really_happens():
    """Each block's forward runs twice per step with checkpointing (forward + recompute)."""
    model = build_model(DENSE)
    calls = []
    for block in model.layers:
        block.attention.register_forward_hook(lambda *a: calls.append(1))
    x = torch.randint(0, 300, (2, 16))
    model(x, x).backward()
    plain_calls = len(calls)
    calls.clear()
    apply_activation_checkpointing(model)
    model(x, x).backward()
    assert plain_calls == DENSE.n_layers and len(calls) == 2 * DENSE.n_layers


@pytest.mark.slow
def test_peak_memory_is_lower_and_the_estimate_follows_it():
    """Measured in fresh processes (RSS on CPU); the preflight estimate with checkpointing is
    within 25% of the measured peak, as it is without (tests/test_preflight.py)."""
    mcfg = ModelConfig(
        dim=128, n_layers=6, n_heads=4, n_kv_heads=2, ffn_hidden=344, vocab_size=2048,
        max_seq_len=256,
    )  # fmt: skip
    plain = TrainConfig(micro_batch_size=16, seq_len=256, dtype="fp32")
    ckpt = plain.model_copy(update={"activation_checkpointing": True})
    measured = {
        name: measure_peak_memory(mcfg, tcfg, steps=2)
        for name, tcfg in (("plain", plain), ("ckpt", ckpt))
    }
    assert measured["ckpt"] < 0.7 * measured["plain"], measured
    for name, tcfg in (("plain", plain), ("ckpt", ckpt)):
        est = estimate_memory(mcfg, tcfg)
        got = measured[name]
        assert abs(est.total - got) / got < 0.25, (name, est.summary(), got / GiB)
    assert estimate_memory(mcfg, ckpt).activations < estimate_memory(mcfg, plain).activations / 3
