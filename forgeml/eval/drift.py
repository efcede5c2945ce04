"""Drift detection on logged serving traffic: a current window against a reference window.

Inputs are JSONL records `{"prompt", "completion", "ts"?}`, or the serving audit log itself
(its request entries carry these bodies under `forgeml serve --log-bodies`). Checks:
prompt/completion length shift (population stability index and two-sample Kolmogorov-Smirnov),
n-gram distribution shift (Jensen-Shannon divergence with a permutation p-value), output
proxies (refusal rate, completion length, and given a reward model its scores) and, given a
model, the model's own per-token loss on the prompts (inputs it finds surprising).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from forgeml.core.errors import DataError
from forgeml.core.io import iter_jsonl

REFUSAL_PATTERNS = (
    r"\bI can(?:'|no)t (?:help|assist|do|provide)",
    r"\bI(?: am|'m) (?:not able|unable) to\b",
    r"\bI (?:won't|will not) (?:help|provide)",
    r"\bas an AI\b",
    r"\bI(?: am|'m) sorry, but\b",
)
_REFUSAL = re.compile("|".join(REFUSAL_PATTERNS), re.IGNORECASE)
_WORD = re.compile(r"\w+|[^\w\s]")


class DriftThresholds(BaseModel):
    """When a check is flagged. PSI bands follow credit-scoring practice (Siddiqi 2006):
    < 0.1 stable, 0.1-0.25 moderate, > 0.25 major shift; a PSI must also be above what
    chance gives at the windows' sizes (`psi_chance_level`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    psi: float = Field(0.2, gt=0)
    p_value: float = Field(
        0.01,
        gt=0,
        lt=1,
        description="family-wise level of the KS / permutation / proportion tests, split "
        "evenly among them (Bonferroni)",
    )
    min_effect_jsd: float = Field(0.02, ge=0, description="n-gram JSD (bits) also needed")
    refusal_rate_delta: float = Field(0.05, ge=0, description="absolute change also needed")
    reward_effect: float = Field(
        0.2,
        ge=0,
        description="reward-model score: standardized mean change (Cohen's d) also needed",
    )
    min_examples: int = Field(30, gt=0)


# What a request entry of the audit log contributes to a traffic record.
_REQUEST_FIELDS = ("prompt", "completion", "ts", "endpoint", "model", "status")


@dataclass(frozen=True)
class TrafficLog:
    """Traffic records read from logs, and what was passed over: an audit log also holds
    server, key and approval entries and requests logged without bodies (reason -> count)."""

    records: list[dict[str, Any]]
    skipped: dict[str, int] = field(default_factory=dict)


def _skip_reason(entry: dict[str, Any], where: str) -> str | None:
    """Why an audit-log entry gives no traffic record, or None when it gives one."""
    if entry["event"] != "request":
        return str(entry["event"])
    if "prompt" not in entry:  # denied before a body was read, or bodies not logged
        return "request (no body)"
    prompt, completion = entry["prompt"], entry.get("completion")
    if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
        return "request (token-id prompt)"
    if not isinstance(prompt, str) or not (completion is None or isinstance(completion, str)):
        raise DataError(
            f"{where}: a request entry needs a text 'prompt' and a text or null 'completion'",
            hint="is this a forgeml audit log?",
        )
    return None


def load_traffic(path: str | Path) -> TrafficLog:
    """Traffic records of a JSONL log, or of every *.jsonl in a folder (in name order).

    A line is a plain record `{"prompt", "completion"?, "ts"?}` or an entry of the serving
    audit log (forgeml.governance.audit): its `request` entries with bodies become records,
    every other entry is skipped and counted. The hash chain is not checked here
    (`forgeml audit verify` does that)."""
    path = Path(path)
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise DataError(f"no traffic log at {path}", hint="pass a .jsonl file or a folder of them")
    records: list[dict[str, Any]] = []
    skipped: Counter = Counter()
    for f in files:
        # Read by lines of the file (U+2028 and U+0085, which JSON leaves unescaped inside
        # completions, end no line there, as they would for str.splitlines).
        for n, rec, error in iter_jsonl(f):
            if error is not None:
                raise DataError(f"{f}:{n}: {error}")
            if not isinstance(rec, dict):
                raise DataError(f"{f}:{n}: expected a JSON object, got {type(rec).__name__}")
            if "event" in rec:
                reason = _skip_reason(rec, f"{f}:{n}")
                if reason is not None:
                    skipped[reason] += 1
                    continue
                rec = {k: rec[k] for k in _REQUEST_FIELDS if k in rec}
            elif not isinstance(rec.get("prompt"), str):
                raise DataError(f"{f}:{n}: a traffic record needs a 'prompt' string")
            records.append(rec)
    if not records:
        hint = (
            "serve with --log-bodies to log prompts and completions"
            if skipped
            else "a line is a JSON object with a 'prompt'"
        )
        seen = f" ({describe_skipped(skipped)})" if skipped else ""
        raise DataError(f"no traffic records in {path}{seen}", hint=hint)
    return TrafficLog(records, dict(skipped))


