"""OCR with Tesseract: page images and PDF pages without a text layer become text, with the
mean word confidence of every page. Used by the PDF reader and the page-image reader at
ingest; `ocr_image` is a function of (image, options) so other readers can share it.

Tesseract runs as Debian's `tesseract` command (image on stdin, TSV on stdout: text and
per-word confidence from one run); when it is absent, pages are reported "ocr unavailable".
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import re
import shutil
import subprocess
import threading
import warnings
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from forgeml.core.data_config import OcrConfig
from forgeml.data.readers.base import Part, ReadOptions, SkipDocument

UNAVAILABLE = "ocr unavailable"
INSTALL_HINT = "install tesseract-ocr; on Debian/Ubuntu: apt-get install tesseract-ocr"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp")
MIN_IMAGE_SIDE = 32  # pixels: smaller images (icons, bullets) hold no page of text
_PDFIUM_LOCK = threading.Lock()  # PDFium is not thread-safe
_WHITESPACE = re.compile(r"\s+")


class OcrError(Exception):
    """A page OCR could not read; `reason` is a short category for the report."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class OcrPage:
    """One page's text; `confidence` is the mean of Tesseract's word confidences (0-100),
    None when no word was found."""

    text: str
    confidence: float | None
    words: int


@dataclass(frozen=True)
class OcrEngine:
    path: str
    version: str  # "tesseract 5.3.0"
    languages: frozenset[str]


# ---------------------------------------------------------------------------------------
# The engine


def tesseract_path() -> str | None:
    """Where the `tesseract` command is, or None (tests patch this to simulate its absence)."""
    return shutil.which("tesseract")


