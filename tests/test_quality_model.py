"""The quality model of curate.quality_model: hashed n-gram features, a logistic regression
that learns a separable rule, a rank-based AUC checked against a naive count, and curation
reporting held-out agreement (and dropping low scorers only when asked)."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from forgeml.core.config import CurateConfig
from forgeml.data.curate import curate_documents
from forgeml.data.quality import (
    QualitySample,
    hashed_features,
    roc_auc,
    train_quality_model,
)
from forgeml.data.report import render_html

WORDS = "river stone light paper window garden silver market yellow engine harbor crate".split()


def _prose(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS + ["the", "and", "of"]) for _ in range(60)) + "."


def _junk(rng: random.Random) -> str:
    return " ".join(f"{rng.randrange(10**6):x}" + rng.choice("#$%/|") for _ in range(60))


def test_hashed_features_are_stable_and_normalised():
    a = hashed_features(["The cat sat.", ""], 1 << 12)
    b = hashed_features(["The cat sat.", ""], 1 << 12)
    assert np.array_equal(a.indices, b.indices) and a.rows == 2
    assert a.indptr[-1] == a.indptr[-2]  # the empty text has no features
    first = a.values[a.indptr[0] : a.indptr[1]]
    assert np.isclose(np.sqrt((first**2).sum()), 1.0)
    # 4 tokens (the, cat, sat, .) and 3 bigrams: 7 grams, fewer columns only on a collision
    assert 6 <= a.indptr[1] <= 7


def test_roc_auc_matches_pair_counting():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 40).astype(float)  # many ties
    labels = rng.integers(0, 2, 40).astype(bool)
    pairs = [
        1.0 if p > n else 0.5 if p == n else 0.0
        for p, n in itertools.product(scores[labels], scores[~labels])
    ]
    assert roc_auc(scores, labels) == pytest.approx(np.mean(pairs))
    assert np.isnan(roc_auc(scores, np.ones(40, bool)))


def test_model_learns_a_rule_and_generalises():
    rng = random.Random(0)
    texts = [_prose(rng) for _ in range(150)] + [_junk(rng) for _ in range(50)]
    labels = np.array([1] * 150 + [0] * 50)
    model = train_quality_model(texts, labels, buckets=1 << 14, epochs=100)
    fresh = [_prose(rng) for _ in range(30)] + [_junk(rng) for _ in range(30)]
    scores = model.score(fresh)
    assert roc_auc(scores, np.array([1] * 30 + [0] * 30)) > 0.95
    assert (scores[:30] >= 0.5).mean() > 0.9 and (scores[30:] < 0.5).mean() > 0.9


def test_reservoir_sample_is_bounded_and_seeded():
    def run(seed: int) -> list:
        sample = QualitySample(10, seed)
        sample.extend([(str(i), i % 2) for i in range(1000)])
        return sample.items

    assert len(run(0)) == 10 and run(0) == run(0) and run(0) != run(1)
    assert any(int(t) >= 500 for t, _ in run(0))  # late items get in


def _raw(tmp_path, texts: list[str]):
    from forgeml.data.ingest import SCHEMA as RAW

    rows = {f.name: [None] * len(texts) for f in RAW}
    rows.update(
        text=texts,
        type=["text"] * len(texts),
        doc_id=[f"d{i}" for i in range(len(texts))],
        path=[f"docs/{i}.txt" for i in range(len(texts))],
    )
    raw = tmp_path / "raw.parquet"
    pq.write_table(pa.table(rows, schema=RAW), raw)
    return raw


def test_curation_reports_heldout_agreement_and_drops_only_when_asked(tmp_path):
    rng = random.Random(1)
    texts = [_prose(rng) for _ in range(120)] + [_junk(rng) for _ in range(40)]
    raw = _raw(tmp_path, texts)
    settings = {
        "profile": "web",
        "language": {"enabled": False},
        "dedup": {"near": False},
        "quality_model": {"enabled": True, "buckets": 1 << 14, "epochs": 100},
    }
    report = curate_documents(raw, tmp_path / "a.parquet", CurateConfig.model_validate(settings))
    q = report.quality_model
    assert q["sampled"] == 160 and q["dropped_by_rules"] == 40  # junk: Gopher alpha words
    assert q["trained_on"] + q["heldout"] == 160 and q["heldout_auc"] > 0.95
    assert "quality_model:low_score" not in report.dropped_by_reason  # score only by default
    assert "heldout_auc" in render_html(report.to_dict())
    assert report.stages[-1] == {"stage": "quality_model", "in": report.kept, "out": report.kept}
    # with a threshold, survivors that score low are dropped and counted
    settings["quality_model"]["min_score"] = 0.999999
    strict = curate_documents(raw, tmp_path / "b.parquet", CurateConfig.model_validate(settings))
    low = strict.dropped_by_reason.get("quality_model:low_score", 0)
    assert low > 0 and strict.kept == report.kept - low
    assert strict.stages[-1] == {"stage": "quality_model", "in": report.kept, "out": strict.kept}
    assert strict.kept + strict.dropped + strict.failed == strict.input
    assert pq.read_metadata(tmp_path / "b.parquet").num_rows == strict.kept
