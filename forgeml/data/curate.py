"""Curation: raw documents -> boilerplate removal -> filters -> redaction -> dedup -> Parquet.

Second stage of the data pipeline (`forgeml data curate`). Pass one streams the raw Parquet
in batches (here, in worker processes with `curate.executor: processes`, or as Ray tasks
with `curate.executor: ray`), drops records by the first
filter that rejects them and redacts PII and secrets, writing survivors, their
normalised-text hashes and MinHash signatures to work files on disk; then exact and near
duplicates are grouped out of core (forgeml.data.dedup) and pass two writes the curated
Parquet with per-record provenance. Memory holds batches, partitions and the duplicates
found, not the corpus. The report accounts for every input: kept + dropped (by reason) +
failed.
"""

from __future__ import annotations

import bisect
import hashlib
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from forgeml.core.config import CurateConfig, config_hash
from forgeml.core.errors import DataError
from forgeml.core.io import RowGroupWriter, atomic_open, parquet_batches
from forgeml.data.curate_executors import batches_in_processes, batches_on_ray
from forgeml.data.curate_report import CurateReport, DropLedger
from forgeml.data.dedup import MinHasher, Sketches, exact_hash
from forgeml.data.dedup_spill import (
    ExactHashSpill,
    SignatureSpill,
    exact_groups_spilled,
    near_duplicate_clusters_spilled,
)
from forgeml.data.filters import (
    Filter,
    UserFilterError,
    boilerplate_remover,
    build_filters,
    detect_language,
    document_kind,
)
from forgeml.data.quality import QualityModel, QualitySample, fit_quality_model
from forgeml.data.redact import KINDS, redact_text, text_redactor

LENGTH_EDGES = [0, 100, 300, 1_000, 3_000, 10_000, 30_000, 100_000, 300_000, 1_000_000]
# Data and config formats: an unquoted value after `password =` is a literal there, while
# in a programming language it is usually a variable.
CONFIG_LANGUAGES = frozenset({"ini", "yaml", "toml", "json", "xml", "shell", "make", "dockerfile"})
_BATCH = 512
_TOP_CLUSTERS = 10
_SAMPLE_CHARS = 240
_LABELLED_CHARS = 4000  # of each text sampled for curate.quality_model
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
# Parquet min/max statistics of the text columns are whole documents, kept in the writer's
# and every reader's memory for each row group (13 MB of footer at 3000 row groups in a
# test): the curated file keeps statistics for the small columns only, the work file none.
_STATS_COLUMNS = [
    f.name for f in SCHEMA if f.name not in ("text", "metadata") and not pa.types.is_nested(f.type)
]


def _bin(length: int) -> int:
    """Index of the LENGTH_EDGES bin holding `length` (the last bin is open-ended)."""
    return bisect.bisect_right(LENGTH_EDGES, length) - 1


