"""Readers by file type: the table ingest consults to turn a file's bytes into document text.

`READERS` maps a lower-case extension (or an exact file name, like `Makefile`) to a
`Reader(doc_type, read, language)`. New formats (HTML, PDF, DOCX, archives) are added here
as one function and one table row; `ingest` does not change.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

BINARY_SNIFF_BYTES = 8192


class SkipDocument(Exception):
    """A file that is readable but is not usable text; `reason` is a short category."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class Reader(NamedTuple):
    doc_type: str  # "text", "markdown" or "code"
    read: Callable[[bytes], str]
    language: str | None = None  # for code: the programming or data language


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


TEXT_EXTENSIONS = ("", ".txt", ".text", ".rst", ".log", ".csv", ".tsv")  # csv as plain text for now
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

READERS: dict[str, Reader] = {
    **{ext: Reader("text", read_text) for ext in TEXT_EXTENSIONS},
    **{ext: Reader("markdown", read_markdown) for ext in MARKDOWN_EXTENSIONS},
    **{ext: Reader("code", read_code, lang) for ext, lang in CODE_LANGUAGES.items()},
    **{name: Reader("code", read_code, lang) for name, lang in CODE_FILENAMES.items()},
}


def reader_for(path: Path) -> Reader | None:
    """The reader for `path`: exact file name first, then its lower-case extension."""
    if path.name in READERS:
        return READERS[path.name]
    return READERS.get(path.suffix.lower())


def supported_extensions() -> list[str]:
    return sorted(k for k in READERS if k.startswith("."))
