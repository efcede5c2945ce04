"""Readers by file type: the table ingest consults to turn a file's bytes into documents.

`READERS` maps a lower-case extension (or an exact file name, like `Makefile`) to a
`Reader(doc_type, read, language, parts)`. Single-document formats (text, code, HTML,
Word, PowerPoint, OpenDocument, RTF) set `read(bytes) -> str`; formats that hold many
documents (records, sheets, mail, archives) or need options (PDF and page images, which
are OCR'd) set `parts(bytes, options)`, which yields one `Part` per document. `read_parts`
is the one call ingest makes for either kind; key and credential files are found by name
(`credentials`), other text by content (`sniffed_reader`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from forgeml.data.readers.archives import read_gzip_parts, read_tar_parts, read_zip_parts
from forgeml.data.readers.base import (
    READERS,
    Part,
    Reader,
    ReadOptions,
    SkipDocument,
    contained_parts,
    decode_text,
    decode_utf8,
    looks_binary,
    looks_like_text,
    read_parts,
    reader_for,
    sniffed_reader,
    supported_extensions,
)
from forgeml.data.readers.credentials import (
    CONFIG_LANGUAGES,
    SENSITIVE_TYPE,
    config_reader,
    credential_reader,
)
from forgeml.data.readers.documents import (
    read_html,
    read_notebook_parts,
    read_pdf,
    read_pdf_parts,
    read_rtf,
    read_xml_parts,
)
from forgeml.data.readers.mail import read_eml_parts, read_mbox_parts, read_msg_parts
from forgeml.data.readers.ocr import IMAGE_EXTENSIONS, read_image_parts
from forgeml.data.readers.office import read_docx, read_odp, read_odt, read_pptx
from forgeml.data.readers.records import (
    read_csv_parts,
    read_jsonl_parts,
    read_parquet_parts,
    read_tsv_parts,
)
from forgeml.data.readers.sheets import read_ods_parts, read_xls_parts, read_xlsx_parts
from forgeml.data.readers.text import (
    CODE_FILENAMES,
    CODE_LANGUAGES,
    MARKDOWN_EXTENSIONS,
    TEXT_EXTENSIONS,
    read_code,
    read_markdown,
    read_text,
)


def _parts_only(data: bytes) -> str:
    raise SkipDocument("multi-document", "read with read_parts")


def _many(
    doc_type: str,
    parts: Callable[[bytes, ReadOptions], Iterator[Part]],
    language: str | None = None,
) -> Reader:
    return Reader(doc_type, _parts_only, language, parts)


READERS.update(
    {
        **{ext: Reader("text", read_text) for ext in TEXT_EXTENSIONS},
        **{ext: Reader("markdown", read_markdown) for ext in MARKDOWN_EXTENSIONS},
        **{ext: Reader("code", read_code, lang) for ext, lang in CODE_LANGUAGES.items()},
        **{name: Reader("code", read_code, lang) for name, lang in CODE_FILENAMES.items()},
        **{
            ext: config_reader(lang)
            for ext, lang in CODE_LANGUAGES.items()
            if lang in CONFIG_LANGUAGES
        },
        **{ext: Reader("html", read_html) for ext in (".html", ".htm", ".xhtml")},
        ".xml": _many("code", read_xml_parts, "xml"),
        ".pdf": _many("pdf", read_pdf_parts),
        **{ext: _many("scan", read_image_parts) for ext in IMAGE_EXTENSIONS},
        ".docx": Reader("docx", read_docx),
        ".odt": Reader("document", read_odt),
        ".rtf": Reader("document", read_rtf),
        ".pptx": Reader("presentation", read_pptx),
        ".odp": Reader("presentation", read_odp),
        ".xlsx": _many("spreadsheet", read_xlsx_parts),
        ".xlsm": _many("spreadsheet", read_xlsx_parts),
        ".xls": _many("spreadsheet", read_xls_parts),
        ".ods": _many("spreadsheet", read_ods_parts),
        ".ipynb": _many("notebook", read_notebook_parts),
        ".eml": _many("mail", read_eml_parts),
        ".mbox": _many("mail", read_mbox_parts),
        ".msg": _many("mail", read_msg_parts),
        ".jsonl": _many("records", read_jsonl_parts),
        ".ndjson": _many("records", read_jsonl_parts),
        ".csv": _many("records", read_csv_parts),
        ".tsv": _many("records", read_tsv_parts),
        ".parquet": _many("records", read_parquet_parts),
        ".zip": _many("archive", read_zip_parts),
        ".tar": _many("archive", read_tar_parts),
        ".tgz": _many("archive", read_tar_parts),
        ".tar.gz": _many("archive", read_tar_parts),
        ".tar.bz2": _many("archive", read_tar_parts),
        ".tar.xz": _many("archive", read_tar_parts),
        ".gz": _many("archive", read_gzip_parts),
    }
)

__all__ = [
    "CODE_FILENAMES",
    "CODE_LANGUAGES",
    "MARKDOWN_EXTENSIONS",
    "READERS",
    "SENSITIVE_TYPE",
    "TEXT_EXTENSIONS",
    "Part",
    "ReadOptions",
    "Reader",
    "SkipDocument",
    "config_reader",
    "contained_parts",
    "credential_reader",
    "decode_text",
    "decode_utf8",
    "looks_binary",
    "looks_like_text",
    "read_code",
    "read_csv_parts",
    "read_docx",
    "read_eml_parts",
    "read_gzip_parts",
    "read_html",
    "read_image_parts",
    "read_jsonl_parts",
    "read_markdown",
    "read_mbox_parts",
    "read_msg_parts",
    "read_notebook_parts",
    "read_odp",
    "read_ods_parts",
    "read_odt",
    "read_parquet_parts",
    "read_parts",
    "read_pdf",
    "read_pdf_parts",
    "read_pptx",
    "read_rtf",
    "read_tar_parts",
    "read_text",
    "read_tsv_parts",
    "read_xls_parts",
    "read_xlsx_parts",
    "read_xml_parts",
    "read_zip_parts",
    "reader_for",
    "sniffed_reader",
    "supported_extensions",
]