def curate_documents(
    in_path: str | Path,
    out_path: str | Path,
    cfg: CurateConfig | None = None,
    *,
    progress: bool = False,
    fates: dict[str, str] | None = None,
) -> CurateReport:
    """Curate the raw-documents Parquet at `in_path` into `out_path` (written atomically).

    Filters run first (the first to reject a record names the reason), then redaction
    (secrets always; PII by policy), then exact and near-duplicate removal keeping the
    first record of each cluster. Raises `DataError` when the input is not a documents
    Parquet; the input is never modified.

    With `cfg.executor == "processes"` (or `"ray"`) the per-record work of pass one (boilerplate, language,
    filters, redaction, dedup hashes and MinHash signatures) runs as one Ray task per batch
    of records, in `cfg.workers` processes here (or on the Ray cluster at `cfg.ray_address`,
    or a local one on 127.0.0.1); the batches are merged in input order and dedup and the writing stay here, so the curated
    Parquet and the report are the same as with the local executor.

    `fates`: raw doc ids to follow (the keys; media pairs name them). Each one whose record
    is dropped or fails gets the reason as its value, e.g. `dedup:near`; kept ones keep theirs.
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

    report = CurateReport(
        str(in_path), str(out_path), config_hash(cfg.output_settings()), profile=cfg.profile
    )
    ledger = DropLedger()
    steps = _RecordSteps.build(cfg)  # here too with Ray: a bad user filter fails at once
    dropped: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    hist_in = [0] * len(LENGTH_EDGES)
    langs_in: Counter[str] = Counter()
    code_in: Counter[str] = Counter()
    redaction_totals: Counter[str] = Counter()
    stage_counts = {"filters": 0, "redaction": 0, "dedup_exact": 0, "dedup_near": 0}
    sample = QualitySample(cfg.quality_model.sample_docs, cfg.seed)
    n_survivors = 0  # records past filters and redaction: rows of the work file

    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".curate-", dir=out_path.parent) as tmp:
        work_path = Path(tmp) / "survivors.parquet"
        writer = RowGroupWriter(
            pq.ParquetWriter(work_path, _WORK_SCHEMA, compression="zstd", write_statistics=False)
        )
        hashes = ExactHashSpill(Path(tmp) / "exact.bin")
        signatures = SignatureSpill(Path(tmp) / "signatures.bin", cfg.dedup.num_perm)
        if cfg.executor == "ray":
            outcomes = batches_on_ray(_raw_batches(in_path), curate_batch, cfg)
        elif cfg.executor == "processes":
            outcomes = batches_in_processes(_raw_batches(in_path), curate_batch, cfg)
        else:
            outcomes = (curate_batch(b, row, cfg, steps) for row, b in _raw_batches(in_path))
        for out in _progress(outcomes, progress, in_path):
            report.input += out.input
            report.chars["input"] += out.chars_input
            hist_in = [a + b for a, b in zip(hist_in, out.hist_input, strict=True)]
            langs_in.update(out.languages)
            code_in.update(out.code_languages)
            dropped.update(out.dropped)
            ledger.add(out.ledger)
            _note_fates(fates, out.drops)
            sample.extend(out.labelled)
            failed.update(out.failed)
            stage_counts["filters"] += out.dropped_by_filters
            stage_counts["redaction"] += out.dropped_by_redaction
            redaction_totals.update(out.redactions)
            report.records_redacted += out.records_redacted
            for i, digest in enumerate(out.exact_hashes):
                hashes.add_hash(digest, n_survivors + i)
            if out.signatures is not None:
                signatures.append(out.signatures)
            if out.survivors.num_rows:
                writer.write_table(out.survivors)
            n_survivors += out.survivors.num_rows
        writer.close()
        hashes.close()

        dedup = _find_duplicates(cfg, hashes, signatures, Path(tmp))
        signatures.close()
        dropped["dedup:exact"] += len(dedup.exact_dups)
        stage_counts["dedup_exact"] = len(dedup.exact_dups)
        dropped["dedup:near"] += len(dedup.near_dups)
        stage_counts["dedup_near"] = len(dedup.near_dups)
        model = None  # stage_counts gains "quality_model" only when it is enabled
        if cfg.quality_model.enabled:
            model, report.quality_model = fit_quality_model(sample, cfg.quality_model, cfg.seed)
        kept_stats = _write_curated(work_path, out_path, dedup, report, model, cfg, fates=fates)
        for doc_type, where in kept_stats["low_quality"]:
            dropped["quality_model:low_score"] += 1
            ledger.dropped(doc_type, "quality_model:low_score", where)
        if cfg.quality_model.enabled:
            stage_counts["quality_model"] = len(kept_stats["low_quality"])

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
    for stage in stage_counts:
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
    report.by_type = ledger.by_type()
    report.warnings = ledger.warnings(cfg.warn_drop_share)
    return report


def _raw_batches(path: Path) -> Iterator[tuple[int, pa.RecordBatch]]:
    """(raw row of the first record, batch) over the raw Parquet, in order."""
    row = 0
    for batch in parquet_batches(pq.ParquetFile(path), _BATCH):
        yield row, batch
        row += batch.num_rows


@dataclass
class _RecordSteps:
    """The per-record pieces of pass one, built from the config once per process."""

    filters: list[Filter]
    strip_boilerplate: Callable[[str], tuple[str, int]]
    boiler_types: set[str]
    prose: set[str]
    safe: Callable[[str], str]
    hasher: MinHasher

    @classmethod
    def build(cls, cfg: CurateConfig) -> _RecordSteps:
        return cls(
            filters=build_filters(cfg),
            strip_boilerplate=boilerplate_remover(cfg.boilerplate),
            boiler_types=set(cfg.boilerplate.apply_to) if cfg.boilerplate.enabled else set(),
            prose=set(cfg.prose_types),
            safe=text_redactor(cfg.redact),
            hasher=MinHasher(cfg.dedup.num_perm, cfg.dedup.shingle_words, cfg.dedup.seed),
        )


_STEPS_BY_CONFIG: dict[str, _RecordSteps] = {}  # in a Ray worker: reused across its tasks


@dataclass
class BatchOutcome:
    """Pass one over one batch of raw records: the survivors as work-file rows, their dedup
    hashes and signatures, and the counts for the report. Batches are independent; merged
    in input order they give the same work files and report whichever executor ran them."""

    survivors: pa.Table
    exact_hashes: list[str]
    signatures: Sketches | None  # MinHash signatures and shingles, for near dedup
    input: int
    chars_input: int
    hist_input: list[int]
    languages: Counter[str]
    code_languages: Counter[str]
    dropped: Counter[str]
    ledger: DropLedger  # input and filter drops per document type
    failed: Counter[str]
    dropped_by_filters: int
    dropped_by_redaction: int
    redactions: Counter[str]
    records_redacted: int
    labelled: list[tuple[str, int]]  # (text, kept by the filters?) for curate.quality_model
    drops: list[tuple[str, str]]  # (raw doc_id, reason) of each record dropped or failed


def curate_batch(
    batch: pa.RecordBatch, first_row: int, cfg: CurateConfig, steps: _RecordSteps | None = None
) -> BatchOutcome:
    """Boilerplate, language, filters and redaction of each record of `batch` (raw rows
    from `first_row`), then the survivors' exact hashes and MinHash signatures; the work
    of one Ray task under the ray executor."""
    if steps is None:
        key = config_hash(cfg.output_settings())
        if key not in _STEPS_BY_CONFIG:
            _STEPS_BY_CONFIG[key] = _RecordSteps.build(cfg)
        steps = _STEPS_BY_CONFIG[key]
    dropped: Counter[str] = Counter()
    ledger = DropLedger()
    failed: Counter[str] = Counter()
    langs_in: Counter[str] = Counter()
    code_in: Counter[str] = Counter()
    redaction_totals: Counter[str] = Counter()
    hist_in = [0] * len(LENGTH_EDGES)
    chars_in = by_filters = by_redaction = records_redacted = 0
    rows: list[dict[str, Any]] = []
    labelled: list[tuple[str, int]] = []
    drops: list[tuple[str, str]] = []
    for raw_row, record in enumerate(batch.to_pylist(), start=first_row):
        text = record.get("text") or ""
        doc_type = record.get("type") or "text"
        chars_in += len(text)
        hist_in[_bin(len(text))] += 1
        removed = 0
        if doc_type in steps.boiler_types:
            text, removed = steps.strip_boilerplate(text)
        record["natural_language"], record["language_score"] = None, None
        if doc_type in steps.prose and cfg.language.enabled:
            lang, score = detect_language(text, cfg.language, cfg.seed)
            record["natural_language"], record["language_score"] = lang, score
            langs_in[lang] += 1
        elif doc_type == "code":
            code_in[record.get("language") or "unknown"] += 1
        record["kind"] = document_kind(text, record, cfg)
        ledger.seen(doc_type, record["kind"])
        passed: list[str] = []
        reason = None
        try:
            for flt in steps.filters:
                if flt.applies(record):
                    reason = flt.check(text, record)
                    if reason:
                        break
                    passed.append(flt.name)
        except UserFilterError as err:
            failed[steps.safe(str(err))] += 1
            drops.append((record.get("doc_id"), f"failed: {steps.safe(str(err))}"))
            continue
        if cfg.quality_model.enabled:  # the rules' verdict on the text they judged
            labelled.append((text[:_LABELLED_CHARS], 0 if reason else 1))
        if reason:
            reason = steps.safe(reason)
            dropped[reason] += 1
            drops.append((record.get("doc_id"), reason))
            where = str(record.get("path") or raw_row)
            locator = record.get("locator")
            ledger.dropped(doc_type, reason, f"{where} ({locator})" if locator else where)
            by_filters += 1
            continue
        language = record.get("language")
        in_code = doc_type == "code" and language not in CONFIG_LANGUAGES
        red = redact_text(text, cfg.redact, in_code=in_code)
        redaction_totals.update(red.counts)
        if red.drop:
            dropped[red.drop] += 1
            drops.append((record.get("doc_id"), red.drop))
            by_redaction += 1
            continue
        text = red.text
        records_redacted += bool(red.counts)
        metadata = record.get("metadata")
        if metadata:
            meta_red = redact_text(metadata, cfg.redact.model_copy(update={"secret": "redact"}))
            metadata = meta_red.text
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
    texts = [r["text"] for r in rows]
    return BatchOutcome(
        survivors=pa.Table.from_pylist(rows, schema=_WORK_SCHEMA),
        exact_hashes=[exact_hash(t) for t in texts] if cfg.dedup.exact else [],
        signatures=steps.hasher.sketch(texts) if cfg.dedup.near and texts else None,
        input=batch.num_rows,
        chars_input=chars_in,
        hist_input=hist_in,
        languages=langs_in,
        code_languages=code_in,
        dropped=dropped,
        ledger=ledger,
        failed=failed,
        dropped_by_filters=by_filters,
        dropped_by_redaction=by_redaction,
        redactions=redaction_totals,
        records_redacted=records_redacted,
        labelled=labelled,
        drops=drops,
    )


def _note_fates(fates: dict[str, str] | None, drops: list[tuple[str, str]]) -> None:
    """Record the first drop reason of each followed doc id."""
    if fates:
        for doc_id, reason in drops:
            if doc_id in fates and not fates[doc_id]:
                fates[doc_id] = reason


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
            candidate_threshold=cfg.dedup.candidate_threshold, containment=cfg.dedup.containment,
            max_entries=_DEDUP_MAX_ENTRIES, work_dir=tmp,
        )  # fmt: skip
    near_dups = np.array(sorted(i for c in near for i in c[1:]), dtype=np.int64)
    represented = {g[0]: len(g) - 1 for g in exact}
    for c in near:
        extra = len(c) - 1 + sum(represented.get(i, 0) for i in c[1:])
        represented[c[0]] = represented.get(c[0], 0) + extra
    return _Duplicates(exact, near, exact_dups, near_dups, represented)


def _write_curated(
    work_path: Path,
    out_path: Path,
    dedup: _Duplicates,
    report: CurateReport,
    model: QualityModel | None = None,
    cfg: CurateConfig | None = None,
    *,
    fates: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Pass two: the work file minus duplicates (and, with curate.quality_model.min_score,
    minus survivors the model scores low), with `duplicates_removed`, written atomically;
    returns the kept-side statistics and the duplicate summary."""
    min_score = cfg.quality_model.min_score if model is not None and cfg is not None else None
    low_quality: list[tuple[str, str]] = []  # (type, path) of each survivor scored low
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
        out = RowGroupWriter(
            pq.ParquetWriter(fh, SCHEMA, compression="zstd", write_statistics=_STATS_COLUMNS)
        )
        index = 0
        for batch in parquet_batches(pq.ParquetFile(work_path), _BATCH):
            n = batch.num_rows
            rows = np.arange(index, index + n)
            keep = ~np.isin(rows, drop, assume_unique=True)
            if min_score is not None and keep.any():
                texts = batch.column("text").to_pylist()
                scores = model.score([texts[j][:_LABELLED_CHARS] for j in np.flatnonzero(keep)])
                low = np.flatnonzero(keep)[scores < min_score]
                keep[low] = False
                types, paths = batch.column("type").to_pylist(), batch.column("path").to_pylist()
                low_quality += [(types[j], paths[j]) for j in low]
            exact = np.isin(rows, dedup.exact_dups, assume_unique=True)
            counts = pa.array([dedup.represented.get(int(i), 0) for i in rows], type=pa.int32())
            table = pa.Table.from_batches([batch]).append_column("duplicates_removed", counts)
            if fates:
                near = np.isin(rows, dedup.near_dups, assume_unique=True)
                why = np.where(
                    exact, "dedup:exact", np.where(near, "dedup:near", "quality_model:low_score")
                )
                raw_ids = table.column("raw_doc_id").to_pylist()
                _note_fates(fates, [(raw_ids[j], str(why[j])) for j in np.flatnonzero(~keep)])
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
        "low_quality": low_quality,
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


def _progress(
    outcomes: Iterator[BatchOutcome], enabled: bool, path: Path
) -> Iterator[BatchOutcome]:
    if not enabled:
        yield from outcomes
        return
    from rich.progress import Progress

    total = pq.ParquetFile(path).metadata.num_rows
    with Progress(transient=True) as bar:
        task = bar.add_task("curate", total=total)
        for out in outcomes:
            yield out
            bar.advance(task, out.input)
