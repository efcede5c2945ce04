"""Office documents: Word (.docx with python-docx), PowerPoint (.pptx with python-pptx) and
OpenDocument text and presentations (.odt/.odp with odfpy), one document per file.

Every package is checked first by `open_zip_container`: password-protected files (an OLE
container in place of the zip) are skipped as "encrypted", oversized ones as a zip bomb.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

from forgeml.data.readers.base import ReadOptions, SkipDocument, open_zip_container

_LIMITS = ReadOptions()


def read_docx(data: bytes) -> str:
    """Paragraphs and table cells of a Word document, in document order."""
    import docx

    open_zip_container(data, "docx", _LIMITS)
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
# PowerPoint


def _shape_lines(shapes: Any, skip_id: int | None = None) -> Iterator[str]:
    """Text of every shape in reading order: text frames, table rows, grouped shapes."""
    from pptx.enum.shapes import MSO_SHAPE_TYPE

    for shape in shapes:
        if shape.shape_id == skip_id:  # the title, already in the slide's heading
            continue
        if shape.shape_type == MSO_SHAPE_TYPE.GROUP:
            yield from _shape_lines(shape.shapes)
        elif getattr(shape, "has_table", False) and shape.has_table:
            for row in shape.table.rows:
                yield " | ".join(cell.text.strip() for cell in row.cells)
        elif shape.has_text_frame and shape.text_frame.text.strip():
            yield shape.text_frame.text.strip()


def read_pptx(data: bytes) -> str:
    """Slides in order, each as `## Slide N: title` followed by its text frames, tables
    and speaker notes (`Notes: ...`)."""
    from pptx import Presentation

    open_zip_container(data, "pptx", _LIMITS)
    try:
        deck = Presentation(io.BytesIO(data))
        blocks = []
        for number, slide in enumerate(deck.slides, start=1):
            title_shape = slide.shapes.title
            title = title_shape.text_frame.text.strip() if title_shape is not None else ""
            lines = [f"## Slide {number}" + (f": {title}" if title else "")]
            title_id = title_shape.shape_id if title_shape is not None else None
            lines += _shape_lines(slide.shapes, skip_id=title_id)
            if slide.has_notes_slide:
                notes = slide.notes_slide.notes_text_frame
                if notes is not None and notes.text.strip():
                    lines.append(f"Notes: {notes.text.strip()}")
            blocks.append("\n".join(lines))
    except Exception as err:  # noqa: BLE001 - damaged parts raise many types
        raise SkipDocument("corrupt", f"pptx: {type(err).__name__}") from None
    return "\n\n".join(blocks)


# ---------------------------------------------------------------------------------------
# OpenDocument text and presentations


def _odf_lines(root: Any) -> list[str]:
    """One line per heading or paragraph under `root`, in document order; presentation
    pages start a `## Slide N: name` block."""
    from odf import teletype
    from odf.namespaces import DRAWNS, TEXTNS

    lines: list[str] = []
    slide = 0
    stack = [root]
    while stack:  # iterative: nested lists and frames must not hit the recursion limit
        node = stack.pop()
        qname = getattr(node, "qname", None)
        if qname is None:
            continue
        if qname in ((TEXTNS, "h"), (TEXTNS, "p")):
            text = teletype.extractText(node).strip()
            if text:
                lines.append(text)
            continue
        if qname == (DRAWNS, "page"):
            slide += 1
            name = node.getAttrNS(DRAWNS, "name") or ""
            heading = f"## Slide {slide}" + (f": {name}" if name else "")
            lines.append(("\n" if slide > 1 else "") + heading)
        stack.extend(reversed(node.childNodes))
    return lines


def _read_odf(data: bytes, kind: str) -> str:
    from odf.opendocument import load

    open_zip_container(data, kind, _LIMITS)
    try:
        document = load(io.BytesIO(data))
        body = document.presentation if kind == "odp" else document.text
        lines = _odf_lines(body)
    except Exception as err:  # noqa: BLE001 - odfpy raises many types on damaged files
        raise SkipDocument("corrupt", f"{kind}: {type(err).__name__}") from None
    return "\n".join(lines)


def read_odt(data: bytes) -> str:
    """Headings and paragraphs (lists and tables included) of an OpenDocument text."""
    return _read_odf(data, "odt")


def read_odp(data: bytes) -> str:
    """Slides of an OpenDocument presentation, with their text boxes and notes."""
    return _read_odf(data, "odp")
