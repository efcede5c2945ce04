"""What every reader shares: the `Part` a reader yields, its options, the skip exception,
text decoding (UTF-8, then charset detection) and the reader table with its lookup.

The table `READERS` is filled by `forgeml.data.readers`; containers (archives, mail) read
their members through `contained_parts`, which dispatches on a member's name like ingest.
"""

from __future__ import annotations

import dataclasses
import io
import re
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

from forgeml.core.data_config import OcrConfig

BINARY_SNIFF_BYTES = 8192
MAX_CONTROL_SHARE = 0.01  # control characters allowed in text (besides tab, newline, etc.)
ZIP_BOMB_RATIO = 100  # uncompressed/compressed above this on a large member: a zip bomb
ZIP_BOMB_MIN_BYTES = 1 << 20


class SkipDocument(Exception):
    """A file that is readable but is not usable text; `reason` is a short category."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class Part(NamedTuple):
    """One document out of a file. `skip` set: a record that could not be used (counted)."""

    text: str
    locator: str = ""  # where in the file: "line 3", "row 12", "sheet Budget"
    metadata: dict[str, Any] | None = None  # record fields other than the text
    member: str = ""  # path inside an archive, or a mail attachment's name
    doc_type: str | None = None  # overrides the reader's (archive members)
    language: str | None = None
    skip: str = ""  # reason this part was not used
    detail: str = ""


@dataclass(frozen=True)
class ReadOptions:
    """Settings for multi-document readers."""

    text_fields: tuple[str, ...] = ()  # record fields joined into the text; () = auto
    max_member_bytes: int = 16 * 1024 * 1024  # per archive member or attachment, uncompressed
    max_members: int = 100_000
    max_depth: int = 2  # containers (archives, mail) inside containers
    max_expanded_bytes: int = 256 * 1024 * 1024  # an office file's zip, uncompressed
    notebook_outputs: bool = False  # .ipynb: include cell outputs (text only)
    ocr: OcrConfig = OcrConfig()  # scanned PDF pages and page images


class Reader(NamedTuple):
    doc_type: str  # "text", "code", "html", "pdf", "docx", "spreadsheet", "mail", "archive", ...
    read: Callable[[bytes], str]
    language: str | None = None  # for code: the programming or data language
    parts: Callable[[bytes, ReadOptions], Iterator[Part]] | None = None


CONTAINER_TYPES = frozenset({"archive", "mail"})  # readers whose parts are whole files

# ---------------------------------------------------------------------------------------
# Text: UTF-8 first, then the encoding charset-normalizer finds


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


_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1a\x1c-\x1f\x7f-\x9f]")  # Cc less whitespace, ESC


def control_share(text: str) -> float:
    """The share of control characters other than whitespace (tab, newline, form feed...)
    and ESC (terminal logs), in the first 8 KiB characters."""
    sample = text[:BINARY_SNIFF_BYTES]
    return len(_CONTROL.findall(sample)) / len(sample) if sample else 0.0


# Latin-1 symbols that cp1252 gives for other code pages' letters (Polish ż -> ¿, ł -> ³);
# typographic quotes and dashes inside words (don’t) are normal Western text.
_SANDWICHED_SYMBOL = re.compile(r"[^\W\d_][\xa1-\xa6\xa8\xa9\xab-\xb6\xb8\xb9\xbb-\xbf][^\W\d_]")
MAX_ACCENTED_SHARE = 0.3  # of letters, in Western European text (French ~3%, German ~5%)


def looks_western(text: str) -> bool:
    """Text that reads as a Western European language: accented letters are a minority of
    its letters (Cyrillic or Greek bytes read as cp1252 are all accented) and no symbol
    sits inside a word (Polish bytes read as cp1252 give `Za¿ó³æ`)."""
    letters = [c for c in text if c.isalpha()]
    accented = sum(1 for c in letters if ord(c) > 0x7F)
    if letters and accented / len(letters) > MAX_ACCENTED_SHARE:
        return False
    return _SANDWICHED_SYMBOL.search(text) is None


def detect_encoding(data: bytes) -> str | None:
    """The encoding of non-UTF-8 text. Windows-1252 (a superset of Latin-1's printable
    characters) when the bytes decode to Western European text: on short documents
    charset-normalizer often prefers a Central European or DOS code page that decodes
    the same bytes to wrong letters. Otherwise charset-normalizer's best guess, or None."""
    from charset_normalizer import from_bytes

    sample = data[: 1 << 20]
    try:
        if looks_western(sample.decode("cp1252")):
            return "cp1252"
    except UnicodeDecodeError:  # 0x81, 0x8d, 0x8f, 0x90, 0x9d are undefined in cp1252
        pass
    best = from_bytes(sample).best()
    return best.encoding if best is not None else None


