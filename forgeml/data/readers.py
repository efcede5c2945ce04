"""Readers by file type: the table ingest consults to turn a file's bytes into documents.

`READERS` maps a lower-case extension (or an exact file name, like `Makefile`) to a
`Reader(doc_type, read, language, parts)`. Single-document formats (text, markdown, code,
HTML, PDF, DOCX) set `read(bytes) -> str`; formats that hold many documents (JSONL, CSV,
Parquet records, .zip/.tar.gz archives read in memory) set `parts(bytes, options)`, which
yields one `Part` per document. `read_parts` is the one call ingest makes for either kind.
"""

from __future__ import annotations

import csv
import io
import json
import re
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

from forgeml.core.io import parquet_batches

BINARY_SNIFF_BYTES = 8192


class SkipDocument(Exception):
    """A file that is readable but is not usable text; `reason` is a short category."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class Part(NamedTuple):
    """One document out of a file. `skip` set: a record that could not be used (counted)."""

    text: str
    locator: str = ""  # where in the file: "line 3", "row 12", "pages 1-4"
    metadata: dict[str, Any] | None = None  # record fields other than the text
    member: str = ""  # path inside an archive
    doc_type: str | None = None  # overrides the reader's (archive members)
    language: str | None = None
    skip: str = ""  # reason this part was not used
    detail: str = ""


@dataclass(frozen=True)
class ReadOptions:
    """Settings for multi-document readers."""

    text_fields: tuple[str, ...] = ()  # record fields joined into the text; () = auto
    max_member_bytes: int = 16 * 1024 * 1024  # per archive member, uncompressed
    max_members: int = 100_000
    max_depth: int = 2  # archives inside archives


class Reader(NamedTuple):
    doc_type: str  # "text", "markdown", "code", "html", "pdf", "docx", "records", "archive"
    read: Callable[[bytes], str]
    language: str | None = None  # for code: the programming or data language
    parts: Callable[[bytes, ReadOptions], Iterator[Part]] | None = None


def looks_binary(data: bytes) -> bool:
    """NUL bytes in the first 8 KiB: how git and grep tell binary files from text."""
    return b"\x00" in data[:BINARY_SNIFF_BYTES]


def decode_utf8(data: bytes) -> str:
    """UTF-8 text (a leading byte-order mark is dropped); anything else is skipped."""
    if looks_binary(data):
        raise SkipDocument("binary", f"NUL byte in the first {BINARY_SNIFF_BYTES // 1024} KiB")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise SkipDocument(
            "not utf-8", f"invalid byte 0x{data[err.start]:02x} at offset {err.start}"
        ) from None


def read_text(data: bytes) -> str:
    return decode_utf8(data)


def read_markdown(data: bytes) -> str:
    return decode_utf8(data)


def read_code(data: bytes) -> str:
    return decode_utf8(data)


TEXT_EXTENSIONS = ("", ".txt", ".text", ".rst", ".log")
MARKDOWN_EXTENSIONS = (".md", ".markdown")
CODE_LANGUAGES = {
    ".py": "python",
    ".pyi": "python",
    ".acl": "acme-cl",
    ".c": "c",
    ".h": "c",
    ".cc": "cpp",
    ".cpp": "cpp",
    ".cxx": "cpp",
    ".hpp": "cpp",
    ".hh": "cpp",
    ".java": "java",
    ".kt": "kotlin",
    ".scala": "scala",
    ".js": "javascript",
    ".mjs": "javascript",
    ".jsx": "javascript",
    ".ts": "typescript",
    ".tsx": "typescript",
    ".go": "go",
    ".rs": "rust",
    ".rb": "ruby",
    ".php": "php",
    ".cs": "csharp",
    ".swift": "swift",
    ".sh": "shell",
    ".bash": "shell",
    ".zsh": "shell",
    ".ps1": "powershell",
    ".sql": "sql",
    ".r": "r",
    ".jl": "julia",
    ".lua": "lua",
    ".pl": "perl",
    ".f": "fortran",
    ".f90": "fortran",
    ".for": "fortran",
    ".cob": "cobol",
    ".cbl": "cobol",
    ".cpy": "cobol",
    ".jcl": "jcl",
    ".pli": "pli",
    ".asm": "assembly",
    ".s": "assembly",
    ".yaml": "yaml",
    ".yml": "yaml",
    ".json": "json",
    ".toml": "toml",
    ".cfg": "ini",
    ".ini": "ini",
    ".xml": "xml",
    ".proto": "protobuf",
    ".tf": "terraform",
    ".mk": "make",
}
CODE_FILENAMES = {
    "Makefile": "make",
    "makefile": "make",
    "GNUmakefile": "make",
    "Dockerfile": "dockerfile",
    "CMakeLists.txt": "cmake",
    "Jenkinsfile": "groovy",
}

# ---------------------------------------------------------------------------------------
# HTML: main text, without navigation, scripts and page furniture

_HTML_DROP = "script, style, noscript, template, svg, iframe, nav, header, footer, aside, form"
_HTML_BLOCK = frozenset(
    "address article blockquote body br dd div dl dt figcaption figure h1 h2 h3 h4 h5 h6 hr "
    "li main ol p pre section table td th tr ul".split()
)
_CHARSET = re.compile(rb"""charset\s*=\s*["']?([A-Za-z0-9_.:-]+)""", re.IGNORECASE)


