"""Curation: raw documents -> boilerplate removal -> filters -> redaction -> dedup -> Parquet.

Second stage of the data pipeline (`forgeml data curate`). Pass one streams the raw Parquet
in batches, drops records by the first filter that rejects them and redacts PII and
secrets, writing survivors, their normalised-text hashes and MinHash signatures to work
files on disk; then exact and near duplicates are grouped out of core (forgeml.data.dedup)
and pass two writes the curated Parquet with per-record provenance. Memory holds batches,
partitions and the duplicates found, not the corpus. The report accounts for every input:
kept + dropped (by reason) + failed.
"""

from __future__ import annotations

import bisect
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
from forgeml.data.dedup import (
    ExactHashSpill,
    MinHasher,
    SignatureSpill,
    exact_groups_spilled,
    near_duplicate_clusters_spilled,
)
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
_DEDUP_MAX_ENTRIES = 1 << 18  # entries per dedup partition in memory (~5 MB each)

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


def _bin(length: int) -> int:
    """Index of the LENGTH_EDGES bin holding `length` (the last bin is open-ended)."""
    return bisect.bisect_right(LENGTH_EDGES, length) - 1


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
    hist_in = [0] * len(LENGTH_EDGES)
    langs_in: Counter[str] = Counter()
    code_in: Counter[str] = Counter()
    redaction_totals: Counter[str] = Counter()
    stage_counts = {"filters": 0, "redaction": 0, "dedup_exact": 0, "dedup_near": 0}
    hasher = MinHasher(cfg.dedup.num_perm, cfg.dedup.shingle_words, cfg.dedup.seed)
    n_survivors = 0  # records past filters and redaction: rows of the work file
    pending: list[str] = []

    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".curate-", dir=out_path.parent) as tmp:
        work_path = Path(tmp) / "survivors.parquet"
        writer = pq.ParquetWriter(work_path, _WORK_SCHEMA, compression="zstd")
        hashes = ExactHashSpill(Path(tmp) / "exact.bin")
        signatures = SignatureSpill(Path(tmp) / "signatures.bin", cfg.dedup.num_perm)
        rows: list[dict[str, Any]] = []
        for raw_row, record in enumerate(_progress(_iter_records(in_path), progress, in_path)):
            report.input += 1
            text = record.get("text") or ""
            doc_type = record.get("type") or "text"
            report.chars["input"] += len(text)
            hist_in[_bin(len(text))] += 1
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
                hashes.add(text, n_survivors)
            n_survivors += 1
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
        hashes.close()

        dedup = _find_duplicates(cfg, hashes, signatures, Path(tmp))
        signatures.close()
        dropped["dedup:exact"] += len(dedup.exact_dups)
        stage_counts["dedup_exact"] = len(dedup.exact_dups)
        dropped["dedup:near"] += len(dedup.near_dups)
        stage_counts["dedup_near"] = len(dedup.near_dups)
        kept_stats = _write_curated(work_path, out_path, dedup, report)

    report.kept = kept_stats["kept"]
    report.chars["kept"] = kept_stats["chars"]
    hist_out = kept_stats["histogram"]
    langs_out, code_out = kept_stats["languages"], kept_stats["code_languages"]
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
    report.length_histogram = {"edges": LENGTH_EDGES, "input": hist_in, "kept": hist_out}
    report.languages = {
        "input": dict(langs_in.most_common()),
        "kept": dict(langs_out.most_common()),
    }
    report.code_languages = {
        "input": dict(code_in.most_common()),
        "kept": dict(code_out.most_common()),
    }
    report.redactions = {k: redaction_totals.get(k, 0) for k in KINDS}
    report.duplicates = kept_stats["duplicates"]
    return report


@dataclass
class _Duplicates:
    """Dedup decisions over the work file's rows (indices), sized by the duplicates only."""

    exact_groups: list[list[int]]  # [representative, copies...]
    near_clusters: list[list[int]]  # [representative, near copies...] among exact survivors
    exact_dups: np.ndarray  # sorted rows dropped as exact copies
    near_dups: np.ndarray  # sorted rows dropped as near copies
    represented: dict[int, int]  # representative row -> copies it stands for

    def clusters(self) -> list[tuple[str, int, list[int]]]:
        """(kind, representative, member rows incl. exact copies of near members), largest
        first; rows follow input order, so the first row breaks ties as raw rows would."""
        copies = {g[0]: g[1:] for g in self.exact_groups}
        out = [("exact", g[0], g) for g in self.exact_groups]
        for c in self.near_clusters:
            out.append(("near", c[0], sorted(c + [i for m in c for i in copies.get(m, [])])))
        return sorted(out, key=lambda c: (-len(c[2]), c[2][0]))


