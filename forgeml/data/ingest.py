"""Ingest: read files and folders into one Parquet file of raw documents, one row per file.

First stage of the data pipeline (`forgeml data ingest`): it walks the sources in sorted
order, reads each file with the reader for its type (`forgeml.data.readers`), and reports
what happened to every file. A record file (JSONL/CSV/Parquet), a spreadsheet, a mailbox or
an archive becomes one row per record, sheet, message or member, located by `path` +
`locator`. Curation (`forgeml.data.curate`) comes later.

Include/exclude patterns are matched against the path relative to its source root, in
posix form, case-sensitively:

- a pattern without `/` matches any single path component (`*.md`, `.git`, `node_modules`),
  so `exclude=[".git"]` drops everything under `.git/`;
- a pattern with `/` matches the whole relative path: `*` and `?` stay inside one component,
  `**` spans any number of components (`docs/**/*.md` matches `docs/a.md` and
  `docs/x/y/a.md`), and a trailing `/` means everything below (`build/` = `build/**`).

A file is kept when it matches at least one include pattern and no exclude pattern.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from forgeml.core.data_config import MediaConfig, OcrConfig
from forgeml.core.errors import DataError
from forgeml.core.io import RowGroupWriter, atomic_open
from forgeml.data.media_ingest import MediaCollector
from forgeml.data.readers import (
    ReadOptions,
    SkipDocument,
    looks_binary,
    read_parts,
    reader_for,
    sniffed_reader,
    supported_extensions,
)
from forgeml.data.readers.ocr import UNAVAILABLE, engine_label

DEFAULT_MAX_FILE_BYTES = 16 * 1024 * 1024
_FLUSH_BYTES = 32 * 1024 * 1024  # text buffered before a Parquet row group is written

SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),  # sha256 of the UTF-8 text
        ("text", pa.string()),
        ("path", pa.string()),  # relative to its source root, posix
        ("source", pa.string()),  # the source root as given
        ("sha256", pa.string()),  # of the raw file bytes
        ("bytes", pa.int64()),  # size of the raw file
        ("type", pa.string()),  # text, code, pdf, records, spreadsheet, mail, sensitive_file...
        ("language", pa.string()),  # code only
        ("locator", pa.string()),  # within the file: "line 3", "row 12"; "" = whole file
        ("metadata", pa.string()),  # JSON: record fields other than the text; null if none
    ],
    metadata={b"forgeml.kind": b"raw-documents", b"forgeml.schema_version": b"2"},
)


@dataclass
class IngestReport:
    """What happened to every file found; `kept + skipped + failed == found`."""

    out_path: str
    sources: list[str]
    found: int = 0
    kept: int = 0
    skipped: int = 0
    failed: int = 0
    bytes_kept: int = 0
    documents: int = 0  # rows written: one per kept file, or per record / archive member
    parts_skipped: int = 0  # records or members inside kept files that were not usable
    parts_skipped_by_reason: dict[str, int] = field(default_factory=dict)
    skipped_by_reason: dict[str, int] = field(default_factory=dict)
    by_type: dict[str, int] = field(default_factory=dict)
    by_language: dict[str, int] = field(default_factory=dict)
    files: list[dict] = field(default_factory=list)  # {path, source, status, reason, detail}
    ocr: dict = field(default_factory=dict)  # scanned pages: engine, counts, every OCR'd page
    media: dict = field(default_factory=dict)  # images and audio stored (media_ingest)

    def record(
        self, source: str, path: str, status: str, reason: str = "", detail: str = ""
    ) -> None:
        self.found += 1
        if status == "kept":
            self.kept += 1
        elif status == "skipped":
            self.skipped += 1
            self.skipped_by_reason[reason] = self.skipped_by_reason.get(reason, 0) + 1
        else:
            self.failed += 1
        self.files.append(
            {"path": path, "source": source, "status": status, "reason": reason, "detail": detail}
        )

    def to_dict(self) -> dict:
        out = asdict(self)
        if not out["media"]:  # text-only sources: the report (and the asset id) as before
            del out["media"]
        return out

    def summary(self) -> str:
        reasons = ", ".join(f"{n} {r}" for r, n in sorted(self.skipped_by_reason.items()))
        line = f"found {self.found}, kept {self.kept} ({self.bytes_kept} bytes)"
        line += f", skipped {self.skipped}" + (f" ({reasons})" if reasons else "")
        line += f", failed {self.failed}"
        if self.ocr.get("pages"):
            line += (
                f"; OCR {self.ocr['pages']} pages, mean confidence {self.ocr['mean_confidence']}"
            )
        if self.media:
            m = self.media
            line += f"; media {m['images']} images, {m['audio']} recordings"
            dups = m["dedup"]["exact_duplicates"] + m["dedup"]["near_duplicates"]
            line += f" ({dups} duplicates)" if dups else ""
        return line + (f"; {self.ocr['note']}" if self.ocr.get("note") else "")


@dataclass
class OcrSummary:
    """The report's `ocr` section: which pages of which documents were OCR'd, with their
    mean word confidence (low ones flagged), the pages that could not be read and why, and
    one note when scans went unread because OCR is unavailable."""

    documents: list[dict] = field(default_factory=list)
    pages: int = 0
    words: int = 0
    weighted_confidence: float = 0.0
    low_confidence_pages: int = 0
    pages_not_read: dict[str, int] = field(default_factory=dict)

    def add(self, path: str, locator: str, ocr: dict) -> None:
        """One document's OCR: its metadata's `ocr` entry."""
        for page in ocr["pages"]:
            self.pages += 1
            self.words += page["words"]
            self.weighted_confidence += (page["confidence"] or 0.0) * page["words"]
            self.low_confidence_pages += bool(page["low_confidence"])
        for page in ocr["not_read"]:
            self.pages_not_read[page["skip"]] = self.pages_not_read.get(page["skip"], 0) + 1
        self.documents.append(
            {"path": path, "locator": locator, "pages": ocr["pages"], "not_read": ocr["not_read"]}
        )

    def to_dict(self, engine: str, min_confidence: float, files_not_read: int) -> dict:
        out = {
            "engine": engine,
            "pages": self.pages,
            "words": self.words,
            "mean_confidence": round(self.weighted_confidence / self.words, 1)
            if self.words
            else None,
            "min_confidence": min_confidence,
            "low_confidence_pages": self.low_confidence_pages,
            "pages_not_read": dict(sorted(self.pages_not_read.items())),
            "files_not_read": files_not_read,
            "documents": self.documents,
        }
        pages_unread = self.pages_not_read.get("ocr unavailable", 0)
        if files_not_read or pages_unread:
            lost = [f"{files_not_read} file{'s' * (files_not_read != 1)}"] if files_not_read else []
            if pages_unread:
                lost.append(f"{pages_unread} page{'s' * (pages_unread != 1)} of kept files")
            out["note"] = f"scans not read ({' and '.join(lost)}): {engine}"
        return out


# ---------------------------------------------------------------------------------------
# Glob patterns


def _glob_regex(pattern: str) -> str:
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[" and "]" in pattern[i + 2 :]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1 : end]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end + 1
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


def compile_glob(pattern: str) -> Callable[[str], bool]:
    """A predicate on posix relative paths for one include/exclude pattern (module docstring)."""
    pattern = pattern.strip()
    while pattern.startswith("./"):
        pattern = pattern[2:]
    if not pattern:
        raise DataError("empty include/exclude pattern", "remove it or write e.g. '**/*.md'")
    if "/" not in pattern:
        component = re.compile(_glob_regex(pattern))
        return lambda rel: any(component.fullmatch(part) for part in rel.split("/"))
    if pattern.endswith("/"):
        pattern += "**"
    whole = re.compile(_glob_regex(pattern.lstrip("/")))
    return lambda rel: whole.fullmatch(rel) is not None


def _filter_reason(
    rel: str, include: list[tuple[str, Callable]], exclude: list[tuple[str, Callable]]
) -> str:
    """Empty when `rel` passes the patterns, else why it was excluded."""
    if not any(match(rel) for _, match in include):
        return "matches no include pattern"
    for pattern, match in exclude:
        if match(rel):
            return f"matches exclude pattern '{pattern}'"
    return ""


# ---------------------------------------------------------------------------------------
# Walking the sources


def _printable(name: str) -> str:
    """A file name as text: bytes that are not UTF-8 (kept by the OS as surrogates) become
    U+FFFD, so the name can be stored and shown; the file is still read by its real path."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


