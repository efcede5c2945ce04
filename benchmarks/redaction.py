"""Redaction recall and precision: forgeml beside detect-secrets (secrets) and Microsoft
Presidio (PII), on one generated corpus, in one run.

The corpus: benchmarks/redaction_secrets.py (secrets, hard negatives, control text) and, when
present, benchmarks/redaction_pii.py (PII, with its `presidio_detect`). forgeml runs through
curation's `redact_text` with the default RedactConfig (`in_code` for code documents).
detect-secrets runs as its CLI does: its default plugins and filters
(`default_settings()`), `SecretsCollection.scan_file` on every case written under its file
name; it reports lines, so it is scored by line. Presidio runs its analyzer on each text.

Scoring. A positive is found when its value no longer appears in forgeml's output (every
fragment of a multi-line value), when a detect-secrets finding is on one of its lines (or
names the same value), when a Presidio span overlaps it. A negative is kept when its text
survives verbatim (forgeml), no finding is on its lines (detect-secrets), no span overlaps it
(Presidio). Control text is kept when nothing in it is found. Precision: findings that
overlap a labelled positive / all findings (forgeml counts its secret spans on the secret
corpus and its PII spans on the PII corpus); per kind, over the documents holding that kind.

    .venv/bin/pip install detect-secrets presidio-analyzer
    .venv/bin/python benchmarks/redaction.py [--seed 0] [--per-scenario 4] [--json OUT]
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from redaction_cases import Case  # noqa: E402

from forgeml.core.config import RedactConfig  # noqa: E402
from forgeml.data.redact import find_sensitive, redact_text  # noqa: E402

TARGETS = {"secret_recall": 1.0, "pii_recall": 0.95, "negatives_kept": 0.95, "control_kept": 0.95}
_FRAGMENT_SPLIT = re.compile(r"\s+|\\n")
_KEY_LINE = re.compile(r"[A-Za-z0-9+/=_-]+")


@dataclass
class Findings:
    """One tool's verdict on one case: which positives it found, which negatives it kept,
    how many findings it made and how many of them overlap a positive."""

    found: list[bool]
    kept: list[bool]
    findings: int
    true_findings: int


@dataclass
class ToolRun:
    name: str
    per_case: list[Findings] = field(default_factory=list)
    seconds: float = 0.0


def fragments(value: str) -> list[str]:
    """The parts of a labelled value that must all be gone: the value itself, or for a
    multi-line value (a key block) each line of 12+ base64 or hex characters."""
    parts = [p for p in _FRAGMENT_SPLIT.split(value) if len(p) >= 12 and _KEY_LINE.fullmatch(p)]
    return parts if len(parts) > 1 or (parts and parts[0] != value) else [value]


def _overlaps(a: tuple[int, int], spans: list[tuple[int, int, str]]) -> bool:
    return any(a[0] < e and s < a[1] for s, e, _ in spans)


# ---- forgeml ------------------------------------------------------------------------------


def run_forgeml(cases: list[Case], corpus: str) -> ToolRun:
    """Redact every case as curation does; score by what survives in the output."""
    cfg = RedactConfig()
    run = ToolRun("forgeml")
    outputs = []
    start = time.perf_counter()
    for case in cases:
        outputs.append(redact_text(case.text, cfg, in_code=case.doc_type == "code").text)
    run.seconds = time.perf_counter() - start
    for case, out in zip(cases, outputs, strict=True):
        spans = [
            (s.start, s.end, s.kind)
            for s in find_sensitive(case.text, cfg, case.doc_type == "code")
            if (s.kind == "secret") == (corpus == "secrets")
        ]
        found = [not any(f in out for f in fragments(case.text[s:e])) for s, e, _ in case.positives]
        kept = [
            out.count(case.text[s:e]) >= case.text.count(case.text[s:e])
            for s, e, _ in case.negatives
        ]
        if not case.positives and not case.negatives:
            kept = [out == case.text]
        true = sum(_overlaps((s, e), case.positives) for s, e, _ in spans)
        run.per_case.append(Findings(found, kept, len(spans), true))
    return run


# ---- detect-secrets -------------------------------------------------------------------------


def _lines(text: str, start: int, end: int) -> range:
    return range(text.count("\n", 0, start) + 1, text.count("\n", 0, max(start, end - 1)) + 2)


def run_detect_secrets(cases: list[Case]) -> ToolRun | None:
    """detect-secrets with its default plugins and filters, one file per case."""
    try:
        from detect_secrets import SecretsCollection
        from detect_secrets.settings import default_settings
    except ImportError:
        return None
    run = ToolRun("detect-secrets")
    with tempfile.TemporaryDirectory() as tmp:
        names = []
        for i, case in enumerate(cases):
            path = Path(tmp, f"c{i:05d}", case.file_name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(case.text)
            names.append(str(path.relative_to(tmp)))
        collection = SecretsCollection(root=tmp)
        start = time.perf_counter()
        with default_settings():
            for name in names:
                collection.scan_file(name)
        run.seconds = time.perf_counter() - start
        for case, name in zip(cases, names, strict=True):
            hits = [(s.line_number, s.secret_value or "") for s in collection[name]]
            pos_lines = [_lines(case.text, s, e) for s, e, _ in case.positives]
            found = [
                any(line in lines or (value and value in case.text[s:e]) for line, value in hits)
                for lines, (s, e, _) in zip(pos_lines, case.positives, strict=True)
            ]
            kept = [
                not any(line in _lines(case.text, s, e) for line, _ in hits)
                for s, e, _ in case.negatives
            ]
            if not case.positives and not case.negatives:
                kept = [not hits]
            true = sum(any(line in lines for lines in pos_lines) for line, _ in hits)
            run.per_case.append(Findings(found, kept, len(hits), true))
    return run


# ---- Presidio (through helper "pii"'s benchmarks/redaction_pii.py) -----------------------------


def run_spans_tool(
    name: str, cases: list[Case], detect: Callable[[str], list[tuple[int, int, str]]]
) -> ToolRun:
    """A tool that returns character spans (Presidio): score by overlap."""
    run = ToolRun(name)
    results = []
    start = time.perf_counter()
    for case in cases:
        results.append(detect(case.text))
    run.seconds = time.perf_counter() - start
    for case, spans in zip(cases, results, strict=True):
        found = [_overlaps((s, e), spans) for s, e, _ in case.positives]
        kept = [not _overlaps((s, e), spans) for s, e, _ in case.negatives]
        if not case.positives and not case.negatives:
            kept = [not spans]
        true = sum(_overlaps((s, e), case.positives) for s, e, _ in spans)
        run.per_case.append(Findings(found, kept, len(spans), true))
    return run


# ---- summary ----------------------------------------------------------------------------------


def summarise(cases: list[Case], run: ToolRun) -> dict:
    """Per-kind recall and precision, micro totals, negatives and control kept, docs/s."""
    by_kind: dict[str, list[bool]] = defaultdict(list)
    neg_kind: dict[str, list[bool]] = defaultdict(list)
    kind_findings: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    control: list[bool] = []
    findings = true = 0
    for case, res in zip(cases, run.per_case, strict=True):
        findings += res.findings
        true += res.true_findings
        for (_, _, kind), hit in zip(case.positives, res.found, strict=True):
            by_kind[kind].append(hit)
        for kind in {k for _, _, k in case.positives}:
            kind_findings[kind][0] += res.true_findings
            kind_findings[kind][1] += res.findings
        if case.positives or case.negatives:
            for (_, _, kind), hit in zip(case.negatives, res.kept, strict=True):
                neg_kind[kind].append(hit)
        else:
            control.extend(res.kept)
    positives = [h for hits in by_kind.values() for h in hits]
    negatives = [h for hits in neg_kind.values() for h in hits]

    def share(xs: list[bool]) -> float | None:
        return sum(xs) / len(xs) if xs else None

    return {
        "kinds": {
            k: {
                "n": len(v),
                "recall": share(v),
                "precision": kind_findings[k][0] / kind_findings[k][1]
                if kind_findings[k][1]
                else None,
            }
            for k, v in sorted(by_kind.items())
        },
        "negatives": {k: {"n": len(v), "kept": share(v)} for k, v in sorted(neg_kind.items())},
        "recall": share(positives),
        "precision": true / findings if findings else None,
        "negatives_kept": share(negatives),
        "control_kept": share(control),
        "docs": len(cases),
        "docs_per_s": len(cases) / run.seconds if run.seconds else None,
    }


def _fmt(x: float | None, pct: bool = False) -> str:
    if x is None:
        return "—"
    return f"{100 * x:.1f}%" if pct else f"{x:.3f}"


def table(title: str, summaries: dict[str, dict]) -> str:
    """One markdown table per corpus: kinds down, tools across (recall / precision)."""
    tools = list(summaries)
    kinds = sorted({k for s in summaries.values() for k in s["kinds"]})
    negs = sorted({k for s in summaries.values() for k in s["negatives"]})
    head = "| kind | n | " + " | ".join(f"{t} recall | {t} precision" for t in tools) + " |"
    rows = [f"### {title}", "", head, "|" + "---|" * (2 + 2 * len(tools))]
    for kind in kinds:
        n = next(s["kinds"][kind]["n"] for s in summaries.values() if kind in s["kinds"])
        cells = []
        for t in tools:
            k = summaries[t]["kinds"].get(kind, {})
            cells += [_fmt(k.get("recall")), _fmt(k.get("precision"))]
        rows.append(f"| {kind} | {n} | " + " | ".join(cells) + " |")
    for label, key in (("**micro**", "recall"),):
        cells = []
        for t in tools:
            cells += [_fmt(summaries[t][key]), _fmt(summaries[t]["precision"])]
        n = sum(k["n"] for k in next(iter(summaries.values()))["kinds"].values())
        rows.append(f"| {label} | {n} | " + " | ".join(cells) + " |")
    rows += ["", "| hard negative kept | n | " + " | ".join(tools) + " |"]
    rows.append("|" + "---|" * (2 + len(tools)))
    for kind in negs:
        n = next(s["negatives"][kind]["n"] for s in summaries.values() if kind in s["negatives"])
        cells = [_fmt(summaries[t]["negatives"].get(kind, {}).get("kept"), True) for t in tools]
        rows.append(f"| {kind} | {n} | " + " | ".join(cells) + " |")
    for label, key in (
        ("**all negatives**", "negatives_kept"),
        ("**control text**", "control_kept"),
    ):
        rows.append(
            f"| {label} | | " + " | ".join(_fmt(summaries[t][key], True) for t in tools) + " |"
        )
    speed = " | ".join(
        f"{t} {summaries[t]['docs_per_s']:.0f}" if summaries[t]["docs_per_s"] else f"{t} —"
        for t in tools
    )
    rows += ["", f"docs/s ({summaries[tools[0]]['docs']} documents): {speed}"]
    return "\n".join(rows)


def load_pii(seed: int) -> tuple[list[Case], Callable | None] | None:
    """Helper "pii"'s corpus and Presidio peer, when benchmarks/redaction_pii.py exists."""
    try:
        mod = importlib.import_module("redaction_pii")
    except ImportError:
        return None
    if not hasattr(mod, "cases"):  # still being written
        return None
    return mod.cases(seed), getattr(mod, "presidio_detect", None)


