"""A dataset's media pairs as multimodal SFT records (image + caption, page + transcription,
recording + transcript), the JSONL forgeml.train.multimodal_sft and the mm stages read, with
the media files beside it and a held-out split by content hash. `forgeml data media-pairs`.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from forgeml.core.errors import DataError
from forgeml.core.io import atomic_write_text
from forgeml.data.media_carry import MEDIA_TABLE, link_media_files

MEDIA_JSONL = "media-jsonl"  # the dataset format of forgeml.pipeline.multimodal_stage
# (media kind, pair kind) -> the instruction; other pairs (in_document: an image a document
# shows, with no text of its own) are not SFT examples and are counted as skipped
PROMPTS = {
    ("image", "caption"): "Describe the image.",
    ("image", "alt_text"): "Describe the image.",
    ("image", "transcription"): "Transcribe the page.",
    ("audio", "transcript"): "Transcribe the recording.",
}
SPLITS = ("train", "heldout")


def heldout_media(content_sha256: str, share: float) -> bool:
    """Whether media with this content hash is held out: a hash threshold, so adding data
    never moves an item from one side to the other."""
    digest = hashlib.sha256(f"heldout:{content_sha256}".encode()).digest()
    return int.from_bytes(digest[:8], "big") < share * 2**64


def export_media_pairs(
    dataset_dir: str | Path, out_dir: str | Path, *, heldout: float = 0.1
) -> dict[str, Any]:
    """Write `train.jsonl` and `heldout.jsonl` (records {image|audio, prompt, answer, media_id,
    pair}) and `media/` under `out_dir` from the dataset at `dataset_dir` (curated or raw);
    return the summary (also `pairs.json`): records per split and every other pair's reason.

    Media paths are relative to the JSONL files; the files are hard-linked (or copied). Every
    pair of one picture or recording lands on the same side of the split, whatever else the
    dataset holds (`heldout_media`)."""
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    table = dataset_dir / MEDIA_TABLE
    if not table.is_file():
        raise DataError(
            f"{dataset_dir} holds no media ({MEDIA_TABLE})",
            "ingest images or recordings with data.media on, then curate",
        )
    if not 0 <= heldout < 1:
        raise DataError(f"heldout share {heldout} is not in [0, 1)")
    rows = pq.read_table(table).to_pylist()
    records: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    skipped: Counter[str] = Counter()
    seen: set[tuple[str, str, str]] = set()
    used: list[dict[str, Any]] = []
    pairs_in = 0
    held = _held_contents(rows, heldout)
    for row in rows:
        pairs_in += len(row["pairs"] or [])
        if row.get("duplicate_of"):  # a raw dataset: ingest marked it, curation drops it
            skipped["media duplicate"] += len(row["pairs"] or [])
            continue
        for pair in row["pairs"] or []:
            prompt = PROMPTS.get((row["kind"], pair["kind"]))
            answer = (pair["text"] or "").strip()
            if prompt is None:
                skipped[f"{pair['kind']} ({row['kind']}): no instruction"] += 1
            elif not answer:
                skipped[f"{pair['kind']}: empty text"] += 1
            elif (row["sha256"], prompt, answer) in seen:
                skipped["same pair again"] += 1
            else:
                seen.add((row["sha256"], prompt, answer))
                split = "heldout" if row["content_sha256"] in held else "train"
                records[split].append(
                    {
                        row["kind"]: row["file"],
                        "prompt": prompt,
                        "answer": answer,
                        "media_id": row["media_id"],
                        "pair": pair["kind"],
                    }
                )
                used.append(row)
    out_dir.mkdir(parents=True, exist_ok=True)
    stored = link_media_files(dataset_dir, out_dir, used)
    for split in SPLITS:
        lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in records[split]]
        atomic_write_text(out_dir / f"{split}.jsonl", "".join(lines))
    summary = {
        "source": str(dataset_dir),
        "pairs": pairs_in,
        "records": {s: len(records[s]) for s in SPLITS},
        "skipped_by_reason": dict(sorted(skipped.items())),
        "with_media": {
            k: sum(k in r for s in SPLITS for r in records[s]) for k in ("image", "audio")
        },
        "prompts": dict(Counter(r["prompt"] for s in SPLITS for r in records[s])),
        "media_files": len({r["file"] for r in used}),
        "stored_bytes": stored,
        "heldout_share": heldout,
    }
    assert sum(summary["records"].values()) + skipped.total() == pairs_in
    atomic_write_text(out_dir / "pairs.json", json.dumps(summary, indent=1) + "\n")
    return summary


def _held_contents(rows: list[dict[str, Any]], share: float) -> set[str]:
    """The content hashes held out; with a share above 0 and two or more distinct items, at
    least one (the smallest hash), so a small dataset still has a held-out side."""
    contents = sorted({r["content_sha256"] for r in rows if r["pairs"] and not r["duplicate_of"]})
    held = {c for c in contents if heldout_media(c, share)}
    if share > 0 and not held and len(contents) > 1:
        held.add(min(contents, key=lambda c: hashlib.sha256(f"heldout:{c}".encode()).digest()))
    if len(held) == len(contents) and len(contents) > 1:
        held.discard(contents[0])  # a training side too
    return held
