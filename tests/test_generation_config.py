"""Exported chat models stop at the end of a turn outside forgeml: `generation_config.json`
names `<|end|>` and `<|eos|>` as stop ids with forgeml's chat sampling defaults, config.json
carries both ids and a top-level `rope_theta`, and transformers' `generate` stops at `<|end|>`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from forgeml.core.config import GenerateConfig, ModelConfig
from forgeml.models.dense import Transformer
from forgeml.models.hf_io import export_hf, generation_config
from forgeml.pipeline.interop import export_model
from forgeml.pipeline.runtime import Output, run_stage
from forgeml.tokenizer.chat import END, EOS
from forgeml.tokenizer.train import train_bpe_tokenizer

transformers = pytest.importorskip("transformers")

PROMPT = "<|user|>\nhello there<|end|>\n<|assistant|>\n"
REPLY = "the quick brown fox<|end|>\n"
MAX_NEW = 24


@pytest.fixture
def tokenizer_dir(tmp_path: Path, text_folder: Path) -> Path:
    texts = [p.read_text() for p in sorted(text_folder.rglob("*.md"))]
    return train_bpe_tokenizer(texts, vocab_size=300, out_dir=tmp_path / "tok")


def chat_model(
    tokenizer_dir: Path, steps: int = 150
) -> tuple[Transformer, list[int], dict[str, int]]:
    """A tiny model trained (`steps` steps) until greedy decoding of PROMPT gives REPLY (which
    ends at `<|end|>`, never at `<|eos|>`); returns it, the prompt ids and the stop ids."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    ids = tok.encode(PROMPT + REPLY, add_special_tokens=False).ids
    prompt = tok.encode(PROMPT, add_special_tokens=False).ids
    torch.manual_seed(0)
    cfg = ModelConfig(
        dim=32, n_layers=1, n_heads=2, n_kv_heads=2, ffn_hidden=64,
        vocab_size=tok.get_vocab_size(), max_seq_len=64,
    )  # fmt: skip
    model = Transformer(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x, y = torch.tensor([ids[:-1]]), torch.tensor([ids[1:]])
    for _ in range(steps):
        opt.zero_grad()
        model(x, y).backward()
        opt.step()
    stops = {"end": tok.token_to_id(END), "eos": tok.token_to_id(EOS)}
    return model.eval(), prompt, stops


def test_transformers_generate_stops_at_end_of_turn(tmp_path, tokenizer_dir):
    model, prompt, stops = chat_model(tokenizer_dir)
    out = export_hf(model, tmp_path / "export", tokenizer_dir)

    gen = transformers.GenerationConfig.from_pretrained(out)
    assert gen.eos_token_id == [stops["end"], stops["eos"]]
    defaults = GenerateConfig()
    assert gen.do_sample is True
    assert (gen.temperature, gen.top_p, gen.top_k) == (
        defaults.temperature,
        defaults.top_p,
        defaults.top_k,
    )
    config = json.loads((out / "config.json").read_text())
    assert config["eos_token_id"] == [stops["end"], stops["eos"]]
    assert config["rope_theta"] == model.cfg.rope_theta
    assert config["rope_parameters"]["rope_theta"] == model.cfg.rope_theta

    hf = transformers.AutoModelForCausalLM.from_pretrained(out)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert (
        hf_tok.apply_chat_template(
            [{"role": "user", "content": "hello there"}], add_generation_prompt=True, tokenize=False
        )
        == PROMPT
    )
    ids = torch.tensor([prompt])
    with torch.no_grad():
        # greedy, every other setting from generation_config.json (the stop ids included)
        seq = hf.generate(ids, max_new_tokens=MAX_NEW, do_sample=False)[0, len(prompt) :]
    assert seq[-1].item() == stops["end"] and len(seq) < MAX_NEW
    assert hf_tok.decode(seq) == REPLY.rstrip("\n")


def test_export_of_a_registered_model_writes_generation_config(workspace, tmp_path, tokenizer_dir):
    model, _, stops = chat_model(tokenizer_dir, steps=0)

    def body(work: Path):
        folder = export_hf(model, work / "model", tokenizer_dir)
        return [Output("model", "chat-tiny", folder, {"arch": "dense"})], {}

    ref = run_stage(workspace, "test-model", {"seed": 0}, [], body).output
    out = export_model(workspace, ref, tmp_path / "export")
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [stops["end"], stops["eos"]]
    assert transformers.GenerationConfig.from_pretrained(out).eos_token_id == gen["eos_token_id"]


def test_an_imported_checkpoints_own_generation_settings_are_kept():
    theirs = {"eos_token_id": [7, 9], "temperature": 0.6, "do_sample": True}
    merged = generation_config({"bos": 1, "eos": 2, "end": 5}, theirs)
    assert merged["eos_token_id"] == [5, 2, 7, 9]
    assert merged["temperature"] == 0.6 and merged["bos_token_id"] == 1
    plain = generation_config({"eos": 2})  # no `<|end|>` in the tokenizer: one stop id
    assert plain["eos_token_id"] == 2
