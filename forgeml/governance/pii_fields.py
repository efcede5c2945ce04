"""Where a value sits in structured text: the key or column that names it. Exports, fixtures and
forms say what a value is (`"birthDate": ...`, a CSV column `dob`, `Steuer-ID: ...`), and the PII
detectors (forgeml.governance.pii) use that name as context where the value alone is ambiguous.
"""

from __future__ import annotations

import re
from typing import NamedTuple


class Field(NamedTuple):
    key: str  # lower-cased key or column header
    start: int  # the value's offsets in the text
    end: int


# `key: value`, `key = value`, `"key": "value"`, `key | value` (JSON, YAML, INI, .env, mail
# headers, forms, two-column tables as the office readers give them): found from the separator
# (a far cheaper scan than trying a key at every word); the key is the 1-4 words before it on
# the line, the value runs to the end of the line (160 characters at most) or to a quote,
# comma, semicolon, pipe or tab.
_SEPARATOR = re.compile(r"=>|[:=：|\t]")
_KEY_BEFORE = re.compile(r"(?P<key>[^\W\d_][\w.-]*(?:[ \t][^\W\d_][\w.-]*){0,3})[\"']?[ \t]*\Z")
_VALUE_AFTER = re.compile(r"[ \t]*[\"']?(?P<value>[^\n\"',;|\t{}\[\]]{0,160}[^\s\"',;|{}\[\]])")
_DELIMITERS = (",", ";", "\t", "|")
_RULE_ROW = re.compile(r"^[|:\-+ \t]+$")  # markdown `|---|:--|`, ASCII-art `+----+`


def key_value_fields(text: str) -> list[Field]:
    """Every `key: value` pair of `text` (keys lower-cased)."""
    fields = []
    for sep in _SEPARATOR.finditer(text):
        value = _VALUE_AFTER.match(text, sep.end())
        if value is None:
            continue
        line_start = text.rfind("\n", max(0, sep.start() - 48), sep.start()) + 1
        key = _KEY_BEFORE.search(text, max(line_start, sep.start() - 48), sep.start())
        if key is not None:
            fields.append(Field(key.group("key").lower(), value.start("value"), value.end("value")))
    return fields


def _split_row(line: str, delimiter: str) -> list[tuple[int, int]]:
    """(start, end) of each cell of a delimited line, quotes removed (a quoted cell may hold
    the delimiter; doubled quotes are not unescaped: offsets stay exact)."""
    cells, pos, n = [], 0, len(line)
    while pos <= n:
        if line.startswith('"', pos):
            close = line.find('"', pos + 1)
            while close != -1 and line.startswith('""', close):
                close = line.find('"', close + 2)
            close = n if close == -1 else close
            cells.append((pos + 1, close))
            nxt = line.find(delimiter, close)
        else:
            nxt = line.find(delimiter, pos)
            cells.append((pos, n if nxt == -1 else nxt))
        if nxt == -1:
            break
        pos = nxt + 1
    return cells


def _cells(line: str, delimiter: str) -> list[tuple[int, int]]:
    cells = _split_row(line, delimiter)
    if delimiter == "|":  # markdown rows: `| a | b |` has empty cells at both ends
        cells = [(s, e) for s, e in cells if line[s:e].strip() or 0 < s and e < len(line)]
    return cells


def _header(line: str) -> tuple[str, list[str]] | None:
    """(delimiter, lower-cased column names) when `line` reads as a table's header: two or more
    delimiters, every cell a short name with a letter."""
    delimiter = max(_DELIMITERS, key=line.count)
    if line.count(delimiter) < 2:
        return None
    names = [line[s:e].strip().lower() for s, e in _cells(line, delimiter)]
    if all(
        n and len(n) <= 40 and any(c.isalpha() for c in n) and not _DIGITS.search(n) for n in names
    ):
        return delimiter, names
    return None


_DIGITS = re.compile(r"\d{3}|@")


def table_fields(text: str) -> list[Field]:
    """The cells of delimited tables (CSV, TSV, semicolon exports, markdown and office tables)
    under their header's column names. A header is a line of two or more delimited short names
    (see `_header`); the rows after it with as many cells belong to it."""
    if not any(d in text for d in _DELIMITERS):
        return []
    fields: list[Field] = []
    header: tuple[str, list[str]] | None = None
    offset = 0
    for line in text.split("\n"):
        if header is not None and not _RULE_ROW.match(line):
            cells = _cells(line, header[0])
            if len(cells) == len(header[1]):
                fields += [
                    Field(
                        name,
                        offset + s + len(line[s:e]) - len(line[s:e].lstrip()),
                        offset + e - len(line[s:e]) + len(line[s:e].rstrip()),
                    )
                    for name, (s, e) in zip(header[1], cells, strict=True)
                    if line[s:e].strip()
                ]
            else:
                header = _header(line)
        elif header is None:
            header = _header(line)
        offset += len(line) + 1
    return fields


def document_fields(text: str) -> list[Field]:
    """Table cells under their column names, then `key: value` pairs."""
    return table_fields(text) + key_value_fields(text)


def field_keys(fields: list[Field] | None) -> dict[int, str]:
    """Value start -> its key; where a table column and a `key | value` reading both claim a
    value, the first (the table's column, see `document_fields`) wins."""
    keys: dict[int, str] = {}
    for f in fields or ():
        keys.setdefault(f.start, f.key)
    return keys


def line_before(text: str, start: int, width: int = 40) -> str:
    """Up to `width` characters before `start` on its line (lower-cased): the prose cue
    (`born on`, `Tel.`, `SSN`) that says what the value is."""
    line_start = text.rfind("\n", max(0, start - width), start) + 1
    return text[max(line_start, start - width) : start].lower()
