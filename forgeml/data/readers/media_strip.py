"""Metadata stripping for media files before they are stored: EXIF (GPS, camera, author),
XMP, IPTC, PNG text chunks and audio tags are personal data and never leave ingest.

Each container is cut at its own structure, so the coded pixels and samples stay byte for
byte what they were (nothing is re-encoded): JPEG segments, PNG chunks, RIFF chunks (WebP,
WAV), FLAC metadata blocks, MP3 ID3/APE tags. Every function returns the new bytes and the
names of what it removed; `MalformedMedia` when the container cannot be walked.
"""

from __future__ import annotations

import struct

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Chunks that decide how pixels look; every other ancillary chunk (tEXt, zTXt, iTXt, eXIf,
# tIME, vendor chunks) is dropped.
PNG_KEPT = frozenset(
    b"IHDR PLTE IDAT IEND tRNS gAMA cHRM sRGB iCCP sBIT bKGD pHYs acTL fcTL fdAT".split()
)
WEBP_KEPT = frozenset(b"VP8 ,VP8L,VP8X,ALPH,ANIM,ANMF,ICCP".split(b","))
WAV_KEPT = frozenset(b"fmt ,fact,data".split(b","))
FLAC_KEPT_BLOCKS = {0: "STREAMINFO", 3: "SEEKTABLE"}
FLAC_BLOCK_NAMES = {1: "padding", 2: "application", 4: "vorbis comment", 5: "cuesheet"}
JPEG_ORIENTATION_TAG = 0x0112


class MalformedMedia(Exception):
    """A container whose structure could not be walked (truncated, or not what it says)."""


def _need(data: bytes, end: int, what: str) -> None:
    if end > len(data):
        raise MalformedMedia(f"{what} runs past the end of the file")


# ---------------------------------------------------------------------------------------
# JPEG: segments before the first scan; the entropy-coded data is copied unchanged


def _jpeg_segment_label(marker: int, payload: bytes) -> str | None:
    """What a JPEG segment holds when it is metadata to drop, else None (kept)."""
    if marker == 0xFE:
        return "jpeg comment"
    if marker == 0xE0 or marker == 0xEE:  # JFIF/JFXX, Adobe (colour transform)
        return None
    if marker == 0xE2 and payload.startswith(b"ICC_PROFILE\x00"):
        return None
    if marker == 0xE1:
        return "exif" if payload.startswith(b"Exif\x00") else "xmp"
    if marker == 0xED:
        return "iptc"
    if 0xE2 <= marker <= 0xEF:
        return f"jpeg app{marker - 0xE0}"
    return None


def strip_jpeg(data: bytes, orientation: int | None = None) -> tuple[bytes, list[str]]:
    """A JPEG without EXIF, XMP, IPTC, comments and vendor APPn segments (ICC profile, JFIF and
    Adobe kept), up to its first EOI (images appended after it, as MPF/MPO files carry, are
    dropped). `orientation` (EXIF 2..8) is written back as a one-tag EXIF so the picture
    still shows upright; no other tag survives."""
    if not data.startswith(b"\xff\xd8"):
        raise MalformedMedia("no JPEG start-of-image marker")
    out, removed, pos = [b"\xff\xd8"], [], 2
    if orientation and orientation != 1:
        from PIL import Image

        exif = Image.Exif()
        exif[JPEG_ORIENTATION_TAG] = orientation
        payload = exif.tobytes()
        out.append(b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload)
    in_scan = False
    while True:
        if in_scan:  # entropy-coded data: a marker is 0xFF not followed by 0x00 or RSTn
            start = pos
            while True:
                pos = data.find(b"\xff", pos)
                if pos < 0 or pos + 1 >= len(data):
                    raise MalformedMedia("JPEG ends inside its image data (truncated)")
                nxt = data[pos + 1]
                if nxt == 0x00 or 0xD0 <= nxt <= 0xD7 or nxt == 0xFF:
                    pos += 1 if nxt == 0xFF else 2
                    continue
                break
            out.append(data[start:pos])
        _need(data, pos + 2, "JPEG marker")
        if data[pos] != 0xFF:
            raise MalformedMedia(f"JPEG marker expected at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xD9:  # end of image
            out.append(b"\xff\xd9")
            if len(data) > pos + 2:
                removed.append("data after end of image")
            return b"".join(out), sorted(set(removed))
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        _need(data, pos + 4, "JPEG segment length")
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        end = pos + 2 + length
        _need(data, end, "JPEG segment")
        label = _jpeg_segment_label(marker, data[pos + 4 : end])
        if label is None:
            out.append(data[pos:end])
        else:
            removed.append(label)
        in_scan = in_scan or marker == 0xDA
        pos = end


# ---------------------------------------------------------------------------------------
# PNG chunks


def strip_png(data: bytes) -> tuple[bytes, list[str]]:
    """A PNG holding only the chunks that decide its pixels and colours (`PNG_KEPT`); text
    chunks (tEXt/zTXt/iTXt: author, comments, software), eXIf, tIME and vendor chunks go."""
    if not data.startswith(PNG_SIGNATURE):
        raise MalformedMedia("no PNG signature")
    out, removed, pos = [PNG_SIGNATURE], [], len(PNG_SIGNATURE)
    while pos < len(data):
        _need(data, pos + 8, "PNG chunk header")
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 12 + length
        _need(data, end, f"PNG {kind!r} chunk")
        if kind in PNG_KEPT:
            out.append(data[pos:end])
        else:
            removed.append("png " + kind.decode("latin-1"))
        pos = end
        if kind == b"IEND":
            return b"".join(out), sorted(set(removed))
    raise MalformedMedia("PNG has no IEND chunk (truncated)")


# ---------------------------------------------------------------------------------------
# RIFF: WebP and WAV


def strip_riff(data: bytes, form: bytes, kept: frozenset[bytes]) -> tuple[bytes, list[str]]:
    """A RIFF file of `form` (b"WEBP", b"WAVE") holding only the `kept` chunks. For WebP the
    VP8X header's EXIF and XMP flags are cleared with their chunks."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != form:
        raise MalformedMedia(f"not a RIFF {form.decode()} file")
    chunks, removed, pos = [], [], 12
    (riff_size,) = struct.unpack("<I", data[4:8])
    end_of_riff = min(len(data), 8 + riff_size)
    while pos + 8 <= end_of_riff:
        kind, size = struct.unpack("<4sI", data[pos : pos + 8])
        end = pos + 8 + size
        _need(data, end, f"RIFF {kind!r} chunk")
        padded = end + (size & 1)
        chunk = data[pos:padded]
        if kind == b"VP8X" and size >= 1:
            chunk = chunk[:8] + bytes([chunk[8] & ~0x0C]) + chunk[9:]
        if kind in kept:
            chunks.append(chunk + (b"\x00" if len(chunk) < padded - pos else b""))
        else:
            removed.append(kind.decode("latin-1").strip().lower() or "riff chunk")
        pos = padded
    body = form + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body, sorted(set(removed))


# ---------------------------------------------------------------------------------------
# Audio tags: ID3 (MP3, sometimes FLAC), APE, FLAC metadata blocks


def _id3v2_length(data: bytes, pos: int) -> int:
    """Bytes of the ID3v2 tag at `pos` (header, body, footer), 0 when there is none."""
    if data[pos : pos + 3] != b"ID3" or len(data) < pos + 10:
        return 0
    size = 0
    for b in data[pos + 6 : pos + 10]:
        size = (size << 7) | (b & 0x7F)
    return 10 + size + (10 if data[pos + 5] & 0x10 else 0)


def _leading_id3(data: bytes) -> tuple[int, list[str]]:
    pos = 0
    while length := _id3v2_length(data, pos):
        pos += length
    return pos, (["id3v2"] if pos else [])


def strip_mp3(data: bytes) -> tuple[bytes, list[str]]:
    """An MP3 stream without its ID3v2 tags (front), APEv2 and ID3v1 tags (end)."""
    start, removed = _leading_id3(data)
    end = len(data)
    if end - start >= 128 and data[end - 128 : end - 125] == b"TAG":
        end -= 128
        removed.append("id3v1")
    if end - start >= 32 and data[end - 32 : end - 24] == b"APETAGEX":
        size, flags = struct.unpack("<II", data[end - 20 : end - 12])
        end -= size + (32 if flags & 0x80000000 else 0)
        removed.append("ape")
    if end <= start:
        raise MalformedMedia("MP3 holds nothing but tags")
    return data[start:end], removed


def strip_flac(data: bytes) -> tuple[bytes, list[str]]:
    """A FLAC stream holding only its STREAMINFO and SEEKTABLE metadata blocks: Vorbis
    comments (artist, title...), pictures (cover art), cue sheets and padding go."""
    start, removed = _leading_id3(data)
    if data[start : start + 4] != b"fLaC":
        raise MalformedMedia("no FLAC stream marker")
    blocks, pos, last = [], start + 4, False
    while not last:
        _need(data, pos + 4, "FLAC metadata block header")
        header = data[pos]
        last, kind = bool(header & 0x80), header & 0x7F
        length = int.from_bytes(data[pos + 1 : pos + 4], "big")
        end = pos + 4 + length
        _need(data, end, "FLAC metadata block")
        if kind in FLAC_KEPT_BLOCKS:
            blocks.append((kind, data[pos + 4 : end]))
        else:
            removed.append("picture" if kind == 6 else FLAC_BLOCK_NAMES.get(kind, f"block {kind}"))
        pos = end
    if not blocks or blocks[0][0] != 0:
        raise MalformedMedia("FLAC stream has no STREAMINFO block")
    out = [b"fLaC"]
    for i, (kind, body) in enumerate(blocks):
        flag = 0x80 if i == len(blocks) - 1 else 0
        out.append(bytes([flag | kind]) + len(body).to_bytes(3, "big") + body)
    out.append(data[pos:])
    return b"".join(out), sorted(set(removed))
