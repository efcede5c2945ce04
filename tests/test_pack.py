"""Packing Parquet text into token shards, and reading them back with `TokenShards`."""

from __future__ import annotations

import json
import random
import tracemalloc

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from forgeml.core.errors import DataError, ForgeError
from forgeml.tokenizer.chat import SPECIAL_TOKENS
from forgeml.tokenizer.pack import TokenShards, pack_token_shards, token_dtype
from forgeml.tokenizer.train import load_tokenizer, train_bpe_tokenizer

WORDS = "pack shard token eos window über 数据 🙂 def return\tx = 1\n".split(" ")


def make_docs(n: int, seed: int = 0) -> list[str | None]:
    rng = random.Random(seed)
    docs: list[str | None] = [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 60))) for _ in range(n)
    ]
    docs[3] = "quoting <|eos|> and <|user|> and <|end|> inside a document"
    docs[5] = ""  # skipped: would only be a lone EOS
    docs[7] = None  # skipped
    return docs


def write_parquet(path, docs, **extra_columns):
    table = pa.table({"text": pa.array(docs, pa.string()), **extra_columns})
    pq.write_table(table, path, row_group_size=50)
    return path


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    corpus = [d for d in make_docs(300, seed=1) if d]
    return train_bpe_tokenizer(
        corpus, vocab_size=400, out_dir=tmp_path_factory.mktemp("tok") / "tokenizer"
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    docs_a, docs_b = make_docs(130, seed=2), make_docs(70, seed=3)
    files = [
        write_parquet(folder / "a.parquet", docs_a, id=pa.array(range(130))),
        write_parquet(folder / "b.parquet", docs_b, id=pa.array(range(130, 200))),
    ]
    return files, docs_a + docs_b


def naive_stream(tok_dir, docs) -> tuple[np.ndarray, list[int]]:
    """Each non-empty document encoded alone, followed by EOS; and the document starts."""
    tok = load_tokenizer(tok_dir)
    tok.encode_special_tokens = True
    stream, starts = [], []
    for doc in docs:
        if doc:
            starts.append(len(stream))
            stream += tok.encode(doc, add_special_tokens=False).ids + [tok.token_to_id("<|eos|>")]
    return np.array(stream, np.int64), starts


def test_index_counts_and_stream_match_naive_encoding(tmp_path, tok_dir, corpus):
    files, docs = corpus
    index = pack_token_shards(files, tok_dir, tmp_path / "shards", batch_docs=16)
    expected, starts = naive_stream(tok_dir, docs)
    kept = [d for d in docs if d]
    assert index == json.loads((tmp_path / "shards" / "index.json").read_text())
    assert index["format"] == "forgeml-shards-v1" and index["dtype"] == "uint16"
    assert index["n_docs"] == len(kept) == 196
    assert index["n_tokens"] == len(expected)
    assert index["n_bytes"] == sum(len(d.encode("utf-8")) for d in kept)
    assert (
        index["vocab_size"] == load_tokenizer(tok_dir).get_vocab_size()
        and index["eos_id"] == 1
        and index["bos_id"] is None
    )
    assert len(index["tokenizer_sha256"]) == 64
    shards = TokenShards(tmp_path / "shards")
    assert (shards.n_tokens, shards.n_docs, shards.dtype) == (len(expected), 196, np.uint16)
    np.testing.assert_array_equal(shards.window(0, shards.n_tokens), expected)
    np.testing.assert_array_equal(shards.doc_offsets(), np.array(starts, np.uint64))


def test_eos_only_between_documents_and_no_forged_specials(tmp_path, tok_dir, corpus):
    files, docs = corpus
    pack_token_shards(files, tok_dir, tmp_path / "shards")
    shards = TokenShards(tmp_path / "shards")
    stream = shards.window(0, shards.n_tokens)
    offsets = shards.doc_offsets().astype(np.int64)
    doc_ends = np.append(offsets[1:], shards.n_tokens) - 1
    # The document quoting "<|eos|>" text must not yield special ids: EOS appears exactly at the
    # end of every document and no other special id appears at all.
    np.testing.assert_array_equal(np.flatnonzero(stream == shards.eos_id), doc_ends)
    assert not np.isin(stream, [i for i in range(len(SPECIAL_TOKENS)) if i != 1]).any()
    tok = load_tokenizer(tok_dir)
    quoted = stream[offsets[3] : doc_ends[3]]  # docs 0..3 are all non-empty
    assert tok.decode(quoted.tolist()) == docs[3]


def test_tiny_shards_windows_cross_boundaries(tmp_path, tok_dir, corpus):
    files, _ = corpus
    index = pack_token_shards(
        files, tok_dir, tmp_path / "shards", shard_tokens=37, batch_docs=7, progress=True
    )
    whole = TokenShards(tmp_path / "shards")
    ref_index = pack_token_shards(files, tok_dir, tmp_path / "one")
    ref = TokenShards(tmp_path / "one").window(0, ref_index["n_tokens"])
    n = index["n_tokens"]
    assert len(index["shards"]) == -(-n // 37) > 50
    assert all(s["n_tokens"] == 37 for s in index["shards"][:-1])
    assert sum(s["n_docs"] for s in index["shards"]) == index["n_docs"]
    for s in index["shards"]:
        assert (tmp_path / "shards" / s["file"]).stat().st_size == 2 * s["n_tokens"]
    np.testing.assert_array_equal(whole.doc_offsets(), TokenShards(tmp_path / "one").doc_offsets())
    rng = np.random.default_rng(0)
    cases = [(0, n), (36, 2), (37, 0), (n - 1, 1), (0, 0), (n, 0), (30, 200)]
    cases += [(int(s), int(rng.integers(0, n - s + 1))) for s in rng.integers(0, n, 50)]
    for start, length in cases:
        window = whole.window(start, length)
        assert window.dtype == np.int64 and len(window) == length
        np.testing.assert_array_equal(window, ref[start : start + length])
    for start, length in [(n - 3, 4), (n + 1, 0), (-1, 2), (0, n + 1)]:
        with pytest.raises(IndexError):
            whole.window(start, length)


def _peak_packing_memory(tmp_path, tok_dir, n_docs: int) -> tuple[int, int]:
    files = [write_parquet(tmp_path / f"{n_docs}.parquet", make_docs(n_docs, seed=4))]
    tracemalloc.start()
    try:
        index = pack_token_shards(
            files, tok_dir, tmp_path / f"shards{n_docs}", shard_tokens=4096, batch_docs=32
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, index["n_tokens"]


def test_packing_memory_does_not_grow_with_the_corpus(tmp_path, tok_dir):
    small_peak, small_tokens = _peak_packing_memory(tmp_path, tok_dir, 1000)
    big_peak, big_tokens = _peak_packing_memory(tmp_path, tok_dir, 6000)
    assert big_tokens > 5 * small_tokens
    # Peak memory is the write buffer plus one batch, whatever the corpus size.
    assert big_peak < 1.2 * small_peak


def test_row_filter_routes_rows(tmp_path, tok_dir, corpus):
    files, docs = corpus
    train = pack_token_shards(
        files, tok_dir, tmp_path / "train", row_filter=lambda row: row["id"] % 5 != 0
    )
    held = pack_token_shards(
        files, tok_dir, tmp_path / "held", row_filter=lambda row: row["id"] % 5 == 0
    )
    everything = pack_token_shards(files, tok_dir, tmp_path / "all")
    assert train["n_docs"] + held["n_docs"] == everything["n_docs"]
    assert train["n_tokens"] + held["n_tokens"] == everything["n_tokens"]
    assert train["n_bytes"] + held["n_bytes"] == everything["n_bytes"]
    expected, _ = naive_stream(tok_dir, [d for i, d in enumerate(docs) if i % 5 == 0])
    np.testing.assert_array_equal(
        TokenShards(tmp_path / "held").window(0, held["n_tokens"]), expected
    )


def test_add_bos_prefixes_every_document(tmp_path, tok_dir, corpus):
    files, _ = corpus
    index = pack_token_shards(files, tok_dir, tmp_path / "shards", add_bos=True, shard_tokens=50)
    shards = TokenShards(tmp_path / "shards")
    stream = shards.window(0, shards.n_tokens)
    assert index["bos_id"] == 0
    np.testing.assert_array_equal(np.flatnonzero(stream == 0), shards.doc_offsets())


def test_refuses_to_overwrite_and_leaves_no_temp_folders(tmp_path, tok_dir, corpus):
    files, _ = corpus
    out = tmp_path / "shards"
    out.mkdir()
    pack_token_shards(files, tok_dir, out)  # an existing empty folder is fine
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(ForgeError, match="not empty"):
        pack_token_shards(files, tok_dir, out)
    assert sorted(p.name for p in out.iterdir()) == before
    with pytest.raises(DataError, match="no column 'body'"):
        pack_token_shards(files, tok_dir, tmp_path / "other", text_column="body")
    with pytest.raises(DataError, match="no non-empty"):
        pack_token_shards(files, tok_dir, tmp_path / "none", row_filter=lambda row: False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards"]


def test_uint32_shards_for_large_vocabularies(tmp_path):
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS.values())}
    vocab.update({f"w{i}": len(vocab) + i for i in range(70_000)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|pad|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    (tmp_path / "tok").mkdir()
    tok.save(str(tmp_path / "tok" / "tokenizer.json"))
    files = [write_parquet(tmp_path / "d.parquet", ["w0 w69999", "w65600"])]
    index = pack_token_shards(files, tmp_path / "tok", tmp_path / "shards")
    assert index["dtype"] == "uint32" and index["vocab_size"] == 70_011
    shards = TokenShards(tmp_path / "shards")
    assert shards.window(0, 5).tolist() == [11, 70_010, 1, 65_611, 1]


def test_reader_rejects_truncated_shards(tmp_path, tok_dir, corpus):
    files, _ = corpus
    index = pack_token_shards(files, tok_dir, tmp_path / "shards")
    shard = tmp_path / "shards" / index["shards"][0]["file"]
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(DataError, match="truncated"):
        TokenShards(tmp_path / "shards")
