"""Memory preflight: the estimate against the measured peak of real training steps on CPU
(within 25%), its parts against the model, and refusals that name the setting to change."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from forgeml.core.config import ModelConfig, TrainConfig
from forgeml.core.errors import ConfigError, ForgeError
from forgeml.models.dense import Transformer
from forgeml.train.preflight import (
    RUNTIME_BYTES,
    GiB,
    available_memory,
    check_fits,
    choose_strategy,
    estimate_memory,
    measure_memory,
    measure_peak_memory,
    preflight,
)

# One run dominated by activations, one by weights + AdamW state (big untied vocabulary).
ACTIVATION_HEAVY = (
    ModelConfig(
        dim=128, n_layers=4, n_heads=4, n_kv_heads=2, ffn_hidden=344, vocab_size=4096,
        max_seq_len=256,
    ),
    TrainConfig(micro_batch_size=16, seq_len=256, dtype="fp32"),
)  # fmt: skip
STATE_HEAVY = (
    ModelConfig(
        dim=256, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=688, vocab_size=32768,
        max_seq_len=128, tie_embeddings=False,
    ),
    TrainConfig(micro_batch_size=1, seq_len=64, dtype="fp32"),
)  # fmt: skip


@pytest.mark.slow
def test_estimate_matches_measured_peak_on_cpu_within_25_percent():
    def measure(case):
        return measure_peak_memory(*case, device="cpu", steps=2)

    with ThreadPoolExecutor(2) as pool:
        measured = list(pool.map(measure, [ACTIVATION_HEAVY, STATE_HEAVY]))
    estimates = [estimate_memory(*case) for case in (ACTIVATION_HEAVY, STATE_HEAVY)]
    for est, got in zip(estimates, measured, strict=True):
        # The model-dependent part must dominate, or the check would only test the constant.
        assert got > 3 * RUNTIME_BYTES["cpu"]
        assert abs(est.total - got) / got < 0.25, (est.summary(), got / GiB)
    assert estimates[0].activations > 3 * estimates[0].optimizer
    assert estimates[1].optimizer > 3 * estimates[1].activations


@pytest.mark.slow
def test_fsdp_estimate_matches_measured_peak_at_two_processes_within_25_percent():
    """2 processes under torchrun (gloo), FSDP2 as `parallelize` applies it: each process's
    peak RSS against the estimate, and its weights + gradients + AdamW shards exactly."""
    accum = (STATE_HEAVY[0], STATE_HEAVY[1].model_copy(update={"grad_accum_steps": 2}))
    for case in (ACTIVATION_HEAVY, STATE_HEAVY, accum):
        est = estimate_memory(*case, world_size=2, strategy="fsdp")
        ranks = measure_memory(*case, device="cpu", steps=2, world_size=2, strategy="fsdp")
        assert len(ranks) == 2
        for got in ranks:
            assert got["state_bytes"] == est.weights + est.grads + est.optimizer
            assert got["peak_bytes"] > 3 * RUNTIME_BYTES["cpu"]
            assert abs(est.total - got["peak_bytes"]) / got["peak_bytes"] < 0.25, (
                est.summary(), got["peak_bytes"] / GiB,
            )  # fmt: skip
    # Sharding halves the state: the state-heavy run needs much less per process than DDP.
    ddp = estimate_memory(*STATE_HEAVY, world_size=2, strategy="ddp")
    assert estimate_memory(*STATE_HEAVY, world_size=2, strategy="fsdp").total < 0.95 * ddp.total


def test_auto_strategy_is_ddp_when_a_replica_fits_else_fsdp(monkeypatch):
    from forgeml.train import preflight as pf

    cfg, tcfg = STATE_HEAVY
    assert choose_strategy(cfg, tcfg, world_size=1) == "single"
    assert (
        choose_strategy(cfg, tcfg.model_copy(update={"strategy": "fsdp"}), world_size=2) == "fsdp"
    )
    replica = estimate_memory(cfg, tcfg, world_size=2, strategy="ddp").total
    # A replica fits one process's memory (with the 10% headroom), not half of it.
    monkeypatch.setattr(pf, "available_memory", lambda device="cpu": int(replica / 0.8))
    assert choose_strategy(cfg, tcfg, world_size=2, processes_per_device=1) == "ddp"
    assert choose_strategy(cfg, tcfg, world_size=2, processes_per_device=2) == "fsdp"


@pytest.mark.parametrize("tied", [True, False])
def test_parameter_count_and_state_sizes_match_the_model(tied):
    cfg = ModelConfig(
        dim=64, n_layers=3, n_heads=4, n_kv_heads=2, ffn_hidden=160, vocab_size=500,
        tie_embeddings=tied,
    )  # fmt: skip
    est = estimate_memory(cfg, TrainConfig(micro_batch_size=2, seq_len=32, dtype="fp32"))
    assert est.params == Transformer(cfg).num_params()
    assert est.weights == est.grads == 4 * est.params and est.optimizer == 8 * est.params


def test_activation_accounting_matches_what_autograd_keeps():
    """The activation term equals the bytes of the tensors autograd saves for backward."""
    cfg, tcfg = ACTIVATION_HEAVY[0], TrainConfig(micro_batch_size=2, seq_len=64, dtype="fp32")
    model = Transformer(cfg)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    x = torch.randint(0, cfg.vocab_size, (2, 64))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x, x)
    kept = sum(saved.values())
    est = estimate_memory(cfg, tcfg).activations
    assert abs(est - kept) / kept < 0.02, (est, kept)


def test_scaling_with_batch_dtype_and_strategy():
    cfg, tcfg = ACTIVATION_HEAVY
    base = estimate_memory(cfg, tcfg)
    double = estimate_memory(cfg, tcfg.model_copy(update={"micro_batch_size": 32}))
    assert double.activations > 1.9 * base.activations
    bf16 = estimate_memory(cfg, tcfg.model_copy(update={"dtype": "bf16"}))
    assert bf16.activations < 0.8 * base.activations
    ddp = estimate_memory(cfg, tcfg, world_size=4, strategy="ddp")
    fsdp = estimate_memory(cfg, tcfg, world_size=4, strategy="fsdp")
    assert ddp.weights == base.weights and ddp.communication == 4 * base.params
    assert fsdp.optimizer == base.optimizer // 4 and fsdp.weights == base.weights // 4
    accum = estimate_memory(cfg, tcfg.model_copy(update={"grad_accum_steps": 4}))
    assert accum.total >= base.total  # gradients live through the next micro-batch's forward
    with pytest.raises(ConfigError):
        estimate_memory(cfg.model_copy(update={"vocab_size": None}), tcfg)


def test_check_fits_names_the_setting_to_change():
    cfg = ACTIVATION_HEAVY[0]
    tcfg = TrainConfig(micro_batch_size=64, seq_len=256, grad_accum_steps=1, dtype="fp32")
    est = estimate_memory(cfg, tcfg)
    check_fits(est, 2 * est.total, model_cfg=cfg, train_cfg=tcfg)  # fits: no error
    budget = est.total // 3
    with pytest.raises(ForgeError) as err:
        check_fits(est, budget, model_cfg=cfg, train_cfg=tcfg)
    hint = err.value.hint
    assert "train.micro_batch_size from 64 to <= " in hint
    m = int(hint.split("<= ")[1].split()[0])
    assert 1 <= m < 64
    # The suggestion is the largest micro-batch that fits, and it keeps the global batch.
    fits = estimate_memory(cfg, tcfg.model_copy(update={"micro_batch_size": m}))
    over = estimate_memory(cfg, tcfg.model_copy(update={"micro_batch_size": m + 1}))
    assert fits.total <= 0.9 * budget < over.total
    assert f"train.grad_accum_steps from 1 to {-(-64 // m)}" in hint

    # When even the weights and optimizer state do not fit, it says so and suggests FSDP.
    with pytest.raises(ForgeError, match="AdamW state alone") as err:
        check_fits(est, est.optimizer, model_cfg=cfg, train_cfg=tcfg)
    assert "fsdp" in err.value.hint


def test_preflight_uses_this_machines_free_memory():
    free = available_memory("cpu")
    assert 0 < free < 1 << 50
    cfg, tcfg = ACTIVATION_HEAVY
    assert preflight(cfg, tcfg, device="cpu").total < free
    huge = tcfg.model_copy(update={"micro_batch_size": 1 << 20})
    with pytest.raises(ForgeError, match="micro_batch_size"):
        preflight(cfg, huge, device="cpu")