@dataclass(frozen=True)
class _Entry:
    source: str  # as given
    root: Path
    rel: str  # posix, relative to root
    path: Path
    direct: bool = False  # the file itself was named as a source


def _list_source(src: Path) -> list[_Entry]:
    given = str(src)
    if not os.path.lexists(src):
        raise DataError(f"source path does not exist: {given}", "check the path and try again")
    if not src.is_dir():
        # A file given directly: its path relative to its folder is its name. A symlink the
        # user named explicitly is followed: they asked for it.
        return [_Entry(given, src.parent, _printable(src.name), src, direct=True)]
    root = src
    entries = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        base = Path(dirpath)
        for name in sorted(filenames) + [d for d in dirnames if (base / d).is_symlink()]:
            path = base / name
            entries.append(_Entry(given, root, _printable(path.relative_to(root).as_posix()), path))
    entries.sort(key=lambda e: e.rel)
    return entries


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except (ValueError, OSError):
        return False


def _read_limited(path: Path, limit: int) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(limit)


def _examine(
    entry: _Entry, max_file_bytes: int, options: ReadOptions
) -> tuple[str, str, str, list[dict], dict[str, int]]:
    """(status, reason, detail, rows, parts skipped by reason) for one file that passed the
    patterns. A file is kept when at least one of its documents is."""
    path = entry.path
    try:
        if path.is_symlink():
            if path.is_dir():
                return "skipped", "symlink", "symlinked folder not followed", [], {}
            if not path.exists():
                return "skipped", "symlink", "broken symlink", [], {}
            if not entry.direct and not _inside(path, entry.root):
                return "skipped", "symlink", "points outside the source folder", [], {}
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            return "skipped", "not a regular file", "device, socket or pipe", [], {}
        if st.st_size > max_file_bytes:
            detail = f"{st.st_size} bytes > max_file_bytes={max_file_bytes}"
            return "skipped", "too large", detail, [], {}
        if st.st_size == 0:
            return "skipped", "empty", "0 bytes", [], {}
        reader = reader_for(path)
        if reader is None:  # no reader by name: text by content (README.api), else why not
            head = _read_limited(path, 8192)
            reader = sniffed_reader(path, head)
        if reader is None:
            if looks_binary(head):
                return "skipped", "binary", "NUL byte in the first 8 KiB", [], {}
            suffix = path.suffix or path.name
            return "skipped", "unsupported type", f"no reader for '{suffix}'", [], {}
        data = _read_limited(path, max_file_bytes + 1)
    except OSError as err:
        return "failed", "read error", f"{type(err).__name__}: {err.strerror or err}", [], {}
    if len(data) > max_file_bytes:  # grew since stat
        return "skipped", "too large", f"more than max_file_bytes={max_file_bytes}", [], {}
    file_sha = hashlib.sha256(data).hexdigest()
    rows: list[dict] = []
    skipped: dict[str, int] = {}
    first_skip = ("", "")
    try:
        for part in read_parts(reader, data, options):
            reason, detail = part.skip, part.detail
            if not reason and not part.text.strip():
                reason, detail = "empty", "only whitespace"
            if reason:
                skipped[reason] = skipped.get(reason, 0) + 1
                first_skip = first_skip if first_skip[0] else (reason, detail)
                continue
            rel = f"{entry.rel}!/{part.member}" if part.member else entry.rel
            rows.append(
                {
                    "doc_id": hashlib.sha256(part.text.encode("utf-8")).hexdigest(),
                    "text": part.text,
                    "path": rel,
                    "source": entry.source,
                    "sha256": file_sha,
                    "bytes": len(data),
                    "type": part.doc_type or reader.doc_type,
                    "language": part.language or reader.language,
                    "locator": part.locator,
                    "metadata": json.dumps(part.metadata, ensure_ascii=False)
                    if part.metadata
                    else None,
                    "_ocr": (part.metadata or {}).get("ocr"),  # for the report, not written
                }
            )
    except SkipDocument as skip:
        return "skipped", skip.reason, skip.detail, [], {}
    if not rows:
        if sum(skipped.values()) <= 1:  # a plain file that was only whitespace, etc.
            return "skipped", first_skip[0] or "empty", first_skip[1], [], {}
        reasons = ", ".join(f"{n} {r}" for r, n in sorted(skipped.items()))
        return "skipped", "no usable records", reasons, [], {}
    return "kept", "", "", rows, skipped


