"""OCR at ingest on page images the tests render themselves: words come back (character
error rate under a bound) with their confidence; scanned and mixed PDFs go through
`forgeml data ingest` and the report names the OCR'd pages; bad images and a missing
Tesseract are accounted for with a reason, never a crash.
"""

from __future__ import annotations

import importlib.util
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageDraw, ImageFont
from test_readers import make_pdf

from forgeml.core.data_config import OcrConfig
from forgeml.data.ingest import ingest_files
from forgeml.data.readers import ReadOptions, SkipDocument, read_parts, reader_for
from forgeml.data.readers import ocr as ocr_module
from forgeml.data.readers.ocr import ocr_engine, parse_tsv
from forgeml.eval.media_scoring import character_error_rate

needs_tesseract = pytest.mark.skipif(
    ocr_engine() is None, reason="tesseract-ocr is not installed (CI installs it)"
)
needs_pdfium = pytest.mark.skipif(
    importlib.util.find_spec("pypdfium2") is None,
    reason="pypdfium2 (renders PDF pages for OCR) is not installed",
)

PAGE_ONE = [
    "Quarterly maintenance report for pump station four.",
    "All valves were inspected and two seals were replaced.",
    "The operator signed the checklist on the third of May.",
]
PAGE_TWO = [
    "Second page: spare parts ordered from the central store.",
    "Delivery is expected within ten working days.",
]
MAX_CER = 0.05


def font(size: int = 36) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)  # Pillow searches the font folders
    except OSError:
        return ImageFont.load_default(size=size)


def render_page(lines: list[str], size: tuple[int, int] = (1400, 420)) -> Image.Image:
    """Black text on white, one line every 60 px: what a 150 dpi scan of a page looks like."""
    image = Image.new("L", size, 255)
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        draw.text((60, 50 + 60 * i), line, font=font(), fill=0)
    return image


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def scanned_pdf(*pages: list[str]) -> bytes:
    """An image-only PDF, one rendered page per entry (Pillow writes no text layer)."""
    images = [render_page(lines) for lines in pages]
    return encode(images[0], "PDF", resolution=150, save_all=True, append_images=images[1:])


def mixed_pdf(text: str, scanned: list[str]) -> bytes:
    """Page 1 with a text layer, page 2 a scan."""
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter()
    for data in (make_pdf([text]), scanned_pdf(scanned)):
        writer.append(PdfReader(io.BytesIO(data)))
    buf = io.BytesIO()
    writer.write(buf)
    return buf.getvalue()


def cer(reference: str, hypothesis: str) -> float:
    """Character error rate (forgeml.eval.media_scoring), whitespace runs counted as one
    space, case and punctuation kept."""
    ref, hyp = (" ".join(s.split()) for s in (reference, hypothesis))
    return character_error_rate(hyp, ref, normalize=False)


def read(name: str, data: bytes, **ocr) -> list:
    return list(read_parts(reader_for(Path(name)), data, ReadOptions(ocr=OcrConfig(**ocr))))


# ---------------------------------------------------------------------------------------
# Without Tesseract: parsing, the missing engine, bad images


def test_cer_and_tsv_parsing():
    assert cer("abc def", "abc  def") == 0.0
    assert cer("abcd", "abed") == 0.25
    header = "level\tpage_num\tblock_num\tpar_num\tline_num\tword_num\tl\tt\tw\th\tconf\ttext"
    rows = [
        "1\t1\t0\t0\t0\t0\t0\t0\t9\t9\t-1\t",
        "5\t1\t1\t1\t1\t1\t0\t0\t9\t9\t90.5\tOne",
        "5\t1\t1\t1\t1\t2\t0\t0\t9\t9\t80\ttwo",
        "5\t1\t1\t1\t2\t1\t0\t0\t9\t9\t70\tthree",
        "5\t1\t1\t1\t2\t2\t0\t0\t9\t9\t95\t ",  # an empty word is not a word
        "5\t1\t2\t1\t1\t1\t0\t0\t9\t9\t-1\tfour",
    ]
    text, confidences = parse_tsv("\n".join([header, *rows]))
    assert text == "One two\nthree\n\nfour"
    assert confidences == [90.5, 80.0, 70.0, 0.0]


