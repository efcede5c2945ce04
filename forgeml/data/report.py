"""Curation report as self-contained HTML (inline SVG, no JavaScript or CDN), and dataset
stats and diffs for `forgeml data show` / `forgeml data diff`.

`render_html` takes the dict that `CurateReport.to_dict()` gives (the same numbers go to
report.json); `dataset_stats` and `diff_datasets` read any documents Parquet.
"""

from __future__ import annotations

import json
from collections import Counter
from html import escape
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from forgeml.core.io import atomic_write_text, parquet_batches
from forgeml.data.curate_report import warning_line

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:980px;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}td,th{padding:3px 10px;text-align:left}
tr:nth-child(even){background:#f6f6f6}td.n{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#f6f6f6;padding:6px;white-space:pre-wrap;font-size:12px;max-height:9em;
overflow:hidden}.muted{color:#777}.warn{color:#9a4b00}
"""


def _table(rows: list[tuple], header: tuple[str, ...]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="n">{v:,}</td>' if isinstance(v, int) else f"<td>{escape(str(v))}</td>"
            for v in row
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def bar_chart_svg(labels: list[str], series: dict[str, list[int]], width: int = 900) -> str:
    """Grouped vertical bars, one group per label, one colour per series; inline SVG."""
    colours = ["#8da0cb", "#66c2a5", "#fc8d62", "#e78ac3"]
    height, pad, top = 220, 40, 20
    peak = max([1, *(v for vals in series.values() for v in vals)])
    group = (width - pad) / max(1, len(labels))
    bar = group * 0.8 / max(1, len(series))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 50}">']
    for s, (name, vals) in enumerate(series.items()):
        colour = colours[s % len(colours)]
        parts.append(
            f'<rect x="{pad + s * 110}" y="2" width="10" height="10" fill="{colour}"/>'
            f'<text x="{pad + s * 110 + 14}" y="11" font-size="11">{escape(name)}</text>'
        )
        for i, v in enumerate(vals):
            h = (height - top) * v / peak
            x = pad + i * group + group * 0.1 + s * bar
            parts.append(
                f'<rect x="{x:.1f}" y="{height - h:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                f'fill="{colour}"><title>{escape(name)} {escape(labels[i])}: {v}</title></rect>'
            )
    for i, label in enumerate(labels):
        x = pad + i * group + group / 2
        parts.append(
            f'<text x="{x:.1f}" y="{height + 15}" font-size="10" text-anchor="middle">'
            f"{escape(label)}</text>"
        )
    parts.append(
        f'<text x="2" y="{top + 5}" font-size="10">{peak:,}</text>'
        f'<line x1="{pad}" y1="{height}" x2="{width}" y2="{height}" stroke="#999"/></svg>'
    )
    return "".join(parts)


def _size_label(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n < 1_000_000 else f"{n // 1_000_000}M" if n else "0"


def render_html(report: dict[str, Any]) -> str:
    """The curation report page. Every string is HTML-escaped; samples are redacted text."""
    r = report
    edges = r["length_histogram"].get("edges", [])
    labels = [f"{_size_label(a)}-{_size_label(b)}" for a, b in zip(edges, edges[1:], strict=False)]
    labels.append(f"{_size_label(edges[-1])}+" if edges else "")
    hist = (
        bar_chart_svg(labels, {k: r["length_histogram"][k] for k in ("input", "kept")})
        if edges
        else ""
    )
    langs_in, langs_kept = r["languages"].get("input", {}), r["languages"].get("kept", {})
    lang_rows = [(k, v, langs_kept.get(k, 0)) for k, v in langs_in.items()]
    code_in, code_kept = r["code_languages"].get("input", {}), r["code_languages"].get("kept", {})
    code_rows = [(k, v, code_kept.get(k, 0)) for k, v in code_in.items()]
    clusters = []
    for c in r["duplicates"].get("top_clusters", []):
        where = c["representative"]["path"] + (
            f" ({c['representative']['locator']})" if c["representative"]["locator"] else ""
        )
        clusters.append(
            f"<p><b>{escape(c['kind'])}</b>, {c['size']} records; kept "
            f"<code>{escape(where)}</code></p><pre>{escape(c['sample'])}</pre>"
        )
    sections = [
        f"<h1>Curation report</h1><p class=muted>{escape(r['input_path'])} &rarr; "
        f"{escape(r['out_path'])}<br>config sha256 {escape(r['config_hash'][:16])}</p>",
        _table(
            [
                ("input records", r["input"]),
                ("kept", r["kept"]),
                ("dropped", r["dropped"]),
                ("failed", r["failed"]),
                ("characters in", r["chars"]["input"]),
                ("characters kept", r["chars"]["kept"]),
                ("boilerplate lines removed", r["boilerplate_lines_removed"]),
            ],
            ("", "count"),
        ),
        *_warnings_section(r.get("warnings", [])),
        "<h2>Stages</h2>",
        _table([(s["stage"], s["in"], s["out"]) for s in r["stages"]], ("stage", "in", "out")),
        "<h2>Dropped by reason</h2>",
        _table(sorted(r["dropped_by_reason"].items(), key=lambda kv: -kv[1]), ("reason", "n")),
        *_by_type_section(r.get("by_type", {}), r.get("profile", "")),
        *_quality_model_section(r.get("quality_model", {})),
        *_media_section(r.get("media") or {}),
    ]
    if r["failed_by_reason"]:
        sections += ["<h2>Failed</h2>", _table(list(r["failed_by_reason"].items()), ("", "n"))]
    sections += [
        "<h2>Length (characters)</h2>",
        hist,
        "<h2>Language mix</h2>",
        _table(lang_rows, ("language", "input", "kept")),
        _table(code_rows, ("code language", "input", "kept")) if code_rows else "",
        "<h2>Redactions</h2>",
        f"<p>{r['records_redacted']:,} kept records redacted.</p>",
        _table(list(r["redactions"].items()), ("type", "count")),
        "<h2>Duplicates</h2>",
        f"<p>{r['duplicates'].get('exact_clusters', 0):,} exact clusters, "
        f"{r['duplicates'].get('near_clusters', 0):,} near-duplicate clusters.</p>",
        *clusters,
    ]
    return (
        '<!doctype html><html><head><meta charset="utf-8"><title>forgeml curation report'
        f"</title><style>{_CSS}</style></head><body>{''.join(sections)}</body></html>\n"
    )


def _warnings_section(warnings: list[dict[str, Any]]) -> list[str]:
    if not warnings:
        return []
    items = "".join(f"<li>{escape(warning_line(w))}</li>" for w in warnings)
    return [f"<h2>Warnings</h2><ul class=warn>{items}</ul>"]


def _by_type_section(by_type: dict[str, dict[str, Any]], profile: str) -> list[str]:
    """Per document type: how many came in, which rules judged them (the profile's kinds)
    and every filter drop reason with the first document it dropped."""
    if not by_type:
        return []
    rows = []
    for doc_type, t in by_type.items():
        kinds = ", ".join(f"{k} {n:,}" for k, n in t["judged_as"].items())
        rows.append((doc_type, t["input"], kinds, "", "", ""))
        for reason, n in t["dropped"].items():
            rows.append(("", "", "", reason, n, t["examples"].get(reason, "")))
    header = ("type", "input", "judged as", "dropped by", "n", "first dropped")
    return [
        f"<h2>Filter drops by document type ({escape(profile)} profile)</h2>",
        _table(rows, header),
    ]


def _media_section(media: dict[str, Any]) -> list[str]:
    """Images and recordings carried with the text (forgeml.data.media_carry): what came in,
    what was kept, and why the rest was dropped, for the media and for their text pairs."""
    if not media:
        return []
    pairs = media.get("pairs", {})
    counts = [
        ("media in", media.get("input", 0)),
        ("media kept", media.get("kept", 0)),
        ("images kept", media.get("images", 0)),
        ("recordings kept", media.get("audio", 0)),
        ("bytes stored", media.get("stored_bytes", 0)),
        ("text pairs in", pairs.get("input", 0)),
        ("text pairs kept", pairs.get("kept", 0)),
        ("text pairs redacted", media.get("pairs_redacted", 0)),
    ]
    drops = [("media", k, n) for k, n in media.get("dropped_by_reason", {}).items()]
    drops += [("pair", k, n) for k, n in pairs.get("dropped_by_reason", {}).items()]
    return [
        "<h2>Media</h2>",
        _table(counts, ("", "count")),
        _table(drops, ("what", "dropped by", "n")) if drops else "",
    ]


def _quality_model_section(summary: dict[str, Any]) -> list[str]:
    """curate.quality_model: how far its held-out scores agree with the rules' verdicts."""
    if not summary:
        return []
    return [
        "<h2>Quality model (agreement with the rules)</h2>",
        _table(list(summary.items()), ("", "")),
    ]


# ---------------------------------------------------------------------------------------
# data show / data diff


def _documents(path: str | Path) -> Path:
    path = Path(path)
    return path / "data.parquet" if path.is_dir() else path


def dataset_stats(path: str | Path) -> dict[str, Any]:
    """Rows, characters, types, languages, files and redaction totals of a documents
    Parquet (or a dataset folder holding `data.parquet`)."""
    parquet = _documents(path)
    pfile = pq.ParquetFile(parquet)
    names = pfile.schema_arrow.names
    kind = (pfile.schema_arrow.metadata or {}).get(b"forgeml.kind", b"").decode()
    cols = [c for c in ("text", "type", "language", "natural_language", "path") if c in names]
    stats: dict[str, Any] = {"path": str(parquet), "kind": kind, "rows": pfile.metadata.num_rows}
    chars, lengths = 0, []
    counters: dict[str, Counter] = {c: Counter() for c in cols if c not in ("text", "path")}
    files: set[str] = set()
    for batch in parquet_batches(pfile, 4096, cols):
        lens = pc.utf8_length(batch.column("text")).to_numpy(zero_copy_only=False)
        chars += int(lens.sum())
        lengths.extend(lens.tolist())
        for c, counter in counters.items():
            counter.update(v or "-" for v in batch.column(c).to_pylist())
        if "path" in cols:
            files.update(batch.column("path").to_pylist())
    stats["chars"] = chars
    stats["files"] = len(files)
    stats["mean_chars"] = round(chars / max(1, stats["rows"]), 1)
    stats["median_chars"] = int(sorted(lengths)[len(lengths) // 2]) if lengths else 0
    for c, counter in counters.items():
        stats[f"by_{c}"] = dict(counter.most_common())
    if "redactions" in names:
        totals = pq.read_table(parquet, columns=["redactions"]).column("redactions")
        stats["redactions"] = {
            f: int(pc.sum(pc.struct_field(totals, f)).as_py() or 0)
            for f in (t.name for t in totals.type)
        }
    if parquet.with_name("media.parquet").is_file():
        stats["media"] = media_stats(parquet.with_name("media.parquet"))
    return stats


def media_stats(path: str | Path) -> dict[str, Any]:
    """Counts of a media table (forgeml.data.media_ingest): items by kind and stored format,
    duplicates marked, audio seconds and pairs by kind."""
    cols = ["kind", "format", "duplicate_kind", "duration_s", "pairs"]
    rows = pq.read_table(path, columns=cols).to_pylist()
    return {
        "items": len(rows),
        "by_kind": dict(Counter(r["kind"] for r in rows).most_common()),
        "by_format": dict(Counter(r["format"] for r in rows).most_common()),
        "duplicates": dict(Counter(r["duplicate_kind"] for r in rows if r["duplicate_kind"])),
        "audio_seconds": round(sum(r["duration_s"] or 0 for r in rows), 1),
        "pairs": dict(Counter(p["kind"] for r in rows for p in r["pairs"] or []).most_common()),
    }


def _keyed_ids(parquet: Path) -> dict[tuple[str, str], str]:
    table = (
        pq.read_table(parquet, columns=["path", "locator", "doc_id"])
        if "locator" in (pq.read_schema(parquet).names)
        else pq.read_table(parquet, columns=["path", "doc_id"])
    )
    paths = table.column("path").to_pylist()
    locs = (
        table.column("locator").to_pylist()
        if "locator" in table.column_names
        else [""] * len(paths)
    )
    return {
        (p, loc or ""): d
        for p, loc, d in zip(paths, locs, table.column("doc_id").to_pylist(), strict=True)
    }


def diff_datasets(a: str | Path, b: str | Path, *, examples: int = 10) -> dict[str, Any]:
    """What changed from dataset `a` to `b`: documents (by content id) only in one, records
    (by path + locator) added, removed or changed, and the stats side by side."""
    pa_, pb = _documents(a), _documents(b)
    ka, kb = _keyed_ids(pa_), _keyed_ids(pb)
    ids_a, ids_b = set(ka.values()), set(kb.values())
    added = sorted(k for k in kb if k not in ka)
    removed = sorted(k for k in ka if k not in kb)
    changed = sorted(k for k in ka if k in kb and ka[k] != kb[k])
    stats_a, stats_b = dataset_stats(pa_), dataset_stats(pb)
    return {
        "a": str(pa_),
        "b": str(pb),
        "rows": {"a": stats_a["rows"], "b": stats_b["rows"]},
        "chars": {"a": stats_a["chars"], "b": stats_b["chars"]},
        "documents_only_in_a": len(ids_a - ids_b),
        "documents_only_in_b": len(ids_b - ids_a),
        "documents_in_both": len(ids_a & ids_b),
        "records_added": len(added),
        "records_removed": len(removed),
        "records_changed": len(changed),
        "examples": {
            "added": ["!".join(filter(None, k)) for k in added[:examples]],
            "removed": ["!".join(filter(None, k)) for k in removed[:examples]],
            "changed": ["!".join(filter(None, k)) for k in changed[:examples]],
        },
        "stats": {"a": stats_a, "b": stats_b},
    }


def save_report(report: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write a curation report (`CurateReport.to_dict()`) as report.json and report.html
    (atomically) into `out_dir`."""
    out_dir = Path(out_dir)
    json_path, html_path = out_dir / "report.json", out_dir / "report.html"
    atomic_write_text(json_path, json.dumps(report, indent=1, ensure_ascii=False))
    atomic_write_text(html_path, render_html(report))
    return json_path, html_path