def _decode_html(data: bytes) -> str:
    try:
        return decode_utf8(data)
    except SkipDocument:
        declared = _CHARSET.search(data[:4096])
        if declared is None:
            raise
        try:
            return data.decode(declared.group(1).decode("ascii"))
        except (LookupError, UnicodeDecodeError):
            raise SkipDocument("not utf-8", "undecodable with its declared charset") from None


def read_html(data: bytes) -> str:
    """The main text of a page: `<main>` or `<article>` when present, else `<body>`, with
    navigation, headers, footers, scripts and forms removed; one line per block element."""
    from selectolax.lexbor import LexborHTMLParser

    tree = LexborHTMLParser(_decode_html(data))
    for node in tree.css(_HTML_DROP):
        node.decompose()
    root = tree.css_first("main") or tree.css_first("article") or tree.body or tree.root
    if root is None:
        return ""
    out: list[str] = []
    stack: list[Any] = [root]
    while stack:  # iterative walk: deep pages must not hit the recursion limit
        node = stack.pop()
        if isinstance(node, str):
            out.append(node)
            continue
        if node.is_text_node:
            out.append(node.text_content or "")
            continue
        block = node.tag in _HTML_BLOCK
        if block:
            stack.append("\n")
        stack.extend(reversed([*node.iter(include_text=True)]))
        if block:
            out.append("\n")
    lines = (re.sub(r"[ \t\r\f\v\xa0]+", " ", line).strip() for line in "".join(out).split("\n"))
    return "\n".join(line for line in lines if line)


# ---------------------------------------------------------------------------------------
# PDF and DOCX


def read_pdf(data: bytes) -> str:
    """Text per page with pypdf, pages separated by a form feed; encrypted or corrupt files
    are skipped with that reason."""
    import logging

    from pypdf import PdfReader

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # its warnings are counted, not shown
    try:
        pdf = PdfReader(io.BytesIO(data))
        if pdf.is_encrypted:
            try:
                unlocked = pdf.decrypt("")  # many "encrypted" PDFs only restrict printing
            except Exception:  # noqa: BLE001 - pypdf raises several types for bad crypto
                unlocked = 0
            if not unlocked:
                raise SkipDocument("encrypted", "PDF needs a password")
        pages = [page.extract_text() or "" for page in pdf.pages]
    except SkipDocument:
        raise
    except Exception as err:  # noqa: BLE001 - a corrupt file must never crash a run
        raise SkipDocument("corrupt", f"PDF: {type(err).__name__}") from None
    if not any(p.strip() for p in pages):
        raise SkipDocument("no text", f"{len(pages)} pages without extractable text (scanned?)")
    return "\f".join(p.strip("\n") for p in pages)


def read_docx(data: bytes) -> str:
    """Paragraphs and table cells of a Word document, in document order."""
    import docx

    try:
        document = docx.Document(io.BytesIO(data))
        lines = [p.text for p in document.paragraphs]
        for table in document.tables:
            for row in table.rows:
                lines.append(" | ".join(cell.text for cell in row.cells))
    except Exception as err:  # noqa: BLE001 - corrupt zip/xml must never crash a run
        raise SkipDocument("corrupt", f"DOCX: {type(err).__name__}") from None
    return "\n".join(lines).strip("\n")


# ---------------------------------------------------------------------------------------
# Records: JSONL, CSV/TSV, Parquet

AUTO_TEXT_FIELDS = ("text", "content", "body")


def _pick_fields(columns: list[str], options: ReadOptions) -> list[str]:
    if options.text_fields:
        return [c for c in options.text_fields if c in columns]
    return [c for c in AUTO_TEXT_FIELDS if c in columns][:1]