# ---------------------------------------------------------------------------------------
# Ingest


def ingest_files(
    sources: Sequence[str | Path],
    out_path: str | Path,
    *,
    include: Sequence[str] = ("**/*",),
    exclude: Sequence[str] = (),
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    text_fields: Sequence[str] = (),
    notebook_outputs: bool = False,
    ocr: OcrConfig | None = None,
    media: MediaConfig | None = None,
    progress: bool = False,
) -> IngestReport:
    """Read every file under `sources` into one Parquet file at `out_path` (written atomically).

    Folders are walked recursively in sorted order without following symlinked folders;
    symlinked files are read only when they point inside their source folder. Exact
    duplicates are kept (dedup is a curation step). Raises `DataError` when a source does
    not exist or when no file at all could be kept; the inputs are never modified.
    `text_fields` names the record fields (JSONL/CSV/Parquet) that make a document's text;
    empty: the first of `text`, `content`, `body`. `notebook_outputs`: .ipynb documents
    include their cells' text outputs. `ocr`: how scanned PDF pages and page images are
    OCR'd (defaults: `OcrConfig()`); the report's `ocr` section lists every OCR'd page.
    `media` (None: text only): images, audio and scanned PDF pages are also stored under
    `media/` beside `out_path`, listed in `media.parquet` (`forgeml.data.media_ingest`),
    and summed up in the report's `media` section; the text records do not change.
    """
    if not sources:
        raise DataError("no sources to ingest", "pass one or more files or folders")
    if max_file_bytes <= 0:
        raise DataError(f"max_file_bytes must be positive, got {max_file_bytes}")
    out_path = Path(out_path)
    inc = [(p, compile_glob(p)) for p in include]
    exc = [(p, compile_glob(p)) for p in exclude]
    options = ReadOptions(
        text_fields=tuple(text_fields),
        max_member_bytes=max_file_bytes,
        notebook_outputs=notebook_outputs,
        ocr=ocr or OcrConfig(),
    )
    entries: list[_Entry] = []
    for src in sources:  # list everything first: a missing source fails before any work
        entries += _list_source(Path(src))
    report = IngestReport(out_path=str(out_path), sources=[str(s) for s in sources])
    ocr_summary = OcrSummary()
    collector = MediaCollector(media, out_path.parent) if media and media.enabled else None

    with atomic_open(out_path, "wb") as fh, _ProgressBar(progress, len(entries)) as advance:
        writer: RowGroupWriter | None = None
        batch: list[dict] = []
        batch_bytes = 0
        for entry in entries:
            reason = _filter_reason(entry.rel, inc, exc)
            if reason:
                report.record(entry.source, entry.rel, "skipped", "excluded", reason)
                advance()
                continue
            status, reason, detail, rows, parts_skipped = _examine(entry, max_file_bytes, options)
            if collector is not None:
                verdict = (status, reason, detail)
                status, reason, detail = collector.add_file(
                    entry.source, entry.rel, entry.path, verdict, rows
                )
            report.record(entry.source, entry.rel, status, reason, detail)
            advance()
            if not rows:
                report.bytes_kept += entry.path.stat().st_size if status == "kept" else 0
                continue
            report.bytes_kept += rows[0]["bytes"]
            report.documents += len(rows)
            for why, n in parts_skipped.items():
                report.parts_skipped += n
                report.parts_skipped_by_reason[why] = report.parts_skipped_by_reason.get(why, 0) + n
            for row in rows:
                ocr_pages = row.pop("_ocr")
                if ocr_pages:
                    ocr_summary.add(row["path"], row["locator"], ocr_pages)
                report.by_type[row["type"]] = report.by_type.get(row["type"], 0) + 1
                if row["language"]:
                    lang = row["language"]
                    report.by_language[lang] = report.by_language.get(lang, 0) + 1
                batch_bytes += len(row["text"])
            batch += rows
            if batch_bytes >= _FLUSH_BYTES:
                writer = _write_batch(writer, fh, batch)
                batch, batch_bytes = [], 0
        if report.kept == 0:
            raise _nothing_kept(report, sources)
        if batch or writer is None:  # no text at all (only media): an empty table
            writer = _write_batch(writer, fh, batch)
        assert writer is not None
        writer.close()

    assert report.kept + report.skipped + report.failed == report.found
    report.skipped_by_reason = dict(sorted(report.skipped_by_reason.items()))
    report.by_type = dict(sorted(report.by_type.items()))
    report.parts_skipped_by_reason = dict(sorted(report.parts_skipped_by_reason.items()))
    report.by_language = dict(sorted(report.by_language.items()))
    unread = report.skipped_by_reason.get(UNAVAILABLE, 0)
    unread += report.parts_skipped_by_reason.get(UNAVAILABLE, 0)
    report.ocr = ocr_summary.to_dict(engine_label(options.ocr), options.ocr.min_confidence, unread)
    report.media = collector.finish() if collector is not None else {}
    return report


