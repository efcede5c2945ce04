"""OCR at ingest: pages per second and character error rate (CER) on A4 pages this script
renders itself, read by forgeml (Tesseract through a pipe: PGM in, TSV out) and by the
pytesseract wrapper (temp files) on the same images and the same Tesseract.

Pages are English prose (the docstrings of stdlib modules), 10-11 pt DejaVu Sans/Serif and
Liberation Sans at 300 dpi, under three conditions: clean at 300 dpi, clean at 200 dpi, and
"scanned" (0.8 degree skew, blur, noise, JPEG quality 60). Every run sets
OMP_THREAD_LIMIT=1 (forgeml always does: pages run in parallel instead). The last line
ingests the scanned pages as one image-only PDF with `ingest_files` (render + OCR). The
machine is whatever runs it: compare ratios, not absolute numbers. pytesseract is a peer
only, not a dependency:

    .venv/bin/pip install pytesseract
    .venv/bin/python benchmarks/ocr.py [--pages 6] [--quick]
"""

from __future__ import annotations

import argparse
import importlib
import io
import os
import random
import re
import resource
import statistics
import tempfile
import textwrap
import time
from pathlib import Path

from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont

os.environ["OMP_THREAD_LIMIT"] = "1"  # pytesseract inherits it; forgeml sets it anyway

from forgeml.core.data_config import OcrConfig  # noqa: E402
from forgeml.data.ingest import ingest_files  # noqa: E402
from forgeml.data.readers.ocr import ocr_engine, ocr_pages, parse_tsv  # noqa: E402
from forgeml.eval.media_scoring import character_error_rate

A4_300 = (2480, 3508)
FONTS = [("DejaVuSans.ttf", 11), ("DejaVuSerif.ttf", 11), ("LiberationSans-Regular.ttf", 10)]
MODULES = ["argparse", "logging", "json", "email", "collections", "heapq", "bisect", "csv"]


def prose() -> list[str]:
    """Paragraphs of English from stdlib docstrings, ASCII, without code examples."""
    paragraphs = []
    for name in MODULES:
        doc = importlib.import_module(name).__doc__ or ""
        for block in re.split(r"\n\s*\n", doc):
            if ">>>" in block or "::" in block or not block.isascii():
                continue
            text = " ".join(block.split())
            if len(text.split()) >= 12:
                paragraphs.append(text)
    return paragraphs


def render_pages(count: int, dpi: int = 300) -> list[tuple[Image.Image, str]]:
    """`count` A4 pages at `dpi`, and the text each shows."""
    paragraphs = prose()
    width, height = (round(side * dpi / 300) for side in A4_300)
    margin = round(150 * dpi / 300)
    pages, cursor = [], 0
    for n in range(count):
        name, points = FONTS[n % len(FONTS)]
        try:
            font = ImageFont.truetype(name, round(points * dpi / 72))
        except OSError:
            font = ImageFont.load_default(size=round(points * dpi / 72))
        step = round(points * dpi / 72 * 1.5)
        chars = int((width - 2 * margin) / font.getlength("abcdefghij klmnopq") * 18)
        image = Image.new("L", (width, height), 255)
        draw = ImageDraw.Draw(image)
        y, lines = margin, []
        while y + 3 * step < height - margin:
            for line in textwrap.wrap(paragraphs[cursor % len(paragraphs)], chars - 2):
                if y + step >= height - margin:
                    break
                draw.text((margin, y), line, font=font, fill=0)
                lines.append(line)
                y += step
            y += step
            cursor += 1
        pages.append((image, "\n".join(lines)))
    return pages


