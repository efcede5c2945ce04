"""Ingest: read files and folders into one Parquet file of raw documents, one row per file.

First stage of the data pipeline (`forgeml data ingest`): it walks the sources in sorted
order, reads each file with the reader for its type (`forgeml.data.readers`), and reports
what happened to every file. Curation (normalising, filtering, dedup, redaction) comes later.

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
import os
import re
import stat
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from forgeml.core.errors import DataError
from forgeml.core.io import atomic_open
from forgeml.data.readers import SkipDocument, looks_binary, reader_for, supported_extensions

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
        ("type", pa.string()),  # text / markdown / code
        ("language", pa.string()),  # code only
    ],
    metadata={b"forgeml.kind": b"raw-documents", b"forgeml.schema_version": b"1"},
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
    skipped_by_reason: dict[str, int] = field(default_factory=dict)
    by_type: dict[str, int] = field(default_factory=dict)
    by_language: dict[str, int] = field(default_factory=dict)
    files: list[dict] = field(default_factory=list)  # {path, source, status, reason, detail}

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
        return asdict(self)

    def summary(self) -> str:
        reasons = ", ".join(f"{n} {r}" for r, n in sorted(self.skipped_by_reason.items()))
        line = f"found {self.found}, kept {self.kept} ({self.bytes_kept} bytes)"
        line += f", skipped {self.skipped}" + (f" ({reasons})" if reasons else "")
        return line + f", failed {self.failed}"


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
        return [_Entry(given, src.parent, src.name, src, direct=True)]
    root = src
    entries = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        base = Path(dirpath)
        for name in sorted(filenames) + [d for d in dirnames if (base / d).is_symlink()]:
            path = base / name
            entries.append(_Entry(given, root, path.relative_to(root).as_posix(), path))
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


def _examine(entry: _Entry, max_file_bytes: int) -> tuple[str, str, str, dict | None]:
    """(status, reason, detail, row) for one file that passed the patterns."""
    path = entry.path
    try:
        if path.is_symlink():
            if path.is_dir():
                return "skipped", "symlink", "symlinked folder not followed", None
            if not path.exists():
                return "skipped", "symlink", "broken symlink", None
            if not entry.direct and not _inside(path, entry.root):
                return "skipped", "symlink", "points outside the source folder", None
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            return "skipped", "not a regular file", "device, socket or pipe", None
        if st.st_size > max_file_bytes:
            detail = f"{st.st_size} bytes > max_file_bytes={max_file_bytes}"
            return "skipped", "too large", detail, None
        if st.st_size == 0:
            return "skipped", "empty", "0 bytes", None
        reader = reader_for(path)
        if reader is None:
            head = _read_limited(path, 8192)
            if looks_binary(head):
                return "skipped", "binary", "NUL byte in the first 8 KiB", None
            suffix = path.suffix or path.name
            return "skipped", "unsupported type", f"no reader for '{suffix}'", None
        data = _read_limited(path, max_file_bytes + 1)
    except OSError as err:
        return "failed", "read error", f"{type(err).__name__}: {err.strerror or err}", None
    if len(data) > max_file_bytes:  # grew since stat
        return "skipped", "too large", f"more than max_file_bytes={max_file_bytes}", None
    try:
        text = reader.read(data)
    except SkipDocument as skip:
        return "skipped", skip.reason, skip.detail, None
    if not text.strip():
        return "skipped", "empty", "only whitespace", None
    row = {
        "doc_id": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        "text": text,
        "path": entry.rel,
        "source": entry.source,
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "type": reader.doc_type,
        "language": reader.language,
    }
    return "kept", "", "", row


# ---------------------------------------------------------------------------------------
# Ingest


def ingest_files(
    sources: Sequence[str | Path],
    out_path: str | Path,
    *,
    include: Sequence[str] = ("**/*",),
    exclude: Sequence[str] = (),
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    progress: bool = False,
) -> IngestReport:
    """Read every file under `sources` into one Parquet file at `out_path` (written atomically).

    Folders are walked recursively in sorted order without following symlinked folders;
    symlinked files are read only when they point inside their source folder. Exact
    duplicates are kept (dedup is a curation step). Raises `DataError` when a source does
    not exist or when no file at all could be kept; the inputs are never modified.
    """
    if not sources:
        raise DataError("no sources to ingest", "pass one or more files or folders")
    if max_file_bytes <= 0:
        raise DataError(f"max_file_bytes must be positive, got {max_file_bytes}")
    out_path = Path(out_path)
    inc = [(p, compile_glob(p)) for p in include]
    exc = [(p, compile_glob(p)) for p in exclude]
    entries: list[_Entry] = []
    for src in sources:  # list everything first: a missing source fails before any work
        entries += _list_source(Path(src))
    report = IngestReport(out_path=str(out_path), sources=[str(s) for s in sources])

    with atomic_open(out_path, "wb") as fh, _ProgressBar(progress, len(entries)) as advance:
        writer: pq.ParquetWriter | None = None
        batch: list[dict] = []
        batch_bytes = 0
        for entry in entries:
            reason = _filter_reason(entry.rel, inc, exc)
            if reason:
                report.record(entry.source, entry.rel, "skipped", "excluded", reason)
                advance()
                continue
            status, reason, detail, row = _examine(entry, max_file_bytes)
            report.record(entry.source, entry.rel, status, reason, detail)
            advance()
            if row is None:
                continue
            report.bytes_kept += row["bytes"]
            report.by_type[row["type"]] = report.by_type.get(row["type"], 0) + 1
            if row["language"]:
                lang = row["language"]
                report.by_language[lang] = report.by_language.get(lang, 0) + 1
            batch.append(row)
            batch_bytes += row["bytes"]
            if batch_bytes >= _FLUSH_BYTES:
                writer = _write_batch(writer, fh, batch)
                batch, batch_bytes = [], 0
        if report.kept == 0:
            raise _nothing_kept(report, sources)
        if batch:
            writer = _write_batch(writer, fh, batch)
        assert writer is not None
        writer.close()

    assert report.kept + report.skipped + report.failed == report.found
    report.skipped_by_reason = dict(sorted(report.skipped_by_reason.items()))
    report.by_type = dict(sorted(report.by_type.items()))
    report.by_language = dict(sorted(report.by_language.items()))
    return report


def _write_batch(writer: pq.ParquetWriter | None, fh, batch: list[dict]) -> pq.ParquetWriter:
    if writer is None:
        writer = pq.ParquetWriter(fh, SCHEMA, compression="zstd")
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
        "check the include/exclude patterns; supported types are UTF-8 text, markdown and "
        f"source code ({' '.join(supported_extensions()[:12])} ...)",
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
