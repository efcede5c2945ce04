"""Media readers: images (PNG, JPEG, TIFF, WebP, BMP; scanned PDF pages rendered with
PDFium) and audio (WAV, FLAC, OGG, MP3 through libsndfile) decoded, validated, measured and
stripped of metadata, as the `MediaItem`s ingest stores next to the text records.

Every item is decoded from the bytes that will be stored, so what is measured and hashed is
what a trainer will read; a file that does not decode raises `SkipDocument` with the reason
the ingest report shows (corrupt, too large, too long, no samples).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from forgeml.core.data_config import MediaConfig, OcrConfig
from forgeml.data.readers.base import SkipDocument
from forgeml.data.readers.media_strip import (
    WAV_KEPT,
    WEBP_KEPT,
    MalformedMedia,
    strip_flac,
    strip_jpeg,
    strip_mp3,
    strip_png,
    strip_riff,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3")
AUDIO_BLOCK_FRAMES = 1 << 16
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1000, 192_000  # what serving accepts as well
# libsndfile subtypes FLAC holds exactly at 16 bits; anything else is stored at 24 bits.
_SIXTEEN_BIT = frozenset({"PCM_S8", "PCM_U8", "PCM_16", "ULAW", "ALAW"})


@dataclass(frozen=True)
class MediaItem:
    """One image or recording as stored: `payload` is the stripped file, `content_sha256`
    the hash of its decoded pixels or samples (what exact dedup compares)."""

    kind: str  # image | audio
    format: str  # what `payload` is: png jpeg webp bmp tiff wav flac mp3
    payload: bytes
    content_sha256: str
    locator: str = ""  # "page 2" of a multi-page TIFF or a PDF
    width: int | None = None
    height: int | None = None
    mode: str | None = None  # PIL mode: RGB, L, RGBA, I;16 ...
    frames: int | None = None  # images: animation frames; audio: samples per channel
    sample_rate: int | None = None
    channels: int | None = None
    duration_s: float | None = None
    phash: str | None = None  # images: perceptual hash (hex), None without imagehash
    removed: tuple[str, ...] = ()  # metadata taken out
    converted: str = ""  # why the stored format differs from the file's, if it does
    extra: dict[str, Any] = field(default_factory=dict)


def media_kind(path: PurePath) -> str | None:
    """By extension: "image", "audio", "pdf" (its pages may be scans), or None."""
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in AUDIO_SUFFIXES:
        return "audio"
    return "pdf" if suffix == ".pdf" else None


# ---------------------------------------------------------------------------------------
# Images


def _decoded_frames(payload: bytes, cfg: MediaConfig) -> tuple[Any, list[Any]]:
    """The image in `payload` with its frames decoded (at most `cfg.max_frames`) and turned
    upright (EXIF orientation applied); `SkipDocument` when it is corrupt, truncated or
    larger than `max_image_pixels`."""
    from PIL import Image, ImageOps, ImageSequence, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(payload))
            width, height = image.size
            if width * height > cfg.max_image_pixels:
                detail = f"{width}x{height} pixels > media.max_image_pixels"
                raise SkipDocument("too large", detail)
            frames = []
            for frame in ImageSequence.Iterator(image):
                if len(frames) >= cfg.max_frames:
                    break
                frames.append(frame.copy())
                ImageOps.exif_transpose(frames[-1], in_place=True)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise SkipDocument("too large", f"decompression bomb: {err}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as err:
        raise SkipDocument("corrupt", f"image: {type(err).__name__}: {err}") from None
    if width == 0 or height == 0:
        raise SkipDocument("corrupt", f"image of {width}x{height} pixels")
    return image, frames


def pixel_sha256(frames: list[Any]) -> str:
    """The hash of what the upright frames show, as 8-bit RGBA (16-bit and float images as
    they are), so one picture in PNG, BMP, WebP-lossless or a palette gives one hash
    whatever the file."""
    digest = hashlib.sha256()
    for frame in frames:
        canon = frame if frame.mode in ("I", "I;16", "I;16B", "F") else frame.convert("RGBA")
        digest.update(f"{canon.mode} {canon.size[0]}x{canon.size[1]}\n".encode())
        digest.update(canon.tobytes())
    return digest.hexdigest()


def perceptual_hash(frame: Any, hash_size: int) -> str | None:
    """pHash (DCT of the 32x32 grayscale, Zauner 2010) of an upright frame as hex; None when
    the `imagehash` package (forgeml[multimodal]) is not installed."""
    try:
        import imagehash
    except ImportError:
        return None
    import numpy as np
    from PIL import Image

    upright = frame
    if upright.mode.startswith(("I", "F")):  # 16/32-bit: scaled to 8 bits, not clipped
        pixels = np.asarray(upright.convert("F"))
        low, span = float(pixels.min()), max(float(pixels.max() - pixels.min()), 1e-9)
        upright = Image.fromarray(((pixels - low) * (255 / span)).astype(np.uint8))
    return str(imagehash.phash(upright, hash_size=hash_size))


def _png_of(frame: Any) -> tuple[bytes, str]:
    """A decoded frame as a fresh PNG (no metadata carried over), and its mode; modes PNG
    cannot hold are converted (CMYK/YCbCr/LAB -> RGB, float -> 16-bit grayscale)."""
    converted = frame
    if frame.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        converted = frame.convert("RGB")
    elif frame.mode in ("F", "I;16B", "I;16L", "I;16S"):
        converted = frame.convert("I")
    clean = converted.copy()
    transparency = frame.info.get("transparency")
    clean.info = {}
    out = io.BytesIO()
    params: dict[str, Any] = {"compress_level": 6}
    if transparency is not None:
        params["transparency"] = transparency
    if frame.info.get("icc_profile"):
        params["icc_profile"] = frame.info["icc_profile"]
    clean.save(out, "PNG", **params)
    return out.getvalue(), converted.mode


def _stripped_image(data: bytes, file_format: str) -> tuple[bytes, str, list[str]]:
    """(bytes to store, their format, metadata removed) for an image file whose PIL format
    is `file_format`; TIFF is handled page by page by the caller."""
    if file_format == "PNG":
        payload, removed = strip_png(data)
        return payload, "png", removed
    if file_format in ("JPEG", "MPO"):  # MPO: a JPEG with more pictures appended (phones)
        from PIL import Image

        orientation = Image.open(io.BytesIO(data)).getexif().get(0x0112)
        payload, removed = strip_jpeg(data, orientation if orientation in range(2, 9) else None)
        return payload, "jpeg", removed
    if file_format == "WEBP":
        payload, removed = strip_riff(data, b"WEBP", WEBP_KEPT)
        return payload, "webp", removed
    if file_format == "BMP":
        return data, "bmp", []  # no metadata blocks (a V5 header's ICC profile is colour)
    raise SkipDocument("unsupported type", f"{file_format} images are not stored")


def read_image_media(data: bytes, cfg: MediaConfig) -> list[MediaItem]:
    """An image file as stored media: one item, or one per page of a multi-page TIFF
    (each stored as PNG, its tags dropped). Metadata is cut at the container level and the
    pixels are decoded from the stripped bytes (`forgeml.data.readers.media_strip`)."""
    from PIL import Image, UnidentifiedImageError

    try:
        file_format = Image.open(io.BytesIO(data)).format or ""
    except Image.DecompressionBombError as err:  # its header claims more pixels than allowed
        raise SkipDocument("too large", f"decompression bomb: {err}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, struct.error) as err:
        raise SkipDocument("corrupt", f"image: {type(err).__name__}: {err}") from None
    if file_format == "TIFF":
        return _tiff_pages(data, cfg)
    try:
        payload, fmt, removed = _stripped_image(data, file_format)
    except MalformedMedia as err:
        raise SkipDocument("corrupt", f"{file_format.lower()}: {err}") from None
    image, frames = _decoded_frames(payload, cfg)
    return [_image_item(payload, fmt, image, frames, removed, cfg)]


def _image_item(
    payload: bytes,
    fmt: str,
    image: Any,
    frames: list[Any],
    removed: list[str],
    cfg: MediaConfig,
    locator: str = "",
    converted: str = "",
) -> MediaItem:
    return MediaItem(
        kind="image",
        format=fmt,
        payload=payload,
        content_sha256=pixel_sha256(frames),
        locator=locator,
        width=image.size[0],
        height=image.size[1],
        mode=image.mode,
        frames=getattr(image, "n_frames", 1),
        phash=perceptual_hash(frames[0], cfg.dedup.hash_size),
        removed=tuple(removed),
        converted=converted,
    )


def _tiff_pages(data: bytes, cfg: MediaConfig) -> list[MediaItem]:
    """Every page of a TIFF as its own PNG: TIFF tags (EXIF, GPS, XMP, IPTC, Artist,
    ImageDescription...) are too many kinds to cut one by one, so pixels are re-encoded
    losslessly and nothing else is carried."""
    image, frames = _decoded_frames(data, cfg)
    items = []
    for number, frame in enumerate(frames, 1):
        payload, mode = _png_of(frame)
        _, [stored] = _decoded_frames(payload, cfg)
        locator = f"page {number}" if len(frames) > 1 or image.n_frames > 1 else ""
        note = "tiff page as png" + (f" ({frame.mode} as {mode})" if mode != frame.mode else "")
        items.append(
            _image_item(payload, "png", stored, [stored], ["tiff tags"], cfg, locator, note)
        )
    return items


def render_pdf_page_media(data: bytes, pages: list[int], cfg: MediaConfig) -> list[Any]:
    """The 1-based `pages` of a PDF rendered with PDFium at `cfg.pdf_dpi` in grayscale (as
    OCR reads them) and stored as PNG: a `MediaItem` per page, or the `SkipDocument` that
    says why a page was not rendered. The PDF's own metadata never reaches the render."""
    from forgeml.data.readers.ocr import OcrError, render_pdf_pages

    settings = OcrConfig(dpi=cfg.pdf_dpi, max_image_pixels=cfg.max_image_pixels)
    out: list[Any] = []
    for number, image, dpi in render_pdf_pages(data, pages[: cfg.max_frames], settings):
        if isinstance(image, OcrError):
            out.append(SkipDocument(image.reason, f"page {number}: {image.detail}"))
            continue
        payload, _ = _png_of(image)
        item = _image_item(payload, "png", image, [image], [], cfg, f"page {number}")
        out.append(dataclasses.replace(item, extra={"dpi": dpi, "page": number}))
    for number in pages[cfg.max_frames :]:
        out.append(SkipDocument("page limit", f"page {number}: media.max_frames={cfg.max_frames}"))
    return out


