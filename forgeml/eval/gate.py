"""The regression gate: compare a candidate's eval with a baseline's KPI by KPI.

Each KPI's difference gets a bootstrap confidence interval over examples (paired when both
evals scored the same examples). A KPI fails when the candidate is confidently worse by
more than its tolerance, or falls below its minimum; `promote` moves an alias only on pass.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from forgeml.core.errors import DataError, NotFoundError
from forgeml.eval.scoring import paired_bootstrap_delta, unpaired_bootstrap_delta, weighted_mean

RESULTS_FILE = "results.json"
EXAMPLES_DIR = "examples"


@dataclass(frozen=True)
class EvalRecord:
    """A stored suite eval: its summary and per-example records of every task."""

    path: Path
    summary: dict[str, Any]
    examples: dict[str, list[dict[str, Any]]]

    @property
    def model(self) -> str:
        return self.summary.get("model", "?")


def load_eval_record(path: str | Path) -> EvalRecord:
    """Read `results.json` and `examples/<task>.jsonl` from an eval asset folder."""
    path = Path(path)
    results = path / RESULTS_FILE
    if not results.is_file():
        raise NotFoundError(
            f"{path} is not a suite eval (no {RESULTS_FILE})",
            hint="run `forgeml eval run MODEL --suite S` first",
        )
    summary = json.loads(results.read_text())
    examples = {}
    for task in summary["tasks"]:
        file = path / EXAMPLES_DIR / f"{task}.jsonl"
        examples[task] = (
            [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
            if file.is_file()
            else []
        )
    return EvalRecord(path, summary, examples)


@dataclass(frozen=True)
class KPICheck:
    task: str
    metric: str
    higher_is_better: bool
    baseline: float
    candidate: float
    delta: float
    ci_low: float
    ci_high: float
    tolerance: float
    minimum: float | None
    paired: bool
    n: int
    status: str  # pass | warn | fail
    reason: str


@dataclass
class GateReport:
    candidate: str
    baseline: str
    confidence: float
    checks: list[KPICheck] = field(default_factory=list)
    strict: bool = False

    @property
    def passed(self) -> bool:
        bad = {"fail", "warn"} if self.strict else {"fail"}
        return not any(c.status in bad for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate,
            "baseline": self.baseline,
            "passed": self.passed,
            "confidence": self.confidence,
            "strict": self.strict,
            "checks": [asdict(c) for c in self.checks],
        }

    def table(self) -> str:
        """A plain-text table, one row per KPI (the CLI prints it)."""
        head = (
            "task",
            "metric",
            "baseline",
            "candidate",
            "delta",
            f"{self.confidence:.0%} CI",
            "status",
        )
        rows = [head] + [
            (
                c.task,
                c.metric + (" ↑" if c.higher_is_better else " ↓"),
                f"{c.baseline:.4f}",
                f"{c.candidate:.4f}",
                f"{c.delta:+.4f}",
                f"[{c.ci_low:+.4f}, {c.ci_high:+.4f}]",
                c.status.upper() + (f" ({c.reason})" if c.reason else ""),
            )
            for c in self.checks
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        verdict = "PASS" if self.passed else "FAIL"
        lines.append(f"gate: {verdict} — candidate {self.candidate} vs {self.baseline}")
        return "\n".join(lines)


def _scores(examples: list[dict], metric: str) -> tuple[dict[str, float], dict[str, float]]:
    scores, weights = {}, {}
    for e in examples:
        if metric in e.get("scores", {}):
            scores[e["id"]] = float(e["scores"][metric])
            weights[e["id"]] = float(e.get("weight", 1.0))
    return scores, weights


def check_kpi(
    task: str,
    kpi: dict[str, Any],
    candidate: list[dict],
    baseline: list[dict],
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> KPICheck:
    """One KPI: bootstrap the candidate - baseline difference of its weighted mean."""
    metric, higher = kpi["metric"], kpi.get("higher_is_better", True)
    tol, minimum = float(kpi.get("tolerance", 0.0)), kpi.get("minimum")
    cs, cw = _scores(candidate, metric)
    bs, bw = _scores(baseline, metric)
    if not cs or not bs:
        raise DataError(
            f"gate: task {task} has no per-example '{metric}' in "
            f"{'candidate' if not cs else 'baseline'} eval"
        )
    common = sorted(set(cs) & set(bs))
    paired = len(common) == len(cs) == len(bs)
    if paired:
        delta, lo, hi = paired_bootstrap_delta(
            [cs[i] for i in common],
            [bs[i] for i in common],
            [cw[i] for i in common],
            confidence=confidence,
            n_resamples=n_resamples,
            seed=seed,
        )
    else:
        delta, lo, hi = unpaired_bootstrap_delta(
            list(cs.values()),
            list(bs.values()),
            list(cw.values()),
            list(bw.values()),
            confidence=confidence,
            n_resamples=n_resamples,
            seed=seed,
        )
    cand = weighted_mean(list(cs.values()), list(cw.values()))
    base = weighted_mean(list(bs.values()), list(bw.values()))
    # Orient so that positive = better, whatever the metric's direction.
    better = delta if higher else -delta
    better_hi = hi if higher else -lo
    status, reason = "pass", ""
    if minimum is not None and (cand < minimum if higher else cand > minimum):
        status, reason = "fail", f"{'below' if higher else 'above'} limit {minimum:g}"
    elif better_hi < -tol:
        status, reason = "fail", "significant regression"
    elif better < -tol:
        status, reason = "warn", "worse, not significant"
    return KPICheck(
        task,
        metric,
        higher,
        base,
        cand,
        delta,
        lo,
        hi,
        tol,
        minimum,
        paired,
        len(cs),
        status,
        reason,
    )


def compare_evals(
    candidate: EvalRecord,
    baseline: EvalRecord,
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
    strict: bool = False,
) -> GateReport:
    """Check every KPI the candidate's suite declares against the baseline eval."""
    report = GateReport(candidate.model, baseline.model, confidence, strict=strict)
    for task, info in candidate.summary["tasks"].items():
        if task not in baseline.summary["tasks"]:
            raise DataError(
                f"gate: baseline eval has no task '{task}'",
                hint="evaluate both models with the same suite",
            )
        for kpi in info["kpis"]:
            report.checks.append(
                check_kpi(
                    task,
                    kpi,
                    candidate.examples[task],
                    baseline.examples[task],
                    confidence=confidence,
                    n_resamples=n_resamples,
                    seed=seed,
                )
            )
    return report
