"""Curation: raw documents -> boilerplate removal -> filters -> redaction -> dedup -> Parquet.

Second stage of the data pipeline (`forgeml data curate`). Pass one streams the raw Parquet
in batches, drops records by the first filter that rejects them, redacts PII and secrets
and removes exact duplicates, writing survivors and their MinHash signatures to a work
file; pass two clusters near duplicates and writes the curated Parquet with per-record
provenance. The report accounts for every input: kept + dropped (by reason) + failed.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from forgeml.core.config import CurateConfig, config_hash
from forgeml.core.errors import DataError
from forgeml.core.io import atomic_open
from forgeml.data.dedup import MinHasher, exact_hash, near_duplicate_clusters
from forgeml.data.filters import (
    UserFilterError,
    boilerplate_remover,
    build_filters,
    detect_language,
)
from forgeml.data.redact import KINDS, redact_text, text_redactor

LENGTH_EDGES = [0, 100, 300, 1_000, 3_000, 10_000, 30_000, 100_000, 300_000, 1_000_000]
# Data and config formats: an unquoted value after `password =` is a literal there, while
# in a programming language it is usually a variable.
CONFIG_LANGUAGES = frozenset({"ini", "yaml", "toml", "json", "xml", "shell", "make", "dockerfile"})
_BATCH = 512
_TOP_CLUSTERS = 10
_SAMPLE_CHARS = 240

REDACTIONS_TYPE = pa.struct([(kind, pa.int32()) for kind in KINDS])
SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),  # sha256 of the curated text
        ("text", pa.string()),
        ("path", pa.string()),
        ("source", pa.string()),
        ("sha256", pa.string()),  # of the raw source file
        ("bytes", pa.int64()),
        ("type", pa.string()),
        ("language", pa.string()),  # programming language (code)
        ("locator", pa.string()),  # row / line / pages within the source file
        ("metadata", pa.string()),
        ("raw_doc_id", pa.string()),  # doc_id in the raw dataset
        ("raw_row", pa.int64()),  # row number in the raw dataset
        ("natural_language", pa.string()),
        ("language_score", pa.float32()),
        ("chars", pa.int64()),
        ("filters_passed", pa.list_(pa.string())),
        ("boilerplate_lines_removed", pa.int32()),
        ("redactions", REDACTIONS_TYPE),
        ("duplicates_removed", pa.int32()),  # exact + near copies this record represents
    ],
    metadata={b"forgeml.kind": b"curated-documents", b"forgeml.schema_version": b"1"},
)
_WORK_SCHEMA = pa.schema([f for f in SCHEMA if f.name != "duplicates_removed"])


@dataclass
class CurateReport:
    """What happened to every input record; `kept + dropped + failed == input`."""

    input_path: str
    out_path: str
    config_hash: str
    input: int = 0
    kept: int = 0
    dropped: int = 0
    failed: int = 0
    dropped_by_reason: dict[str, int] = field(default_factory=dict)
    failed_by_reason: dict[str, int] = field(default_factory=dict)
    stages: list[dict[str, Any]] = field(default_factory=list)
    chars: dict[str, int] = field(default_factory=lambda: {"input": 0, "kept": 0})
    length_histogram: dict[str, list[int]] = field(default_factory=dict)
    languages: dict[str, dict[str, int]] = field(default_factory=dict)
    code_languages: dict[str, dict[str, int]] = field(default_factory=dict)
    redactions: dict[str, int] = field(default_factory=dict)
    records_redacted: int = 0
    boilerplate_lines_removed: int = 0
    duplicates: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        top = sorted(self.dropped_by_reason.items(), key=lambda kv: -kv[1])[:4]
        why = ", ".join(f"{n} {r}" for r, n in top)
        red = sum(self.redactions.values())
        return (
            f"input {self.input}, kept {self.kept}, dropped {self.dropped}"
            + (f" ({why}{', ...' if len(self.dropped_by_reason) > 4 else ''})" if why else "")
            + f", failed {self.failed}; {red} redactions in {self.records_redacted} records"
        )


def _histogram(lengths: list[int]) -> list[int]:
    counts = np.histogram(np.asarray(lengths, dtype=np.int64), bins=[*LENGTH_EDGES, 1 << 62])[0]
    return counts.tolist()


def _iter_records(path: Path) -> Iterator[dict[str, Any]]:
    pfile = pq.ParquetFile(path)
    for batch in pfile.iter_batches(batch_size=_BATCH):
        yield from batch.to_pylist()


def curate_documents(
    in_path: str | Path,
    out_path: str | Path,
    cfg: CurateConfig | None = None,
    *,
    progress: bool = False,
) -> CurateReport:
    """Curate the raw-documents Parquet at `in_path` into `out_path` (written atomically).

    Filters run first (the first to reject a record names the reason), then redaction
    (secrets always; PII by policy), then exact and near-duplicate removal keeping the
    first record of each cluster. Raises `DataError` when the input is not a documents
    Parquet; the input is never modified.
    """
    cfg = cfg or CurateConfig()
    in_path, out_path = Path(in_path), Path(out_path)
    try:
        names = pq.read_schema(in_path).names
    except (OSError, pa.ArrowInvalid) as err:
        raise DataError(
            f"cannot read documents Parquet {in_path} ({type(err).__name__})",
            "pass a dataset produced by `forgeml data ingest`",
        ) from None
    if "text" not in names:
        raise DataError(f"{in_path} has no 'text' column", "pass a raw documents dataset")

    report = CurateReport(str(in_path), str(out_path), config_hash(cfg))
    filters = build_filters(cfg)
    strip_boilerplate = boilerplate_remover(cfg.boilerplate)
    boiler_types = set(cfg.boilerplate.apply_to) if cfg.boilerplate.enabled else set()
    prose = set(cfg.prose_types)
    safe = text_redactor(cfg.redact)
    dropped: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    lengths_in: list[int] = []
    lengths_out: list[int] = []
    langs_in: Counter[str] = Counter()
    langs_out: Counter[str] = Counter()
    code_in: Counter[str] = Counter()
    code_out: Counter[str] = Counter()
    redaction_totals: Counter[str] = Counter()
    stage_counts = {"filters": 0, "redaction": 0, "dedup_exact": 0, "dedup_near": 0}
    hasher = MinHasher(cfg.dedup.num_perm, cfg.dedup.shingle_words, cfg.dedup.seed)
    exact_first: dict[str, int] = {}  # normalised hash -> survivor index
    exact_members: dict[int, list[int]] = {}  # survivor index -> raw rows of its copies
    survivors: list[dict[str, Any]] = []  # path/locator/sample/raw_row per survivor
    signatures: list[np.ndarray] = []
    pending: list[str] = []

    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".curate-", dir=out_path.parent) as tmp:
        work_path = Path(tmp) / "survivors.parquet"
        writer = pq.ParquetWriter(work_path, _WORK_SCHEMA, compression="zstd")
        rows: list[dict[str, Any]] = []
        for raw_row, record in enumerate(_progress(_iter_records(in_path), progress, in_path)):
            report.input += 1
            text = record.get("text") or ""
            doc_type = record.get("type") or "text"
            report.chars["input"] += len(text)
            lengths_in.append(len(text))
            removed = 0
            if doc_type in boiler_types:
                text, removed = strip_boilerplate(text)
            record["natural_language"], record["language_score"] = None, None
            if doc_type in prose and cfg.language.enabled:
                lang, score = detect_language(text, cfg.language, cfg.seed)
                record["natural_language"], record["language_score"] = lang, score
                langs_in[lang] += 1
            elif doc_type == "code":
                code_in[record.get("language") or "unknown"] += 1
            passed: list[str] = []
            reason = None
            try:
                for flt in filters:
                    if flt.applies(record):
                        reason = flt.check(text, record)
                        if reason:
                            break
                        passed.append(flt.name)
            except UserFilterError as err:
                failed[safe(str(err))] += 1
                continue
            if reason:
                dropped[safe(reason)] += 1
                stage_counts["filters"] += 1
                continue
            language = record.get("language")
            in_code = doc_type == "code" and language not in CONFIG_LANGUAGES
            red = redact_text(text, cfg.redact, in_code=in_code)
            if red.drop:
                dropped[red.drop] += 1
                stage_counts["redaction"] += 1
                for kind, n in red.counts.items():
                    redaction_totals[kind] += n
                continue
            text = red.text
            for kind, n in red.counts.items():
                redaction_totals[kind] += n
            report.records_redacted += bool(red.counts)
            metadata = record.get("metadata")
            if metadata:
                meta_red = redact_text(metadata, cfg.redact.model_copy(update={"secret": "redact"}))
                metadata = meta_red.text
            if cfg.dedup.exact:
                key = exact_hash(text)
                first = exact_first.get(key)
                if first is not None:
                    dropped["dedup:exact"] += 1
                    stage_counts["dedup_exact"] += 1
                    exact_members[first].append(raw_row)
                    continue
                exact_first[key] = len(survivors)
                exact_members[len(survivors)] = []
            report.boilerplate_lines_removed += removed
            survivors.append(
                {
                    "raw_row": raw_row,
                    "path": record.get("path"),
                    "locator": record.get("locator") or "",
                    "sample": text[:_SAMPLE_CHARS],
                    "chars": len(text),
                    "lang": record.get("natural_language"),
                    "code": (language or "unknown") if doc_type == "code" else None,
                }
            )
            rows.append(
                {
                    "doc_id": _sha256(text),
                    "text": text,
                    "path": record.get("path"),
                    "source": record.get("source"),
                    "sha256": record.get("sha256"),
                    "bytes": record.get("bytes"),
                    "type": doc_type,
                    "language": language,
                    "locator": record.get("locator") or "",
                    "metadata": metadata,
                    "raw_doc_id": record.get("doc_id"),
                    "raw_row": raw_row,
                    "natural_language": record["natural_language"],
                    "language_score": record["language_score"],
                    "chars": len(text),
                    "filters_passed": passed,
                    "boilerplate_lines_removed": removed,
                    "redactions": {k: red.counts.get(k, 0) for k in KINDS},
                }
            )
            if cfg.dedup.near:
                pending.append(text)
                if len(pending) >= _BATCH:
                    signatures.append(hasher.signatures(pending))
                    pending = []
            if len(rows) >= _BATCH:
                writer.write_table(pa.Table.from_pylist(rows, schema=_WORK_SCHEMA))
                rows = []
        if rows:
            writer.write_table(pa.Table.from_pylist(rows, schema=_WORK_SCHEMA))
        writer.close()
        if pending:
            signatures.append(hasher.signatures(pending))

        near_clusters: list[list[int]] = []
        drop_near = np.zeros(len(survivors), dtype=bool)
        if cfg.dedup.near and len(survivors) > 1:
            sigs = np.concatenate(signatures)
            near_clusters = near_duplicate_clusters(sigs, cfg.dedup.threshold, seed=cfg.dedup.seed)
            for cluster in near_clusters:
                drop_near[cluster[1:]] = True
        dropped["dedup:near"] += int(drop_near.sum())
        stage_counts["dedup_near"] = int(drop_near.sum())
        represented = np.array([len(exact_members.get(i, [])) for i in range(len(survivors))])
        for cluster in near_clusters:
            represented[cluster[0]] += len(cluster) - 1 + represented[cluster[1:]].sum()

        with atomic_open(out_path, "wb") as fh:
            out = pq.ParquetWriter(fh, SCHEMA, compression="zstd")
            index = 0
            for batch in pq.ParquetFile(work_path).iter_batches(batch_size=_BATCH):
                n = batch.num_rows
                keep = ~drop_near[index : index + n]
                counts = pa.array(represented[index : index + n], type=pa.int32())
                table = pa.Table.from_batches([batch]).append_column("duplicates_removed", counts)
                out.write_table(table.filter(pa.array(keep)).cast(SCHEMA))
                index += n
            out.close()

    for i, s in enumerate(survivors):
        if drop_near[i]:
            continue
        report.kept += 1
        report.chars["kept"] += s["chars"]
        lengths_out.append(s["chars"])
        if s["lang"]:
            langs_out[s["lang"]] += 1
        if s["code"]:
            code_out[s["code"]] += 1
    dropped = Counter({r: n for r, n in dropped.items() if n})
    report.dropped = sum(dropped.values())
    report.failed = sum(failed.values())
    report.dropped_by_reason = dict(sorted(dropped.items()))
    report.failed_by_reason = dict(sorted(failed.items()))
    assert report.kept + report.dropped + report.failed == report.input
    remaining = report.input - report.failed
    for stage in ("filters", "redaction", "dedup_exact", "dedup_near"):
        out_n = remaining - stage_counts[stage]
        report.stages.append({"stage": stage, "in": remaining, "out": out_n})
        remaining = out_n
    report.length_histogram = {
        "edges": LENGTH_EDGES,
        "input": _histogram(lengths_in),
        "kept": _histogram(lengths_out),
    }
    report.languages = {
        "input": dict(langs_in.most_common()),
        "kept": dict(langs_out.most_common()),
    }
    report.code_languages = {
        "input": dict(code_in.most_common()),
        "kept": dict(code_out.most_common()),
    }
    report.redactions = {k: redaction_totals.get(k, 0) for k in KINDS}
    report.duplicates = _duplicate_summary(survivors, exact_members, near_clusters)
    return report


def _duplicate_summary(
    survivors: list[dict], exact_members: dict[int, list[int]], near_clusters: list[list[int]]
) -> dict[str, Any]:
    """Cluster counts and the largest clusters, each shown by its (already redacted)
    representative's path and opening text."""
    clusters = []
    for rep, copies in exact_members.items():
        if copies:
            clusters.append(("exact", rep, [survivors[rep]["raw_row"], *copies]))
    for cluster in near_clusters:
        rows = [survivors[i]["raw_row"] for i in cluster]
        for i in cluster:
            rows += exact_members.get(i, [])
        clusters.append(("near", cluster[0], sorted(rows)))
    clusters.sort(key=lambda c: (-len(c[2]), c[2][0]))
    top = []
    for kind, rep, rows in clusters[:_TOP_CLUSTERS]:
        s = survivors[rep]
        top.append(
            {
                "kind": kind,
                "size": len(rows),
                "representative": {"path": s["path"], "locator": s["locator"]},
                "sample": s["sample"],
                "raw_rows": rows[:20],
            }
        )
    return {
        "exact_clusters": sum(1 for c in exact_members.values() if c),
        "near_clusters": len(near_clusters),
        "top_clusters": top,
    }


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _progress(records: Iterator[dict], enabled: bool, path: Path) -> Iterator[dict]:
    if not enabled:
        yield from records
        return
    from rich.progress import Progress

    total = pq.ParquetFile(path).metadata.num_rows
    with Progress(transient=True) as bar:
        task = bar.add_task("curate", total=total)
        for record in records:
            yield record
            bar.advance(task)


def save_report(report: CurateReport, out_dir: str | Path) -> tuple[Path, Path]:
    """Write report.json and report.html (atomically) into `out_dir`."""
    from forgeml.core.io import atomic_write_text
    from forgeml.data.report import render_html

    out_dir = Path(out_dir)
    data = report.to_dict()
    json_path, html_path = out_dir / "report.json", out_dir / "report.html"
    atomic_write_text(json_path, json.dumps(data, indent=1, ensure_ascii=False))
    atomic_write_text(html_path, render_html(data))
    return json_path, html_path