def test_missing_tesseract_skips_scans_with_a_clear_reason(tmp_path, monkeypatch):
    monkeypatch.setattr(ocr_module, "tesseract_path", lambda: None)
    root = tmp_path / "docs"
    root.mkdir()
    (root / "notes.txt").write_text("plain notes about the pump station\n")
    (root / "page.png").write_bytes(encode(render_page(PAGE_ONE), "PNG"))
    (root / "scan.pdf").write_bytes(scanned_pdf(PAGE_ONE))
    (root / "mixed.pdf").write_bytes(mixed_pdf("Text layer page about valves", PAGE_TWO))
    with zipfile.ZipFile(root / "bundle.zip", "w") as bundle:  # a scan inside a container
        bundle.writestr("memo.txt", "a memo about the seals\n")
        bundle.writestr("fax.png", encode(render_page(PAGE_TWO), "PNG"))
    report = ingest_files([root], tmp_path / "out.parquet")
    status = {f["path"]: (f["status"], f["reason"], f["detail"]) for f in report.files}
    for name in ("page.png", "scan.pdf"):
        assert status[name][:2] == ("skipped", "ocr unavailable")
        assert "install tesseract-ocr" in status[name][2]
    assert status["mixed.pdf"][0] == "kept" and status["notes.txt"][0] == "kept"
    assert report.ocr["pages"] == 0 and report.ocr["pages_not_read"] == {"ocr unavailable": 1}
    assert report.parts_skipped_by_reason == {"ocr unavailable": 1}  # bundle.zip!/fax.png
    assert report.ocr["files_not_read"] == 3
    assert "install tesseract-ocr" in report.ocr["note"]
    assert report.summary().count("apt-get install tesseract-ocr") == 1  # said once
    rows = pq.read_table(tmp_path / "out.parquet").to_pylist()
    mixed = next(r for r in rows if r["path"] == "mixed.pdf")
    assert mixed["text"].startswith("Text layer page about valves")
    assert json.loads(mixed["metadata"])["ocr"]["not_read"][0]["page"] == 2


def test_corrupt_truncated_and_oversized_images_are_skipped_with_a_reason():
    png = encode(render_page(PAGE_ONE), "PNG")
    with pytest.raises(SkipDocument) as err:  # a bad header, found before any OCR
        read("page.png", b"\x89PNG\r\n\x1a\n" + bytes(64))
    assert err.value.reason == "corrupt"
    with pytest.raises(SkipDocument) as err:  # a bound, checked on the header alone
        read("page.png", png, max_image_pixels=10_000)
    assert err.value.reason == "too large"
    with pytest.raises(SkipDocument) as err:
        read("icon.png", encode(Image.new("L", (16, 16), 255), "PNG"))
    assert err.value.reason == "no text"


