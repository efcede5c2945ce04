"""Plain text, markdown and source code: the language of code by extension or file name.

Text in a legacy encoding (Latin-1, cp1252, ...) is decoded by `decode_text`; files whose
name has no reader are sniffed by content (`sniffed_reader` in `base`).
"""

from __future__ import annotations

from forgeml.data.readers.base import decode_text


def read_text(data: bytes) -> str:
    return decode_text(data)


def read_markdown(data: bytes) -> str:
    return decode_text(data)


def read_code(data: bytes) -> str:
    return decode_text(data)


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
    ".conf": "ini",
    ".properties": "properties",
    ".proto": "protobuf",
    ".tf": "terraform",
    ".mk": "make",
    ".gradle": "groovy",
    ".lock": "lockfile",
}
CODE_FILENAMES = {
    "Makefile": "make",
    "makefile": "make",
    "GNUmakefile": "make",
    "Dockerfile": "dockerfile",
    "CMakeLists.txt": "cmake",
    "Jenkinsfile": "groovy",
    "go.mod": "go-mod",
    "go.sum": "go-sum",
    "go.work": "go-mod",
}
