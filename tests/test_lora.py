"""LoRA: PEFT-format round trip (peft loads our adapter onto our transformers export with the
same logits), merge == adapter applied, frozen base, and PEFT-trained adapters load into ours."""

from __future__ import annotations

import json

import pytest
import torch

from forgeml.core.config import ModelConfig
from forgeml.core.errors import ConfigError
from forgeml.models.dense import Transformer
from forgeml.models.hf_io import load_model, save_model
from forgeml.models.lora import (
    LoRALinear,
    apply_lora,
    load_adapter,
    lora_modules,
    merge_lora,
    save_adapter,
    trainable_parameters,
)
from forgeml.models.moe import MoETransformer

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

VOCAB = 97
TARGETS = ["wqkv", "wo", "w13", "w2"]


def tiny(arch: str = "dense", **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    fields = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=96, vocab_size=VOCAB,
                  max_seq_len=64, arch=arch, n_experts=4, top_k=2)  # fmt: skip
    fields.update(overrides)
    cfg = ModelConfig(**fields)
    model = (MoETransformer if arch == "moe" else Transformer)(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def randomise_lora(model: torch.nn.Module) -> None:
    """B starts at zero (a no-op adapter); a test of the mapping needs both factors non-zero."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for lora in lora_modules(model).values():
            lora.lora_B.copy_(torch.randn(lora.lora_B.shape, generator=gen) * 0.1)


@pytest.mark.parametrize("targets", [TARGETS, ["wqkv"], ["w13", "wo"]])
def test_peft_loads_our_adapter_on_our_export_with_same_logits(tmp_path, targets):
    model = tiny(tie_embeddings=False)
    save_model(model, tmp_path / "base")
    apply_lora(model, targets, rank=4, alpha=8.0)
    randomise_lora(model)
    save_adapter(model, tmp_path / "adapter", base_model="model-abc")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8.0

    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32)
    peft_model = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    x = torch.randint(0, VOCAB, (2, 12))
    with torch.no_grad():
        ours, theirs = model(x), peft_model(x).logits
    with peft_model.disable_adapter(), torch.no_grad():
        base = peft_model(x).logits
    assert (ours - base).abs().max() > 1e-2  # the adapter changes the function...
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)  # ...the same way in peft


def test_merge_equals_adapter_and_reload_roundtrip(tmp_path):
    model = tiny()
    apply_lora(model, TARGETS, rank=3, alpha=6.0)
    randomise_lora(model)
    x = torch.randint(0, VOCAB, (2, 10))
    with torch.no_grad():
        with_adapter = model(x)
    save_adapter(model, tmp_path / "adapter")

    fresh = tiny()
    load_adapter(fresh, tmp_path / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), with_adapter, atol=1e-6, rtol=0)

    merge_lora(model)
    assert not lora_modules(model)
    save_model(model, tmp_path / "merged")
    merged = load_model(tmp_path / "merged")
    with torch.no_grad():
        torch.testing.assert_close(merged(x), with_adapter, atol=1e-5, rtol=0)


def test_base_is_frozen_and_only_lora_trains():
    model = tiny()
    wrapped = apply_lora(model, ["wqkv", "w2"], rank=2, alpha=4.0)
    assert wrapped == [
        f"layers.{i}.{m}" for i in range(2) for m in ("attention.wqkv", "feed_forward.w2")
    ]
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert trainable_parameters(model) == sum(
        m.lora_A.numel() + m.lora_B.numel() for m in lora_modules(model).values()
    )
    # a fused q/k/v layer has one rank-2 pair per HF module
    qkv = model.layers[0].attention.wqkv
    assert isinstance(qkv, LoRALinear) and qkv.lora_A.shape == (3 * 2, 64)
    with pytest.raises(ConfigError, match="not supported"):
        apply_lora(tiny(), ["output"], rank=2, alpha=2.0)


def test_moe_attention_lora_roundtrips_through_peft(tmp_path):
    model = tiny("moe", tie_embeddings=False)
    save_model(model, tmp_path / "base")
    with pytest.raises(ConfigError, match="MoE experts"):
        apply_lora(tiny("moe"), ["w13"], rank=2, alpha=2.0)
    apply_lora(model, ["wqkv", "wo"], rank=2, alpha=4.0)
    randomise_lora(model)
    save_adapter(model, tmp_path / "adapter")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32)
    peft_model = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    x = torch.randint(0, VOCAB, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(model(x), peft_model(x).logits, atol=1e-4, rtol=0)


def test_adapter_trained_with_peft_loads_into_our_model(tmp_path):
    """The other direction: separate q/k/v adapters made by peft itself (random, not zero B)."""
    model = tiny(tie_embeddings=False)
    save_model(model, tmp_path / "base")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32)
    cfg = peft.LoraConfig(
        r=4,
        lora_alpha=16,
        target_modules=[
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
        init_lora_weights=False,
    )
    peft_model = peft.get_peft_model(hf, cfg).eval()
    peft_model.save_pretrained(tmp_path / "adapter")
    load_adapter(model, tmp_path / "adapter")
    x = torch.randint(0, VOCAB, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(model(x), peft_model(x).logits, atol=1e-4, rtol=0)
