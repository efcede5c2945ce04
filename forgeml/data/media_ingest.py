"""Media at ingest: images, recordings and scanned PDF pages stored content-addressed under
the dataset's `media/<sha256[:2]>/<sha256>.<ext>`, listed in `media.parquet` with their
provenance, measures and pairs (caption, alt text, OCR transcription, transcript, the
documents that show them), then deduplicated.

`MediaCollector` rides along `forgeml.data.ingest.ingest_files`: it sees every file after
the text readers did, adds the media the file holds, and decides the file's status when the
text side found nothing (a photo, a recording). The text records are never changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from forgeml.core.data_config import MediaConfig
from forgeml.core.io import atomic_open
from forgeml.data.media_curate import mark_duplicates
from forgeml.data.readers.base import SkipDocument, decode_text
from forgeml.data.readers.media import (
    MediaItem,
    audio_decoders,
    media_kind,
    read_audio_media,
    read_image_media,
    render_pdf_page_media,
)

PAIR = pa.struct(
    [
        ("kind", pa.string()),  # caption, alt_text, in_document, transcription (OCR), transcript
        ("doc_id", pa.string()),  # the text record in data.parquet; null if not ingested
        ("path", pa.string()),  # where the text came from
        ("text", pa.string()),
        # in_document/alt_text of a Markdown record: where the image sits in its text, so
        # text and images can be interleaved; null otherwise
        ("offset", pa.int64()),
    ]
)
MEDIA_SCHEMA = pa.schema(
    [
        ("media_id", pa.string()),  # sha256 of source, path, locator and stored bytes
        ("sha256", pa.string()),  # of the stored bytes: the file is media/<sha[:2]>/<sha>.<ext>
        ("file", pa.string()),  # relative to the dataset folder
        ("kind", pa.string()),  # image | audio
        ("format", pa.string()),  # png jpeg webp bmp wav flac mp3
        ("content_sha256", pa.string()),  # of the decoded pixels or samples
        ("path", pa.string()),  # the source file, relative to its source root (provenance)
        ("source", pa.string()),
        ("locator", pa.string()),  # "page 2" of a TIFF or PDF; "" = the whole file
        ("source_sha256", pa.string()),  # of the source file's bytes
        ("source_bytes", pa.int64()),
        ("bytes", pa.int64()),  # stored size
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("mode", pa.string()),
        ("frames", pa.int64()),  # animation frames, or audio samples per channel
        ("sample_rate", pa.int32()),
        ("channels", pa.int32()),
        ("duration_s", pa.float64()),
        ("phash", pa.string()),
        ("metadata_removed", pa.list_(pa.string())),
        ("converted", pa.string()),  # why the stored format is not the file's, else ""
        ("pairs", pa.list_(PAIR)),
        ("duplicate_of", pa.string()),  # media_id of the kept copy; null: kept
        ("duplicate_kind", pa.string()),  # exact | near
        ("duplicate_distance", pa.int32()),  # near: pHash bits apart
    ],
    metadata={b"forgeml.kind": b"media", b"forgeml.schema_version": b"1"},
)
_EXTENSIONS = {"jpeg": "jpg"}
CAPTION_SIDECARS = (".caption.txt", ".txt")  # name.caption.txt, then name.txt
TRANSCRIPT_SIDECARS = (".transcript.txt", ".txt", ".srt", ".vtt")
SIDECAR_SUFFIXES = (".txt", ".srt", ".vtt")
# Skips decided before a file is opened: media cannot do better than the text side.
_NOT_OPENED = frozenset(
    {"excluded", "symlink", "not a regular file", "too large", "empty", "read error"}
)
_SRT_TIMING = re.compile(r"^\s*(?:\d+\s*$|[\d:.,]+\s*-->.*$|WEBVTT.*$|NOTE\b.*$)")
_IMG_TAG = re.compile(r"<img\b[^>]*>", re.IGNORECASE)
_ATTR = re.compile(r"""\b(src|alt)\s*=\s*(?:"([^"]*)"|'([^']*)')""", re.IGNORECASE)
_MARKDOWN_IMAGE = re.compile(r"!\[([^\]]*)\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def transcript_text(text: str) -> str:
    """The spoken words of an SRT or WebVTT file: cue numbers, timings and headers dropped,
    one cue per line (plain text is returned as it is, stripped)."""
    lines = [ln.strip() for ln in text.splitlines()]
    if not any("-->" in ln for ln in lines):
        return text.strip()
    kept = [ln for ln in lines if ln and not _SRT_TIMING.match(ln)]
    return "\n".join(re.sub(r"<[^>]+>", "", ln) for ln in kept)


def image_references(markup: str) -> list[tuple[str, str, int]]:
    """(src, alt text, character offset) of the images an HTML or Markdown document shows,
    in the order they appear."""
    refs = []
    for tag in _IMG_TAG.finditer(markup):
        found = _ATTR.finditer(tag.group(0))
        attrs = {m.group(1).lower(): m.group(2) or m.group(3) or "" for m in found}
        if attrs.get("src"):
            refs.append((attrs["src"], attrs.get("alt", ""), tag.start()))
    refs += [(m.group(2), m.group(1), m.start()) for m in _MARKDOWN_IMAGE.finditer(markup)]
    return sorted(refs, key=lambda ref: ref[2])


class MediaCollector:
    """The media of one ingest: call `add_file` for every file the walk found (in order),
    then `finish` once; media bytes go under `out_dir/media/`, the table to
    `out_dir/media.parquet`."""

    def __init__(self, cfg: MediaConfig, out_dir: Path) -> None:
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.rows: list[dict[str, Any]] = []
        self.skipped: dict[str, int] = {}  # media not stored, by reason
        self.files: dict[str, int] = {"image": 0, "audio": 0, "pdf": 0}
        self.side_texts: dict[tuple[str, str], tuple[Path, str | None]] = {}  # sidecars
        self.markup: list[tuple[str, str, Path, str]] = []  # html/md: source, rel, path, doc_id

    # -- per file --------------------------------------------------------------------

    def add_file(
        self,
        source: str,
        rel: str,
        path: Path,
        verdict: tuple[str, str, str],
        rows: list[dict[str, Any]],
    ) -> tuple[str, str, str]:
        """The file's (status, reason, detail) after its media are added; `verdict` is what
        the text readers decided and `rows` the text records they produced."""
        self._note_texts(source, rel, path, rows)
        kind = media_kind(Path(rel))
        status, reason, detail = verdict
        wanted = {"image": self.cfg.images, "audio": self.cfg.audio, "pdf": self.cfg.pdf_pages}
        if kind is None or not wanted[kind] or status == "failed":
            return verdict
        if reason in _NOT_OPENED and not self._large_media(kind, reason, path):
            return verdict
        try:
            data = path.read_bytes()
        except OSError as err:
            return ("failed", "read error", f"{type(err).__name__}: {err}") if not rows else verdict
        if len(data) > self.cfg.max_file_bytes:  # grew since it was looked at
            return verdict
        items, skips = self._read(kind, data, rows, reason)
        for skip in skips:
            self.skipped[skip.reason] = self.skipped.get(skip.reason, 0) + 1
        if kind != "pdf" or items:
            self.files[kind] += 1
        text_pairs = self._ocr_pairs(kind, rows)
        for item in items:
            self._store(item, source, rel, data, text_pairs.get(item.locator, []))
        if items and status != "kept":
            note = f"{kind} stored; text: {reason}" + (f" ({detail})" if detail else "")
            return "kept", "", note
        if not items and not rows and skips and kind != "pdf":
            return "skipped", skips[0].reason, skips[0].detail
        return verdict

    def _large_media(self, kind: str, reason: str, path: Path) -> bool:
        """An image or recording over `data.max_file_bytes` (the text limit) that is within
        `media.max_file_bytes`: read as media all the same (hour-long recordings)."""
        if reason != "too large" or kind == "pdf" or path.is_symlink():
            return False
        try:
            return path.stat().st_size <= self.cfg.max_file_bytes
        except OSError:
            return False

    def _read(
        self, kind: str, data: bytes, rows: list[dict[str, Any]], text_reason: str
    ) -> tuple[list[MediaItem], list[SkipDocument]]:
        try:
            if kind == "image":
                return read_image_media(data, self.cfg), []
            if kind == "audio":
                return [read_audio_media(data, self.cfg)], []
        except SkipDocument as skip:
            return [], [skip]
        pages = _scanned_pdf_pages(data, rows, text_reason)
        rendered = render_pdf_page_media(data, pages, self.cfg) if pages else []
        items = [r for r in rendered if isinstance(r, MediaItem)]
        return items, [r for r in rendered if isinstance(r, SkipDocument)]

    def _ocr_pairs(self, kind: str, rows: list[dict[str, Any]]) -> dict[str, list[dict]]:
        """Locator -> the OCR transcription pair of a page image or a scanned PDF page: the
        text record's id, and that page's text (pages are separated by form feeds)."""
        if not self.cfg.pairs or not rows or kind == "audio":
            return {}
        row = rows[0]
        meta = json.loads(row["metadata"]) if row.get("metadata") else {}
        pages = [p["page"] for p in (meta.get("ocr") or {}).get("pages", [])]
        texts = row["text"].split("\f")
        out: dict[str, list[dict]] = {}
        for page in pages:
            if page <= len(texts) and texts[page - 1].strip():
                locator = "" if kind == "image" and len(texts) == 1 else f"page {page}"
                pair = {"kind": "transcription", "doc_id": row["doc_id"], "path": row["path"]}
                out[locator] = [{**pair, "text": texts[page - 1]}]
        return out

    def _note_texts(self, source: str, rel: str, path: Path, rows: list[dict]) -> None:
        """Remember sidecar candidates and HTML/Markdown documents for `finish`'s pairing."""
        if not self.cfg.pairs:
            return
        lower = rel.lower()
        whole = next((r for r in rows if not r["locator"] and r["path"] == rel), None)
        doc_id = whole["doc_id"] if whole else None
        if lower.endswith(SIDECAR_SUFFIXES):
            self.side_texts[(source, rel)] = (path, doc_id)
        elif lower.endswith((".html", ".htm", ".md", ".markdown")) and doc_id:
            self.markup.append((source, rel, path, doc_id))

    def _store(
        self, item: MediaItem, source: str, rel: str, data: bytes, pairs: list[dict]
    ) -> None:
        sha = hashlib.sha256(item.payload).hexdigest()
        file = f"media/{sha[:2]}/{sha}.{_EXTENSIONS.get(item.format, item.format)}"
        target = self.out_dir / file
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp")
            tmp.write_bytes(item.payload)
            os.replace(tmp, target)
        key = f"{source}\0{rel}\0{item.locator}\0{sha}".encode("utf-8", "surrogateescape")
        self.rows.append(
            {
                "media_id": hashlib.sha256(key).hexdigest(),
                "sha256": sha,
                "file": file,
                "kind": item.kind,
                "format": item.format,
                "content_sha256": item.content_sha256,
                "path": rel,
                "source": source,
                "locator": item.locator,
                "source_sha256": hashlib.sha256(data).hexdigest(),
                "source_bytes": len(data),
                "bytes": len(item.payload),
                "width": item.width,
                "height": item.height,
                "mode": item.mode,
                "frames": item.frames,
                "sample_rate": item.sample_rate,
                "channels": item.channels,
                "duration_s": item.duration_s,
                "phash": item.phash,
                "metadata_removed": list(item.removed),
                "converted": item.converted,
                "pairs": list(pairs),
            }
        )

    # -- at the end ------------------------------------------------------------------

    def finish(self) -> dict[str, Any]:
        """Pair, deduplicate, write `media.parquet` (when any media was stored) and return
        the report's `media` section ({} when the sources held no media at all)."""
        if not self.rows and not self.skipped and not any(self.files.values()):
            return {}
        if self.cfg.pairs:
            self._pair_sidecars()
            self._pair_documents()
        dedup = mark_duplicates(self.rows, self.cfg.dedup)
        if self.cfg.dedup.near and any(r["kind"] == "image" for r in self.rows):
            if not any(r["phash"] for r in self.rows):
                dedup["note"] = "near dedup off: install imagehash (forgeml[multimodal])"
        if self.rows:
            with atomic_open(self.out_dir / "media.parquet", "wb") as fh:
                table = pa.Table.from_pylist(self.rows, schema=MEDIA_SCHEMA)
                pq.write_table(table, fh, compression="zstd")
        return self._summary(dedup)

    def _pair_sidecars(self) -> None:
        for row in self.rows:
            if row["locator"]:
                continue
            stem = row["path"].rsplit(".", 1)[0]
            suffixes = CAPTION_SIDECARS if row["kind"] == "image" else TRANSCRIPT_SIDECARS
            for suffix in suffixes:
                found = self.side_texts.get((row["source"], stem + suffix))
                if found is None:
                    continue
                path, doc_id = found
                try:
                    text = transcript_text(decode_text(path.read_bytes()))
                except (OSError, SkipDocument):
                    continue
                if text:
                    kind = "caption" if row["kind"] == "image" else "transcript"
                    pair = {"kind": kind, "doc_id": doc_id, "path": stem + suffix, "text": text}
                    row["pairs"] = [pair, *row["pairs"]]
                    break

    def _pair_documents(self) -> None:
        """An image an HTML or Markdown document shows gets an `alt_text` pair (its alt text)
        or an `in_document` pair (none), linking it to the document's record; for Markdown,
        whose record is the markup itself, with the image's offset in that text."""
        by_path = {(r["source"], r["path"]): r for r in self.rows if r["kind"] == "image"}
        for source, rel, path, doc_id in self.markup:
            try:
                markup = decode_text(path.read_bytes())
            except (OSError, SkipDocument):
                continue
            folder = rel.rsplit("/", 1)[0] if "/" in rel else ""
            markdown = rel.lower().endswith((".md", ".markdown"))
            for src, alt, offset in image_references(markup):
                if "://" in src or src.startswith(("data:", "/")):
                    continue
                target = os.path.normpath(f"{folder}/{src}" if folder else src).replace("\\", "/")
                row = by_path.get((source, target.split("#")[0].split("?")[0]))
                if row is not None:
                    kind = "alt_text" if alt.strip() else "in_document"
                    pair = {"kind": kind, "doc_id": doc_id, "path": rel, "text": alt.strip()}
                    row["pairs"] = [*row["pairs"], {**pair, "offset": offset if markdown else None}]

    def _summary(self, dedup: dict[str, Any]) -> dict[str, Any]:
        pairs: dict[str, int] = {}
        removed: dict[str, int] = {}
        for row in self.rows:
            for pair in row["pairs"]:
                pairs[pair["kind"]] = pairs.get(pair["kind"], 0) + 1
            for what in row["metadata_removed"]:
                removed[what] = removed.get(what, 0) + 1
        kinds = [r["kind"] for r in self.rows]
        return {
            "table": "media.parquet" if self.rows else None,
            "files": dict(self.files),
            "images": kinds.count("image"),
            "audio": kinds.count("audio"),
            "audio_seconds": round(sum(r["duration_s"] or 0 for r in self.rows), 1),
            "stored_bytes": sum(r["bytes"] for r in {r["sha256"]: r for r in self.rows}.values()),
            "skipped_by_reason": dict(sorted(self.skipped.items())),
            "pairs": dict(sorted(pairs.items())),
            "metadata_removed": dict(sorted(removed.items())),
            "audio_decoders": audio_decoders(),
            "dedup": dedup,
        }


def _scanned_pdf_pages(data: bytes, rows: list[dict[str, Any]], text_reason: str) -> list[int]:
    """The 1-based pages of a PDF that are scans: those its text record's OCR metadata lists
    (read or not), or, when the PDF gave no record because its scans could not be read,
    every page PDFium finds an image or drawing on."""
    if rows:
        meta = json.loads(rows[0]["metadata"]) if rows[0].get("metadata") else {}
        ocr = meta.get("ocr") or {}
        return sorted(p["page"] for p in ocr.get("pages", []) + ocr.get("not_read", []))
    if text_reason not in ("ocr unavailable", "ocr disabled", "no text"):
        return []
    import io

    from pypdf import PdfReader

    from forgeml.data.readers.ocr import scanned_pages

    try:
        count = len(PdfReader(io.BytesIO(data)).pages)
    except Exception:  # noqa: BLE001 - pypdf raises many types on a corrupt file
        return []
    return scanned_pages(data, dict.fromkeys(range(1, count + 1), ""))