def _find_duplicates(
    cfg: CurateConfig, hashes: ExactHashSpill, signatures: SignatureSpill, tmp: Path
) -> _Duplicates:
    """Exact groups first; near clusters among the rows that are not exact copies."""
    exact = []
    if cfg.dedup.exact:
        exact = exact_groups_spilled(hashes, max_entries=_DEDUP_MAX_ENTRIES, work_dir=tmp)
    exact_dups = np.array(sorted(i for g in exact for i in g[1:]), dtype=np.int64)
    near = []
    if cfg.dedup.near:
        near = near_duplicate_clusters_spilled(
            signatures, cfg.dedup.threshold, seed=cfg.dedup.seed, exclude=exact_dups,
            max_entries=_DEDUP_MAX_ENTRIES, work_dir=tmp,
        )  # fmt: skip
    near_dups = np.array(sorted(i for c in near for i in c[1:]), dtype=np.int64)
    represented = {g[0]: len(g) - 1 for g in exact}
    for c in near:
        extra = len(c) - 1 + sum(represented.get(i, 0) for i in c[1:])
        represented[c[0]] = represented.get(c[0], 0) + extra
    return _Duplicates(exact, near, exact_dups, near_dups, represented)


def _write_curated(
    work_path: Path, out_path: Path, dedup: _Duplicates, report: CurateReport
) -> dict[str, Any]:
    """Pass two: the work file minus duplicates, with `duplicates_removed`, written
    atomically; returns the kept-side statistics and the duplicate summary."""
    drop = np.union1d(dedup.exact_dups, dedup.near_dups)
    top = dedup.clusters()[:_TOP_CLUSTERS]
    wanted = {i for _, _, rows in top for i in rows[:20]}
    shown: dict[int, dict[str, Any]] = {}
    hist = [0] * len(LENGTH_EDGES)
    langs: Counter[str] = Counter()
    code: Counter[str] = Counter()
    kept = chars = 0
    columns = ["raw_row", "path", "locator", "chars", "natural_language", "type", "language"]
    with atomic_open(out_path, "wb") as fh:
        out = pq.ParquetWriter(fh, SCHEMA, compression="zstd")
        index = 0
        for batch in pq.ParquetFile(work_path).iter_batches(batch_size=_BATCH):
            n = batch.num_rows
            rows = np.arange(index, index + n)
            keep = ~np.isin(rows, drop, assume_unique=True)
            exact = np.isin(rows, dedup.exact_dups, assume_unique=True)
            counts = pa.array([dedup.represented.get(int(i), 0) for i in rows], type=pa.int32())
            table = pa.Table.from_batches([batch]).append_column("duplicates_removed", counts)
            out.write_table(table.filter(pa.array(keep)).cast(SCHEMA))
            removed = table.column("boilerplate_lines_removed").to_numpy()
            report.boilerplate_lines_removed += int(removed[~exact].sum())
            cols = {c: table.column(c).to_pylist() for c in columns}
            for j in np.flatnonzero(keep):
                kept += 1
                chars += cols["chars"][j]
                hist[_bin(cols["chars"][j])] += 1
                if cols["natural_language"][j]:
                    langs[cols["natural_language"][j]] += 1
                if cols["type"][j] == "code":
                    code[cols["language"][j] or "unknown"] += 1
            for i in wanted.intersection(range(index, index + n)):
                j = i - index
                shown[i] = {
                    "raw_row": cols["raw_row"][j],
                    "path": cols["path"][j],
                    "locator": cols["locator"][j] or "",
                    "sample": table.column("text")[j].as_py()[:_SAMPLE_CHARS],
                }
            index += n
        out.close()
    top_clusters = [
        {
            "kind": kind,
            "size": len(rows),
            "representative": {"path": shown[rep]["path"], "locator": shown[rep]["locator"]},
            "sample": shown[rep]["sample"],
            "raw_rows": [shown[i]["raw_row"] for i in rows[:20]],
        }
        for kind, rep, rows in top
    ]
    return {
        "kept": kept,
        "chars": chars,
        "histogram": hist,
        "languages": langs,
        "code_languages": code,
        "duplicates": {
            "exact_clusters": len(dedup.exact_groups),
            "near_clusters": len(dedup.near_clusters),
            "top_clusters": top_clusters,
        },
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
