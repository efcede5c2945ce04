"""HF import/export through the registry: an HF folder becomes tokenizer + model assets that
eval and generate use as they would a trained model, and exports load in transformers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from forgeml.core.config import EvalConfig, GenerateConfig, ModelConfig
from forgeml.core.errors import ConfigError, DataError, ForgeError
from forgeml.models.hf_io import save_model
from forgeml.models.moe import MoETransformer
from forgeml.pipeline.generate import generate_text
from forgeml.pipeline.ingest_stage import ingest_stage
from forgeml.pipeline.interop import export_model, import_hf_stage
from forgeml.pipeline.pack_stage import pack_stage
from forgeml.pipeline.perplexity_stage import perplexity_eval_stage
from forgeml.registry import open_registry
from forgeml.tokenizer.pack import TokenShards
from forgeml.tokenizer.train import TOKENIZER_FILES, train_bpe_tokenizer

transformers = pytest.importorskip("transformers")


@pytest.fixture
def tokenizer_dir(tmp_path: Path, text_folder: Path) -> Path:
    texts = [p.read_text() for p in sorted(text_folder.rglob("*.md"))]
    texts += [p.read_text() for p in sorted(text_folder.rglob("*.py"))]
    return train_bpe_tokenizer(texts, vocab_size=320, out_dir=tmp_path / "tok")


def vocab_size(tokenizer_dir: Path) -> int:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).get_vocab_size()


def hf_folder(path: Path, hf: torch.nn.Module, tokenizer_dir: Path | None) -> Path:
    """An HF checkpoint on disk as users have them: save_pretrained + tokenizer files."""
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    hf.eval().save_pretrained(path)
    if tokenizer_dir is not None:
        for name in TOKENIZER_FILES:
            if (tokenizer_dir / name).is_file():
                shutil.copy(tokenizer_dir / name, path / name)
    return path


def common(vocab: int) -> dict:
    return dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=False,
    )


def mistral(vocab: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return transformers.MistralForCausalLM(transformers.MistralConfig(**common(vocab)))


def mixtral(vocab: int) -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.MixtralConfig(**common(vocab), num_local_experts=4, num_experts_per_tok=2)
    return transformers.MixtralForCausalLM(config)


def test_dense_import_eval_generate_export(workspace, tmp_path, text_folder, tokenizer_dir):
    vocab = vocab_size(tokenizer_dir)
    hf = mistral(vocab)
    src = hf_folder(tmp_path / "hf-mistral", hf, tokenizer_dir)
    result = import_hf_stage(workspace, src, "tiny-mistral")
    reg = open_registry(workspace)
    model = reg.get_asset(result.output)
    tok_id = result.metrics["tokenizer"]
    assert model.kind == "model" and model.metadata["arch"] == "dense"
    assert reg.get_asset(tok_id).kind == "tokenizer"
    assert (tok_id, model.id) in reg.lineage(model.id, "up").edges
    assert result.metrics["params"] == sum(p.numel() for p in hf.parameters())
    assert import_hf_stage(workspace, src, "tiny-mistral").cached

    # Eval through the stages equals transformers' own loss on the same held-out windows.
    data = ingest_stage(workspace, [text_folder], name="docs", include=["**/*.md"])
    shards = pack_stage(workspace, data.output, tok_id, heldout_fraction=0.2)
    cfg = EvalConfig(batch_size=2, max_batches=2)
    ev = perplexity_eval_stage(
        workspace, model.id, cfg, shards_ref=shards.output, seq_len=32, dtype="fp32"
    )
    held = TokenShards(Path(reg.get_asset(shards.output).path) / "heldout")
    n_windows = min((held.n_tokens - 1) // 32, 4)
    rows = torch.from_numpy(np.stack([held.window(w * 32, 33) for w in range(n_windows)])).long()
    with torch.no_grad():
        logits = hf(rows[:, :-1]).logits
    expected = F.cross_entropy(logits.flatten(0, 1), rows[:, 1:].flatten()).item()
    assert ev.metrics["loss"] == pytest.approx(expected, abs=1e-4)

    # Greedy generation through the stages equals transformers' greedy decoding.
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    prompt = "the quick brown fox"
    gen = GenerateConfig(max_new_tokens=6, temperature=0.0, top_k=None, top_p=None)
    text = generate_text(workspace, model.id, prompt, gen)
    ids = torch.tensor([tok.encode(prompt, add_special_tokens=False).ids])
    hf_ids = hf.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=None)
    new = hf_ids[0, ids.shape[1] :].tolist()
    eos = tok.token_to_id("<|eos|>")
    new = new[: new.index(eos)] if eos in new else new
    assert new and text == tok.decode(new, skip_special_tokens=True)

    # Export: transformers loads the folder and computes the same logits.
    out = export_model(workspace, model.id, tmp_path / "export")
    assert (out / "tokenizer.json").read_bytes() == (tokenizer_dir / "tokenizer.json").read_bytes()
    again = transformers.AutoModelForCausalLM.from_pretrained(out)
    x = torch.randint(0, vocab, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(again(x).logits, hf(x).logits, atol=1e-5, rtol=0)
    with pytest.raises(ForgeError, match="not empty"):
        export_model(workspace, model.id, out)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".export.")]


def test_moe_import_and_export(workspace, tmp_path, tokenizer_dir):
    vocab = vocab_size(tokenizer_dir)
    hf = mixtral(vocab)
    src = hf_folder(tmp_path / "hf-mixtral", hf, tokenizer_dir)
    result = import_hf_stage(workspace, src)
    asset = open_registry(workspace).get_asset(result.output)
    assert asset.name == "hf-mixtral" and asset.metadata["arch"] == "moe"
    assert asset.metadata["hf_model_type"] == "mixtral"
    (tmp_path / "empty").mkdir()
    out = export_model(workspace, asset.id, tmp_path / "empty")
    again = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert type(again).__name__ == "MixtralForCausalLM"
    x = torch.randint(0, vocab, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(again(x).logits, hf(x).logits, atol=1e-4, rtol=0)


def test_export_refuses_moe_that_mixtral_cannot_express(workspace, tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig(
        arch="moe", dim=32, n_layers=1, n_heads=4, n_kv_heads=2, ffn_hidden=32,
        n_experts=4, top_k=2, vocab_size=64, gating="sigmoid",
    )  # fmt: skip
    src = save_model(MoETransformer(cfg), tmp_path / "ours")
    model_id = import_hf_stage(workspace, src, "sigmoid-moe").output
    assert import_hf_stage(workspace, src, "sigmoid-moe").metrics["tokenizer"] is None
    with pytest.raises(ConfigError, match="sigmoid gating"):
        export_model(workspace, model_id, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_import_errors_are_clear(workspace, tmp_path, tokenizer_dir):
    vocab = vocab_size(tokenizer_dir)
    small = transformers.MistralForCausalLM(transformers.MistralConfig(**common(vocab - 10)))
    src = hf_folder(tmp_path / "small-vocab", small, tokenizer_dir)
    with pytest.raises(DataError, match="tokenizer has"):
        import_hf_stage(workspace, src)
    # config.json that does not describe the weights: caught at import, not at first use.
    config = json.loads((src / "config.json").read_text())
    config["intermediate_size"] = 80
    (src / "config.json").write_text(json.dumps(config))
    for name in TOKENIZER_FILES:
        (src / name).unlink(missing_ok=True)
    with pytest.raises(ConfigError, match="do not match config.json"):
        import_hf_stage(workspace, src)
    with pytest.raises(ForgeError, match="not found"):
        import_hf_stage(workspace, tmp_path / "nowhere")
