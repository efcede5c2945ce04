"""GGUF export without llama.cpp: the file read back with the `gguf` library, and a NumPy
forward pass that computes what llama.cpp's `llama` graph does (interleaved rotary, experts)
from the stored tensors matches our model; metadata, tokenizer keys, LoRA, errors, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from forgeml.core.config import ModelConfig
from forgeml.core.errors import ConfigError, ForgeError
from forgeml.models.gguf_io import (
    OLLAMA_TEMPLATE,
    check_gguf_exportable,
    gguf_pre_tokenizer,
    quantize_gguf,
    rope_permute,
    write_gguf,
    write_gguf_lora,
)
from forgeml.models.hf_io import save_model
from forgeml.models.lora import apply_lora, lora_modules, save_adapter
from forgeml.models.registry import build_model
from forgeml.tokenizer.chat import CHAT_TEMPLATE, SPECIAL_TOKENS
from forgeml.tokenizer.train import SPLIT_PATTERN, train_bpe_tokenizer

gguf = pytest.importorskip("gguf", reason="the gguf extra is not installed")

# The regex of llama.cpp's LLAMA3 / SMAUG / DBRX pre-tokenizers as its source quotes it from
# Llama 3's tokenizer.json (src/llama-vocab.cpp); forgeml's split must be this one.
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    words = "the quick brown fox jumps over the lazy dog while the model learns".split()
    texts = [" ".join(words[(i + j) % len(words)] for j in range(120)) for i in range(30)]
    texts += [f"def f{i}(x):\n    return x * {i} + {i + 1}\n" for i in range(10)]
    return train_bpe_tokenizer(texts, vocab_size=300, out_dir=tmp_path_factory.mktemp("tok"))


def tiny(arch: str = "dense", vocab: int = 300, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    fields = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=96, vocab_size=vocab,
                  max_seq_len=64, arch=arch, n_experts=4, top_k=2, init_std=0.1)  # fmt: skip
    fields.update(overrides)
    model = build_model(ModelConfig(**fields)).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a misplaced one shows
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def read_tensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a GGUF file as fp32 in PyTorch layout (quantised ones dequantised)."""
    out = {}
    for t in gguf.GGUFReader(path).tensors:
        data = np.asarray(t.data)
        if t.tensor_type not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            data = gguf.quants.dequantize(data, t.tensor_type)
        out[t.name] = data.astype(np.float32).reshape(tuple(reversed(t.shape.tolist())))
    return out


def fields(path: Path) -> dict:
    reader = gguf.GGUFReader(path)
    return {name: f.contents() for name, f in reader.fields.items()}


def rms(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def rope_interleaved(x: np.ndarray, theta: float) -> np.ndarray:
    """llama.cpp's LLAMA_ROPE_TYPE_NORM: adjacent pairs (2j, 2j+1) rotated. x [T, H, D]."""
    d = x.shape[-1]
    angles = np.arange(x.shape[0])[:, None] * theta ** (-np.arange(0, d, 2) / d)[None, :]
    cos, sin = np.cos(angles)[:, None], np.sin(angles)[:, None]
    even, odd = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = even * cos - odd * sin
    out[..., 1::2] = even * sin + odd * cos
    return out


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1 + np.exp(-x))