def scanned(image: Image.Image, seed: int) -> Image.Image:
    """What a flatbed scan does to a page: skew, blur, sensor noise, specks, JPEG artifacts."""
    rng = random.Random(seed)
    skewed = image.rotate(0.8, resample=Image.Resampling.BICUBIC, fillcolor=255)
    blurred = skewed.filter(ImageFilter.GaussianBlur(0.8))
    noisy = ImageChops.add(blurred, Image.effect_noise(blurred.size, 20), 1.0, -128)
    pixels = noisy.load()
    for _ in range(noisy.size[0] * noisy.size[1] // 2000):
        x, y = rng.randrange(noisy.size[0]), rng.randrange(noisy.size[1])
        pixels[x, y] = rng.choice((0, 255))
    buf = io.BytesIO()
    noisy.save(buf, "JPEG", quality=60)
    return Image.open(io.BytesIO(buf.getvalue())).convert("L")


def cer(reference: str, hypothesis: str) -> float:
    """Character error rate (forgeml.eval.media_scoring), whitespace runs counted as one
    space, case and punctuation kept."""
    ref, hyp = (" ".join(s.split()) for s in (reference, hypothesis))
    return character_error_rate(hyp, ref, normalize=False)


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the Tesseract runs): on a busy
    machine it moves far less than the wall clock."""
    me, children = (
        resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def run_forgeml(pages, dpi: int, workers: int) -> tuple[float, float, float, float]:
    """(pages/s, CPU s/page, mean CER, mean confidence) of forgeml's OCR with `workers`
    pages at once."""
    options = OcrConfig(workers=workers)
    start, cpu = time.perf_counter(), cpu_seconds()
    results = ocr_pages(((i + 1, img, dpi) for i, (img, _) in enumerate(pages)), options)
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    assert all(r.result is not None for r in results), [r.error for r in results]
    errors = [cer(truth, r.result.text) for r, (_, truth) in zip(results, pages, strict=True)]
    confs = [r.result.confidence or 0.0 for r in results]
    return len(pages) / seconds, cpu / len(pages), statistics.mean(errors), statistics.mean(confs)


def run_pytesseract(pages, dpi: int) -> tuple[float, float, float] | None:
    """(pages/s, CPU s/page, mean CER) of pytesseract's image_to_data, a page at a time."""
    try:
        import pytesseract
    except ImportError:
        return None
    start, cpu = time.perf_counter(), cpu_seconds()
    tsvs = [pytesseract.image_to_data(img, lang="eng", config=f"--dpi {dpi}") for img, _ in pages]
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    errors = [cer(truth, parse_tsv(tsv)[0]) for tsv, (_, truth) in zip(tsvs, pages, strict=True)]
    return len(pages) / seconds, cpu / len(pages), statistics.mean(errors)


def run_ingest(pages) -> tuple[float, dict]:
    """pages/s of `ingest_files` on one image-only PDF of `pages` (render at 300 dpi + OCR)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "docs"
        root.mkdir()
        images = [img for img, _ in pages]
        images[0].save(
            root / "scan.pdf", "PDF", resolution=300, save_all=True, append_images=images[1:]
        )
        start = time.perf_counter()
        report = ingest_files([root], Path(tmp) / "out.parquet")
        seconds = time.perf_counter() - start
    return len(pages) / seconds, report.ocr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=6)
    parser.add_argument("--quick", action="store_true", help="2 pages, for a smoke run")
    args = parser.parse_args()
    count = 2 if args.quick else args.pages
    engine = ocr_engine()
    if engine is None:
        raise SystemExit("tesseract is not installed: apt-get install tesseract-ocr")
    cores = os.cpu_count() or 1
    print(f"{engine.version}, {count} A4 pages per condition, {cores} CPU cores")
    clean = render_pages(count)
    conditions = {
        "clean, 300 dpi": (clean, 300),
        "clean, 200 dpi": (render_pages(count, dpi=200), 200),
        "scanned, 300 dpi": ([(scanned(img, i), t) for i, (img, t) in enumerate(clean)], 300),
    }
    print(
        "| pages | forgeml pages/s (1 worker) | forgeml pages/s "
        f"({cores} workers) | pytesseract pages/s | forgeml CPU s/page | pytesseract CPU "
        "s/page | forgeml CER | pytesseract CER | mean word confidence |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    nan = float("nan")
    for label, (pages, dpi) in conditions.items():
        one, cpu, err, conf = run_forgeml(pages, dpi, workers=1)
        many, _, _, _ = run_forgeml(pages, dpi, workers=cores)
        peer_rate, peer_cpu, peer_err = run_pytesseract(pages, dpi) or (nan, nan, nan)
        print(
            f"| {label} | {one:.2f} | {many:.2f} | {peer_rate:.2f} | {cpu:.2f} | {peer_cpu:.2f} "
            f"| {err:.4f} | {peer_err:.4f} | {conf:.1f} |"
        )
    rate, ocr = run_ingest(conditions["scanned, 300 dpi"][0])
    print(
        f"\ningest of a {count}-page scanned PDF (render + OCR, {cores} workers): "
        f"{rate:.2f} pages/s, {ocr['pages']} pages OCR'd, mean confidence "
        f"{ocr['mean_confidence']}, {ocr['low_confidence_pages']} below {ocr['min_confidence']}"
    )


if __name__ == "__main__":
    main()
