"""Curation cost of carrying media: `curate_stage` on a raw dataset of captioned images,
recordings with transcripts and text vs `curate_documents` on its text alone, the parts
(`curate_documents` with fates, `carry_media`) and the `media_pairs_stage` export.

    .venv/bin/python benchmarks/media_curate.py [--images 200] [--audio 50] [--repeat 3]
        [--text build/acme-corpus/manuals]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from media_ingest import picture, write_recording

from forgeml.core.data_config import MediaConfig
from forgeml.core.workspace import init_workspace
from forgeml.data.curate import curate_documents
from forgeml.data.media_carry import carry_media, paired_doc_ids
from forgeml.pipeline.curate_stage import curate_stage, media_pairs_stage
from forgeml.pipeline.ingest_stage import ingest_stage
from forgeml.registry import open_registry

MANUALS = Path(__file__).resolve().parents[1] / "build" / "acme-corpus" / "manuals"


def make_sources(root: Path, images: int, audio: int, seconds: float, text: Path | None) -> None:
    """Captioned PNGs (each caption holds an e-mail address), WAVs with transcripts and,
    when given, a copy of the folder `text`."""
    root.mkdir(parents=True)
    for i in range(images):
        picture(i).save(root / f"img{i:03d}.png")
        caption = f"Photo {i} of the ACME line {i % 7}, shelf {i * 3}; contact ops{i}@acme.example."
        (root / f"img{i:03d}.caption.txt").write_text(caption + "\n")
    for i in range(audio):
        write_recording(root / f"rec{i:02d}.wav", i, seconds)
        steps = f"Procedure {i}: stop pump {i}, open valve {i + 1}, read the gauge twice."
        (root / f"rec{i:02d}.transcript.txt").write_text(steps + "\n")
    if text:
        shutil.copytree(text, root / "text")


def best(fn, repeat: int) -> float:
    """The shortest of `repeat` timed calls of `fn`."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200, help="captioned 640x480 PNGs")
    ap.add_argument("--audio", type=int, default=50, help="16 kHz WAVs with transcripts")
    ap.add_argument("--seconds", type=float, default=5.0, help="length of each recording")
    ap.add_argument("--text", type=Path, help=f"a text folder to add (default: {MANUALS})")
    ap.add_argument("--repeat", type=int, default=3, help="best of N for each timing")
    ap.add_argument("--out", type=Path, help="working folder (default: a temporary one)")
    args = ap.parse_args()
    text = args.text or (MANUALS if MANUALS.is_dir() else None)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(dir=args.out) as tmp:
        work = Path(tmp)
        make_sources(work / "src", args.images, args.audio, args.seconds, text)
        ws = init_workspace(work / "ws")
        raw = ingest_stage(ws, [work / "src"], name="bench", media=MediaConfig())
        registry = open_registry(ws)
        raw_dir = registry.get_asset(raw.output).path

        text_only = work / "text-only.parquet"
        t_text = best(lambda: curate_documents(raw_dir / "data.parquet", text_only), args.repeat)
        t_stage = best(lambda: curate_stage(ws, raw.output, force=True), args.repeat)
        curated = curate_stage(ws, raw.output)
        report = json.loads((registry.get_asset(curated.output).path / "report.json").read_text())

        fates: dict[str, str] = {}
        carry_dir = work / "carry"

        def fated() -> None:
            fates.clear()
            fates.update(paired_doc_ids(raw_dir) or {})
            shutil.rmtree(carry_dir, ignore_errors=True)
            carry_dir.mkdir()
            curate_documents(raw_dir / "data.parquet", carry_dir / "data.parquet", fates=fates)

        t_fated = best(fated, args.repeat)
        t_carry = best(lambda: carry_media(raw_dir, carry_dir, fates), args.repeat)
        start = time.perf_counter()
        pairs = media_pairs_stage(ws, curated.output, force=True)
        t_pairs = time.perf_counter() - start

    media = report["media"]
    print(
        f"\n{report['input']} text records; media in {media['input']}, kept {media['kept']}, "
        f"pairs kept {media['pairs']['kept']}, redactions {sum(media['redactions'].values())}; "
        f"media pairs export: {pairs.metrics}"
    )
    print(f"\n| step (best of {args.repeat}) | time (s) | vs text only |")
    print("|---|---|---|")
    rows = [
        ("`curate_documents`, text only", t_text),
        ("`curate_stage` with media carry", t_stage),
        ("`curate_documents` with fates", t_fated),
        ("`carry_media` (hard links)", t_carry),
        ("`media_pairs_stage` (one run)", t_pairs),
    ]
    for what, seconds in rows:
        print(f"| {what} | {seconds:.2f} | {seconds / t_text:.2f}x |")


if __name__ == "__main__":
    main()