def describe_skipped(skipped: dict[str, int]) -> str:
    """`skipped 2 request (no body), 1 server_stopped` (most frequent first)."""
    parts = [
        f"{n} {reason}" for reason, n in sorted(skipped.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
    return "skipped " + ", ".join(parts) if parts else "skipped nothing"


def quantile_edges(reference: Sequence[float], bins: int = 10) -> np.ndarray:
    """Inner edges of the reference's `bins` quantile bins (ties merge bins)."""
    ref = np.asarray(reference, dtype=np.float64)
    return np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))


def psi(reference: Sequence[float], current: Sequence[float], bins: int = 10) -> float:
    """Population stability index over the reference's quantile bins:
    sum (c - r) * ln(c / r) with bin shares r, c (smoothed so empty bins stay finite)."""
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    edges = quantile_edges(ref, bins)
    r = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=len(edges) + 1)
    c = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=len(edges) + 1)
    r = (r + 0.5) / (r.sum() + 0.5 * len(r))
    c = (c + 0.5) / (c.sum() + 0.5 * len(c))
    return float(((c - r) * np.log(c / r)).sum())


def psi_chance_level(n_reference: int, n_current: int, n_bins: int, alpha: float) -> float:
    """The PSI two samples of one distribution exceed with probability `alpha`.

    PSI * nm / (n + m) is asymptotically chi-square with B - 1 degrees of freedom (Yurdakul
    2018, "Statistical properties of the population stability index"): its mean by chance
    alone, (B - 1)(1/n + 1/m), is 0.45 at 40 vs 40 records with 10 bins, far above the
    usual bands. The chi-square quantile is the Wilson-Hilferty approximation."""
    k = max(n_bins - 1, 1)
    z = NormalDist().inv_cdf(1 - alpha)
    chi2 = k * max(1 - 2 / (9 * k) + z * math.sqrt(2 / (9 * k)), 0.0) ** 3
    return chi2 * (1 / n_reference + 1 / n_current)


