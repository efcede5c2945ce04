"""Spreadsheets (.xlsx with openpyxl, .xls with xlrd, .ods with odfpy): one document per
sheet, each row written as `header: value; header: value` under the sheet's name.

Why rows with their headers rather than a table: every line stays self-describing when
curation or packing cuts a long sheet apart, the detectors of PII and secrets see the
column name next to each value (`phone: ...`), and empty cells cost nothing.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Iterable, Iterator
from typing import Any

from forgeml.data.readers.base import (
    OLE_MAGIC,
    Part,
    ReadOptions,
    SkipDocument,
    open_zip_container,
)

MAX_REPEAT = 1000  # ODF repeats a row or cell this many times at most (blank runs are long)


def _cell_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, dt.datetime) and value.time() == dt.time(0):
        return value.date().isoformat()
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    return " ".join(str(value).split())  # a cell's line breaks would split the row


def _is_header(cells: list[str], values: list[Any]) -> bool:
    """A first row whose filled cells are all text (not numbers or dates) names columns."""
    filled = [v for v, c in zip(values, cells, strict=True) if c]
    return bool(filled) and all(isinstance(v, str) for v in filled)


def sheet_part(title: str, rows: Iterable[list[Any]], options: ReadOptions) -> Part:
    """One sheet as text: `Sheet: title`, then one line per non-empty row, with the first
    row's names when it is a header row, else the cells joined by ` | `. Metadata: the
    sheet, its data rows and column names."""
    header: list[str] | None = None
    lines = [f"Sheet: {title}"]
    size, n_rows, truncated = 0, 0, False
    for values in rows:
        cells = [_cell_text(v) for v in values]
        if not any(cells):
            continue
        if header is None and n_rows == 0 and _is_header(cells, list(values)):
            header = cells
            continue
        n_rows += 1
        if header is not None:
            names = [
                header[i] if i < len(header) and header[i] else f"column {i + 1}"
                for i in range(len(cells))
            ]
            line = "; ".join(f"{n}: {c}" for n, c in zip(names, cells, strict=True) if c)
        else:
            while not cells[-1]:
                cells.pop()
            line = " | ".join(cells)  # empty cells kept: columns stay aligned
        size += len(line) + 1
        if size > options.max_member_bytes:
            truncated = True
            break
        lines.append(line)
    metadata: dict[str, Any] = {"sheet": title, "rows": n_rows}
    if header is not None:
        metadata["columns"] = [h for h in header if h]
    if truncated:
        metadata["truncated"] = True
    if len(lines) == 1 and header is None:
        return Part("", f"sheet {title}", metadata, skip="empty", detail="sheet without cells")
    if len(lines) == 1:  # only a header row: still says what the table was
        lines.append("; ".join(c for c in header if c))
    return Part("\n".join(lines), f"sheet {title}", metadata)


def read_xlsx_parts(data: bytes, options: ReadOptions) -> Iterator[Part]:
    """Every worksheet of an Excel 2007+ workbook, streamed with openpyxl's read-only mode;
    cached formula results, not formulas."""
    import openpyxl

    open_zip_container(data, "xlsx", options)
    try:
        book = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
        parts = [sheet_part(s.title, s.iter_rows(values_only=True), options) for s in book]
        book.close()
    except Exception as err:  # noqa: BLE001 - openpyxl raises many types on damaged parts
        raise SkipDocument("corrupt", f"xlsx: {type(err).__name__}") from None
    yield from parts


def read_xls_parts(data: bytes, options: ReadOptions) -> Iterator[Part]:
    """Every sheet of an Excel 97-2003 workbook with xlrd; a workbook saved with the new
    format under the old extension is read as .xlsx."""
    if data.startswith(b"PK"):
        yield from read_xlsx_parts(data, options)
        return
    if not data.startswith(OLE_MAGIC):
        raise SkipDocument("corrupt", "xls: not an OLE file")
    try:
        import xlrd
    except ImportError:
        raise SkipDocument("no reader library", "xls needs xlrd (pip install xlrd)") from None
    try:
        book = xlrd.open_workbook(file_contents=data, on_demand=True)
    except xlrd.XLRDError as err:
        if "encrypt" in str(err).lower():
            raise SkipDocument("encrypted", "xls is password-protected") from None
        raise SkipDocument("corrupt", f"xls: {err}") from None
    except Exception as err:  # noqa: BLE001 - damaged BIFF records
        raise SkipDocument("corrupt", f"xls: {type(err).__name__}") from None

    def values(sheet: Any) -> Iterator[list[Any]]:
        for r in range(sheet.nrows):
            row = []
            for cell in sheet.row(r):
                if cell.ctype == xlrd.XL_CELL_DATE:
                    row.append(xlrd.xldate.xldate_as_datetime(cell.value, book.datemode))
                elif cell.ctype == xlrd.XL_CELL_BOOLEAN:
                    row.append(bool(cell.value))
                elif cell.ctype in (xlrd.XL_CELL_EMPTY, xlrd.XL_CELL_BLANK, xlrd.XL_CELL_ERROR):
                    row.append(None)
                else:
                    row.append(cell.value)
            yield row

    try:
        parts = [sheet_part(s.name, values(s), options) for s in book.sheets()]
    except Exception as err:  # noqa: BLE001
        raise SkipDocument("corrupt", f"xls: {type(err).__name__}") from None
    yield from parts


def read_ods_parts(data: bytes, options: ReadOptions) -> Iterator[Part]:
    """Every table of an OpenDocument spreadsheet with odfpy."""
    from odf import teletype
    from odf.namespaces import TABLENS
    from odf.opendocument import load
    from odf.table import Table, TableRow

    open_zip_container(data, "ods", options)
    try:
        document = load(io.BytesIO(data))
        tables = document.spreadsheet.getElementsByType(Table)
    except Exception as err:  # noqa: BLE001 - odfpy raises many types on damaged files
        raise SkipDocument("corrupt", f"ods: {type(err).__name__}") from None

    def repeat(element: Any, attr: str) -> int:
        try:
            return max(1, int(element.getAttrNS(TABLENS, attr) or 1))
        except ValueError:
            return 1

    def rows(table: Any) -> Iterator[list[Any]]:
        for row in table.getElementsByType(TableRow):
            cells: list[Any] = []
            for cell in row.childNodes:
                if cell.qname[1] not in ("table-cell", "covered-table-cell"):
                    continue
                text = "\n".join(teletype.extractText(p) for p in cell.childNodes)
                value: Any = _ods_value(cell) if text.strip() else None
                n = repeat(cell, "number-columns-repeated")
                cells += [value] * (min(n, MAX_REPEAT) if value is not None else n)
            while cells and cells[-1] is None:
                cells.pop()
            if cells:
                yield from [cells] * min(repeat(row, "number-rows-repeated"), MAX_REPEAT)

    for table in tables:
        yield sheet_part(table.getAttrNS(TABLENS, "name") or "Sheet", rows(table), options)


def _ods_value(cell: Any) -> Any:
    """A cell's typed value (numbers as numbers, so a header row is told from data)."""
    from odf import teletype
    from odf.namespaces import OFFICENS

    kind = cell.getAttrNS(OFFICENS, "value-type")
    if kind in ("float", "percentage", "currency"):
        try:
            return float(cell.getAttrNS(OFFICENS, "value"))
        except (TypeError, ValueError):
            pass
    if kind == "date":
        value = cell.getAttrNS(OFFICENS, "date-value") or ""
        try:
            return dt.datetime.fromisoformat(value)
        except ValueError:
            return value
    return "\n".join(teletype.extractText(p) for p in cell.childNodes).strip()
