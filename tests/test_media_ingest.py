"""Images and audio at ingest, on media the tests make with PIL, numpy and soundfile: every
format decodes and is measured, corrupt media is skipped with a reason, metadata (GPS, author)
is gone from what is stored while pixels and samples are not touched, media pair with their
captions and transcripts, exact and perceptual duplicates are marked, and a re-run writes the
same bytes. Text outputs of text inputs stay exactly what they were without media.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageDraw, PngImagePlugin
from test_ocr import PAGE_ONE, needs_pdfium, needs_tesseract, render_page, scanned_pdf

from forgeml.core.data_config import MediaConfig, MediaDedupConfig
from forgeml.data.ingest import ingest_files
from forgeml.data.media_curate import near_duplicate_pairs
from forgeml.data.media_ingest import image_references, transcript_text
from forgeml.data.readers.media import audio_decoders
from forgeml.data.readers.media_strip import strip_jpeg

sf = pytest.importorskip("soundfile", reason="soundfile (forgeml[multimodal]) is not installed")
needs_imagehash = pytest.mark.skipif(
    importlib.util.find_spec("imagehash") is None,
    reason="imagehash (forgeml[multimodal]) is not installed (CI installs it)",
)
GPS_IFD, ARTIST, ORIENTATION = 0x8825, 0x013B, 0x0112


def picture(seed: int, size: tuple[int, int] = (160, 120)) -> Image.Image:
    """A photo-like RGB picture: a gradient and a few shapes placed by `seed`."""
    rng = random.Random(seed)
    x = np.linspace(0, 255, size[0], dtype=np.float32)
    y = np.linspace(0, 255, size[1], dtype=np.float32)[:, None]
    base = np.stack([x + 0 * y, y + 0 * x, (x + y) / 2], axis=-1).astype(np.uint8)
    image = Image.fromarray(base)
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x0, y0 = rng.randrange(size[0] - 30), rng.randrange(size[1] - 30)
        box = (x0, y0, x0 + rng.randrange(15, 60), y0 + rng.randrange(15, 60))
        colour = tuple(rng.randrange(256) for _ in range(3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    return image


def tone(seconds: float = 0.5, rate: int = 16000, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (np.sin(2 * np.pi * freq * t) * 9000).astype(np.int16)


def exif_with_gps() -> bytes:
    exif = Image.Exif()
    exif[ARTIST] = "Jane Doe"
    exif[ORIENTATION] = 6
    exif.get_ifd(GPS_IFD).update({1: "N", 2: (48.0, 51.0, 24.0), 3: "E", 4: (2.0, 21.0, 7.0)})
    return exif.tobytes()


def png_with_author(image: Image.Image) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "Jane Doe")
    info.add_itxt("Comment", "taken at home, 12 Rue de Rivoli")
    buf = io.BytesIO()
    image.save(buf, "PNG", pnginfo=info)
    return buf.getvalue()


def ingest(root: Path, out: Path, **media) -> tuple:
    report = ingest_files([root], out / "data.parquet", media=MediaConfig(**media))
    table = out / "media.parquet"
    rows = pq.read_table(table).to_pylist() if table.exists() else []
    return report, rows


def by_name(rows: list[dict]) -> dict[str, dict]:
    return {r["path"] + (f"#{r['locator']}" if r["locator"] else ""): r for r in rows}


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# ---------------------------------------------------------------------------------------
# Readers


def test_every_format_is_decoded_and_measured(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    photo = picture(1)
    photo.save(root / "a.png")
    photo.save(root / "b.jpg", quality=90)
    photo.convert("L").save(root / "c.bmp")
    photo.save(root / "d.webp", lossless=True)
    pages = [picture(s, (90, 70)) for s in (2, 3, 4)]
    pages[0].save(root / "e.tif", save_all=True, append_images=pages[1:], compression="tiff_lzw")
    sf.write(root / "f.wav", tone(0.5), 16000)
    sf.write(root / "g.flac", np.stack([tone(0.25), tone(0.25, freq=220)], axis=1), 16000)
    sf.write(root / "h.ogg", tone(0.75, rate=22050).astype(np.float32) / 32768, 22050)
    if audio_decoders().get("mp3"):
        sf.write(root / "i.mp3", tone(1.0).astype(np.float32) / 32768, 16000)
    report, rows = ingest(root, tmp_path / "out", dedup=MediaDedupConfig(exact=False, near=False))
    media = by_name(rows)
    assert (media["a.png"]["width"], media["a.png"]["height"], media["a.png"]["mode"]) == (
        160,
        120,
        "RGB",
    )
    assert media["b.jpg"]["format"] == "jpeg" and media["c.bmp"]["mode"] == "L"
    assert media["d.webp"]["format"] == "webp" and media["d.webp"]["width"] == 160
    assert [media[f"e.tif#page {n}"]["format"] for n in (1, 2, 3)] == ["png"] * 3
    assert media["e.tif#page 2"]["width"] == 90 and media["e.tif#page 2"]["converted"]
    wav, flac, ogg = media["f.wav"], media["g.flac"], media["h.ogg"]
    assert (wav["sample_rate"], wav["channels"], wav["duration_s"]) == (16000, 1, 0.5)
    assert (flac["channels"], flac["frames"], flac["duration_s"]) == (2, 4000, 0.25)
    assert ogg["sample_rate"] == 22050 and abs(ogg["duration_s"] - 0.75) < 0.01
    assert ogg["format"] == "flac" and ogg["converted"] == "ogg as flac"  # tags cannot be cut
    if "i.mp3" in media:
        assert media["i.mp3"]["format"] == "mp3" and abs(media["i.mp3"]["duration_s"] - 1) < 0.1
    for row in rows:  # every stored file is where the table says, named by its hash
        stored = (tmp_path / "out" / row["file"]).read_bytes()
        assert hashlib.sha256(stored).hexdigest() == row["sha256"] == Path(row["file"]).stem
        assert row["file"].startswith(f"media/{row['sha256'][:2]}/") and row["bytes"] == len(stored)
    assert report.kept == report.found == len(list(root.iterdir()))
    assert report.media["images"] == 7 and report.media["audio"] == len(rows) - 7


def test_corrupt_and_oversized_media_are_skipped_with_a_reason(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    good = png_with_author(picture(5))
    (root / "truncated.png").write_bytes(good[: len(good) // 2])
    jpeg = io.BytesIO()
    picture(6).save(jpeg, "JPEG")
    (root / "truncated.jpg").write_bytes(jpeg.getvalue()[:700])
    (root / "noise.wav").write_bytes(random.Random(0).randbytes(5000))
    (root / "noise.flac").write_bytes(b"fLaC" + random.Random(1).randbytes(3000))
    wav = io.BytesIO()
    sf.write(wav, tone(1.0), 16000, format="WAV")
    (root / "cut.wav").write_bytes(wav.getvalue()[:9000])
    (root / "big.png").write_bytes(good)
    sf.write(root / "long.wav", tone(3.0), 16000)
    (root / "ok.wav").write_bytes(wav.getvalue())
    (root / "notes.txt").write_text("plain text beside the media\n")
    report, rows = ingest(
        root, tmp_path / "out", max_image_pixels=10_000, max_audio_seconds=2.0, audio=True
    )
    status = {f["path"]: (f["status"], f["reason"]) for f in report.files}
    for name in ("truncated.png", "truncated.jpg", "noise.wav", "noise.flac", "cut.wav"):
        assert status[name] == ("skipped", "corrupt"), name
    assert status["big.png"] == ("skipped", "too large")
    assert status["long.wav"] == ("skipped", "too long")
    assert status["ok.wav"] == status["notes.txt"] == ("kept", "")
    assert [r["path"] for r in rows] == ["ok.wav"]
    # every input accounted for, in the report's totals and in its media section
    assert report.found == len(list(root.iterdir())) == report.kept + report.skipped
    assert sum(report.media["skipped_by_reason"].values()) == 7


def test_hostile_media_is_skipped_not_crashing_the_ingest(tmp_path):
    """A header claiming 50000x50000 pixels, NaN samples and an absurd sample rate are
    skipped with their reasons; the ingest goes on (found by fuzzing the serving decoder)."""
    from test_serve_media_fuzz import png_claiming

    root = tmp_path / "src"
    root.mkdir()
    (root / "bomb.png").write_bytes(png_claiming(50_000, 50_000))
    samples = tone(0.5).astype(np.float32)
    samples[100] = np.nan
    sf.write(root / "nan.wav", samples, 16000, subtype="FLOAT")
    sf.write(root / "odd_rate.wav", tone(0.5, rate=500), 500)
    sf.write(root / "ok.wav", tone(0.5), 16000)
    report, rows = ingest(root, tmp_path / "out", audio=True)
    status = {f["path"]: (f["status"], f["reason"]) for f in report.files}
    assert status["bomb.png"] == ("skipped", "too large")
    assert status["nan.wav"] == ("skipped", "corrupt")
    assert status["odd_rate.wav"] == ("skipped", "unsupported rate")
    assert [r["path"] for r in rows] == ["ok.wav"]


# ---------------------------------------------------------------------------------------
# Metadata


def test_gps_exif_and_png_author_are_stripped_pixels_untouched(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    photo = picture(7)
    photo.save(root / "gps.jpg", quality=92, exif=exif_with_gps())
    (root / "author.png").write_bytes(png_with_author(photo))
    original = Image.open(root / "gps.jpg")
    assert GPS_IFD in original.getexif() and original.getexif()[ARTIST] == "Jane Doe"
    _, rows = ingest(root, tmp_path / "out")
    media = by_name(rows)
    jpg_bytes = (tmp_path / "out" / media["gps.jpg"]["file"]).read_bytes()
    png_bytes = (tmp_path / "out" / media["author.png"]["file"]).read_bytes()
    for stored in (jpg_bytes, png_bytes):
        assert b"Jane Doe" not in stored and b"Rivoli" not in stored
    jpg = Image.open(io.BytesIO(jpg_bytes))
    assert dict(jpg.getexif()) == {ORIENTATION: 6}  # only how to show it upright survives
    assert np.array_equal(np.asarray(jpg), np.asarray(original))
    # not re-encoded: the entropy-coded scan is byte for byte the original's
    scan = jpg_bytes.index(b"\xff\xda")
    assert (root / "gps.jpg").read_bytes().endswith(jpg_bytes[scan:])
    png = Image.open(io.BytesIO(png_bytes))
    assert png.text == {} and "exif" not in png.info
    assert np.array_equal(np.asarray(png), np.asarray(photo))
    assert media["gps.jpg"]["metadata_removed"] == ["exif"]
    assert media["author.png"]["metadata_removed"] == ["png iTXt", "png tEXt"]


def test_audio_tags_are_dropped_samples_untouched(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    samples = tone(0.5)
    with sf.SoundFile(root / "tagged.flac", "w", 16000, 1, format="FLAC") as fh:
        fh.artist = "Jane Doe"
        fh.title = "call with the bank"
        fh.write(samples)
    with sf.SoundFile(root / "tagged.wav", "w", 16000, 1, format="WAV") as fh:
        fh.artist = "Jane Doe"
        fh.write(samples)
    assert b"Jane Doe" in (root / "tagged.wav").read_bytes()
    _, rows = ingest(root, tmp_path / "out", dedup=MediaDedupConfig(exact=False))
    for row in rows:
        stored = (tmp_path / "out" / row["file"]).read_bytes()
        assert b"Jane Doe" not in stored and b"bank" not in stored
        assert sf.info(io.BytesIO(stored)).format == row["format"].upper()
        decoded, _ = sf.read(io.BytesIO(stored), dtype="int16")
        assert np.array_equal(decoded, samples)
    assert {r["path"]: r["metadata_removed"] for r in rows} == {
        "tagged.flac": ["vorbis comment"],
        "tagged.wav": ["list"],
    }


def test_jpeg_stripping_keeps_icc_and_cuts_appended_images():
    buf = io.BytesIO()
    picture(8).save(buf, "JPEG", icc_profile=b"\x00" * 128, exif=exif_with_gps())
    data = buf.getvalue() + b"\xff\xd8 an appended preview image"
    stripped, removed = strip_jpeg(data, orientation=None)
    image = Image.open(io.BytesIO(stripped))
    assert image.info.get("icc_profile") == b"\x00" * 128 and not image.getexif()
    assert removed == ["data after end of image", "exif"] and stripped.endswith(b"\xff\xd9")


# ---------------------------------------------------------------------------------------
# Pairs


def test_captions_transcripts_and_alt_text_are_paired(tmp_path):
    root = tmp_path / "src"
    (root / "docs").mkdir(parents=True)
    picture(9).save(root / "pump.png")
    (root / "pump.caption.txt").write_text("A pump on a test bench.\n")
    picture(10).save(root / "docs" / "valve.jpg")
    (root / "docs" / "valve.txt").write_text("A gate valve, half open.\n")
    guide = "# Guide\n\n![the valve, closed](valve.jpg)\n\nThen the pump:\n\n![](../pump.png)\n"
    (root / "docs" / "guide.md").write_text(guide)
    (root / "docs" / "page.html").write_text('<p>See <img src="../pump.png" alt="bench pump"></p>')
    sf.write(root / "call.wav", tone(0.5), 16000)
    (root / "call.srt").write_text(
        "1\n00:00:00,000 --> 00:00:01,200\nClose valve four.\n\n"
        "2\n00:00:01,300 --> 00:00:02,000\nThen <i>report</i> back.\n"
    )
    sf.write(root / "memo.flac", tone(0.5, freq=300), 16000)
    (root / "memo.vtt").write_text("WEBVTT\n\n00:00.000 --> 00:01.000\nMemo for the crew.\n")
    report, rows = ingest(root, tmp_path / "out")
    docs = {
        r["path"]: r["doc_id"] for r in pq.read_table(tmp_path / "out" / "data.parquet").to_pylist()
    }
    pairs = {r["path"]: [(p["kind"], p["path"], p["text"]) for p in r["pairs"]] for r in rows}
    assert pairs["pump.png"] == [
        ("caption", "pump.caption.txt", "A pump on a test bench."),
        ("in_document", "docs/guide.md", ""),
        ("alt_text", "docs/page.html", "bench pump"),
    ]
    assert pairs["docs/valve.jpg"] == [
        ("caption", "docs/valve.txt", "A gate valve, half open."),
        ("alt_text", "docs/guide.md", "the valve, closed"),
    ]
    assert pairs["call.wav"] == [("transcript", "call.srt", "Close valve four.\nThen report back.")]
    assert pairs["memo.flac"] == [("transcript", "memo.vtt", "Memo for the crew.")]
    for row in rows:  # linked by id to the text records ingest wrote
        assert all(p["doc_id"] == docs[p["path"]] for p in row["pairs"])
    assert report.media["pairs"] == {
        "alt_text": 2,
        "caption": 2,
        "in_document": 1,
        "transcript": 2,
    }
    # interleaving a Markdown record: each image's offset points at its reference
    offsets = {
        r["path"]: p["offset"] for r in rows for p in r["pairs"] if p["path"] == "docs/guide.md"
    }
    assert guide[offsets["docs/valve.jpg"] :].startswith("![the valve, closed](valve.jpg)")
    assert guide[offsets["pump.png"] :].startswith("![](../pump.png)")
    assert all(
        p["offset"] is None for r in rows for p in r["pairs"] if p["path"] != "docs/guide.md"
    )


@needs_tesseract
@needs_pdfium
def test_page_images_and_scanned_pdf_pages_pair_with_their_ocr(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    render_page(PAGE_ONE).save(root / "page.png")
    (root / "scan.pdf").write_bytes(scanned_pdf(PAGE_ONE, ["Second page of the scan."]))
    _, rows = ingest(root, tmp_path / "out", dedup=MediaDedupConfig(near=False))
    docs = {r["path"]: r for r in pq.read_table(tmp_path / "out" / "data.parquet").to_pylist()}
    media = by_name(rows)
    assert set(media) == {"page.png", "scan.pdf#page 1", "scan.pdf#page 2"}
    [pair] = media["page.png"]["pairs"]
    assert pair["kind"] == "transcription" and pair["doc_id"] == docs["page.png"]["doc_id"]
    assert pair["text"] == docs["page.png"]["text"] and "pump station" in pair["text"]
    for number in (1, 2):
        page = media[f"scan.pdf#page {number}"]
        [pair] = page["pairs"]
        assert pair["doc_id"] == docs["scan.pdf"]["doc_id"]
        assert pair["text"] == docs["scan.pdf"]["text"].split("\f")[number - 1]
        assert page["format"] == "png" and page["mode"] == "L" and page["width"] > 0
    assert "Second page" in media["scan.pdf#page 2"]["pairs"][0]["text"]


def test_transcript_and_image_reference_parsing():
    assert transcript_text("just words\n") == "just words"
    vtt = "WEBVTT\n\nNOTE a remark\n\n1\n00:01.000 --> 00:02.000 align:start\nHello there\n"
    assert transcript_text(vtt) == "Hello there"
    html = '<img alt=\'a dam\' src="dam.png"><img src=x.png>![lake](img/lake.webp "t")'
    assert image_references(html) == [("dam.png", "a dam", 0), ("img/lake.webp", "lake", 46)]


# ---------------------------------------------------------------------------------------
# Dedup


@needs_imagehash
def test_exact_and_perceptual_duplicates_are_marked(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    original = picture(11, (320, 240))
    original.save(root / "a_original.png")
    original.save(root / "b_same_pixels.bmp")  # another file, the same pixels
    original.resize((200, 150), Image.LANCZOS).save(root / "c_resized.jpg", quality=70)
    original.save(root / "d_reencoded.webp", quality=60)
    picture(12, (320, 240)).save(root / "e_different.png")
    picture(13, (320, 240)).save(root / "f_different.jpg")
    sf.write(root / "g_tone.wav", tone(0.5), 16000)
    sf.write(root / "h_tone.flac", tone(0.5), 16000)  # same samples, other container
    sf.write(root / "i_other.wav", tone(0.5, freq=660), 16000)
    report, rows = ingest(root, tmp_path / "out")
    media = by_name(rows)
    kept_id = media["a_original.png"]["media_id"]
    assert media["b_same_pixels.bmp"]["duplicate_of"] == kept_id
    assert media["b_same_pixels.bmp"]["duplicate_kind"] == "exact"
    for name in ("c_resized.jpg", "d_reencoded.webp"):
        assert media[name]["duplicate_of"] == kept_id and media[name]["duplicate_kind"] == "near"
        assert media[name]["duplicate_distance"] <= 6
    assert media["h_tone.flac"]["duplicate_of"] == media["g_tone.wav"]["media_id"]
    for name in (
        "a_original.png",
        "e_different.png",
        "f_different.jpg",
        "g_tone.wav",
        "i_other.wav",
    ):
        assert media[name]["duplicate_of"] is None, name
    dedup = report.media["dedup"]
    assert (dedup["exact_duplicates"], dedup["near_duplicates"], dedup["kept"]) == (2, 2, 5)
    reasons = {d["item"]: d["reason"] for d in dedup["dropped"]}
    assert reasons["b_same_pixels.bmp"] == "exact" and reasons["c_resized.jpg"].startswith("near")
    # a strict threshold keeps the lossy copies apart
    _, strict = ingest(root, tmp_path / "strict", dedup=MediaDedupConfig(max_hamming=0))
    near = [r for r in strict if r["duplicate_kind"] == "near"]
    assert all(r["duplicate_distance"] == 0 for r in near)


def test_banded_candidates_find_every_close_pair():
    rng = random.Random(3)
    hashes = [rng.getrandbits(64) for _ in range(60)]
    hashes += [h ^ (1 << rng.randrange(64)) ^ (1 << rng.randrange(64)) for h in hashes[:20]]
    for limit in (0, 2, 6, 12):
        brute = [
            (i, j)
            for i in range(len(hashes))
            for j in range(i + 1, len(hashes))
            if (hashes[i] ^ hashes[j]).bit_count() <= limit
        ]
        assert near_duplicate_pairs(hashes, 64, limit) == brute
    assert len(near_duplicate_pairs(hashes, 64, 2)) >= 20


# ---------------------------------------------------------------------------------------
# The run as a whole


def test_rerun_is_deterministic_and_text_outputs_are_unchanged(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    (root / "notes.md").write_text("# Notes\n\nThe pump station is inspected monthly.\n")
    (root / "data.jsonl").write_text('{"text": "a record about valves"}\n')
    text_only = ingest_files([root], tmp_path / "plain" / "data.parquet")
    with_media = ingest_files([root], tmp_path / "media0" / "data.parquet", media=MediaConfig())
    assert tree_digest(tmp_path / "plain") == tree_digest(tmp_path / "media0")
    assert "media" not in with_media.to_dict()
    plain, mixed = text_only.to_dict(), with_media.to_dict()
    assert {k: v for k, v in plain.items() if k != "out_path"} == {
        k: v for k, v in mixed.items() if k != "out_path"
    }
    picture(14).save(root / "photo.jpg", exif=exif_with_gps())
    (root / "photo.txt").write_text("caption of the photo\n")
    sf.write(root / "call.wav", tone(0.3), 16000)
    first = ingest_files([root], tmp_path / "run1" / "data.parquet", media=MediaConfig())
    second = ingest_files([root], tmp_path / "run2" / "data.parquet", media=MediaConfig())
    assert tree_digest(tmp_path / "run1") == tree_digest(tmp_path / "run2")
    assert json.dumps(first.media, sort_keys=True) == json.dumps(second.media, sort_keys=True)
    rows = pq.read_table(tmp_path / "run1" / "data.parquet").to_pylist()
    plain_rows = pq.read_table(tmp_path / "plain" / "data.parquet").to_pylist()
    assert [r for r in rows if r["path"] in ("notes.md", "data.jsonl")] == plain_rows


def test_media_disabled_leaves_audio_skipped_as_before(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    sf.write(root / "call.wav", tone(0.3), 16000)
    (root / "notes.txt").write_text("notes\n")
    report, rows = ingest(root, tmp_path / "out", enabled=False)
    assert rows == [] and not (tmp_path / "out" / "media").exists()
    assert {f["path"]: f["reason"] for f in report.files}["call.wav"] == "binary"


def test_media_only_sources_give_an_empty_text_table(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    sf.write(root / "call.wav", tone(0.3), 16000)
    report, rows = ingest(root, tmp_path / "out")
    assert report.kept == 1 and report.documents == 0 and len(rows) == 1
    assert pq.read_table(tmp_path / "out" / "data.parquet").num_rows == 0


def test_cli_data_ingest_reports_media(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    picture(15).save(root / "photo.png")
    (root / "photo.txt").write_text("a photo of the yard\n")
    sf.write(root / "call.wav", tone(0.5), 16000)
    (root / "broken.wav").write_bytes(b"RIFF" + bytes(20))
    ws = tmp_path / "ws"
    cli = [sys.executable, "-m", "forgeml.cli", "-w", str(ws)]
    subprocess.run([*cli, "init", str(ws)], check=True, capture_output=True, timeout=120)
    res = subprocess.run(
        [*cli, "-q", "data", "ingest", str(root), "--name", "mm"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert res.returncode == 0, res.stderr
    assert "3 kept, 1 skipped" in res.stdout
    assert "media: 1 images, 1 recordings (0.5 s)" in res.stdout
    assert "pairs: 1 caption" in res.stdout and "media not stored 1: corrupt" in res.stdout
    [asset] = (ws / "artifacts" / "dataset").glob("*/media.parquet")
    assert pq.read_table(asset).num_rows == 2


@needs_imagehash
def test_look_alike_images_with_different_texts_are_both_kept(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    form = picture(16, (320, 240))
    filled = form.copy()
    ImageDraw.Draw(filled).rectangle((150, 100, 156, 106), fill=(0, 0, 0))  # a box ticked
    form.save(root / "form_a.png")
    filled.save(root / "form_b.png")
    _, rows = ingest(root, tmp_path / "plain")
    assert by_name(rows)["form_b.png"]["duplicate_kind"] == "near"  # pHash alone: alike
    (root / "form_a.txt").write_text("Inspection form, box 7 empty.\n")
    (root / "form_b.txt").write_text("Inspection form, box 7 ticked.\n")
    _, rows = ingest(root, tmp_path / "captioned")
    assert [r["duplicate_of"] for r in rows] == [None, None]
    off = MediaDedupConfig(keep_different_text=False)
    _, rows = ingest(root, tmp_path / "off", dedup=off)
    assert by_name(rows)["form_b.png"]["duplicate_kind"] == "near"


def test_dataset_stats_count_the_media(tmp_path):
    from forgeml.data.report import dataset_stats

    root = tmp_path / "src"
    root.mkdir()
    picture(17).save(root / "a.png")
    picture(17).save(root / "b.bmp")
    (root / "a.txt").write_text("a caption\n")
    sf.write(root / "c.wav", tone(0.5), 16000)
    ingest(root, tmp_path / "out")
    media = dataset_stats(tmp_path / "out")["media"]
    assert media["by_kind"] == {"image": 2, "audio": 1} and media["audio_seconds"] == 0.5
    assert media["duplicates"] == {"exact": 1} and media["pairs"] == {"caption": 1}


def test_sixteen_bit_and_palette_images_keep_their_pixels(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    deep = np.arange(96 * 64, dtype=np.uint16).reshape(64, 96) * 10
    Image.fromarray(deep).save(root / "depth.png")
    picture(18).convert("P", palette=Image.ADAPTIVE).save(root / "palette.png", transparency=0)
    _, rows = ingest(root, tmp_path / "out")
    media = by_name(rows)
    stored = Image.open(tmp_path / "out" / media["depth.png"]["file"])
    assert stored.mode.startswith("I") and np.array_equal(np.asarray(stored), deep)
    if media["depth.png"]["phash"]:  # scaled to 8 bits for pHash, not clipped to white
        import imagehash

        scaled = Image.fromarray((deep * (255 / deep.max())).astype(np.uint8))
        expected = imagehash.phash(scaled)
        assert expected - imagehash.hex_to_hash(media["depth.png"]["phash"]) <= 2
    palette = Image.open(tmp_path / "out" / media["palette.png"]["file"])
    original = Image.open(root / "palette.png")
    assert palette.mode == "P" and palette.info.get("transparency") == 0
    assert np.array_equal(np.asarray(palette.convert("RGBA")), np.asarray(original.convert("RGBA")))


def id3v2(text: bytes) -> bytes:
    """A minimal ID3v2.3 tag with one TPE1 (artist) frame."""
    frame = b"TPE1" + (len(text) + 1).to_bytes(4, "big") + b"\x00\x00" + b"\x00" + text
    size = len(frame)
    syncsafe = bytes([(size >> 21) & 0x7F, (size >> 14) & 0x7F, (size >> 7) & 0x7F, size & 0x7F])
    return b"ID3\x03\x00\x00" + syncsafe + frame


def test_webp_exif_xmp_and_mp3_id3_tags_are_cut(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    photo = picture(19)
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><dc:creator>Jane Doe</dc:creator></x:xmpmeta>'
    photo.save(root / "tagged.webp", lossless=True, exif=exif_with_gps(), xmp=xmp)
    assert b"Jane Doe" in (root / "tagged.webp").read_bytes()
    if audio_decoders().get("mp3"):
        mp3 = io.BytesIO()
        sf.write(mp3, tone(1.0).astype(np.float32) / 32768, 16000, format="MP3")
        trailer = b"TAG" + b"call with the bank".ljust(30, b"\x00") + bytes(95)
        (root / "call.mp3").write_bytes(id3v2(b"Jane Doe") + mp3.getvalue() + trailer)
    _, rows = ingest(root, tmp_path / "out")
    media = by_name(rows)
    webp_bytes = (tmp_path / "out" / media["tagged.webp"]["file"]).read_bytes()
    assert b"Jane Doe" not in webp_bytes and b"Exif" not in webp_bytes
    webp = Image.open(io.BytesIO(webp_bytes))
    assert "exif" not in webp.info and "xmp" not in webp.info
    assert np.array_equal(np.asarray(webp), np.asarray(photo))
    assert media["tagged.webp"]["metadata_removed"] == ["exif", "xmp"]
    if "call.mp3" in media:
        stored = (tmp_path / "out" / media["call.mp3"]["file"]).read_bytes()
        assert b"Jane Doe" not in stored and b"bank" not in stored
        assert stored == mp3.getvalue()  # the audio frames themselves, untouched
        assert media["call.mp3"]["metadata_removed"] == ["id3v2", "id3v1"]


def test_without_imagehash_near_dedup_is_off_and_said(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "imagehash", None)  # import fails as if not installed
    root = tmp_path / "src"
    root.mkdir()
    picture(20).save(root / "a.png")
    picture(20).save(root / "b.bmp")
    report, rows = ingest(root, tmp_path / "out")
    assert [r["phash"] for r in rows] == [None, None]
    assert by_name(rows)["b.bmp"]["duplicate_kind"] == "exact"  # exact dedup still runs
    assert "install imagehash" in report.media["dedup"]["note"]


def test_recordings_over_the_text_size_limit_are_still_stored(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    sf.write(root / "long_call.wav", tone(2.0), 16000)  # 64 KB
    (root / "notes.txt").write_text("notes\n")
    size = (root / "long_call.wav").stat().st_size
    out = tmp_path / "out"
    report = ingest_files(
        [root], out / "data.parquet", max_file_bytes=10_000, media=MediaConfig(max_file_bytes=size)
    )
    assert {f["path"]: f["status"] for f in report.files}["long_call.wav"] == "kept"
    assert report.media["audio"] == 1 and report.bytes_kept == size + len("notes\n")
    smaller = MediaConfig(max_file_bytes=size - 1)
    report = ingest_files(
        [root], tmp_path / "out2" / "data.parquet", max_file_bytes=10_000, media=smaller
    )
    assert {f["path"]: f["reason"] for f in report.files}["long_call.wav"] == "too large"
