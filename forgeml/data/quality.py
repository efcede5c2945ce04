"""Model-based quality scoring trained on the user's own corpus (curate.quality_model).

A fastText-style linear classifier (Joulin et al., "Bag of Tricks for Efficient Text
Classification", arXiv 1607.01759): hashed word uni- and bigrams, TF-normalised, and a
logistic regression fit in numpy on the rule filters' verdicts (kept = 1, dropped = 0) for a
sample of this corpus's documents. Nothing is downloaded. Curation reports its held-out
agreement with the rules (accuracy, ROC AUC) and can drop survivors that score low.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from forgeml.core.curate_profiles import QualityModelConfig

_WORD = re.compile(r"\w+|[^\w\s]")


@dataclass(frozen=True)
class HashedFeatures:
    """Documents as a CSR matrix of hashed n-gram counts, each row scaled to unit L2 norm."""

    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray

    @property
    def rows(self) -> int:
        return len(self.indptr) - 1


def hashed_features(
    texts: list[str], buckets: int, ngrams: int = 2, max_chars: int = 4000
) -> HashedFeatures:
    """Lower-cased word (and punctuation) n-grams up to `ngrams`, CRC32-hashed into
    `buckets` columns (stable across processes, unlike `hash`), of each text's first
    `max_chars` characters."""
    indptr, indices, values = [0], [], []
    for text in texts:
        tokens = _WORD.findall(text[:max_chars].lower())
        grams = list(tokens)
        for n in range(2, ngrams + 1):
            grams += [" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
        cols, counts = np.unique(
            np.fromiter((zlib.crc32(g.encode()) % buckets for g in grams), np.int64, len(grams)),
            return_counts=True,
        )
        vals = counts.astype(np.float32)
        vals /= max(1e-6, float(np.sqrt((vals**2).sum())))
        indices.append(cols)
        values.append(vals)
        indptr.append(indptr[-1] + len(cols))
    empty_i, empty_v = np.zeros(0, np.int64), np.zeros(0, np.float32)
    return HashedFeatures(
        np.asarray(indptr, np.int64),
        np.concatenate(indices) if indices else empty_i,
        np.concatenate(values) if values else empty_v,
    )


@dataclass
class QualityModel:
    """Weights over hashed n-grams; `score` is the probability a rule would keep the text."""

    weights: np.ndarray
    bias: float
    ngrams: int

    def logits(self, x: HashedFeatures) -> np.ndarray:
        products = self.weights[x.indices] * x.values
        sums = np.add.reduceat(products, x.indptr[:-1]) if len(products) else np.zeros(x.rows)
        sums[np.diff(x.indptr) == 0] = 0.0  # reduceat repeats the next value for empty rows
        return sums + self.bias

    def score(self, texts: list[str]) -> np.ndarray:
        x = hashed_features(texts, len(self.weights), self.ngrams)
        return 1.0 / (1.0 + np.exp(-self.logits(x)))


def train_quality_model(
    texts: list[str],
    labels: np.ndarray,
    *,
    buckets: int = 1 << 18,
    ngrams: int = 2,
    epochs: int = 200,
    lr: float = 0.5,
    l2: float = 1e-4,
) -> QualityModel:
    """Full-batch logistic regression with Adagrad, the classes weighted to equal total
    weight (the rules usually keep far more than they drop)."""
    y = np.asarray(labels, np.float64)
    x = hashed_features(texts, buckets, ngrams)
    model = QualityModel(np.zeros(buckets, np.float64), 0.0, ngrams)
    pos = max(1.0, y.sum())
    neg = max(1.0, len(y) - y.sum())
    sample_w = np.where(y > 0, len(y) / (2 * pos), len(y) / (2 * neg)) / len(y)
    rows = np.repeat(np.arange(x.rows), np.diff(x.indptr))
    g2_w, g2_b = np.full(buckets, 1e-8), 1e-8
    for _ in range(epochs):
        p = 1.0 / (1.0 + np.exp(-model.logits(x)))
        err = (p - y) * sample_w
        grad = np.bincount(x.indices, weights=err[rows] * x.values, minlength=buckets)
        grad += l2 * model.weights
        g2_w += grad**2
        model.weights -= lr * grad / np.sqrt(g2_w)
        gb = float(err.sum())
        g2_b += gb**2
        model.bias -= lr * gb / np.sqrt(g2_b)
    return model


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (the Mann-Whitney U statistic, ties counted half); NaN
    when one class is absent."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if not n_pos or not n_neg:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):  # average ranks over ties
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


class QualitySample:
    """A seeded reservoir sample (Vitter's algorithm R) of (text, label) pairs, so the
    training set is bounded whatever the corpus size and the same for the same input."""

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size, self.seen = size, 0
        self.items: list[tuple[str, int]] = []
        self._rng = np.random.default_rng(seed)

    def extend(self, pairs: list[tuple[str, int]]) -> None:
        for pair in pairs:
            self.seen += 1
            if len(self.items) < self.size:
                self.items.append(pair)
            else:
                j = int(self._rng.integers(self.seen))
                if j < self.size:
                    self.items[j] = pair


def fit_quality_model(
    sample: QualitySample, cfg: QualityModelConfig, seed: int = 0
) -> tuple[QualityModel | None, dict[str, Any]]:
    """Train on (1 - heldout_fraction) of the sample and report agreement with the rules on
    the rest: accuracy at 0.5, ROC AUC, the counts. No model when the rules kept or dropped
    everything sampled (nothing to learn from)."""
    texts = [t for t, _ in sample.items]
    labels = np.array([y for _, y in sample.items], np.int64)
    summary: dict[str, Any] = {
        "sampled": len(texts),
        "of": sample.seen,
        "kept_by_rules": int(labels.sum()),
        "dropped_by_rules": int(len(labels) - labels.sum()),
    }
    if len(set(labels.tolist())) < 2:
        summary["skipped"] = "the rules kept or dropped every sampled document"
        return None, summary
    order = np.random.default_rng(seed).permutation(len(texts))
    n_test = max(1, int(len(texts) * cfg.heldout_fraction))
    test, train = order[:n_test], order[n_test:]
    model = train_quality_model(
        [texts[i] for i in train], labels[train],
        buckets=cfg.buckets, ngrams=cfg.ngrams, epochs=cfg.epochs,
    )  # fmt: skip
    scores = model.score([texts[i] for i in test])
    summary.update(
        trained_on=len(train),
        heldout=len(test),
        heldout_accuracy=round(float(((scores >= 0.5) == labels[test]).mean()), 4),
        heldout_auc=round(roc_auc(scores, labels[test]), 4),
        heldout_dropped_by_rules=int(len(test) - labels[test].sum()),
    )
    return model, summary