def decode_text(data: bytes) -> str:
    """Text in any encoding: UTF-8 (BOM dropped), else the detected legacy encoding.
    Binary data, undecodable bytes and control-character soup are skipped."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):  # UTF-16 with its byte-order mark
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            raise SkipDocument("not text", "invalid UTF-16") from None
    try:
        text = decode_utf8(data)
    except SkipDocument as skip:
        if skip.reason != "not utf-8":
            raise
        encoding = detect_encoding(data)
        if encoding is None:
            raise SkipDocument("not text", f"no encoding decodes it ({skip.detail})") from None
        text = data.decode(encoding, errors="replace")
    if control_share(text) > MAX_CONTROL_SHARE:
        raise SkipDocument("binary", "control characters in the text")
    return text


def looks_like_text(head: bytes) -> bool:
    """Content sniffing for files whose name has no reader: text when the first 8 KiB
    decode (in some encoding) and hold few control characters."""
    try:
        decode_text(head[:BINARY_SNIFF_BYTES])
    except SkipDocument:
        return False
    return True


# ---------------------------------------------------------------------------------------
# Zip containers (office files) and OLE files (encrypted office files, .xls, .msg)

OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"


def open_zip_container(data: bytes, kind: str, options: ReadOptions) -> zipfile.ZipFile:
    """The zip inside an OOXML/ODF file, after the checks that must come before a library
    parses it: an OLE file here is a password-protected office file (Office encrypts the
    whole package into an OLE container), and an expanded size past the limit is a bomb."""
    if data.startswith(OLE_MAGIC):
        if "EncryptedPackage".encode("utf-16-le") in data:
            raise SkipDocument("encrypted", f"{kind} is password-protected")
        raise SkipDocument("corrupt", f"{kind}: an OLE file, not a zip package")
    try:
        package = zipfile.ZipFile(io.BytesIO(data))
        expanded = sum(info.file_size for info in package.infolist())
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise SkipDocument("corrupt", f"{kind}: {type(err).__name__}") from None
    if expanded > options.max_expanded_bytes:
        raise SkipDocument("zip bomb", f"{kind} expands to {expanded} bytes")
    return package


# ---------------------------------------------------------------------------------------
# The reader table and the dispatch of files found inside containers

READERS: dict[str, Reader] = {}  # filled by forgeml.data.readers


def reader_for(path: Path | PurePosixPath) -> Reader | None:
    """The reader for `path`: exact file name first, then a name pattern (`.env.local`,
    `id_rsa`), then a double extension (`.tar.gz`), then its lower-case extension."""
    from forgeml.data.readers.credentials import credential_reader

    if path.name in READERS:
        return READERS[path.name]
    credential = credential_reader(path)
    if credential is not None:
        return credential
    suffixes = [s.lower() for s in path.suffixes]
    if len(suffixes) >= 2 and "".join(suffixes[-2:]) in READERS:
        return READERS["".join(suffixes[-2:])]
    return READERS.get(path.suffix.lower())


# Formats that are binary whatever their first bytes decode to: never sniffed as text.
BINARY_SUFFIXES = frozenset(
    ".png .jpg .jpeg .gif .bmp .tif .tiff .ico .webp .heic .psd .mp3 .mp4 .m4a .wav .flac "
    ".ogg .avi .mov .mkv .webm .exe .dll .so .dylib .o .a .lib .class .jar .war .pyc .whl "
    ".woff .woff2 .ttf .otf .eot .bin .dat .db .sqlite .gz .bz2 .xz .zst .7z .rar .iso .dmg "
    ".doc .ppt .pages .numbers .key .onnx .pt .safetensors .npy .npz .pkl .h5".split()
)
BINARY_MAGIC = (
    b"\x89PNG",
    b"\xff\xd8\xff",
    b"GIF8",
    b"%PDF",
    b"PK\x03\x04",
    b"\x1f\x8b",
    b"BZh",
    b"\xfd7zXZ",
    b"7z\xbc\xaf",
    b"Rar!",
    b"\x7fELF",
    b"MZ",
    b"\xca\xfe\xba\xbe",
    OLE_MAGIC,
)


def sniffed_reader(path: Path | PurePosixPath, head: bytes) -> Reader | None:
    """A reader for a file whose name has none (`README.api`, `CHANGES.old`): plain text
    when its first bytes look like text and neither its name nor its first bytes say it
    is a binary format; else None."""
    if path.suffix.lower() in BINARY_SUFFIXES or head.startswith(BINARY_MAGIC):
        return None
    return READERS[".txt"] if looks_like_text(head) else None


def read_parts(reader: Reader, data: bytes, options: ReadOptions | None = None) -> Iterator[Part]:
    """Every document in `data`: one `Part` for single-document readers, many for records
    and containers. Raises `SkipDocument` when the whole file is unusable."""
    if reader.parts is not None:
        yield from reader.parts(data, options or ReadOptions())
    else:
        yield Part(reader.read(data))


def contained_parts(
    name: str, read_member: Callable[[int], bytes], size: int, options: ReadOptions
) -> Iterator[Part]:
    """The parts of one file inside a container (an archive member, a mail attachment),
    dispatched on its name like a file on disk, within the depth and size limits. A name that
    is not valid UTF-8 (tar keeps raw bytes) is kept with U+FFFD where its bytes do not decode."""
    name = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    path = PurePosixPath(name)
    reader = reader_for(path)
    if reader is None:
        head = read_member(BINARY_SNIFF_BYTES)
        reader = sniffed_reader(path, head)
        if reader is None:
            yield Part("", member=name, skip="unsupported type", detail=path.suffix or name)
            return
    if reader.doc_type in CONTAINER_TYPES and options.max_depth <= 0:
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
    inner = dataclasses.replace(options, max_depth=options.max_depth - 1)
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


def supported_extensions() -> list[str]:
    return sorted(k for k in READERS if k.startswith("."))
