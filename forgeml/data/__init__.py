"""Data stage: ingest files into raw Parquet documents (readers by file type, walking, report)."""

from forgeml.data.ingest import IngestReport, ingest_files, read_documents
from forgeml.data.readers import READERS, Reader, reader_for

__all__ = ["IngestReport", "ingest_files", "read_documents", "READERS", "Reader", "reader_for"]
