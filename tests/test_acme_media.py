"""ACME multimodal demo data: seeded generation gives the same files, pages and diagrams
decode and show what their records say, the split is stable, and speech is 16 kHz WAV of
the transcript (skipped where espeak-ng is not installed)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from acme_media import (
    PAGE_PROMPT,
    espeak_available,
    generate_media_data,
    is_heldout,
    render_diagram,
)
from PIL import Image


def digests(folder) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def records(folder) -> list[dict]:
    return [
        json.loads(line)
        for name in ("train.jsonl", "heldout.jsonl")
        for line in (folder / name).read_text().splitlines()
    ]


def test_pages_and_diagrams_are_deterministic_and_decode(tmp_path):
    a = generate_media_data(tmp_path / "a", pages=12, diagrams=12, speech=0, seed=3)
    b = generate_media_data(tmp_path / "b", pages=12, diagrams=12, speech=0, seed=3)
    assert a == b and digests(tmp_path / "a") == digests(tmp_path / "b")
    generate_media_data(tmp_path / "c", pages=12, diagrams=0, speech=0, seed=4)
    assert digests(tmp_path / "c" / "pages") != digests(tmp_path / "a" / "pages")

    pages = records(tmp_path / "a" / "pages")
    assert len(pages) == 12 and a["pages"]["heldout"] + a["pages"]["train"] == 12
    for r in pages:
        image = Image.open(tmp_path / "a" / "pages" / r["image"])
        assert image.size == (192, 192) and r["prompt"] == PAGE_PROMPT
        lines = r["answer"].split("\n")
        assert lines[0].startswith("WORK ORDER ") and lines[2].startswith("SYSTEM: ")
        # damaged, so not a blank page and not only ink
        pixels = np.asarray(image.convert("L"), dtype=np.float32)
        assert 0.03 < (pixels < 200).mean() < 0.6
    for r in records(tmp_path / "a" / "diagrams"):
        units = [u.lower() for u in r["units"]]
        k = r["prompt"].rstrip("?").split()[-1] if r["prompt"].startswith("which") else None
        if k is not None:  # "which unit feeds the X?" -> the unit drawn above X
            assert units.index(r["answer"]) == units.index(k) - 1
        else:  # "what does the X feed?" -> the unit drawn below X
            x = r["prompt"].split()[3]
            assert units.index(r["answer"]) == units.index(x) + 1
        # the stored image is exactly the rendering of the record's units (OCR-free check)
        stored = Image.open(tmp_path / "a" / "diagrams" / r["image"])
        assert np.array_equal(np.asarray(stored), np.asarray(render_diagram(r["units"])))


def test_split_is_by_text_and_stable():
    keys = [f"WORK ORDER {n}" for n in range(2000)]
    share = sum(map(is_heldout, keys)) / len(keys)
    assert 0.15 < share < 0.25
    assert [is_heldout(k) for k in keys[:50]] == [is_heldout(k) for k in keys[:50]]


@pytest.mark.skipif(
    not espeak_available(), reason="espeak-ng not installed (apt-get install espeak-ng)"
)
def test_speech_is_16khz_wav_of_the_transcript(tmp_path):
    import soundfile

    a = generate_media_data(tmp_path / "a", pages=0, diagrams=0, speech=6, seed=1)
    b = generate_media_data(tmp_path / "b", pages=0, diagrams=0, speech=6, seed=1)
    assert a == b and a["speech"]["train"] + a["speech"]["heldout"] == 6
    assert digests(tmp_path / "a") == digests(tmp_path / "b")
    for r in records(tmp_path / "a" / "speech"):
        audio, rate = soundfile.read(tmp_path / "a" / "speech" / r["audio"])
        assert rate == 16000 and audio.ndim == 1
        words = len(r["answer"].split())
        # a spoken word takes roughly 0.15-1 s at these speeds; speech is not silence
        assert 0.15 * words < len(audio) / rate < 1.0 * words + 1
        assert np.abs(audio).max() > 0.05


def test_speech_skipped_with_a_reason_without_espeak(tmp_path, monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    manifest = generate_media_data(tmp_path, pages=0, diagrams=0, speech=3)
    assert "espeak-ng is not installed" in manifest["speech"]
    assert not (tmp_path / "speech").exists()


@pytest.mark.slow
def test_mm_demo_quick_runs_end_to_end(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    demo = Path(__file__).resolve().parents[1] / "examples" / "acme" / "mm_demo.py"
    run = subprocess.run(
        [sys.executable, str(demo), "--out", str(tmp_path), "--quick", "--threads", "1"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert "| before training |" in run.stdout and "| after align" in run.stdout
    summary = json.loads((tmp_path / "mm_demo.json").read_text())
    assert set(summary["results"]["after"]) >= {"pages", "diagrams"}
    assert summary["joint"]["heldout_loss"] < summary["align"]["heldout_loss_before"]
