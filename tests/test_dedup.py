"""Dedup: exact (normalised) and near-duplicate MinHash + LSH on a planted set, and our
MinHash against a per-document reference and the true Jaccard similarity."""

from __future__ import annotations

import random

import numpy as np

from forgeml.data.dedup import (
    MinHasher,
    deduplicate,
    exact_hash,
    lsh_params,
    near_duplicate_clusters,
)


def planted_corpus(seed: int = 0, n_base: int = 300, n_dups: int = 120):
    """Base documents, near copies (2% of words changed, a sentence added) and hard
    negatives (30% shared with a base document). Returns texts and {dup index: source}."""
    rng = random.Random(seed)
    vocab = [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
        for _ in range(4000)
    ]
    base = [[rng.choice(vocab) for _ in range(rng.randint(150, 400))] for _ in range(n_base)]
    texts = [" ".join(w) for w in base]
    truth = {}
    for _ in range(n_dups):
        src = rng.randrange(n_base)
        words = list(base[src])
        for i in rng.sample(range(len(words)), max(1, len(words) // 50)):
            words[i] = rng.choice(vocab)
        words += ["extra", "closing", "words", "here"]
        truth[len(texts)] = src
        texts.append(" ".join(words))
    for _ in range(40):
        words = base[rng.randrange(n_base)]
        cut = int(len(words) * 0.3)
        texts.append(" ".join(words[:cut] + [rng.choice(vocab) for _ in range(len(words) - cut)]))
    return texts, truth


def shingles(text: str, n: int = 5) -> set:
    w = text.lower().split()
    return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}


def test_exact_hash_normalises_layout_and_case():
    assert exact_hash("Hello   World\n") == exact_hash("hello world")
    assert exact_hash("hello world") != exact_hash("hello worlds")


def test_minhash_matches_reference_and_estimates_jaccard():
    texts, truth = planted_corpus(1, n_base=20, n_dups=10)
    texts.append("x " * 20000)  # a document longer than one numpy block
    mh = MinHasher(num_perm=128, seed=3)
    sigs = mh.signatures(texts)
    for i in (0, 7, len(texts) - 1):
        g = mh.shingle_hashes(texts[i])
        with np.errstate(over="ignore"):
            ref = (mh.a[:, None] * g[None, :] + mh.b[:, None]).min(axis=1) >> np.uint64(32)
        assert np.array_equal(sigs[i], ref.astype(np.uint32))
    errors = []
    for dup, src in truth.items():
        a, b = shingles(texts[dup]), shingles(texts[src])
        errors.append(abs((sigs[dup] == sigs[src]).mean() - len(a & b) / len(a | b)))
    assert np.mean(errors) < 0.05  # standard error at 128 permutations is about 0.04
    assert np.array_equal(MinHasher(128, seed=3).signatures(texts[:5]), sigs[:5])  # deterministic


def test_lsh_params_shape():
    bands, rows = lsh_params(0.8, 128)
    assert bands * rows <= 128 and rows > bands / 2
    assert lsh_params(0.5, 128)[1] < rows  # a lower threshold needs fewer rows per band


def test_planted_near_duplicates_recall_and_precision():
    texts, truth = planted_corpus()
    result = deduplicate(texts, threshold=0.7)
    removed = {i for i, r in enumerate(result.reason) if r == "dedup:near"}
    found = removed & set(truth)
    recall = len(found) / len(truth)
    precision = len(found) / max(1, len(removed))
    assert recall >= 0.95 and precision >= 0.95, (recall, precision)
    for cluster in result.near_clusters:  # the earliest document represents its cluster
        assert result.keep[cluster[0]] and not result.keep[cluster[1:]].any()


def test_exact_duplicates_kept_once_and_clusters_reported():
    texts = ["alpha beta gamma delta epsilon zeta", "Alpha  beta gamma delta epsilon zeta", "other"]
    result = deduplicate(texts, near=False)
    assert result.keep.tolist() == [True, False, True]
    assert result.exact_clusters == [[0, 1]]
    assert near_duplicate_clusters(np.zeros((1, 16), dtype=np.uint32), 0.8) == []