def ks_test(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov statistic D and its asymptotic p-value
    (Kolmogorov's series with Stephens' small-sample correction)."""
    x, y = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    grid = np.concatenate([x, y])
    d = float(
        np.abs(
            np.searchsorted(x, grid, "right") / len(x) - np.searchsorted(y, grid, "right") / len(y)
        ).max()
    )
    n = len(x) * len(y) / (len(x) + len(y))
    lam = (math.sqrt(n) + 0.12 + 0.11 / math.sqrt(n)) * d
    if lam < 1e-3:
        return d, 1.0
    p = 2 * sum((-1) ** (k - 1) * math.exp(-2 * (k * lam) ** 2) for k in range(1, 101))
    return d, float(min(max(p, 0.0), 1.0))


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def ngram_counts(tokens: Sequence[Sequence[Any]], n: int) -> Counter:
    counts: Counter = Counter()
    for seq in tokens:
        counts.update(tuple(seq[i : i + n]) for i in range(len(seq) - n + 1))
    return counts


def js_divergence(p: Counter, q: Counter) -> float:
    """Jensen-Shannon divergence in bits between two count tables (0 = same, 1 = disjoint)."""
    keys = list(set(p) | set(q))
    a = np.array([p.get(k, 0) for k in keys], float)
    b = np.array([q.get(k, 0) for k in keys], float)
    if a.sum() == 0 or b.sum() == 0:
        return 0.0
    a, b = a / a.sum(), b / b.sum()
    m = (a + b) / 2

    def kl(u: np.ndarray) -> float:
        nz = u > 0
        return float((u[nz] * np.log2(u[nz] / m[nz])).sum())

    return 0.5 * kl(a) + 0.5 * kl(b)


def _jsd_arrays(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a / max(a.sum(), 1e-12), b / max(b.sum(), 1e-12)
    m = (a + b) / 2
    out = 0.0
    for u in (a, b):
        nz = u > 0
        out += 0.5 * float((u[nz] * np.log2(u[nz] / m[nz])).sum())
    return out


def ngram_shift(
    reference: Sequence[Sequence[Any]],
    current: Sequence[Sequence[Any]],
    *,
    n: int = 2,
    permutations: int = 199,
    seed: int = 0,
) -> tuple[float, float]:
    """JSD between the two windows' n-gram distributions and a permutation p-value: how
    often shuffling documents between windows gives a divergence at least as large (the
    divergence of two finite samples is never zero, so the raw value alone misleads)."""
    index: dict[tuple, int] = {}
    docs, grams = [], []
    for d, seq in enumerate((*reference, *current)):
        for i in range(len(seq) - n + 1):
            docs.append(d)
            grams.append(index.setdefault(tuple(seq[i : i + n]), len(index)))
    if not grams:
        return 0.0, 1.0
    doc_of, gram_of = np.asarray(docs), np.asarray(grams)
    total = np.bincount(gram_of, minlength=len(index)).astype(np.float64)
    n_docs, k = len(reference) + len(current), len(reference)

    def jsd(in_reference: np.ndarray) -> float:
        left = np.bincount(gram_of, weights=in_reference[doc_of], minlength=len(index))
        return _jsd_arrays(left, total - left)

    mask = np.zeros(n_docs)
    mask[:k] = 1.0
    observed = jsd(mask)
    rng = np.random.default_rng(seed)
    hits = sum(jsd(rng.permutation(mask)) >= observed for _ in range(permutations))
    return observed, (hits + 1) / (permutations + 1)


def refusal_rate(completions: Sequence[str]) -> float:
    return sum(bool(_REFUSAL.search(c)) for c in completions) / max(len(completions), 1)


def standardized_mean_difference(a: Sequence[float], b: Sequence[float]) -> float:
    """Cohen's d of b against a: (mean b - mean a) / pooled standard deviation."""
    x, y = np.asarray(a, float), np.asarray(b, float)
    diff = float(y.mean() - x.mean())
    sd = math.sqrt((x.var(ddof=1) + y.var(ddof=1)) / 2)
    if sd == 0:
        return 0.0 if diff == 0 else math.copysign(math.inf, diff)
    return diff / sd


def two_proportion_p(p1: float, n1: int, p2: float, n2: int) -> float:
    """Two-sided p-value of the pooled two-proportion z-test."""
    pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
    se = math.sqrt(max(pooled * (1 - pooled) * (1 / n1 + 1 / n2), 1e-12))
    return math.erfc(abs(p1 - p2) / se / math.sqrt(2))


@dataclass(frozen=True)
class DriftCheck:
    name: str
    statistic: str
    value: float
    threshold: float
    flagged: bool
    reference: float | None = None
    current: float | None = None
    detail: str = ""


@dataclass
class DriftReport:
    n_reference: int
    n_current: int
    checks: list[DriftCheck] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def drifted(self) -> bool:
        return any(c.flagged for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_reference": self.n_reference,
            "n_current": self.n_current,
            "drifted": self.drifted,
            "checks": [asdict(c) for c in self.checks],
            "skipped": dict(self.skipped),
        }

    def table(self) -> str:
        lines = [f"{'check':34} {'statistic':12} {'value':>9} {'limit':>8}  ref -> cur"]
        for c in self.checks:
            ref_cur = (
                f"{c.reference:.3g} -> {c.current:.3g}"
                if c.reference is not None and c.current is not None
                else ""
            )
            flag = "DRIFT" if c.flagged else "ok"
            lines.append(
                f"{c.name:34} {c.statistic:12} {c.value:9.4f} {c.threshold:8.4f}  {ref_cur}  {flag}"
            )
        lines.append(
            f"drift: {'FOUND' if self.drifted else 'none'} "
            f"({self.n_reference} reference vs {self.n_current} current records)"
        )
        if self.skipped:
            lines.append(f"log entries that are not traffic: {describe_skipped(self.skipped)}")
        return "\n".join(lines)


def _length_checks(
    name: str, ref: list[float], cur: list[float], th: DriftThresholds, alpha: float
):
    value = psi(ref, cur)
    chance = psi_chance_level(len(ref), len(cur), len(quantile_edges(ref)) + 1, alpha)
    yield DriftCheck(
        f"{name} length",
        "psi",
        value,
        max(th.psi, chance),
        value > max(th.psi, chance),
        float(np.mean(ref)),
        float(np.mean(cur)),
        detail=f"chance level {chance:.3f}" if chance > th.psi else "",
    )
    yield _ks_check(f"{name} length", ref, cur, alpha, np.median)


def _ks_check(
    name: str,
    ref: Sequence[float],
    cur: Sequence[float],
    alpha: float,
    summary: Callable[[Sequence[float]], Any] = np.mean,
) -> DriftCheck:
    """Two-sample Kolmogorov-Smirnov test of two windows' values, flagged below `alpha`;
    `summary` (mean or median) of each window is reported beside it."""
    d, p = ks_test(ref, cur)
    return DriftCheck(
        name,
        "ks_p_value",
        p,
        alpha,
        p < alpha,
        float(summary(ref)),
        float(summary(cur)),
        detail=f"D={d:.3f}",
    )


def drift_report(
    reference: Sequence[dict[str, Any]],
    current: Sequence[dict[str, Any]],
    *,
    thresholds: DriftThresholds | None = None,
    tokenize: Callable[[str], list] | None = None,
    prompt_nll: Callable[[Sequence[str]], list[tuple[float, int]]] | None = None,
    reward: Callable[[Sequence[str], Sequence[str]], list[float]] | None = None,
    skipped: dict[str, int] | None = None,
    seed: int = 0,
) -> DriftReport:
    """Compare two windows of traffic records. `tokenize` (e.g. the model's tokenizer)
    measures lengths and n-grams in tokens, else in words; `prompt_nll` (e.g.
    `EvalModel.rolling_nll`) adds a check on the model's per-token loss on the prompts;
    `reward(prompts, completions)` (e.g. a `RewardScorer`) adds one on reward-model scores
    of the completions. `skipped` (from `load_traffic`) is carried into the report."""
    th = thresholds or DriftThresholds()
    if min(len(reference), len(current)) < th.min_examples:
        raise DataError(
            f"drift needs at least {th.min_examples} records per window "
            f"(got {len(reference)} and {len(current)})",
            hint="widen the windows or lower min_examples",
        )
    tok = tokenize or words
    report = DriftReport(len(reference), len(current), skipped=dict(skipped or {}))
    answered = [[r for r in w if r.get("completion") is not None] for w in (reference, current)]
    ref_c, cur_c = ([str(r["completion"]) for r in w] for w in answered)
    with_outputs = min(len(ref_c), len(cur_c)) >= th.min_examples
    if reward is not None and not with_outputs:
        raise DataError(
            f"the reward-model check needs at least {th.min_examples} completions per window "
            f"(got {len(ref_c)} and {len(cur_c)})",
            hint="serve with --log-bodies, or leave out the reward model",
        )
    # length PSI and KS and n-grams on prompts; the same lengths and refusals on completions
    n_tests = 3 + 3 * with_outputs + (prompt_nll is not None) + (reward is not None)
    alpha = th.p_value / n_tests
    ref_p = [tok(r["prompt"]) for r in reference]
    cur_p = [tok(r["prompt"]) for r in current]
    report.checks += _length_checks(
        "prompt", [len(t) for t in ref_p], [len(t) for t in cur_p], th, alpha
    )
    # enough permutations that the smallest possible p-value is below alpha
    jsd, p = ngram_shift(ref_p, cur_p, n=2, seed=seed, permutations=max(199, int(2 / alpha)))
    report.checks.append(
        DriftCheck(
            "prompt bigrams",
            "jsd_p_value",
            p,
            alpha,
            p < alpha and jsd > th.min_effect_jsd,
            detail=f"JSD={jsd:.4f} bits",
        )
    )
    if with_outputs:
        report.checks += _length_checks(
            "completion", [len(tok(c)) for c in ref_c], [len(tok(c)) for c in cur_c], th, alpha
        )
        r1, r2 = refusal_rate(ref_c), refusal_rate(cur_c)
        p = two_proportion_p(r1, len(ref_c), r2, len(cur_c))
        flagged = p < alpha and abs(r2 - r1) > th.refusal_rate_delta
        report.checks.append(DriftCheck("refusal rate", "z_p_value", p, alpha, flagged, r1, r2))
    if reward is not None:
        a = reward([r["prompt"] for r in answered[0]], ref_c)
        b = reward([r["prompt"] for r in answered[1]], cur_c)
        d, p = ks_test(a, b)
        effect = standardized_mean_difference(a, b)
        report.checks.append(
            DriftCheck(
                "reward-model score",
                "ks_p_value",
                p,
                alpha,
                p < alpha and abs(effect) > th.reward_effect,
                float(np.mean(a)),
                float(np.mean(b)),
                detail=f"D={d:.3f}, d={effect:+.2f} sd",
            )
        )
    if prompt_nll is not None:

        def per_token(texts: list[str]) -> list[float]:
            return [nll / max(n, 1) for nll, n in prompt_nll(texts)]

        a = per_token([r["prompt"] for r in reference])
        b = per_token([r["prompt"] for r in current])
        report.checks.append(_ks_check("prompt loss under model", a, b, alpha))
    return report


def split_by_time(
    records: Sequence[dict[str, Any]], reference_fraction: float = 0.5
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Oldest `reference_fraction` of the records (by `ts`, else log order) vs the rest."""
    ordered = (
        sorted(records, key=lambda r: str(r.get("ts", "")))
        if all("ts" in r for r in records)
        else list(records)
    )
    k = int(len(ordered) * reference_fraction)
    return ordered[:k], ordered[k:]
