"""Per-example scorers (exact match, regex, token F1, contains) and bootstrap intervals.

Scorers turn one model output and its reference into a number in [0, 1]; a suite names one
by key in `SCORERS` or by import path (`package.module:function`). The bootstrap helpers
give the confidence intervals the regression gate (forgeml.eval.gate) decides with.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

from forgeml.core.errors import ConfigError
from forgeml.core.plugins import load_plugin
from forgeml.eval.media_scoring import MEDIA_SCORERS

Scorer = Callable[[str, str], float]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation (Rajpurkar et al., arXiv:1606.05250): lower case, no punctuation,
    no articles, single spaces."""
    text = text.lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the prediction equals the reference after stripping surrounding whitespace."""
    return float(prediction.strip() == reference.strip())


def normalized_exact_match(prediction: str, reference: str) -> float:
    """Exact match after SQuAD normalisation (case, punctuation and articles ignored)."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def regex_match(prediction: str, pattern: str) -> float:
    """1.0 when the reference, read as a regular expression, matches anywhere in the output."""
    return float(re.search(pattern, prediction) is not None)


def contains(prediction: str, reference: str) -> float:
    """1.0 when the (normalised) reference appears inside the (normalised) prediction."""
    return float(normalize_answer(reference) in normalize_answer(prediction))


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token-overlap F1 between normalised prediction and reference."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    overlap = sum((Counter(pred) & Counter(ref)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred), overlap / len(ref)
    return 2 * precision * recall / (precision + recall)


SCORERS: dict[str, Scorer] = {
    "exact_match": exact_match,
    "normalized_exact_match": normalized_exact_match,
    "regex": regex_match,
    "contains": contains,
    "f1": token_f1,
    **MEDIA_SCORERS,  # cer, wer: lower is better (media_scoring.LOWER_IS_BETTER)
}


def resolve_scorer(name: str) -> Scorer:
    """A built-in scorer by name, or any `(prediction, reference) -> float` by import path."""
    if name in SCORERS:
        return SCORERS[name]
    if ":" in name:
        fn = load_plugin(name)
        if not callable(fn):
            raise ConfigError(f"custom scorer '{name}' is not callable")
        return fn  # type: ignore[return-value]
    raise ConfigError(
        f"unknown scorer '{name}'",
        hint=f"use one of {', '.join(SCORERS)} or an import path package.module:function",
    )


def weighted_mean(scores: Sequence[float], weights: Sequence[float] | None = None) -> float:
    """sum(w*s)/sum(w): a plain mean for accuracies, a ratio of sums for bits-per-byte."""
    s = np.asarray(scores, dtype=np.float64)
    if len(s) == 0:
        return float("nan")
    w = np.ones_like(s) if weights is None else np.asarray(weights, dtype=np.float64)
    return float((s * w).sum() / w.sum())


def bootstrap_ci(
    scores: Sequence[float],
    weights: Sequence[float] | None = None,
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval (Efron & Tibshirani 1993) of the weighted mean."""
    s = np.asarray(scores, dtype=np.float64)
    if len(s) == 0:
        return float("nan"), float("nan")
    w = np.ones_like(s) if weights is None else np.asarray(weights, dtype=np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(s), size=(n_resamples, len(s)))
    stats = (s[idx] * w[idx]).sum(1) / np.maximum(w[idx].sum(1), 1e-12)
    alpha = (1 - confidence) / 2
    return float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))


def paired_bootstrap_delta(
    candidate: Sequence[float],
    baseline: Sequence[float],
    weights: Sequence[float] | None = None,
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Point estimate and interval of mean(candidate) - mean(baseline) over the same examples,
    resampling examples jointly (paired bootstrap, Koehn 2004, "Statistical Significance
    Tests for Machine Translation Evaluation")."""
    c = np.asarray(candidate, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    if c.shape != b.shape:
        raise ValueError(f"paired scores differ in length: {c.shape} vs {b.shape}")
    w = np.ones_like(c) if weights is None else np.asarray(weights, dtype=np.float64)
    point = float(((c - b) * w).sum() / w.sum())
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(c), size=(n_resamples, len(c)))
    wi = w[idx]
    stats = ((c[idx] - b[idx]) * wi).sum(1) / np.maximum(wi.sum(1), 1e-12)
    alpha = (1 - confidence) / 2
    return point, float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))


def unpaired_bootstrap_delta(
    candidate: Sequence[float],
    baseline: Sequence[float],
    candidate_weights: Sequence[float] | None = None,
    baseline_weights: Sequence[float] | None = None,
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Like `paired_bootstrap_delta` for two different example sets: each side is resampled
    on its own (used when the suite's examples changed between the two evals)."""
    c = np.asarray(candidate, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    cw = np.ones_like(c) if candidate_weights is None else np.asarray(candidate_weights, float)
    bw = np.ones_like(b) if baseline_weights is None else np.asarray(baseline_weights, float)
    point = float((c * cw).sum() / cw.sum() - (b * bw).sum() / bw.sum())
    rng = np.random.default_rng(seed)
    ci = rng.integers(0, len(c), size=(n_resamples, len(c)))
    bi = rng.integers(0, len(b), size=(n_resamples, len(b)))
    stats = (c[ci] * cw[ci]).sum(1) / cw[ci].sum(1) - (b[bi] * bw[bi]).sum(1) / bw[bi].sum(1)
    alpha = (1 - confidence) / 2
    return point, float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))