# ---------------------------------------------------------------------------------------
# Audio


def _sound_info(data: bytes) -> Any:
    import soundfile

    try:
        return soundfile.info(io.BytesIO(data))
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        raise SkipDocument("corrupt", f"audio: {err}") from None


def _as_flac(data: bytes, subtype: str) -> bytes:
    """Decoded samples written as FLAC (16-bit when the source was, else 24-bit) without
    tags: the lossless store for containers whose tags cannot be cut out in place."""
    import soundfile

    out = io.BytesIO()
    with (
        soundfile.SoundFile(io.BytesIO(data)) as src,
        soundfile.SoundFile(
            out,
            "w",
            samplerate=src.samplerate,
            channels=src.channels,
            format="FLAC",
            subtype="PCM_16" if subtype in _SIXTEEN_BIT else "PCM_24",
        ) as dst,
    ):
        for block in src.blocks(AUDIO_BLOCK_FRAMES, dtype="float32", always_2d=True):
            dst.write(block)
    return strip_flac(out.getvalue())[0]  # libsndfile adds a vendor comment


def _stripped_audio(data: bytes, fmt: str, subtype: str) -> tuple[bytes, str, list[str], str]:
    """(bytes to store, their format, tags removed, conversion note)."""
    try:
        if fmt in ("WAV", "WAVEX"):
            payload, removed = strip_riff(data, b"WAVE", WAV_KEPT)
            return payload, "wav", removed, ""
        if fmt == "FLAC":
            payload, removed = strip_flac(data)
            return payload, "flac", removed, ""
        if fmt == "MP3":
            payload, removed = strip_mp3(data)
            return payload, "mp3", removed, ""
    except MalformedMedia as err:
        raise SkipDocument("corrupt", f"{fmt.lower()}: {err}") from None
    try:
        return _as_flac(data, subtype), "flac", ["all tags"], f"{fmt.lower()} as flac"
    except Exception as err:  # noqa: BLE001 - libsndfile raises several types mid-stream
        raise SkipDocument("corrupt", f"audio: {type(err).__name__}: {err}") from None


