"""MoE in HF format both ways: transformers' Mixtral checkpoints load in ours with the same
logits, ours load in transformers' Mixtral, and MoE variants Mixtral cannot express refuse."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from forgeml.core.config import ModelConfig
from forgeml.core.errors import ConfigError
from forgeml.models.hf_io import load_model, save_model
from forgeml.models.moe import MoETransformer, load_balancing_loss, softmax_top_k

transformers = pytest.importorskip("transformers")

VOCAB = 89


def perturb(model: torch.nn.Module) -> torch.nn.Module:
    """Random weights well away from init, so a swapped or transposed tensor cannot hide."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def ours(**overrides) -> MoETransformer:
    torch.manual_seed(0)
    fields = dict(
        arch="moe",
        dim=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        ffn_hidden=48,
        moe_ffn_hidden=48,
        n_experts=4,
        top_k=2,
        vocab_size=VOCAB,
        max_seq_len=64,
        rope_theta=5000.0,
        norm_eps=1e-6,
    )
    fields.update(overrides)
    return perturb(MoETransformer(ModelConfig(**fields)))


@pytest.mark.parametrize(("tie", "window"), [(False, None), (True, 6)])
def test_hf_mixtral_checkpoint_loads_with_same_logits(tmp_path, tie, window):
    torch.manual_seed(0)
    config = transformers.MixtralConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=40,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 20000.0},
        sliding_window=window,
        tie_word_embeddings=tie,
        router_aux_loss_coef=0.02,
    )
    hf = perturb(transformers.MixtralForCausalLM(config))
    hf.save_pretrained(tmp_path)
    model = load_model(tmp_path)
    assert type(model) is MoETransformer
    cfg = model.cfg
    assert (cfg.n_experts, cfg.top_k, cfg.moe_ffn_hidden) == (4, 2, 40)
    assert (cfg.tie_embeddings, cfg.sliding_window, cfg.rope_theta) == (tie, window, 20000.0)
    assert cfg.aux_loss_coef == pytest.approx(0.04)  # HF's aux loss is top_k times ours
    x = torch.randint(0, VOCAB, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(x).logits, atol=1e-4, rtol=0)


def test_saved_moe_loads_in_transformers_with_same_logits(tmp_path):
    model = ours()
    save_model(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "mixtral" and config["num_local_experts"] == 4
    names = load_file(tmp_path / "model.safetensors")
    assert "model.layers.1.block_sparse_moe.experts.3.w3.weight" in names
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="sdpa")
    assert type(hf).__name__ == "MixtralForCausalLM"
    x = torch.randint(0, VOCAB, (2, 16))
    with torch.no_grad():
        mine, theirs = model(x), hf(x).logits
    torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=0)
    # The Python loop over experts ("eager") computes the same function.
    eager = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, attn_implementation="sdpa", experts_implementation="eager"
    )
    with torch.no_grad():
        torch.testing.assert_close(mine, eager(x).logits, atol=1e-4, rtol=0)
    again = load_model(tmp_path)
    assert again.cfg == model.cfg
    with torch.no_grad():
        assert torch.equal(again(x), mine)


def test_load_balancing_loss_is_hf_mixtral_loss_over_top_k():
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    torch.manual_seed(0)
    logits = torch.randn(64, 8) * 2
    _, experts, probs = softmax_top_k(logits, 2)
    counts = torch.bincount(experts.reshape(-1), minlength=8)
    theirs = load_balancing_loss_func((logits,), num_experts=8, top_k=2)
    assert load_balancing_loss(probs, counts).item() * 2 == pytest.approx(theirs.item(), rel=1e-5)


@pytest.mark.parametrize("overrides", [{"gating": "sigmoid"}, {"shared_expert": True}])
def test_variants_mixtral_cannot_express_round_trip_but_refuse_transformers(tmp_path, overrides):
    model = ours(**overrides)
    save_model(model, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "forgeml_moe"
    with pytest.raises((ValueError, KeyError)):
        transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    again = load_model(tmp_path)
    x = torch.randint(0, VOCAB, (1, 10))
    with torch.no_grad():
        assert torch.equal(again(x), model(x))


def test_missing_expert_tensor_is_a_clear_error(tmp_path):
    save_model(ours(), tmp_path)
    (tmp_path / "forgeml_model.json").unlink()
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["model.layers.0.block_sparse_moe.experts.2.w1.weight"]
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(ConfigError, match="experts.2.w1"):
        load_model(tmp_path)