def gguf_forward(path: Path, ids: list[int]) -> np.ndarray:
    """Logits [T, V] of llama.cpp's llama graph, in NumPy, from the GGUF file alone."""
    meta, w = fields(path), read_tensors(path)
    n_layers, eps = meta["llama.block_count"], meta["llama.attention.layer_norm_rms_epsilon"]
    n_heads, n_kv = meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"]
    theta, top_k = meta["llama.rope.freq_base"], meta.get("llama.expert_used_count")
    h = w["token_embd.weight"][ids]
    seq = len(ids)
    causal = np.triu(np.full((seq, seq), -np.inf), 1)
    for i in range(n_layers):
        b = f"blk.{i}."
        x = rms(h, w[b + "attn_norm.weight"], eps)

        def proj(name: str, x=x, b=b) -> np.ndarray:
            return x @ w[b + name + ".weight"].T + w.get(b + name + ".bias", 0.0)

        q = rope_interleaved(proj("attn_q").reshape(seq, n_heads, -1), theta)
        k = rope_interleaved(proj("attn_k").reshape(seq, n_kv, -1), theta)
        v = proj("attn_v").reshape(seq, n_kv, -1)
        k, v = (np.repeat(t, n_heads // n_kv, axis=1) for t in (k, v))
        scores = np.einsum("thd,shd->hts", q, k) / np.sqrt(q.shape[-1]) + causal
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        attn = np.einsum("hts,shd->thd", probs, v).reshape(seq, -1)
        h = h + attn @ w[b + "attn_output.weight"].T
        x = rms(h, w[b + "ffn_norm.weight"], eps)
        if b + "ffn_gate_inp.weight" in w:
            logits = x @ w[b + "ffn_gate_inp.weight"].T
            p = np.exp(logits - logits.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            out = np.zeros_like(x)
            for t in range(seq):
                chosen = np.argsort(-p[t])[:top_k]
                weights = p[t, chosen] / p[t, chosen].sum()
                for e, wt in zip(chosen, weights, strict=True):
                    gate = w[b + "ffn_gate_exps.weight"][e] @ x[t]
                    up = w[b + "ffn_up_exps.weight"][e] @ x[t]
                    out[t] += wt * (w[b + "ffn_down_exps.weight"][e] @ (silu(gate) * up))
        else:
            gate, up = x @ w[b + "ffn_gate.weight"].T, x @ w[b + "ffn_up.weight"].T
            out = (silu(gate) * up) @ w[b + "ffn_down.weight"].T
        h = h + out
    head = w.get("output.weight", w["token_embd.weight"])
    return rms(h, w["output_norm.weight"], eps) @ head.T


def our_logits(model: torch.nn.Module, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids]))[0].double().numpy()


IDS = [12, 40, 7, 200, 31, 99, 5, 260, 64, 150, 3, 77]


@pytest.mark.parametrize(
    "arch,overrides",
    [
        ("dense", {}),
        ("dense", {"tie_embeddings": False, "qkv_bias": True, "n_kv_heads": 4}),
        ("moe", {}),
    ],
    ids=["dense-tied-gqa", "dense-untied-bias-mha", "moe"],
)
def test_llama_graph_on_the_gguf_computes_our_logits(tmp_path, tokenizer_dir, arch, overrides):
    model = tiny(arch, **overrides)
    path = write_gguf(model, tmp_path / "m.gguf", tokenizer_dir, quant="f32")
    ours = our_logits(model, IDS)
    np.testing.assert_allclose(gguf_forward(path, IDS), ours, atol=2e-4, rtol=1e-4)


def test_without_the_rope_permutation_the_logits_differ(tmp_path, tokenizer_dir, monkeypatch):
    """The q/k permutation is what makes the interleaved rotary equal ours: skip it, and
    the same reference forward disagrees (so the test above could fail)."""
    import forgeml.models.gguf_io as gguf_io

    model = tiny()
    monkeypatch.setattr(gguf_io, "rope_permute", lambda w, n_heads: w)
    path = write_gguf(model, tmp_path / "m.gguf", tokenizer_dir, quant="f32")
    assert np.abs(gguf_forward(path, IDS) - our_logits(model, IDS)).max() > 1e-2


@pytest.mark.parametrize("quant,atol", [("f16", 5e-2), ("q8_0", 2e-1)])
def test_quantised_files_stay_close_and_small(tmp_path, tokenizer_dir, quant, atol):
    model = tiny(dim=128, n_heads=4, n_kv_heads=2, ffn_hidden=256)
    f32 = write_gguf(model, tmp_path / "f32.gguf", tokenizer_dir, quant="f32")
    path = write_gguf(model, tmp_path / f"{quant}.gguf", tokenizer_dir, quant=quant)
    ours = our_logits(model, IDS)
    np.testing.assert_allclose(gguf_forward(path, IDS), ours, atol=atol)
    assert path.stat().st_size < 0.6 * f32.stat().st_size
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    assert types["blk.0.attn_norm.weight"] == "F32"  # 1-D tensors stay f32
    assert types["blk.0.attn_q.weight"] == quant.upper()
    assert types["token_embd.weight"] == quant.upper()


def test_metadata_and_tokenizer_keys(tmp_path, tokenizer_dir):
    from tokenizers import Tokenizer

    model = tiny(rope_theta=50000.0, norm_eps=1e-6)
    meta = fields(write_gguf(model, tmp_path / "m.gguf", tokenizer_dir, name="acme"))
    cfg = model.cfg
    assert meta["general.architecture"] == "llama" and meta["general.name"] == "acme"
    assert meta["general.file_type"] == gguf.LlamaFileType.MOSTLY_F16
    assert meta["llama.block_count"] == cfg.n_layers
    assert meta["llama.context_length"] == cfg.max_seq_len
    assert meta["llama.embedding_length"] == cfg.dim
    assert meta["llama.feed_forward_length"] == cfg.ffn_hidden
    assert meta["llama.attention.head_count_kv"] == cfg.n_kv_heads
    assert meta["llama.rope.freq_base"] == pytest.approx(50000.0)
    assert meta["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)
    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    assert meta["tokenizer.ggml.model"] == "gpt2"
    assert meta["tokenizer.ggml.pre"] == "smaug-bpe"
    tokens = meta["tokenizer.ggml.tokens"]
    assert len(tokens) == cfg.vocab_size
    assert all(tok.id_to_token(i) == t for i, t in enumerate(tokens[: tok.get_vocab_size()]))
    merges = json.loads((tokenizer_dir / "tokenizer.json").read_text())["model"]["merges"]
    assert meta["tokenizer.ggml.merges"] == [
        m if isinstance(m, str) else " ".join(m) for m in merges
    ]
    ids = {role: tok.token_to_id(t) for role, t in SPECIAL_TOKENS.items()}
    types = meta["tokenizer.ggml.token_type"]
    assert all(types[i] == gguf.TokenType.CONTROL for i in ids.values())
    assert types[ids["end"] + 20] == gguf.TokenType.NORMAL
    assert meta["tokenizer.ggml.bos_token_id"] == ids["bos"]
    assert meta["tokenizer.ggml.eos_token_id"] == ids["eos"]
    assert meta["tokenizer.ggml.eot_token_id"] == ids["end"]  # chat turns stop here
    assert meta["tokenizer.ggml.padding_token_id"] == ids["pad"]
    assert meta["tokenizer.ggml.fim_mid_token_id"] == ids["fim_middle"]
    assert meta["tokenizer.ggml.add_bos_token"] is False
    assert meta["tokenizer.chat_template"] == CHAT_TEMPLATE


def test_model_rows_beyond_the_tokenizer_are_unused_tokens(tmp_path, tokenizer_dir):
    meta = fields(write_gguf(tiny(vocab=320), tmp_path / "m.gguf", tokenizer_dir))
    assert len(meta["tokenizer.ggml.tokens"]) == 320
    assert meta["tokenizer.ggml.tokens"][-1] == "[PAD319]"
    assert meta["tokenizer.ggml.token_type"][-1] == gguf.TokenType.UNUSED


def test_forgeml_split_is_llama3s_regex_and_picks_a_merge_always_pre_tokenizer(tokenizer_dir):
    assert SPLIT_PATTERN == LLAMA3_REGEX
    tok = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    assert gguf_pre_tokenizer(tok) == "smaug-bpe"  # forgeml's BPE always applies merges
    tok["model"]["ignore_merges"] = True  # Llama 3's tokenizer.json
    assert gguf_pre_tokenizer(tok) == "llama-bpe"
    tok["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\p{N}+|\s+"
    with pytest.raises(ConfigError, match="no llama.cpp equivalent"):
        gguf_pre_tokenizer(tok)
    tok["model"]["type"] = "Unigram"
    with pytest.raises(ConfigError, match="not a byte-level BPE"):
        gguf_pre_tokenizer(tok)


@pytest.mark.parametrize(
    "arch,overrides,match",
    [
        ("moe", {"gating": "sigmoid"}, "sigmoid gating"),
        ("moe", {"shared_expert": True}, "shared expert"),
        ("dense", {"sliding_window": 16}, "sliding-window"),
    ],
)
def test_architectures_gguf_cannot_express_are_refused_in_one_line(
    tmp_path, tokenizer_dir, arch, overrides, match
):
    model = tiny(arch, **overrides)
    with pytest.raises(ConfigError, match=match) as err:
        write_gguf(model, tmp_path / "m.gguf", tokenizer_dir)
    assert "\n" not in str(err.value)
    assert not list(tmp_path.iterdir())
    check_gguf_exportable(tiny(sliding_window=64).cfg)  # a window as long as the context is fine


def test_unknown_quant_and_k_quant_without_llama_cpp_are_one_line_errors(
    tmp_path, tokenizer_dir, monkeypatch
):
    import sys

    with pytest.raises(ConfigError, match="unknown GGUF quantisation 'q3'"):
        write_gguf(tiny(), tmp_path / "m.gguf", tokenizer_dir, quant="q3")
    monkeypatch.setattr("shutil.which", lambda name: None)
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import fails
    with pytest.raises(ConfigError, match="needs llama.cpp") as err:
        quantize_gguf(tmp_path / "in.gguf", tmp_path / "out.gguf", "q4_k_m")
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="needs llama.cpp"):
        write_gguf(tiny(), tmp_path / "m.gguf", tokenizer_dir, quant="q4_k_m")
    assert not list(tmp_path.glob("*.gguf*"))


def test_lora_adapter_as_gguf_lora(tmp_path):
    model = tiny(tie_embeddings=False)
    apply_lora(model, ["wqkv", "wo", "w13"], rank=4, alpha=8.0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for lora in lora_modules(model).values():
            lora.lora_B.copy_(torch.randn(lora.lora_B.shape, generator=gen) * 0.1)
    save_adapter(model, tmp_path / "adapter")
    path = write_gguf_lora(tmp_path / "adapter", tmp_path / "a.gguf")
    meta = fields(path)
    assert meta["general.type"] == "adapter" and meta["adapter.type"] == "lora"
    assert meta["adapter.lora.alpha"] == pytest.approx(8.0)
    tensors = read_tensors(path)
    assert "blk.1.ffn_down.weight.lora_a" not in tensors  # w2 was not adapted
    # llama.cpp adds scale * B A to the stored (permuted) weight: compare with our delta,
    # permuted the same way, part by part.
    lora = lora_modules(model)["layers.1.attention.wqkv"]
    delta_q, delta_k, _ = lora.delta_weight().split([64, 32, 32])
    for name, delta, heads in (("attn_q", delta_q, 4), ("attn_k", delta_k, 2)):
        a, b = tensors[f"blk.1.{name}.weight.lora_a"], tensors[f"blk.1.{name}.weight.lora_b"]
        expected = rope_permute(delta.detach(), heads).numpy()
        np.testing.assert_allclose(2.0 * b @ a, expected, atol=1e-6)


def test_export_gguf_from_the_registry_and_the_cli(tmp_path, workspace, tokenizer_dir):
    from typer.testing import CliRunner

    from forgeml.cli import app
    from forgeml.pipeline.interop import import_hf_stage

    model = tiny()
    save_model(model, tmp_path / "hf", tokenizer_dir)
    model_id = import_hf_stage(workspace, tmp_path / "hf", "tiny").output
    runner = CliRunner()
    args = ["-w", str(workspace.root), "export", model_id, "--format", "gguf", "--quant", "q8_0"]
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    gguf_path = tmp_path / "out" / "model-q8_0.gguf"
    assert fields(gguf_path)["general.name"] == "tiny"
    modelfile = (tmp_path / "out" / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./model-q8_0.gguf\n")
    assert f'TEMPLATE """{OLLAMA_TEMPLATE}"""' in modelfile
    assert 'PARAMETER stop "<|end|>"' in modelfile and 'PARAMETER stop "<|eos|>"' in modelfile
    assert "PARAMETER num_ctx 64" in modelfile
    again = runner.invoke(app, [*args, "--out", str(tmp_path / "out")])
    assert again.exit_code != 0 and "not empty" in str(again.exception)
    bad = runner.invoke(app, [*args[:-1], "q2", "--out", str(tmp_path / "o2")])
    assert bad.exit_code != 0 and "unknown GGUF quantisation" in str(bad.exception)
    assert not (tmp_path / "o2").exists()


def test_a_training_checkpoint_exports_to_gguf(tmp_path, tokenizer_dir):
    from forgeml.core.config import OptimConfig
    from forgeml.pipeline.gguf_export import export_checkpoint_gguf
    from forgeml.train.checkpoint import save_checkpoint
    from forgeml.train.optim import build_optimizer

    for arch, overrides in (("dense", {}), ("moe", {"gating": "sigmoid"})):
        model = tiny(arch, **overrides)
        optimizer = build_optimizer(model, OptimConfig(lr=1e-2), "cpu")
        save_checkpoint(tmp_path / arch / "checkpoints", 2, model=model, optimizer=optimizer,
                        data_state={})  # fmt: skip
    with pytest.raises(ForgeError, match="carries its tokenizer"):
        export_checkpoint_gguf(tmp_path / "dense", tmp_path / "out", None)
    path = export_checkpoint_gguf(tmp_path / "dense", tmp_path / "out", tokenizer_dir, quant="f32")
    assert path == tmp_path / "out" / "model-f32.gguf"
    model = tiny()  # the same seed: the checkpoint's weights
    np.testing.assert_allclose(gguf_forward(path, IDS), our_logits(model, IDS), atol=2e-4)
    with pytest.raises(ConfigError, match=r"^checkpoint .*sigmoid gating"):
        export_checkpoint_gguf(tmp_path / "moe", tmp_path / "out2", tokenizer_dir)
    assert not (tmp_path / "out2").exists()


def test_an_adapter_asset_exports_as_gguf_lora(tmp_path, workspace):
    from forgeml.pipeline.gguf_export import export_gguf
    from forgeml.registry import open_registry

    model = tiny()
    apply_lora(model, ["wqkv"], rank=4, alpha=4.0)
    save_adapter(model, tmp_path / "adapter")
    asset = open_registry(workspace).add_asset("adapter", "tiny-lora", tmp_path / "adapter")
    path = export_gguf(workspace, asset.id, tmp_path / "out", quant="f16")
    assert path == tmp_path / "out" / "adapter-f16.gguf"
    assert fields(path)["general.type"] == "adapter"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["adapter-f16.gguf"]
    with pytest.raises(ConfigError, match="not q4_k_m"):
        export_gguf(workspace, asset.id, tmp_path / "out2", quant="q4_k_m")
    assert not (tmp_path / "out2").exists()
