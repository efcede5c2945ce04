"""HF format round trips: our saved folders load in transformers, and HF checkpoints load in ours."""

from __future__ import annotations

import json

import pytest
import torch

from forgeml.core.config import ModelConfig
from forgeml.core.errors import ConfigError, NotFoundError
from forgeml.models.dense import Transformer
from forgeml.models.hf_io import load_model, save_model

transformers = pytest.importorskip("transformers")

VOCAB = 89


def tiny(**overrides) -> Transformer:
    torch.manual_seed(0)
    fields = dict(
        dim=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        ffn_hidden=96,
        vocab_size=VOCAB,
        max_seq_len=64,
        rope_theta=5000.0,
        norm_eps=1e-6,
    )
    fields.update(overrides)
    model = Transformer(ModelConfig(**fields))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


@pytest.mark.parametrize(("tie", "window"), [(True, None), (False, None), (True, 5), (False, 6)])
def test_saved_model_loads_in_transformers_with_same_logits(tmp_path, tie, window):
    model = tiny(tie_embeddings=tie, sliding_window=window)
    save_model(model, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="sdpa")
    assert type(hf).__name__ == "MistralForCausalLM"
    assert hf.config.tie_word_embeddings is tie
    x = torch.randint(0, VOCAB, (2, 16))
    with torch.no_grad():
        ours, theirs = model(x), hf(x).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    # And back: load_model reproduces the exact model.
    again = load_model(tmp_path)
    assert again.cfg == model.cfg
    assert torch.equal(again(x), ours)
    assert (again.output.weight is again.tok_embeddings.weight) is tie


def test_save_copies_tokenizer_and_reads_special_ids(tmp_path):
    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    (tok_dir / "tokenizer.json").write_text(
        json.dumps(
            {
                "added_tokens": [{"id": 0, "content": "<pad>"}, {"id": 2, "content": "</s>"}],
                "model": {"vocab": {"<s>": 1}},
            }
        )
    )
    (tok_dir / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"})
    )
    out = save_model(tiny(), tmp_path / "model", tokenizer_dir=tok_dir)
    assert (out / "tokenizer.json").read_bytes() == (tok_dir / "tokenizer.json").read_bytes()
    config = json.loads((out / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (1, 2, 0)
    assert not list(out.glob("*.tmp"))


@pytest.mark.parametrize(("arch", "tie"), [("mistral", False), ("llama", True)])
def test_plain_hf_checkpoint_loads_with_same_logits(tmp_path, arch, tie):
    torch.manual_seed(0)
    common = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 20000.0},
        tie_word_embeddings=tie,
    )
    if arch == "mistral":
        config = transformers.MistralConfig(sliding_window=7, **common)
        hf = transformers.MistralForCausalLM(config)
    else:
        config = transformers.LlamaConfig(**common)
        hf = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    hf.eval().save_pretrained(tmp_path)
    model = load_model(tmp_path)
    assert model.cfg.rope_theta == 20000.0 and model.cfg.tie_embeddings is tie
    assert model.cfg.sliding_window == (7 if arch == "mistral" else None)
    x = torch.randint(0, VOCAB, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(x).logits, atol=1e-5, rtol=0)


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(NotFoundError):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ConfigError, match="gpt2"):
        load_model(tmp_path)


def test_qwen2_checkpoint_with_qkv_biases_round_trips(tmp_path):
    """Qwen2 attention has q/k/v biases: import a random Qwen2ForCausalLM, compare logits,
    export ours as Qwen2 and compare again; the biases must matter (non-zero)."""
    torch.manual_seed(0)
    config = transformers.Qwen2Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        tie_word_embeddings=True,
    )  # fmt: skip
    hf = transformers.Qwen2ForCausalLM(config)
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    hf.eval().save_pretrained(tmp_path / "hf")
    model = load_model(tmp_path / "hf")
    assert model.cfg.qkv_bias and model.cfg.sliding_window is None
    x = torch.randint(0, VOCAB, (2, 20))
    with torch.no_grad():
        theirs = hf(x).logits
        torch.testing.assert_close(model(x), theirs, atol=1e-4, rtol=0)
        # without its biases the model computes something else: they were really loaded
        bias = model.layers[0].attention.wqkv.bias
        saved = bias.clone()
        bias.zero_()
        assert (model(x) - theirs).abs().max() > 1e-2
        bias.copy_(saved)

    ours = tiny(qkv_bias=True)
    assert ours.layers[1].attention.wqkv.bias.abs().sum() > 0  # tiny() perturbs every param
    save_model(ours, tmp_path / "ours")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours")
    assert type(back).__name__ == "Qwen2ForCausalLM"
    with torch.no_grad():
        torch.testing.assert_close(ours(x), back(x).logits, atol=1e-4, rtol=0)
    assert torch.equal(load_model(tmp_path / "ours")(x), ours(x))
    with pytest.raises(ConfigError, match="sliding window"):
        save_model(tiny(qkv_bias=True, sliding_window=8), tmp_path / "bad")
