"""ACME multimodal demo data, made here and seeded: damaged form pages rendered with PIL (for
page transcription), box-and-arrow plant diagrams with questions (image QA), and spoken
procedures synthesised with espeak-ng at several voices and speeds (speech transcription).

Each part is a folder with train.jsonl and heldout.jsonl of multimodal SFT records
{"image" | "audio": file, "prompt", "answer"}; the texts come from acme_common's names.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from acme_common import DEPARTMENTS, SITES, SYSTEMS, person
from PIL import Image, ImageDraw, ImageFilter, ImageFont

PAGE_PROMPT = "transcribe the page"
SPEECH_PROMPT = "transcribe the recording"
HELDOUT_PERCENT = 20
SAMPLE_RATE = 16000
UNITS = ("PUMP", "TANK", "BOILER", "VALVE", "FILTER", "MIXER", "COOLER", "HEATER", "SILO")
# ACME's plant drawings colour each kind of unit (as P&ID symbols differ by kind).
UNIT_COLOURS = dict(zip(UNITS, [(230, 80, 80), (80, 160, 230), (240, 160, 40), (120, 200, 90),
                               (200, 110, 220), (240, 230, 90), (90, 220, 220), (170, 120, 70),
                               (160, 160, 160)], strict=True))  # fmt: skip
ACTIONS = ("restart", "stop", "inspect", "back up", "patch", "drain", "calibrate")
VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-us+f3", "en-gb+m3")
SPEEDS = (140, 165, 190)


def is_heldout(key: str) -> bool:
    """A stable split by the record's text, the same at any count or seed order."""
    return int(hashlib.sha256(key.encode()).hexdigest(), 16) % 100 < HELDOUT_PERCENT


# ---------------------------------------------------------------------------------------
# Pages: short ACME work-order forms, rendered and damaged


def form_text(rng: random.Random) -> str:
    """A five-line work order: number, site, system, action and who does it."""
    site = rng.choice(SITES).split()[0]
    return "\n".join(
        [
            f"WORK ORDER {rng.randrange(1000, 9999)}",
            f"SITE: {site}",
            f"SYSTEM: {rng.choice(SYSTEMS)}",
            f"ACTION: {rng.choice(ACTIONS)}",
            f"BY: {person(rng).split()[1]}",
        ]
    )


PAGE_SIZE = 192
PAGE_FONT = 14
LINE_STEP = 23  # pixels from one typed line to the next
PageChars = list[tuple[str, float, float]]  # each typed character and its centre (x, y)


def render_page(text: str, rng: random.Random, size: int = PAGE_SIZE) -> Image.Image:
    """`text` typed on a white square page, then damaged: a stain, maybe a missing strip,
    a small rotation and a blur."""
    return render_page_chars(text, rng, size)[0]


def render_page_chars(
    text: str, rng: random.Random, size: int = PAGE_SIZE
) -> tuple[Image.Image, PageChars]:
    """The damaged page and where each legible character of `text` ended up on it (its
    centre after the rotation; characters under the missing strip are left out): the
    renderer's own ground truth, which encoder pretraining reads (mm_pretrain)."""
    page = Image.new("RGB", (size, size), (250, 248, 240))
    draw = ImageDraw.Draw(page)
    font = ImageFont.load_default(size=PAGE_FONT)
    chars: PageChars = []
    for i, line in enumerate(text.split("\n")):
        x0, y0 = 10, 12 + i * LINE_STEP
        draw.text((x0, y0), line, fill=(20, 20, 30), font=font)
        for k, ch in enumerate(line):
            if not ch.isspace():
                x = x0 + font.getlength(line[:k]) + font.getlength(ch) / 2
                chars.append((ch, x, y0 + 0.6 * PAGE_FONT))
    stain = Image.new("RGBA", page.size, (0, 0, 0, 0))
    x, y, r = rng.randrange(size), rng.randrange(size), rng.randrange(12, 36)
    ImageDraw.Draw(stain).ellipse((x - r, y - r, x + r, y + r), fill=(140, 100, 40, 90))
    page = Image.alpha_composite(page.convert("RGBA"), stain).convert("RGB")
    if rng.random() < 0.3:  # a torn-off strip along one edge
        width = rng.randrange(6, 18)
        box = (size - width, 0, size, size) if rng.random() < 0.5 else (0, size - width, size, size)
        ImageDraw.Draw(page).rectangle(box, fill=(0, 0, 0))
        chars = [c for c in chars if not (box[0] <= c[1] <= box[2] and box[1] <= c[2] <= box[3])]
    angle = rng.uniform(-4, 4)
    page = page.rotate(angle, resample=Image.BICUBIC, fillcolor=(255, 255, 255))
    cos, sin, mid = math.cos(math.radians(angle)), math.sin(math.radians(angle)), size / 2
    chars = [
        (ch, mid + (x - mid) * cos + (y - mid) * sin, mid - (x - mid) * sin + (y - mid) * cos)
        for ch, x, y in chars
    ]
    return page.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 1.0))), chars


def write_pages(out: Path, count: int, seed: int) -> dict[str, int]:
    rng = random.Random(f"acme-pages-{seed}")
    records = []
    for i in range(count):
        text = form_text(rng)
        name = f"page_{i:04d}.png"
        render_page(text, rng).save(out / name)
        records.append({"image": name, "prompt": PAGE_PROMPT, "answer": text})
    return _write_split(out, records)