def _write_batch(writer: RowGroupWriter | None, fh, batch: list[dict]) -> RowGroupWriter:
    if writer is None:
        # No min/max statistics of whole texts in every row group's footer entry.
        stats = [f.name for f in SCHEMA if f.name not in ("text", "metadata")]
        writer = RowGroupWriter(
            pq.ParquetWriter(fh, SCHEMA, compression="zstd", write_statistics=stats)
        )
    writer.write_table(pa.Table.from_pylist(batch, schema=SCHEMA))
    return writer


def _nothing_kept(report: IngestReport, sources: Sequence) -> DataError:
    where = ", ".join(str(s) for s in sources)
    if report.found == 0:
        return DataError(
            f"no files found in {where}",
            "point ingest at a folder that contains documents",
        )
    reasons = ", ".join(f"{n} {r}" for r, n in sorted(report.skipped_by_reason.items()))
    if report.failed:
        reasons += (", " if reasons else "") + f"{report.failed} failed to read"
    return DataError(
        f"no readable text files in {where} ({report.found - report.kept} skipped: {reasons})",
        "check the include/exclude patterns; supported types are text in any encoding, "
        f"source code, office files, mail and records ({' '.join(supported_extensions()[:12])} ...)",
    )


class _ProgressBar:
    """A rich progress bar when enabled; `advance()` moves it one file."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total = enabled, total
        self.bar = None

    def __enter__(self) -> Callable[[], None]:
        if not self.enabled:
            return lambda: None
        from rich.progress import Progress

        self.bar = Progress(transient=True)
        self.bar.start()
        task = self.bar.add_task("ingest", total=self.total)
        return lambda: self.bar.advance(task)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


def read_documents(path: str | Path) -> pa.Table:
    """Load an ingested Parquet file (for tests and the next pipeline stages)."""
    return pq.read_table(path)
