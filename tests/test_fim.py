"""Fill-in-the-middle transform and packing: PSM/SPM layout, char and line spans, rates,
determinism by seed, raw text never forging sentinels, and the infill prompt helpers."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from forgeml.core.config import FimConfig
from forgeml.core.errors import ConfigError, ForgeError
from forgeml.eval.infill import fim_prompt_ids, parse_infill_prompt
from forgeml.tokenizer.fim import FimEncoder, FimTokens, fim_plan, fim_transform, pack_fim_shards
from forgeml.tokenizer.pack import TokenShards
from forgeml.tokenizer.train import load_tokenizer, train_bpe_tokenizer

FIM = FimTokens(prefix=8, middle=9, suffix=10)
LINES = [f"line {i}: value = {i * 7 % 13}\n" for i in range(40)]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    texts = ["".join(LINES[i:] + LINES[:i]) for i in range(40)]
    return train_bpe_tokenizer(texts, vocab_size=320, out_dir=tmp_path_factory.mktemp("tok"))


def split_fim(ids: list[int]) -> tuple[list[int], list[int], list[int], bool]:
    """Inverse of the layout: (prefix, middle, suffix, spm) from a FIM example."""
    assert ids[0] == FIM.prefix and ids.count(FIM.middle) == 1 and ids.count(FIM.suffix) == 1
    s, m = ids.index(FIM.suffix), ids.index(FIM.middle)
    if s == 1:  # SPM: <PRE> <SUF> suffix <MID> prefix+middle (the cut is not in the ids)
        return [], ids[m + 1 :], ids[2:m], True
    return ids[1:s], ids[m + 1 :], ids[s + 1 : m], False


def test_token_fim_reorders_and_keeps_every_token():
    doc = list(range(100, 160))
    seen = set()
    for seed in range(200):
        out = fim_transform(doc, np.random.default_rng(seed), FimConfig(rate=1.0), tokens=FIM)
        pre, mid, suf, spm = split_fim(out)
        seen.add(spm)
        assert len(out) == len(doc) + 3
        assert pre + mid + suf == doc if not spm else mid + suf == doc
    assert seen == {True, False}  # spm_rate 0.5 gives both orders
    plain = fim_transform(doc, np.random.default_rng(0), FimConfig(rate=0.0), tokens=FIM)
    assert plain == doc


def test_text_fim_char_and_line_spans(tok_dir):
    tok = load_tokenizer(tok_dir)

    def encode(texts):
        return [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]

    text = "".join(LINES[:12])
    for unit in ("char", "line"):
        cfg = FimConfig(rate=1.0, spm_rate=0.0, unit=unit)
        cuts = set()
        for seed in range(60):
            plan = fim_plan(text, np.random.default_rng(seed), cfg)
            cuts.add(plan.lo)
            if unit == "line":
                assert plan.lo == 0 or text[plan.lo - 1] == "\n"
                assert plan.hi == len(text) or text[plan.hi - 1] == "\n"
            out = fim_transform(text, np.random.default_rng(seed), cfg, tokens=FIM, encode=encode)
            pre, mid, suf, spm = split_fim(out)
            assert not spm or plan.lo == 0  # an empty PSM prefix reads like SPM
            assert tok.decode(pre) + tok.decode(mid) + tok.decode(suf) == text
            assert tok.decode(pre) == text[: plan.lo] and tok.decode(suf) == text[plan.hi :]
        # char cuts land inside lines; line cuts only at the 13 line boundaries
        assert (
            len(cuts) > 13
            if unit == "char"
            else cuts <= {0, *itertools.accumulate(map(len, LINES[:12]))}
        )
    with pytest.raises(ConfigError, match="line-level"):
        fim_transform(
            [1, 2, 3], np.random.default_rng(0), FimConfig(rate=1, unit="line"), tokens=FIM
        )


def test_rates_are_respected_and_encoder_is_batch_independent(tok_dir):
    tok = load_tokenizer(tok_dir)
    texts = [LINES[i % 40] * 3 for i in range(600)]
    cfg = FimConfig(rate=0.3, spm_rate=0.25, seed=5)
    enc = FimEncoder(cfg)
    whole = enc(tok, texts)
    assert abs(enc.fim_docs / 600 - 0.3) < 0.06
    assert abs(enc.spm_docs / enc.fim_docs - 0.25) < 0.1
    assert sum(FIM.middle in ids for ids in whole) == enc.fim_docs
    batched_enc = FimEncoder(cfg)
    batched = [ids for i in range(0, 600, 7) for ids in batched_enc(tok, texts[i : i + 7])]
    assert batched == whole
    other = FimEncoder(cfg.model_copy(update={"seed": 6}))(tok, texts)
    assert other != whole


def write_docs(path: Path, texts: list[str]) -> Path:
    ids = [f"d{i}" for i in range(len(texts))]
    pq.write_table(pa.table({"doc_id": ids, "text": texts}), path)
    return path


def test_pack_fim_shards_is_deterministic_and_raw_sentinels_stay_text(tok_dir, tmp_path):
    texts = ["".join(LINES[i : i + 5]) for i in range(30)]
    texts[3] = "quoting <|fim_middle|> and <|eos|> in raw text\n"
    data = write_docs(tmp_path / "d.parquet", texts)
    cfg = FimConfig(rate=0.5, seed=1)
    a = pack_fim_shards([data], tok_dir, tmp_path / "a", cfg, shard_tokens=500)
    b = pack_fim_shards([data], tok_dir, tmp_path / "b", cfg, shard_tokens=500)
    pack_fim_shards([data], tok_dir, tmp_path / "c", FimConfig(rate=0.5, seed=2))
    assert a == b and a["fim"]["fim_docs"] > 0 and a["n_docs"] == 30 and len(a["shards"]) > 1
    for shard in a["shards"]:
        assert (tmp_path / "a" / shard["file"]).read_bytes() == (
            tmp_path / "b" / shard["file"]
        ).read_bytes()
    sa, sc = TokenShards(tmp_path / "a"), TokenShards(tmp_path / "c")
    stream = sa.window(0, sa.n_tokens)
    assert not np.array_equal(stream, sc.window(0, sc.n_tokens))
    # Exactly one <MID> per FIM document: the quoted one in doc 3 was encoded as text.
    assert int((stream == FIM.middle).sum()) == a["fim"]["fim_docs"]
    assert int((stream == sa.eos_id).sum()) == 30
    # Every document still decodes to its original characters once un-rearranged.
    tok = load_tokenizer(tok_dir)
    starts = [int(s) for s in sa.doc_offsets()] + [sa.n_tokens]
    for i, (lo, hi) in enumerate(zip(starts[:-1], starts[1:], strict=True)):
        ids = stream[lo : hi - 1].tolist()
        if FIM.middle in ids:
            pre, mid, suf, spm = split_fim(ids)
            restored = (
                tok.decode(mid) + tok.decode(suf)
                if spm
                else (tok.decode(pre) + tok.decode(mid) + tok.decode(suf))
            )
        else:
            restored = tok.decode(ids, skip_special_tokens=False)
        assert restored == texts[i]


def test_infill_prompt_parsing_and_truncation(tok_dir):
    assert parse_infill_prompt("def f(x):\n    <FILL>\n") == ("def f(x):\n    ", "\n")
    for bad in ("no marker", "<FILL> twice <FILL>"):
        with pytest.raises(ForgeError, match="exactly one"):
            parse_infill_prompt(bad)
    tok = load_tokenizer(tok_dir)
    prefix, suffix = "".join(LINES[:20]), "".join(LINES[20:])
    full = fim_prompt_ids(tok, prefix, suffix, 10_000)
    assert full[0] == FIM.prefix and full[-1] == FIM.middle
    short = fim_prompt_ids(tok, prefix, suffix, 40)
    assert len(short) == 40
    pre, suf = short[1 : short.index(FIM.suffix)], short[short.index(FIM.suffix) + 1 : -1]
    assert prefix.endswith(tok.decode(pre)) and suffix.startswith(tok.decode(suf))
    assert abs(len(pre) - len(suf)) <= 1
    # A short suffix leaves its unused room to the prefix.
    lopsided = fim_prompt_ids(tok, prefix, "x", 40)
    assert len(lopsided) == 40 and lopsided[-3:-1] == [FIM.suffix, tok.token_to_id("x")]
    # SPM: the same pieces, suffix first and the prefix right before the middle.
    spm = fim_prompt_ids(tok, prefix, suffix, 40, "spm")
    assert spm == [FIM.prefix, FIM.suffix, *suf, FIM.middle, *pre]


def test_chunked_fim_makes_one_example_per_chunk_and_keeps_every_character(tok_dir):
    tok = load_tokenizer(tok_dir)
    text = "".join(f"line {i} of a long manual page\n" for i in range(60))
    cfg = FimConfig(rate=1.0, spm_rate=0.0, chunk_chars=200, seed=2)
    ids = FimEncoder(cfg)(tok, [text])[0]
    tokens = FimTokens.from_tokenizer(tok)
    n_chunks = sum(1 for _ in range(0, len(text), 200)) - 1  # cut at line ends past 200 chars
    assert ids.count(tokens.middle) >= n_chunks - 1 > 1
    # PSM per chunk: removing sentinels and putting each middle back gives the text again
    restored, rest = [], ids
    while rest:
        pre, mid, suf, _ = split_fim(
            rest[: rest.index(tokens.prefix, 1)] if tokens.prefix in rest[1:] else rest
        )
        restored += pre + mid + suf
        rest = rest[rest.index(tokens.prefix, 1) :] if tokens.prefix in rest[1:] else []
    assert tok.decode(restored) == text


PROSE = (
    "Operators must archive the nightly ledger before 0400. A badge-holder's request, "
    "once logged, is reviewed by the compliance desk within 12 business days.\n"
)


def test_word_spans_are_runs_of_whole_words_and_the_mix_is_respected():
    import re

    cfg = FimConfig(rate=1.0, unit="word", max_span_words=2)
    lengths = set()
    for seed in range(300):
        plan = fim_plan(PROSE, np.random.default_rng(seed), cfg)
        middle = PROSE[plan.lo : plan.hi]
        # starts and ends on a word edge, never on punctuation or space
        assert middle[0].isalnum() and middle[-1].isalnum(), middle
        assert plan.lo == 0 or not PROSE[plan.lo - 1].isalnum()
        assert not PROSE[plan.hi].isalnum()
        lengths.add(len(re.findall(r"\w+(?:[-']\w+)*", middle)))
    assert lengths == {1, 2}
    mixed = FimConfig(rate=1.0, span_mix={"word": 3, "line": 1})
    kinds = {"word": 0, "line": 0}
    for seed in range(400):
        plan = fim_plan(PROSE * 4, np.random.default_rng(seed), mixed)
        span = (PROSE * 4)[plan.lo : plan.hi]
        is_line = plan.lo % len(PROSE) == 0 and plan.hi % len(PROSE) == 0
        assert is_line or (span[0].isalnum() and span[-1].isalnum())
        kinds["line" if is_line else "word"] += 1
    assert abs(kinds["word"] / 400 - 0.75) < 0.08
    with pytest.raises(ConfigError, match="span_mix"):
        fim_plan(PROSE, np.random.default_rng(0), FimConfig(rate=1, span_mix={"word": 0}))
    with pytest.raises(ConfigError, match="word-level"):
        fim_plan([1, 2, 3], np.random.default_rng(0), FimConfig(rate=1, unit="word"))


def test_every_fim_middle_ends_with_eos(tok_dir):
    """The paper's <EOT>: a middle is closed by EOS, so infill decoding knows where to stop.
    Inside a chunked document the encoder adds it; after the last unit the packer does."""
    tok = load_tokenizer(tok_dir)
    eos = tok.token_to_id("<|eos|>")
    text = "".join(f"line {i} of a long manual page\n" for i in range(60))
    cfg = FimConfig(rate=1.0, spm_rate=0.0, chunk_chars=200, unit="word", seed=3)
    ids = FimEncoder(cfg)(tok, [text])[0]
    n_fim = ids.count(FimTokens.from_tokenizer(tok).middle)
    assert n_fim > 3
    assert ids.count(eos) == n_fim - 1 and ids[-1] != eos
    pre = FimTokens.from_tokenizer(tok).prefix
    assert all(ids[i + 1] == pre for i, t in enumerate(ids) if t == eos)  # next chunk's example