def _json_safe(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return str(value)


def _record_part(record: dict, fields: list[str], locator: str) -> Part:
    values = [record.get(f) for f in fields]
    texts = [v if isinstance(v, str) else json.dumps(_json_safe(v)) for v in values if v]
    meta = {k: _json_safe(v) for k, v in record.items() if k not in fields}
    if not any(t.strip() for t in texts):
        return Part("", locator, meta, skip="no text field", detail=f"empty {', '.join(fields)}")
    return Part("\n\n".join(texts), locator, meta)


def read_jsonl_parts(data: bytes, options: ReadOptions) -> Iterator[Part]:
    text = decode_utf8(data)
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        locator = f"line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:  # the message names a position, never content
            yield Part("", locator, skip="bad json", detail=f"{err.msg} at column {err.colno}")
            continue
        if not isinstance(record, dict):
            yield Part("", locator, skip="no text field", detail="line is not a JSON object")
            continue
        fields = _pick_fields(list(record), options)
        if not fields:
            yield Part("", locator, skip="no text field", detail="no configured text field")
            continue
        yield _record_part(record, fields, locator)


def _csv_parts(data: bytes, options: ReadOptions, delimiter: str) -> Iterator[Part]:
    text = decode_utf8(data)
    csv.field_size_limit(max(csv.field_size_limit(), len(data) + 1))
    rows = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(rows)
    except (StopIteration, csv.Error):
        header = []
    fields = _pick_fields(header, options)
    if not fields:  # a table without a text column is one plain-text document
        yield Part(text, doc_type="text")
        return
    try:
        for number, row in enumerate(rows, start=2):
            if not row:
                continue
            if len(row) != len(header):
                yield Part("", f"row {number}", skip="bad row", detail="wrong number of fields")
                continue
            yield _record_part(dict(zip(header, row, strict=True)), fields, f"row {number}")
    except csv.Error as err:
        yield Part("", "", skip="bad csv", detail=f"line {rows.line_num}: {type(err).__name__}")


def read_csv_parts(data: bytes, options: ReadOptions) -> Iterator[Part]:
    return _csv_parts(data, options, ",")


def read_tsv_parts(data: bytes, options: ReadOptions) -> Iterator[Part]:
    return _csv_parts(data, options, "\t")


def read_parquet_parts(data: bytes, options: ReadOptions) -> Iterator[Part]:
    import pyarrow.parquet as pq

    try:
        pfile = pq.ParquetFile(io.BytesIO(data))
        columns = pfile.schema_arrow.names
    except Exception as err:  # noqa: BLE001 - corrupt footer, truncated file
        raise SkipDocument("corrupt", f"Parquet: {type(err).__name__}") from None
    fields = _pick_fields(columns, options)
    if not fields:
        raise SkipDocument("no text field", f"no text column among {len(columns)} columns")
    row = 0
    try:
        for batch in parquet_batches(pfile, 1024):
            for record in batch.to_pylist():
                yield _record_part(record, fields, f"row {row}")
                row += 1
    except Exception as err:  # noqa: BLE001 - a damaged row group mid-file
        yield Part("", f"row {row}", skip="corrupt", detail=f"Parquet: {type(err).__name__}")


# ---------------------------------------------------------------------------------------
# Archives, read in memory: nothing is unpacked to disk


def _member_parts(
    name: str, read_member: Callable[[int], bytes], size: int, options: ReadOptions
) -> Iterator[Part]:
    """The parts of one archive member, dispatched on its name like a file on disk."""
    reader = reader_for(PurePosixPath(name))
    if reader is None:
        yield Part("", member=name, skip="unsupported type", detail=PurePosixPath(name).suffix)
        return
    if reader.doc_type == "archive" and options.max_depth <= 0:
        yield Part("", member=name, skip="nested archive", detail="too deeply nested")
        return
    if size > options.max_member_bytes:
        yield Part("", member=name, skip="too large", detail=f"{size} bytes uncompressed")
        return
    if size == 0:
        yield Part("", member=name, skip="empty", detail="0 bytes")
        return
    data = read_member(options.max_member_bytes + 1)
    if len(data) > options.max_member_bytes:  # the header lied about the size
        yield Part("", member=name, skip="too large", detail="more than max_member_bytes")
        return
    inner = ReadOptions(
        options.text_fields, options.max_member_bytes, options.max_members, options.max_depth - 1
    )
    try:
        for part in read_parts(reader, data, inner):
            member = f"{name}!/{part.member}" if part.member else name
            yield part._replace(
                member=member,
                doc_type=part.doc_type or reader.doc_type,
                language=part.language or reader.language,
            )
    except SkipDocument as skip:
        yield Part("", member=name, skip=skip.reason, detail=skip.detail)


def read_zip_parts(data: bytes, options: ReadOptions) -> Iterator[Part]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = [i for i in archive.infolist() if not i.is_dir()]
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise SkipDocument("corrupt", f"zip: {type(err).__name__}") from None
    for count, info in enumerate(sorted(infos, key=lambda i: i.filename)):
        if count >= options.max_members:
            yield Part("", skip="too many members", detail=f"more than {options.max_members}")
            return
        if info.flag_bits & 0x1:
            yield Part("", member=info.filename, skip="encrypted", detail="password-protected")
            continue

        def read_member(limit: int, info: zipfile.ZipInfo = info) -> bytes:
            with archive.open(info) as fh:
                return fh.read(limit)

        try:
            yield from _member_parts(info.filename, read_member, info.file_size, options)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
            yield Part("", member=info.filename, skip="corrupt", detail=type(err).__name__)


def read_tar_parts(data: bytes, options: ReadOptions) -> Iterator[Part]:
    try:
        archive = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
        members = [m for m in archive.getmembers() if m.isfile()]
    except (tarfile.TarError, OSError, EOFError) as err:
        raise SkipDocument("corrupt", f"tar: {type(err).__name__}") from None
    for count, info in enumerate(sorted(members, key=lambda m: m.name)):
        if count >= options.max_members:
            yield Part("", skip="too many members", detail=f"more than {options.max_members}")
            return

        def read_member(limit: int, info: tarfile.TarInfo = info) -> bytes:
            fh = archive.extractfile(info)
            return fh.read(limit) if fh is not None else b""

        try:
            yield from _member_parts(info.name, read_member, info.size, options)
        except (tarfile.TarError, OSError, EOFError, ValueError) as err:
            yield Part("", member=info.name, skip="corrupt", detail=type(err).__name__)


def _parts_only(data: bytes) -> str:
    raise SkipDocument("multi-document", "read with read_parts")


READERS: dict[str, Reader] = {
    **{ext: Reader("text", read_text) for ext in TEXT_EXTENSIONS},
    **{ext: Reader("markdown", read_markdown) for ext in MARKDOWN_EXTENSIONS},
    **{ext: Reader("code", read_code, lang) for ext, lang in CODE_LANGUAGES.items()},
    **{name: Reader("code", read_code, lang) for name, lang in CODE_FILENAMES.items()},
    **{ext: Reader("html", read_html) for ext in (".html", ".htm", ".xhtml")},
    ".pdf": Reader("pdf", read_pdf),
    ".docx": Reader("docx", read_docx),
    ".jsonl": Reader("records", _parts_only, parts=read_jsonl_parts),
    ".ndjson": Reader("records", _parts_only, parts=read_jsonl_parts),
    ".csv": Reader("records", _parts_only, parts=read_csv_parts),
    ".tsv": Reader("records", _parts_only, parts=read_tsv_parts),
    ".parquet": Reader("records", _parts_only, parts=read_parquet_parts),
    ".zip": Reader("archive", _parts_only, parts=read_zip_parts),
    ".tar": Reader("archive", _parts_only, parts=read_tar_parts),
    ".tgz": Reader("archive", _parts_only, parts=read_tar_parts),
    ".tar.gz": Reader("archive", _parts_only, parts=read_tar_parts),
    ".tar.bz2": Reader("archive", _parts_only, parts=read_tar_parts),
    ".tar.xz": Reader("archive", _parts_only, parts=read_tar_parts),
}


def reader_for(path: Path | PurePosixPath) -> Reader | None:
    """The reader for `path`: exact file name first, then a double extension (`.tar.gz`),
    then its lower-case extension."""
    if path.name in READERS:
        return READERS[path.name]
    suffixes = [s.lower() for s in path.suffixes]
    if len(suffixes) >= 2 and "".join(suffixes[-2:]) in READERS:
        return READERS["".join(suffixes[-2:])]
    return READERS.get(path.suffix.lower())


def read_parts(reader: Reader, data: bytes, options: ReadOptions | None = None) -> Iterator[Part]:
    """Every document in `data`: one `Part` for single-document readers, many for records
    and archives. Raises `SkipDocument` when the whole file is unusable."""
    if reader.parts is not None:
        yield from reader.parts(data, options or ReadOptions())
    else:
        yield Part(reader.read(data))


def supported_extensions() -> list[str]:
    return sorted(k for k in READERS if k.startswith("."))
