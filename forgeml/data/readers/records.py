"""Records: JSONL, CSV/TSV and Parquet files, one document per record.

The text of a record is its text fields (`ReadOptions.text_fields`, else the first of
`text`, `content`, `body`); its other fields become the document's metadata.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Any

from forgeml.core.io import parquet_batches
from forgeml.data.readers.base import Part, ReadOptions, SkipDocument, decode_text

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
    text = decode_text(data)
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
    text = decode_text(data)
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