def read_audio_media(data: bytes, cfg: MediaConfig) -> MediaItem:
    """An audio file as stored media: tags cut out in place (WAV chunks, FLAC blocks, ID3 and
    APE) or, for Ogg and other containers, the decoded samples stored as FLAC; then every
    sample decoded from the stored bytes, hashed and counted."""
    import numpy as np
    import soundfile

    info = _sound_info(data)
    if not MIN_SAMPLE_RATE <= info.samplerate <= MAX_SAMPLE_RATE:
        raise SkipDocument(
            "unsupported rate",
            f"{info.samplerate} Hz (stored audio: {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz)",
        )
    if info.duration > cfg.max_audio_seconds:
        raise SkipDocument("too long", f"{info.duration:.0f} s > media.max_audio_seconds")
    payload, fmt, removed, converted = _stripped_audio(data, info.format, info.subtype)
    digest = hashlib.sha256(f"{info.samplerate} {info.channels}\n".encode())
    frames = 0
    try:
        with soundfile.SoundFile(io.BytesIO(payload)) as stored:
            for block in stored.blocks(AUDIO_BLOCK_FRAMES, dtype="float32", always_2d=True):
                if not np.isfinite(block).all():  # NaN/inf would poison the features
                    raise SkipDocument("corrupt", "NaN or infinite samples")
                digest.update(block.tobytes())
                frames += len(block)
                if frames > cfg.max_audio_seconds * info.samplerate:
                    raise SkipDocument("too long", f"more than {cfg.max_audio_seconds:g} s")
    except SkipDocument:
        raise
    except Exception as err:  # noqa: BLE001 - a corrupt stream must never crash a run
        raise SkipDocument("corrupt", f"audio: {type(err).__name__}: {err}") from None
    if frames == 0:
        raise SkipDocument("no samples", f"{info.format} file with no audio frames")
    return MediaItem(
        kind="audio",
        format=fmt,
        payload=payload,
        content_sha256=digest.hexdigest(),
        frames=frames,
        sample_rate=info.samplerate,
        channels=info.channels,
        duration_s=round(frames / info.samplerate, 3),
        removed=tuple(removed),
        converted=converted,
        extra={"subtype": info.subtype},
    )


def audio_decoders() -> dict[str, bool]:
    """Which audio formats this machine's libsndfile decodes (MP3 needs libsndfile >= 1.1
    built with mpg123)."""
    try:
        import soundfile
    except ImportError:
        return {}
    formats = soundfile.available_formats()
    return {name.lower(): name in formats for name in ("WAV", "FLAC", "OGG", "MP3")}
