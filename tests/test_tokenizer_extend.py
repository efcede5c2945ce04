"""Tokenizer extension for continued pre-training: ids appended in order, exact round trip,
loadable by transformers, and embedding rows initialised as the mean of their old pieces."""

from __future__ import annotations

import json

import pytest
import torch

from forgeml.core.config import ModelConfig
from forgeml.core.errors import ConfigError
from forgeml.models.dense import Transformer
from forgeml.models.resize import resize_embeddings_mean_init
from forgeml.tokenizer.extend import extend_tokenizer
from forgeml.tokenizer.train import load_tokenizer, train_bpe_tokenizer

GENERAL = [
    f"The meeting on day {i} moved to the north office; bring the report and the notes.\n"
    for i in range(200)
]
NEW = ["END-PROCEDURE", "DECLARE", "PAYMASTER"]


@pytest.fixture(scope="module")
def base_tok(tmp_path_factory):
    return train_bpe_tokenizer(GENERAL, vocab_size=300, out_dir=tmp_path_factory.mktemp("base"))


def test_new_tokens_get_ids_after_the_vocab_and_round_trip(base_tok, tmp_path):
    old = load_tokenizer(base_tok)
    n_old = old.get_vocab_size(with_added_tokens=True)
    # "x" is already one token (a byte): skipped; the duplicate is added once.
    ids = extend_tokenizer(base_tok, [*NEW, "x", "DECLARE"], tmp_path / "ext")
    assert ids == {t: n_old + i for i, t in enumerate(NEW)}
    new = load_tokenizer(tmp_path / "ext")
    assert new.get_vocab_size(with_added_tokens=True) == n_old + 3
    text = "DECLARE PAY AS NUMBER.\nEND-PROCEDURE. the PAYMASTER <|eos|> ok"
    enc = new.encode(text, add_special_tokens=False)
    assert ids["END-PROCEDURE"] in enc.ids and ids["PAYMASTER"] in enc.ids
    assert new.decode(enc.ids, skip_special_tokens=False) == text
    assert len(enc.ids) < len(old.encode(text, add_special_tokens=False).ids)
    assert json.loads((tmp_path / "ext" / "added_domain_tokens.json").read_text()) == ids
    assert (tmp_path / "ext" / "tokenizer_config.json").is_file()

    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(tmp_path / "ext"))
    assert hf.encode("x DECLARE y", add_special_tokens=False) == new.encode("x DECLARE y").ids
    assert len(hf) == n_old + 3

    spaced = extend_tokenizer(base_tok, ["DECLARE"], tmp_path / "sp", space_variants=True)
    assert list(spaced) == ["DECLARE", " DECLARE"]
    sp = load_tokenizer(tmp_path / "sp")
    assert sp.encode("a DECLARE", add_special_tokens=False).ids[-1] == spaced[" DECLARE"]
    with pytest.raises(ConfigError, match="empty"):
        extend_tokenizer(base_tok, ["  "], tmp_path / "bad")


@pytest.mark.parametrize("tied", [True, False])
def test_resize_initialises_new_rows_as_the_mean_of_their_pieces(base_tok, tmp_path, tied):
    old = load_tokenizer(base_tok)
    ids = extend_tokenizer(base_tok, NEW, tmp_path / "ext")
    cfg = ModelConfig(
        dim=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_hidden=64, max_seq_len=32,
        vocab_size=old.get_vocab_size(), tie_embeddings=tied,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Transformer(cfg)
    resized = resize_embeddings_mean_init(model, base_tok, tmp_path / "ext")
    assert resized.cfg.vocab_size == cfg.vocab_size + 3
    emb, old_emb = resized.tok_embeddings.weight, model.tok_embeddings.weight
    torch.testing.assert_close(emb[: cfg.vocab_size], old_emb, rtol=0, atol=0)
    for token, i in ids.items():
        pieces = old.encode(token, add_special_tokens=False).ids
        assert len(pieces) > 1
        torch.testing.assert_close(emb[i], old_emb[pieces].mean(0))
        out, old_out = resized.output.weight, model.output.weight
        torch.testing.assert_close(out[i], old_out[pieces].mean(0))
    assert (resized.output.weight is resized.tok_embeddings.weight) == tied
    # Text without the new tokens is scored exactly as before on the old vocabulary.
    x = torch.tensor([old.encode("the meeting moved", add_special_tokens=False).ids])
    with torch.no_grad():
        before, after = model(x), resized(x)
    torch.testing.assert_close(after[..., : cfg.vocab_size], before)


def test_resize_refuses_an_unrelated_tokenizer(base_tok, tmp_path):
    other = train_bpe_tokenizer(["zzz qqq " * 50] * 20, vocab_size=290, out_dir=tmp_path / "o")
    cfg = ModelConfig(dim=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_hidden=64, vocab_size=300)
    with pytest.raises(ConfigError, match="must extend"):
        resize_embeddings_mean_init(Transformer(cfg), base_tok, other)
