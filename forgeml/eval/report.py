"""Self-contained HTML reports: one eval, a comparison across models, a gate verdict.

Plain HTML with inline CSS and inline SVG charts (bars for KPIs, lines for training
curves from a run's metrics.jsonl): no JavaScript, no fonts or files from anywhere else,
so a report opens offline and can be attached to a ticket.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from forgeml.eval.gate import EvalRecord, GateReport
from forgeml.eval.media_scoring import LOWER_IS_BETTER

PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777")
MAX_EXAMPLES_SHOWN = 50

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:72rem;
color:#111827;background:#fff;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px
solid #e5e7eb;padding-bottom:.3rem}.meta{color:#6b7280;font-size:.9rem}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}
th,td{border:1px solid #e5e7eb;padding:.3rem .6rem;text-align:left;vertical-align:top}
th{background:#f3f4f6}td.num{text-align:right;font-variant-numeric:tabular-nums}
.pass{background:#dcfce7}.warn{background:#fef9c3}.fail{background:#fee2e2}
pre{white-space:pre-wrap;margin:0;font-size:.8rem;max-width:40rem}
details{margin:.4rem 0}svg{display:block;margin:.5rem 0}
.legend span{display:inline-block;margin-right:1rem;font-size:.85rem}
.swatch{display:inline-block;width:.8rem;height:.8rem;margin-right:.3rem;vertical-align:middle}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"
    return _e(value)


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>\n{body}\n</body></html>\n"
    )


def _legend(labels: Sequence[str]) -> str:
    items = "".join(
        f'<span><i class="swatch" style="background:{PALETTE[i % len(PALETTE)]}"></i>'
        f"{_e(label)}</span>"
        for i, label in enumerate(labels)
    )
    return f'<div class="legend">{items}</div>'


def svg_bar_chart(
    groups: Sequence[str],
    series: dict[str, Sequence[float]],
    *,
    title: str = "",
    width: int = 640,
    bar_height: int = 14,
) -> str:
    """Horizontal grouped bars: one group per KPI, one bar per series (model)."""
    names = list(series)
    finite = [v for vals in series.values() for v in vals if v is not None and math.isfinite(v)]
    top = max(finite + [1e-9])
    label_w, pad = 180, 6
    group_h = bar_height * len(names) + pad * 2
    height = group_h * len(groups) + 30
    plot_w = width - label_w - 70
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="{_e(title)}">',
        f'<text x="0" y="14" font-size="13" font-weight="bold">{_e(title)}</text>',
    ]
    for g, group in enumerate(groups):
        y0 = 24 + g * group_h
        parts.append(
            f'<text x="0" y="{y0 + group_h / 2 + 4:.1f}" font-size="12">{_e(group[:28])}</text>'
        )
        for s, name in enumerate(names):
            v = series[name][g]
            if v is None or not math.isfinite(v):
                continue
            w = max(1.0, plot_w * max(v, 0) / top)
            y = y0 + pad + s * bar_height
            color = PALETTE[s % len(PALETTE)]
            parts.append(
                f'<rect x="{label_w}" y="{y}" width="{w:.1f}" '
                f'height="{bar_height - 2}" fill="{color}"><title>{_e(name)}: '
                f"{v:.4f}</title></rect>"
            )
            parts.append(
                f'<text x="{label_w + w + 4:.1f}" y="{y + bar_height - 4}" '
                f'font-size="11">{v:.3f}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def svg_line_chart(
    curves: dict[str, Sequence[tuple[float, float]]],
    *,
    title: str = "",
    x_label: str = "step",
    width: int = 640,
    height: int = 260,
) -> str:
    """Lines of (x, y) points with axes and min/max tick labels (training curves)."""
    points = [p for c in curves.values() for p in c if math.isfinite(p[1])]
    if not points:
        return f'<p class="meta">{_e(title)}: no data</p>'
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
    left, right, top, bottom = 50, 10, 24, 30
    pw, ph = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + pw * (x - x0) / (x1 - x0)

    def sy(y: float) -> float:
        return top + ph * (1 - (y - y0) / (y1 - y0))

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="{_e(title)}">',
        f'<text x="{left}" y="14" font-size="13" font-weight="bold">{_e(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#9ca3af"/>',
        f'<text x="{left - 4}" y="{top + 10}" font-size="10" text-anchor="end">{y1:.3g}</text>',
        f'<text x="{left - 4}" y="{top + ph}" font-size="10" text-anchor="end">{y0:.3g}</text>',
        f'<text x="{left}" y="{height - 12}" font-size="10">{x0:g}</text>',
        f'<text x="{left + pw}" y="{height - 12}" font-size="10" text-anchor="end">{x1:g}</text>',
        f'<text x="{left + pw / 2}" y="{height - 4}" font-size="11" text-anchor="middle">'
        f"{_e(x_label)}</text>",
    ]
    for i, (name, pts) in enumerate(curves.items()):
        pts = [p for p in pts if math.isfinite(p[1])]
        if not pts:
            continue
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        parts.append(
            f'<polyline fill="none" stroke="{PALETTE[i % len(PALETTE)]}" '
            f'stroke-width="2" points="{path}"><title>{_e(name)}</title></polyline>'
        )
    parts.append("</svg>")
    return "".join(parts)


def read_training_curve(metrics_jsonl: str | Path) -> dict[str, list[tuple[float, float]]]:
    """{metric: [(step, value)]} for every numeric loss-like field of a metrics.jsonl."""
    curves: dict[str, list[tuple[float, float]]] = {}
    path = Path(metrics_jsonl)
    if not path.is_file():
        return curves
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a run killed mid-write leaves a partial last line
        step = rec.get("step")
        if step is None:
            continue
        for key in ("loss", "eval_loss", "lr"):
            value = rec.get(key)
            if isinstance(value, int | float):
                curves.setdefault(key, []).append((float(step), float(value)))
    return curves


def _metrics_table(record: EvalRecord) -> str:
    rows = []
    for task, info in record.summary["tasks"].items():
        metrics = ", ".join(f"{k}={_fmt(v)}" for k, v in info["metrics"].items() if k != "n")
        primary = info["metrics"].get(info["primary"], float("nan"))
        rows.append(
            f"<tr><td>{_e(task)}</td><td>{_e(info['kind'])}</td>"
            f'<td>{_e(info["primary"])}</td><td class="num">{_fmt(primary)}</td>'
            f'<td class="num">{int(info["metrics"].get("n", 0))}</td>'
            f"<td>{metrics}</td></tr>"
        )
    return (
        "<table><tr><th>task</th><th>kind</th><th>primary metric</th><th>value</th>"
        "<th>examples</th><th>all metrics</th></tr>" + "".join(rows) + "</table>"
    )


def _examples_table(task: str, info: dict, examples: list[dict]) -> str:
    shown = examples[:MAX_EXAMPLES_SHOWN]
    fields = [
        k
        for k in ("prompt", "media", "output", "reference", "prediction", "answer")
        if any(k in e for e in shown)
    ]
    head = "".join(f"<th>{f}</th>" for f in ["id", "score", *fields])
    rows = []
    for e in shown:
        score = e["scores"].get(info["primary"], float("nan"))
        cls = "pass" if score >= 1 else ("fail" if score == 0 else "")
        if info["primary"] in LOWER_IS_BETTER:  # CER/WER: 0 is perfect, 1 is all wrong
            cls = "pass" if score == 0 else ("fail" if score >= 1 else "")
        if info["primary"] in ("bits_per_byte", "token_loss"):
            cls = ""
        cells = "".join(f"<td><pre>{_e(str(e.get(f, ''))[-600:])}</pre></td>" for f in fields)
        rows.append(
            f'<tr class="{cls}"><td>{_e(e["id"])}</td><td class="num">{_fmt(score)}'
            f"</td>{cells}</tr>"
        )
    more = f" (first {len(shown)} of {len(examples)})" if len(examples) > len(shown) else ""
    return (
        f"<details><summary>{_e(task)}: per-example outputs{more}</summary>"
        f"<table><tr>{head}</tr>{''.join(rows)}</table></details>"
    )


def eval_report_html(
    record: EvalRecord, *, curves: dict[str, list[tuple[float, float]]] | None = None
) -> str:
    """One suite eval: metrics table, bar chart of primary metrics, per-example outputs."""
    s = record.summary
    tasks = list(s["tasks"])
    primaries = [
        s["tasks"][t]["metrics"].get(s["tasks"][t]["primary"], float("nan")) for t in tasks
    ]
    body = [
        f"<h1>Eval: {_e(s.get('model_name', s['model']))} on {_e(s['suite'])}</h1>",
        f'<p class="meta">model {_e(s["model"])} · suite {_e(s["suite"])} version '
        f"{_e(s['suite_version'])} (sha256 {_e(str(s['suite_hash'])[:12])})</p>",
        "<h2>Results</h2>",
        _metrics_table(record),
        svg_bar_chart(
            [f"{t} · {s['tasks'][t]['primary']}" for t in tasks],
            {s.get("model_name", s["model"]): primaries},
            title="Primary metric per task",
        ),
    ]
    if curves:
        body += ["<h2>Training</h2>", svg_line_chart(curves, title="training curves")]
    body.append("<h2>Examples</h2>")
    body += [_examples_table(t, s["tasks"][t], record.examples.get(t, [])) for t in tasks]
    return _page(f"eval {s['suite']} — {s.get('model_name', s['model'])}", "\n".join(body))


def comparison_report_html(
    records: Sequence[EvalRecord],
    *,
    labels: Sequence[str] | None = None,
    curves: dict[str, dict[str, list[tuple[float, float]]]] | None = None,
    gate: GateReport | None = None,
) -> str:
    """Several models on the same suite: a KPI table, grouped bars, training curves
    (`curves[label][metric]`) and, when given, the gate's verdict per KPI."""
    labels = list(labels or [r.summary.get("model_name", r.model) for r in records])
    keys: list[tuple[str, str]] = []
    for r in records:
        for task, info in r.summary["tasks"].items():
            for m in info["metrics"]:
                if m != "n" and (task, m) not in keys:
                    keys.append((task, m))
    head = "".join(f"<th>{_e(label)}</th>" for label in labels)
    rows = []
    for task, m in keys:
        vals = [r.summary["tasks"].get(task, {}).get("metrics", {}).get(m) for r in records]
        cells = "".join(f'<td class="num">{_fmt(v) if v is not None else "–"}</td>' for v in vals)
        rows.append(f"<tr><td>{_e(task)}</td><td>{_e(m)}</td>{cells}</tr>")
    primary_keys = [(t, info["primary"]) for t, info in records[0].summary["tasks"].items()]
    series = {
        label: [
            r.summary["tasks"].get(t, {}).get("metrics", {}).get(m, float("nan"))
            for t, m in primary_keys
        ]
        for label, r in zip(labels, records, strict=True)
    }
    suite = records[0].summary["suite"]
    body = [
        f"<h1>Model comparison on {_e(suite)}</h1>",
        f'<p class="meta">{len(records)} models · suite version '
        f"{_e(records[0].summary['suite_version'])}</p>",
        "<h2>KPIs</h2>",
        f"<table><tr><th>task</th><th>metric</th>{head}</tr>{''.join(rows)}</table>",
        _legend(labels),
        svg_bar_chart(
            [f"{t} · {m}" for t, m in primary_keys], series, title="Primary metric per task"
        ),
    ]
    if gate is not None:
        gate_rows = "".join(
            f'<tr class="{c.status}"><td>{_e(c.task)}</td><td>{_e(c.metric)}</td>'
            f'<td class="num">{_fmt(c.baseline)}</td><td class="num">{_fmt(c.candidate)}</td>'
            f'<td class="num">{c.delta:+.4f}</td><td>[{c.ci_low:+.4f}, {c.ci_high:+.4f}]</td>'
            f"<td>{_e(c.status.upper())} {_e(c.reason)}</td></tr>"
            for c in gate.checks
        )
        verdict = "PASS" if gate.passed else "FAIL"
        body += [
            f"<h2>Regression gate: {verdict}</h2>",
            f'<p class="meta">candidate {_e(gate.candidate)} vs {_e(gate.baseline)}, '
            f"{gate.confidence:.0%} bootstrap intervals</p>",
            "<table><tr><th>task</th><th>metric</th><th>baseline</th><th>candidate</th>"
            f"<th>delta</th><th>CI</th><th>status</th></tr>{gate_rows}</table>",
        ]
    if curves:
        body.append("<h2>Training curves</h2>")
        metrics = sorted({m for c in curves.values() for m in c if m != "lr"})
        for m in metrics:
            lines = {label: c[m] for label, c in curves.items() if m in c}
            body += [_legend(list(lines)), svg_line_chart(lines, title=m)]
    return _page(f"comparison — {suite}", "\n".join(body))


def write_report(path: str | Path, html_text: str) -> Path:
    from forgeml.core.io import atomic_write_text

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, html_text)
    return path