def run_benchmark(
    seed: int = 0,
    per_scenario: int = 4,
    with_peers: bool = True,
    corpora: tuple[str, ...] = ("secrets", "pii"),
) -> dict:
    """Every tool on every corpus; returns {corpus: {tool: summary}}."""
    import redaction_secrets

    results: dict[str, dict[str, dict]] = {}
    if "secrets" in corpora:
        secret_cases = redaction_secrets.cases(seed, per_scenario)
        forgeml = run_forgeml(secret_cases, "secrets")
        results["secrets"] = {"forgeml": summarise(secret_cases, forgeml)}
        ds = run_detect_secrets(secret_cases) if with_peers else None
        if ds is not None:
            results["secrets"]["detect-secrets"] = summarise(secret_cases, ds)
    pii = load_pii(seed) if "pii" in corpora else None
    if pii is not None:
        pii_cases, presidio = pii
        results["pii"] = {"forgeml": summarise(pii_cases, run_forgeml(pii_cases, "pii"))}
        if with_peers and presidio is not None and presidio("probe text") is not None:
            results["pii"]["presidio"] = summarise(
                pii_cases, run_spans_tool("presidio", pii_cases, presidio)
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-scenario", type=int, default=4, help="documents per scenario")
    parser.add_argument("--corpus", choices=["all", "secrets", "pii"], default="all")
    parser.add_argument("--json", type=Path, help="write the full results here")
    args = parser.parse_args()
    corpora = ("secrets", "pii") if args.corpus == "all" else (args.corpus,)
    results = run_benchmark(args.seed, args.per_scenario, corpora=corpora)
    titles = {
        "secrets": "Secrets (detect-secrets reports lines: scored by line)",
        "pii": "PII",
    }
    for corpus, summaries in results.items():
        print(table(titles[corpus], summaries), end="\n\n")
    print("targets (issue 23):", ", ".join(f"{k} {v}" for k, v in TARGETS.items()))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
