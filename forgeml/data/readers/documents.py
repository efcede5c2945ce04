"""Single documents with structure to remove: HTML pages, PDF (OCR for scans), RTF, XML and
notebooks.

Each reader turns one file into one text (`read(bytes) -> str`), or skips it with a reason
(`SkipDocument`: encrypted, corrupt, unsafe, no text) so ingest can account for it.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from typing import Any

from forgeml.data.readers.base import Part, ReadOptions, SkipDocument, decode_text, decode_utf8

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
    except SkipDocument as skip:
        if skip.reason != "not utf-8":
            raise
        declared = _CHARSET.search(data[:4096])
        if declared is None:
            return decode_text(data)
        try:
            return data.decode(declared.group(1).decode("ascii"))
        except (LookupError, UnicodeDecodeError):
            return decode_text(data)


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
    return _tidy_lines("".join(out))


def _tidy_lines(text: str) -> str:
    lines = (re.sub(r"[ \t\r\f\v\xa0]+", " ", line).strip() for line in text.split("\n"))
    return "\n".join(line for line in lines if line)


# ---------------------------------------------------------------------------------------
# PDF


def read_pdf_parts(data: bytes, options: ReadOptions) -> Iterator[Part]:
    """A PDF as one document: the text layer of every page with pypdf, pages separated by a
    form feed. Pages without a text layer (scans) are rendered and OCR'd
    (`forgeml.data.readers.ocr`, settings in `options.ocr`), and the record's metadata says
    which, with their confidence. Encrypted or corrupt files are skipped with that reason,
    and scans when OCR is unavailable."""
    import logging

    from pypdf import PdfReader

    from forgeml.data.readers.ocr import page_texts_with_ocr

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
    pages, ocr = page_texts_with_ocr(pages, data, options.ocr)
    if not any(p.strip() for p in pages):
        not_read = (ocr or {}).get("not_read") or []
        if not_read:  # scans that could not be OCR'd: say why (OCR unavailable, timeout...)
            first = not_read[0]
            raise SkipDocument(first["skip"], f"{len(not_read)} scanned page(s): {first['detail']}")
        found = ", nor words in their OCR" if ocr else ""
        raise SkipDocument("no text", f"{len(pages)} pages without extractable text{found}")
    yield Part("\f".join(p.strip("\n") for p in pages), metadata={"ocr": ocr} if ocr else None)


def read_pdf(data: bytes, options: ReadOptions | None = None) -> str:
    """The text of a PDF (`read_pdf_parts`), for callers that need the text alone."""
    return next(read_pdf_parts(data, options or ReadOptions())).text


# ---------------------------------------------------------------------------------------
# RTF

_RTF_CODEPAGE = re.compile(rb"\\ansicpg(\d+)")


def read_rtf(data: bytes) -> str:
    """The text of a Rich Text file with striprtf; `\\'xx` escapes in the file's declared
    code page (`\\ansicpg`, cp1252 when none)."""
    from striprtf.striprtf import rtf_to_text

    if not data.lstrip().startswith(b"{\\rtf"):
        raise SkipDocument("corrupt", "RTF: no {\\rtf header")
    declared = _RTF_CODEPAGE.search(data[:4096])
    encoding = f"cp{declared.group(1).decode()}" if declared else "cp1252"
    try:
        text = rtf_to_text(data.decode("latin-1"), encoding=encoding, errors="replace")
    except LookupError:
        text = rtf_to_text(data.decode("latin-1"), encoding="cp1252", errors="replace")
    except Exception as err:  # noqa: BLE001 - malformed groups must never crash a run
        raise SkipDocument("corrupt", f"RTF: {type(err).__name__}") from None
    return text.strip("\n")


# ---------------------------------------------------------------------------------------
# XML: prose documents give their text, configuration files are kept as code

# XML reads as prose when most of its words stand in runs of several words (sentences);
# configuration XML holds single values (`<version>1.0</version>`), or text in attributes.
_PROSE_RUN_WORDS = 4
_PROSE_SHARE = 0.5
_PROSE_MEAN_RUN = 3


def read_xml_parts(data: bytes, options: ReadOptions) -> Iterator[Part]:
    """XML parsed with defusedxml (entity expansion, external entities and DTD-declared
    entities are refused: skipped as "unsafe xml"). A document whose text reads as prose
    (DocBook, TEI, XHTML-like exports) becomes its text content, one line per block;
    configuration and data XML (pom.xml, .csproj) stays as it is, as code: its element
    names are what a model should learn from it."""
    import xml.etree.ElementTree as ET

    from defusedxml import DefusedXmlException
    from defusedxml.ElementTree import fromstring

    text = decode_text(data)
    try:
        root = fromstring(data)
    except DefusedXmlException as err:
        raise SkipDocument("unsafe xml", type(err).__name__) from None
    except ET.ParseError as err:
        raise SkipDocument("corrupt", f"XML: {err}") from None
    runs = [len(t.split()) for e in root.iter() for t in (e.text, e.tail) if t and t.strip()]
    words = sum(runs)
    in_sentences = sum(n for n in runs if n >= _PROSE_RUN_WORDS)
    if words and in_sentences / words >= _PROSE_SHARE and words / len(runs) >= _PROSE_MEAN_RUN:
        yield Part(_xml_text(root), doc_type="document")
    else:
        yield Part(text)


def _xml_text(root: Any) -> str:
    out: list[str] = []
    stack: list[Any] = [root]
    while stack:  # iterative: deeply nested XML must not hit the recursion limit
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
            continue
        out.append(item.text or "")
        tail = item.tail or ""
        # an element followed by text continues its line (<b>x</b> y); else a block ends
        stack.append(tail if tail.strip() else "\n")
        stack.extend(reversed(list(item)))
    return _tidy_lines("".join(out))


# ---------------------------------------------------------------------------------------
# Jupyter notebooks


def _source(value: Any) -> str:
    return "".join(value) if isinstance(value, list) else str(value or "")


def read_notebook_parts(data: bytes, options: ReadOptions) -> Iterator[Part]:
    """A notebook as Markdown: markdown cells as they are, code cells fenced with the
    kernel's language, raw cells as text; outputs (text only) when
    `options.notebook_outputs`. nbformat 4 and 3 layouts."""
    try:
        notebook = json.loads(decode_text(data))
    except json.JSONDecodeError as err:
        raise SkipDocument("corrupt", f"notebook: {err.msg} at line {err.lineno}") from None
    if not isinstance(notebook, dict):
        raise SkipDocument("corrupt", "notebook: not a JSON object")
    meta = notebook.get("metadata") or {}
    language = (meta.get("kernelspec") or {}).get("language") or (
        meta.get("language_info") or {}
    ).get("name")
    cells = notebook.get("cells")
    if cells is None:  # nbformat 3
        cells = [c for ws in notebook.get("worksheets") or [] for c in ws.get("cells") or []]
    blocks: list[str] = []
    for cell in cells if isinstance(cells, list) else []:
        if not isinstance(cell, dict):
            continue
        kind = cell.get("cell_type")
        source = _source(cell.get("source", cell.get("input", ""))).strip("\n")
        if kind == "code":
            if source.strip():
                blocks.append(f"```{language or ''}\n{source}\n```")
            if options.notebook_outputs:
                blocks += _outputs(cell.get("outputs") or [])
        elif source.strip():
            blocks.append(source)
    if not blocks:
        raise SkipDocument("no text", "notebook without cell text")
    yield Part("\n\n".join(blocks), language=language)


def _outputs(outputs: list) -> list[str]:
    texts = []
    for out in outputs:
        if not isinstance(out, dict):
            continue
        text = _source(out.get("text")) or _source((out.get("data") or {}).get("text/plain"))
        if text.strip():
            texts.append(f"```output\n{text.strip(chr(10))}\n```")
    return texts