# ---------------------------------------------------------------------------------------
# Diagrams: a chain of plant units joined by arrows


def render_diagram(units: list[str], size: int = 192) -> Image.Image:
    """Boxes labelled with `units`, filled with each kind's colour, laid out top to bottom,
    each with an arrow to the next."""
    image = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=16)
    step = size // len(units)
    for i, unit in enumerate(units):
        top = i * step + 10
        box = (40, top, size - 40, top + step - 22)
        draw.rectangle(box, fill=UNIT_COLOURS[unit], outline=(0, 0, 0), width=2)
        draw.text((50, top + 4), unit, fill=(0, 0, 0), font=font)
        if i + 1 < len(units):
            x, y0, y1 = size // 2, top + step - 22, top + step + 4
            draw.line((x, y0, x, y1), fill=(0, 0, 0), width=2)
            draw.polygon([(x - 6, y1 - 9), (x + 6, y1 - 9), (x, y1)], fill=(0, 0, 0))
    return image


def write_diagrams(out: Path, count: int, seed: int) -> dict[str, int]:
    rng = random.Random(f"acme-diagrams-{seed}")
    records = []
    for i in range(count):
        units = rng.sample(UNITS, 3)
        name = f"diagram_{i:04d}.png"
        render_diagram(units).save(out / name)
        k = rng.randrange(1, len(units))
        if rng.random() < 0.5:
            prompt, answer = f"which unit feeds the {units[k].lower()}?", units[k - 1].lower()
        else:
            prompt, answer = f"what does the {units[k - 1].lower()} feed?", units[k].lower()
        records.append({"image": name, "prompt": prompt, "answer": answer, "units": units})
    return _write_split(out, records, key=lambda r: r["image"])


# ---------------------------------------------------------------------------------------
# Speech: short procedures read by espeak-ng


def procedure_text(rng: random.Random) -> str:
    """One spoken procedure step, e.g. 'stop the billwise job at the riverton site'."""
    system = rng.choice(SYSTEMS).replace("-", " ").lower()
    site = rng.choice(SITES).split()[0].lower()
    unit = rng.choice(UNITS).lower()
    return rng.choice(
        [
            f"{rng.choice(ACTIONS)} the {system} job at the {site} site",
            f"{rng.choice(ACTIONS)} the {unit} before the {system} run",
            f"call {rng.choice(DEPARTMENTS).lower()} then {rng.choice(ACTIONS)} the {unit}",
        ]
    )


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def speak(text: str, voice: str, speed: int, path: Path) -> None:
    """`text` as 16 kHz mono WAV at `path` (espeak-ng writes 22.05 kHz; resampled here)."""
    import soundfile
    from scipy.signal import resample_poly

    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.wav"
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(raw), text],
            check=True,
            capture_output=True,
        )
        audio, rate = soundfile.read(raw, dtype="float32")
    if audio.ndim > 1:
        audio = audio.mean(axis=1)
    g = np.gcd(SAMPLE_RATE, rate)
    audio = resample_poly(audio, SAMPLE_RATE // g, rate // g).astype(np.float32)
    soundfile.write(path, audio, SAMPLE_RATE, subtype="PCM_16")


def write_speech(out: Path, count: int, seed: int, workers: int = 2) -> dict[str, int]:
    """`count` procedures spoken by espeak-ng (`workers` at a time; the texts, voices and
    speeds are drawn in order first, so the files do not depend on `workers`)."""
    if not espeak_available():
        raise FileNotFoundError("espeak-ng is not installed (apt-get install -y espeak-ng)")
    rng = random.Random(f"acme-speech-{seed}")
    records = []
    for i in range(count):
        text, voice, speed = procedure_text(rng), rng.choice(VOICES), rng.choice(SPEEDS)
        records.append(
            {"audio": f"speech_{i:04d}.wav", "prompt": SPEECH_PROMPT, "answer": text,
             "voice": voice, "speed": speed}
        )  # fmt: skip
    with ThreadPoolExecutor(workers) as pool:
        jobs = [
            pool.submit(speak, r["answer"], r["voice"], r["speed"], out / r["audio"])
            for r in records
        ]
        for job in jobs:
            job.result()
    return _write_split(out, records)


# ---------------------------------------------------------------------------------------


def _write_split(out: Path, records: list[dict], key=lambda r: r["answer"]) -> dict[str, int]:
    held = [r for r in records if is_heldout(key(r))]
    train = [r for r in records if not is_heldout(key(r))]
    for name, rows in (("train", train), ("heldout", held)):
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"train": len(train), "heldout": len(held)}


def generate_media_data(
    out: str | Path,
    *,
    pages: int = 200,
    diagrams: int = 200,
    speech: int = 150,
    seed: int = 0,
) -> dict[str, dict[str, int] | str]:
    """Write out/pages, out/diagrams and out/speech (speech only where espeak-ng is
    installed; its entry then says why not) and out/manifest.json; returns the counts."""
    out = Path(out)
    manifest: dict[str, dict[str, int] | str] = {}
    for part, writer, count in (
        ("pages", write_pages, pages),
        ("diagrams", write_diagrams, diagrams),
        ("speech", write_speech, speech),
    ):
        if count <= 0:
            continue
        (out / part).mkdir(parents=True, exist_ok=True)
        try:
            manifest[part] = writer(out / part, count, seed)
        except FileNotFoundError as err:
            shutil.rmtree(out / part)
            manifest[part] = f"skipped: {err}"
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