@functools.lru_cache(maxsize=8)
def _probe(path: str) -> OcrEngine | None:
    try:
        version = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=30, check=True
        )
        langs = subprocess.run(
            [path, "--list-langs"], capture_output=True, text=True, timeout=30, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    first = (version.stdout or version.stderr).strip().splitlines()
    listed = langs.stdout.strip().splitlines()[1:]  # after "List of available languages..."
    return OcrEngine(path, first[0] if first else "tesseract", frozenset(listed))


def ocr_engine() -> OcrEngine | None:
    """The installed Tesseract (version and language packs), or None."""
    path = tesseract_path()
    return _probe(path) if path else None


def engine_or_reason(options: OcrConfig) -> tuple[OcrEngine | None, OcrError | None]:
    """The engine to use with `options`, or None and why pages cannot be OCR'd."""
    if not options.enabled:
        return None, OcrError("ocr disabled", "ocr.enabled is false")
    engine = ocr_engine()
    if engine is None:
        return None, OcrError(UNAVAILABLE, INSTALL_HINT)
    missing = [lang for lang in options.languages if lang not in engine.languages]
    if missing:
        pack = f"tesseract-ocr-{missing[0]}"
        return None, OcrError(UNAVAILABLE, f"language '{missing[0]}' not installed: install {pack}")
    return engine, None


def engine_label(options: OcrConfig) -> str:
    """What OCR the settings give on this machine: for provenance and stage cache keys."""
    engine, why = engine_or_reason(options)
    if engine is None:
        return f"{why.reason} ({why.detail})" if why else "none"
    return f"{engine.version} ({'+'.join(options.languages)})"


# ---------------------------------------------------------------------------------------
# One image


def ocr_image(image: Any, options: OcrConfig, dpi: int | None = None) -> OcrPage:
    """The text of one PIL image, lines and paragraphs as Tesseract found them, with the mean
    word confidence. `dpi`: the image's resolution when known (rendered PDF pages).
    Raises `OcrError` when Tesseract is absent, times out or fails."""
    engine, why = engine_or_reason(options)
    if engine is None:
        raise why or OcrError(UNAVAILABLE)
    pgm = io.BytesIO()
    try:
        _grayscale(image).save(pgm, "PPM")  # 8-bit PGM: no compression to pay for on a pipe
    except (OSError, ValueError) as err:
        raise OcrError("ocr failed", f"image: {type(err).__name__}: {err}") from None
    command = [engine.path, "stdin", "stdout", "-l", "+".join(options.languages)]
    if dpi:
        command += ["--dpi", str(dpi)]
    # One thread per process: pages run in parallel instead, and OpenMP threads inside
    # Tesseract only contend with them.
    env = {**os.environ, "OMP_THREAD_LIMIT": "1"}
    try:
        done = subprocess.run(
            [*command, "tsv"],
            input=pgm.getvalue(),
            capture_output=True,
            timeout=options.page_timeout_s,
            env=env,
        )
    except subprocess.TimeoutExpired:
        raise OcrError("ocr timeout", f"more than {options.page_timeout_s:g} s") from None
    except OSError as err:
        raise OcrError("ocr failed", f"{type(err).__name__}: {err}") from None
    if done.returncode != 0:
        message = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise OcrError("ocr failed", message[-1] if message else f"exit {done.returncode}")
    text, confidences = parse_tsv(done.stdout.decode("utf-8", "replace"))
    mean = sum(confidences) / len(confidences) if confidences else None
    return OcrPage(text, mean, len(confidences))


def _grayscale(image: Any) -> Any:
    """8-bit grayscale on white: transparent pixels become paper, not black."""
    from PIL import Image

    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(paper, rgba)
    elif image.mode.startswith("I"):  # 16/32-bit scans: scale to 8 bits, not clip
        low, high = image.getextrema()
        image = image.point(lambda v: (v - low) * 255 / max(1, high - low))
    return image.convert("L")


_TSV_WORD_LEVEL = "5"


def parse_tsv(tsv: str) -> tuple[str, list[float]]:
    """Text and word confidences from Tesseract's TSV: words joined by spaces within a line,
    lines by newlines, a blank line between paragraphs and blocks."""
    out: list[str] = []
    confidences: list[float] = []
    line_key = para_key = None
    for row in tsv.splitlines()[1:]:
        cols = row.split("\t", 11)
        if len(cols) < 12 or cols[0] != _TSV_WORD_LEVEL or not cols[11].strip():
            continue
        page, block, par, line = cols[1:5]
        if (page, block, par) != para_key:
            if para_key is not None:
                out.append("\n\n")
            para_key, line_key = (page, block, par), line
        elif line != line_key:
            out.append("\n")
            line_key = line
        else:
            out.append(" ")
        out.append(cols[11].strip())
        confidences.append(max(0.0, float(cols[10])))
    return "".join(out), confidences


# ---------------------------------------------------------------------------------------
# Many pages at once


@dataclass(frozen=True)
class PageResult:
    """The OCR of one page of a file: `page` counts from 1; `error` set when not read; `dpi`
    the resolution it was read at, when known."""

    page: int
    result: OcrPage | None = None
    error: OcrError | None = None
    dpi: int | None = None


def _workers(options: OcrConfig) -> int:
    return options.workers or os.cpu_count() or 1


def ocr_pages(pages: Iterator[tuple[int, Any, int | None]], options: OcrConfig) -> list[PageResult]:
    """OCR of (page number, PIL image or OcrError, dpi) items, `workers` at a time. Images
    are produced lazily, at most two per worker ahead, so memory stays bounded."""
    results: list[PageResult] = []
    running: list[tuple[int, int | None, Future[OcrPage]]] = []
    workers = _workers(options)

    def collect(item: tuple[int, int | None, Future[OcrPage]]) -> None:
        number, dpi, future = item
        try:
            results.append(PageResult(number, future.result(), dpi=dpi))
        except OcrError as err:
            results.append(PageResult(number, error=err, dpi=dpi))

    with ThreadPoolExecutor(workers) as pool:
        for number, image, dpi in pages:
            if isinstance(image, OcrError):
                results.append(PageResult(number, error=image))
                continue
            running.append((number, dpi, pool.submit(ocr_image, image, options, dpi)))
            while len(running) >= 2 * workers:
                collect(running.pop(0))
        for item in running:
            collect(item)
    return sorted(results, key=lambda r: r.page)


def page_record(item: PageResult, options: OcrConfig) -> dict[str, Any]:
    """One page as the record's metadata and the ingest report list it."""
    if item.error is not None:
        return {"page": item.page, "skip": item.error.reason, "detail": item.error.detail}
    assert item.result is not None
    conf = item.result.confidence
    return {
        "page": item.page,
        "words": item.result.words,
        "confidence": None if conf is None else round(conf, 1),
        "low_confidence": conf is not None and conf < options.min_confidence,
        "dpi": item.dpi,
    }  # no timing here: the same file must give the same record (assets are content-addressed)


def ocr_metadata(results: list[PageResult], options: OcrConfig) -> dict[str, Any]:
    """The `ocr` entry of a record's metadata: the engine, every OCR'd page with its word
    count and mean confidence (low ones flagged), and the pages that could not be read."""
    records = [page_record(r, options) for r in results]
    return {
        "engine": engine_label(options),
        "min_confidence": options.min_confidence,
        "pages": [r for r in records if "skip" not in r],
        "not_read": [r for r in records if "skip" in r],
    }


# ---------------------------------------------------------------------------------------
# PDF pages: rendered with PDFium (pypdfium2)


def _pdfium() -> Any:
    try:
        import pypdfium2
    except ImportError:
        return None
    return pypdfium2


def scanned_pages(data: bytes, texts: dict[int, str]) -> list[int]:
    """Which of the pages in `texts` (1-based number -> its text layer, short or empty) are
    worth OCR: those that hold an image (a scan, a photo of a page, a slide's picture) and
    those with objects but no text layer at all (text drawn as outlines). Blank pages, and
    pages whose few characters are all they hold, are left out. All of them when PDFium
    cannot tell."""
    numbers = sorted(texts)
    pdfium = _pdfium()
    if pdfium is None:
        return numbers
    from pypdfium2.raw import FPDF_PAGEOBJ_IMAGE, FPDFPage_CountObjects

    with _PDFIUM_LOCK:
        try:
            pdf = pdfium.PdfDocument(data)
        except pdfium.PdfiumError:
            return numbers
        try:
            chosen = []
            for number in numbers:
                page = pdf[number - 1]  # held in a name: its handle is freed with the object
                if FPDFPage_CountObjects(page.raw) == 0:
                    continue
                images = page.get_objects(filter=[FPDF_PAGEOBJ_IMAGE])
                if not texts[number].strip() or next(images, None) is not None:
                    chosen.append(number)
                page.close()
            return chosen
        except (pdfium.PdfiumError, IndexError):
            return numbers
        finally:
            pdf.close()


def render_pdf_pages(
    data: bytes, numbers: list[int], options: OcrConfig
) -> Iterator[tuple[int, Any, int | None]]:
    """(page number, PIL image or OcrError, dpi) for the 1-based `numbers` of a PDF, rendered
    at `options.dpi`, lower where a page would exceed `max_image_pixels`."""
    pdfium = _pdfium()
    if pdfium is None:
        for number in numbers:
            yield number, OcrError(UNAVAILABLE, "install pypdfium2 to render PDF pages"), None
        return
    with _PDFIUM_LOCK:  # held while the caller OCRs earlier pages: rendering stays serial
        try:
            pdf = pdfium.PdfDocument(data)
        except pdfium.PdfiumError as err:
            for number in numbers:
                yield number, OcrError("render failed", str(err)), None
            return
        try:
            for number in numbers:
                try:
                    page = pdf[number - 1]
                    width, height = page.get_size()
                    dpi = options.dpi
                    pixels = width * height * (dpi / 72) ** 2
                    if pixels > options.max_image_pixels:
                        dpi = max(1, int(dpi * (options.max_image_pixels / pixels) ** 0.5))
                    image = page.render(scale=dpi / 72, grayscale=True).to_pil()
                except (pdfium.PdfiumError, IndexError, ValueError) as err:
                    yield number, OcrError("render failed", f"{type(err).__name__}: {err}"), None
                    continue
                yield number, image, dpi
        finally:
            pdf.close()


def ocr_pdf_pages(data: bytes, numbers: list[int], options: OcrConfig) -> list[PageResult]:
    """OCR of the 1-based pages `numbers` of a PDF, at most `options.max_pages` of them; the
    rest are returned as not read ("ocr page limit"), and all of them when OCR is
    unavailable."""
    engine, why = engine_or_reason(options)
    if engine is None:
        return [PageResult(n, error=why) for n in numbers]
    chosen, over = numbers[: options.max_pages], numbers[options.max_pages :]
    limit = OcrError("ocr page limit", f"max_pages={options.max_pages}")
    results = ocr_pages(render_pdf_pages(data, chosen, options), options)
    return results + [PageResult(n, error=limit) for n in over]


# ---------------------------------------------------------------------------------------
# Page images: .png .jpg .tif (every frame) ...


@contextlib.contextmanager
def _image_errors() -> Iterator[None]:
    """PIL's errors as the skip reasons ingest reports (decompression bombs: "too large")."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise SkipDocument("too large", f"decompression bomb: {err}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as err:
        raise SkipDocument("corrupt", f"image: {type(err).__name__}: {err}") from None


def open_image(data: bytes, options: OcrConfig) -> Any:
    """An image file opened lazily (its header read, no pixel decoded), or `SkipDocument`
    when it is corrupt, larger than `max_image_pixels` or too small to hold a page."""
    from PIL import Image

    with _image_errors():
        image = Image.open(io.BytesIO(data))
        width, height = image.size
    if width * height > options.max_image_pixels:
        raise SkipDocument(
            "too large", f"{width}x{height} pixels > max_image_pixels (decompression bomb?)"
        )
    if min(width, height) < MIN_IMAGE_SIDE:
        raise SkipDocument("no text", f"{width}x{height} image is too small for a page")
    return image


def image_frames(image: Any, options: OcrConfig) -> tuple[list[Any], int, int | None]:
    """The frames of an opened image (one, or every page of a multi-page TIFF, at most
    `max_pages`) decoded and upright (EXIF orientation applied), how many frames the file
    holds, and the resolution it declares."""
    from PIL import ImageOps, ImageSequence

    with _image_errors():
        dpi = image.info.get("dpi")
        total = getattr(image, "n_frames", 1)
        frames = []
        for frame in ImageSequence.Iterator(image):
            if len(frames) >= options.max_pages:
                break
            if frame.size[0] * frame.size[1] > options.max_image_pixels:
                raise SkipDocument("too large", f"a frame of {frame.size[0]}x{frame.size[1]}")
            frames.append(ImageOps.exif_transpose(frame.copy()))
        declared = int(round(float(dpi[0]))) if dpi and 72 <= float(dpi[0]) <= 1200 else None
    return frames, total, declared


def read_image_parts(data: bytes, options: ReadOptions) -> Iterator[Part]:
    """A page image (or a multi-page TIFF) as one document of OCR'd text, pages separated by
    a form feed, with the `ocr` metadata of every page. Skipped with the reason when the
    image is unusable, OCR is unavailable, or it shows fewer than `min_image_words` words
    (a logo, a rule, a photo)."""
    ocr = options.ocr
    image = open_image(data, ocr)
    engine, why = engine_or_reason(ocr)
    if engine is None:
        raise SkipDocument(why.reason, why.detail) if why else SkipDocument(UNAVAILABLE)
    frames, total, dpi = image_frames(image, ocr)
    results = ocr_pages(((i + 1, f, dpi) for i, f in enumerate(frames)), ocr)
    limit = OcrError("ocr page limit", f"max_pages={ocr.max_pages}")
    results += [PageResult(n, error=limit) for n in range(len(frames) + 1, total + 1)]
    texts = [r.result.text if r.result is not None else "" for r in results]
    words = sum(r.result.words for r in results if r.result is not None)
    if words < ocr.min_image_words:
        errors = [r.error for r in results if r.error is not None]
        if errors:
            raise SkipDocument(errors[0].reason, errors[0].detail)
        found = f"{words} word{'s' * (words != 1)}"
        raise SkipDocument("no text", f"OCR found {found} in the image (min_image_words)")
    yield Part("\f".join(texts), metadata={"ocr": ocr_metadata(results, ocr)})


def page_texts_with_ocr(
    texts: list[str], data: bytes, options: OcrConfig
) -> tuple[list[str], dict[str, Any] | None]:
    """PDF page texts (from the text layer) with every scanned page (`scanned_pages`: fewer
    than `min_text_chars` characters of text layer) replaced by its OCR where that finds
    words; and the `ocr` metadata, None when no page needed OCR."""
    short = {
        i + 1: t
        for i, t in enumerate(texts)
        if len(_WHITESPACE.sub("", t)) < options.min_text_chars
    }
    need = scanned_pages(data, short) if short else []
    if not need:
        return texts, None
    results = ocr_pdf_pages(data, need, options)
    merged = list(texts)
    for r in results:
        if r.result is not None and r.result.text.strip():
            merged[r.page - 1] = r.result.text
    return merged, ocr_metadata(results, options)