@needs_pdfium
def test_text_pdfs_and_blank_pages_are_not_ocrd(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("OCR must not run on a page with a text layer or a blank page")

    monkeypatch.setattr(ocr_module, "ocr_image", fail)
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter()
    pages = ["A page with a real text layer", "12"]  # a page number alone: no image, no OCR
    writer.append(PdfReader(io.BytesIO(make_pdf(pages))))
    writer.add_blank_page(612, 792)
    buf = io.BytesIO()
    writer.write(buf)
    [part] = read("doc.pdf", buf.getvalue())
    assert part.text.split("\f") == [*pages, ""] and part.metadata is None


# ---------------------------------------------------------------------------------------
# With Tesseract


@needs_tesseract
def test_page_image_words_come_back_with_confidence():
    [part] = read("page.png", encode(render_page(PAGE_ONE), "PNG"))
    assert reader_for(Path("page.png")).doc_type == "scan"
    assert cer("\n".join(PAGE_ONE), part.text) < MAX_CER, part.text
    [page] = part.metadata["ocr"]["pages"]
    assert page["page"] == 1 and page["words"] >= 25
    assert 80 <= page["confidence"] <= 100 and not page["low_confidence"]
    assert part.metadata["ocr"]["engine"].startswith("tesseract")
    png = encode(render_page(PAGE_ONE), "PNG")
    with pytest.raises(SkipDocument) as err:  # a good header, pixels cut off: found decoding
        read("page.png", png[: len(png) // 2])
    assert err.value.reason == "corrupt"


@needs_tesseract
def test_every_frame_of_a_multipage_tiff_and_the_page_limit():
    frames = [render_page(PAGE_ONE), render_page(PAGE_TWO)]
    tiff = encode(frames[0], "TIFF", save_all=True, append_images=frames[1:])
    [part] = read("pages.tif", tiff)
    one, two = part.text.split("\f")
    assert cer("\n".join(PAGE_ONE), one) < MAX_CER and cer("\n".join(PAGE_TWO), two) < MAX_CER
    assert [p["page"] for p in part.metadata["ocr"]["pages"]] == [1, 2]
    [limited] = read("pages.tif", tiff, max_pages=1)
    assert limited.text.split("\f") == [one, ""]  # pages keep their place; page 2 unread
    assert limited.metadata["ocr"]["not_read"] == [
        {"page": 2, "skip": "ocr page limit", "detail": "max_pages=1"}
    ]


@needs_tesseract
def test_low_confidence_pages_are_kept_and_flagged():
    png = encode(render_page(PAGE_TWO), "PNG")
    [strict] = read("page.png", png, min_confidence=99.99)
    [lenient] = read("page.png", png, min_confidence=10)
    assert strict.text == lenient.text and strict.text.strip()
    [flagged], [kept] = strict.metadata["ocr"]["pages"], lenient.metadata["ocr"]["pages"]
    assert flagged.pop("low_confidence") is True and kept.pop("low_confidence") is False
    assert flagged == kept  # the same words and confidence: a record is reproducible


@needs_tesseract
def test_an_image_with_a_word_or_two_is_not_a_page():
    with pytest.raises(SkipDocument) as err:  # a logo: one word, however confident
        read("logo.png", encode(render_page(["ACME"]), "PNG"))
    assert err.value.reason == "no text"
    assert err.value.detail.startswith("OCR found 1 word in the image")
    [part] = read("logo.png", encode(render_page(["ACME"]), "PNG"), min_image_words=1)
    assert part.text == "ACME"


@needs_tesseract
def test_a_page_past_its_timeout_is_reported_not_fatal():
    with pytest.raises(SkipDocument) as err:
        read("page.png", encode(render_page(PAGE_ONE), "PNG"), page_timeout_s=0.001)
    assert err.value.reason == "ocr timeout"


@needs_tesseract
@needs_pdfium
def test_scanned_and_mixed_pdfs_through_data_ingest(tmp_path):
    root = tmp_path / "docs"
    root.mkdir()
    (root / "scan.pdf").write_bytes(scanned_pdf(PAGE_ONE, PAGE_TWO))
    (root / "mixed.pdf").write_bytes(mixed_pdf("Text layer page about valves", PAGE_TWO))
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    ws = tmp_path / "ws"
    cli = [sys.executable, "-m", "forgeml.cli", "-w", str(ws)]
    subprocess.run([*cli, "init", str(ws)], check=True, capture_output=True, timeout=120)
    res = subprocess.run(
        [*cli, "-q", "data", "ingest", str(root), "--name", "scans"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert "2 kept, 1 skipped" in res.stdout and "OCR: 3 pages" in res.stdout
    [report_path] = (ws / "artifacts" / "dataset").glob("*/report.json")
    report = json.loads(report_path.read_text())
    status = {f["path"]: (f["status"], f["reason"]) for f in report["files"]}
    assert status["broken.png"] == ("skipped", "corrupt")
    ocr = report["ocr"]
    assert ocr["pages"] == 3 and ocr["low_confidence_pages"] == 0 and "note" not in ocr
    assert ocr["mean_confidence"] > 80
    pages = {d["path"]: [p["page"] for p in d["pages"]] for d in ocr["documents"]}
    assert pages == {"mixed.pdf": [2], "scan.pdf": [1, 2]}  # page 1 of mixed.pdf has text
    rows = {r["path"]: r for r in pq.read_table(report_path.parent / "data.parquet").to_pylist()}
    scan_one, scan_two = rows["scan.pdf"]["text"].split("\f")
    assert cer("\n".join(PAGE_ONE), scan_one) < MAX_CER
    assert cer("\n".join(PAGE_TWO), scan_two) < MAX_CER
    text_page, ocr_page = rows["mixed.pdf"]["text"].split("\f")
    assert text_page == "Text layer page about valves"
    assert cer("\n".join(PAGE_TWO), ocr_page) < MAX_CER
    meta = json.loads(rows["mixed.pdf"]["metadata"])["ocr"]
    assert [p["page"] for p in meta["pages"]] == [2] and meta["pages"][0]["confidence"] > 80
