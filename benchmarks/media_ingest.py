"""Media ingest cost on generated media: `ingest_files` over photo-like images and WAV
recordings with `data.media` on vs off (the text side alone, OCR off), and pHash near-duplicate
candidates by banding (`near_duplicate_pairs`) vs all pairs compared in numpy.

    .venv/bin/python benchmarks/media_ingest.py [--images 200] [--audio 50] [--hashes 20000]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

from forgeml.core.data_config import MediaConfig, OcrConfig
from forgeml.data.ingest import ingest_files
from forgeml.data.media_curate import near_duplicate_pairs


def picture(seed: int, size: tuple[int, int] = (640, 480)) -> Image.Image:
    """A photo-like RGB picture: a colour gradient with six flat blocks placed by `seed`."""
    rng = np.random.default_rng(seed)
    width, height = size
    rows, cols = np.mgrid[0:height, 0:width]
    diagonal = (rows + cols) * 255 // (width + height)
    pixels = np.stack([cols * 255 // width, rows * 255 // height, diagonal], axis=-1)
    pixels = pixels.astype(np.uint8)
    for _ in range(6):
        left, top = rng.integers(0, width - 60), rng.integers(0, height - 60)
        block_w, block_h = rng.integers(15, 60, size=2)
        pixels[top : top + block_h, left : left + block_w] = rng.integers(0, 256, size=3)
    return Image.fromarray(pixels)


def tone(seconds: float, rate: int = 16000, freq: float = 440.0) -> np.ndarray:
    """A 16-bit sine wave of `seconds` at `rate` Hz."""
    t = np.arange(int(seconds * rate)) / rate
    return (np.sin(2 * np.pi * freq * t) * 9000).astype(np.int16)


def write_recording(path: Path, i: int, seconds: float) -> None:
    """Recording `i`: a `seconds`-long 16 kHz PCM WAV whose pitch depends on `i`."""
    sf.write(path, tone(seconds, freq=200 + 10 * i), 16000, subtype="PCM_16")


def make_media(root: Path, images: int, audio: int, seconds: float) -> None:
    """`images` pictures (odd ones JPEG, even ones PNG), `audio` recordings and one note."""
    root.mkdir(parents=True)
    (root / "notes.txt").write_text("a note\n")
    for i in range(images):
        image = picture(i)
        if i % 2:
            image.save(root / f"p{i:03d}.jpg", quality=85)
        else:
            image.save(root / f"p{i:03d}.png")
    for i in range(audio):
        write_recording(root / f"a{i:03d}.wav", i, seconds)


def timed_ingest(root: Path, out: Path, media: MediaConfig | None) -> tuple[float, dict]:
    start = time.perf_counter()
    report = ingest_files([root], out / "data.parquet", ocr=OcrConfig(enabled=False), media=media)
    return time.perf_counter() - start, report.media


def all_pairs(hashes: list[int], max_hamming: int) -> int:
    """Number of hash pairs within `max_hamming` bits, every pair compared (numpy, row by row)."""
    arr = np.array(hashes, dtype=np.uint64)
    found = 0
    for i in range(len(arr)):
        bits = np.unpackbits((arr[i] ^ arr[i + 1 :]).view(np.uint8)).reshape(-1, 64).sum(1)
        found += int((bits <= max_hamming).sum())
    return found


def random_hashes(n: int, max_hamming: int, seed: int = 0) -> list[int]:
    """`n` random 64-bit hashes, one in 20 a copy of an earlier one with a few bits flipped
    (so there are near-duplicate pairs to find)."""
    rng = random.Random(seed)
    hashes: list[int] = []
    for i in range(n):
        if i and i % 20 == 0:
            flips = rng.sample(range(64), rng.randint(1, max_hamming))
            hashes.append(rng.choice(hashes) ^ sum(1 << bit for bit in flips))
        else:
            hashes.append(rng.getrandbits(64))
    return hashes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200, help="640x480 pictures, half JPEG")
    ap.add_argument("--audio", type=int, default=50, help="16 kHz WAV recordings")
    ap.add_argument("--seconds", type=float, default=5.0, help="length of each recording")
    ap.add_argument("--hashes", type=int, default=20000, help="64-bit pHashes, 5%% near copies")
    ap.add_argument("--max-hamming", type=int, default=6)
    ap.add_argument("--out", type=Path, help="working folder (default: a temporary one)")
    args = ap.parse_args()

    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.out) as tmp:
        root = Path(tmp) / "src"
        make_media(root, args.images, args.audio, args.seconds)
        text_only, _ = timed_ingest(root, Path(tmp) / "off", None)
        with_media, counts = timed_ingest(root, Path(tmp) / "on", MediaConfig())

    hashes = random_hashes(args.hashes, args.max_hamming)
    start = time.perf_counter()
    banded = len(near_duplicate_pairs(hashes, 64, args.max_hamming))
    t_banded = time.perf_counter() - start
    start = time.perf_counter()
    brute = all_pairs(hashes, args.max_hamming)
    t_brute = time.perf_counter() - start
    assert banded == brute, f"banding found {banded} pairs, all pairs {brute}"

    media_files = args.images + args.audio
    dedup = counts.get("dedup", {})
    rate = media_files / max(with_media - text_only, 1e-9)
    print(
        f"\n{args.images} images 640x480 + {args.audio} x {args.seconds:g} s WAV; "
        f"stored {counts.get('images')} images, {counts.get('audio')} recordings; "
        f"duplicates marked: {dedup.get('exact_duplicates')} exact, "
        f"{dedup.get('near_duplicates')} near"
    )
    print("\n| what | time (s) | note |")
    print("|---|---|---|")
    print(f"| ingest, text only (media off) | {text_only:.2f} | media files skipped |")
    print(f"| ingest, media on | {with_media:.2f} | {rate:.0f} media files/s over text only |")
    print(
        f"| pHash candidates, {args.hashes} hashes, banded | {t_banded:.2f} | "
        f"{banded} pairs (max_hamming {args.max_hamming}) |"
    )
    print(
        f"| same, all pairs in numpy | {t_brute:.2f} | {brute} pairs, "
        f"{t_brute / max(t_banded, 1e-9):.1f}x the banded time |"
    )


if __name__ == "__main__":
    main()
