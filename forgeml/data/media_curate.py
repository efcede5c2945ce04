"""Media curation: exact duplicates by the hash of decoded pixels or samples (a PNG and a BMP
of one picture, a WAV and a FLAC of one recording) and near-duplicate images by pHash within
a Hamming distance (a resized or re-encoded copy). Run by ingest over the media table.

Near-duplicate candidates come from pHash bands: split the bits into `max_hamming + 1`
bands and any two hashes within `max_hamming` bits agree exactly on one band (pigeonhole),
so only images sharing a band value are compared, never all pairs. The first image in ingest
order (sorted paths) is kept; the others are marked `duplicate_of` it, with the reason.
Two images whose paired texts (captions, OCR transcriptions) both exist and differ are not
near duplicates: pages of one form filled in differently look alike to pHash.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from forgeml.core.data_config import MediaDedupConfig

EXAMPLES = 50  # dropped items listed in the report


def _bands(bits: int, count: int) -> list[tuple[int, int]]:
    """`count` contiguous (start, width) bands covering `bits` bits."""
    count = max(1, min(count, bits))
    base, extra = divmod(bits, count)
    out, start = [], 0
    for i in range(count):
        width = base + (i < extra)
        out.append((start, width))
        start += width
    return out


def near_duplicate_pairs(hashes: list[int], bits: int, max_hamming: int) -> list[tuple[int, int]]:
    """Index pairs (i < j) of `hashes` whose Hamming distance is at most `max_hamming`."""
    buckets: dict[tuple[int, int], list[int]] = defaultdict(list)
    for index, value in enumerate(hashes):
        for band, (start, width) in enumerate(_bands(bits, max_hamming + 1)):
            buckets[(band, (value >> start) & ((1 << width) - 1))].append(index)
    pairs = set()
    for members in buckets.values():
        for a_pos, a in enumerate(members):
            for b in members[a_pos + 1 :]:
                if (hashes[a] ^ hashes[b]).bit_count() <= max_hamming:
                    pairs.add((a, b))
    return sorted(pairs)


def _root(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def _paired_text(row: dict[str, Any]) -> str:
    return " ".join(" ".join(p["text"].split()) for p in row.get("pairs") or [])


def _name(row: dict[str, Any]) -> str:
    return row["path"] + (f" ({row['locator']})" if row["locator"] else "")


def mark_duplicates(rows: list[dict[str, Any]], cfg: MediaDedupConfig) -> dict[str, Any]:
    """Set `duplicate_of` (the kept row's media_id), `duplicate_kind` ("exact" or "near") and
    `duplicate_distance` (pHash bits) on every duplicate in `rows` (in ingest order), and
    return the report: counts and the first dropped items with their reasons."""
    for row in rows:
        row.update(duplicate_of=None, duplicate_kind=None, duplicate_distance=None)
    first_by_content: dict[tuple[str, str], dict[str, Any]] = {}
    dropped: list[dict[str, Any]] = []
    if cfg.exact:
        for row in rows:
            key = (row["kind"], row["content_sha256"])
            kept = first_by_content.setdefault(key, row)
            if kept is not row:
                row.update(duplicate_of=kept["media_id"], duplicate_kind="exact")
                dropped.append({"item": _name(row), "kept": _name(kept), "reason": "exact"})
    near = 0
    candidates = [r for r in rows if r["kind"] == "image" and r["phash"] and not r["duplicate_of"]]
    if cfg.near and candidates:
        bits = cfg.hash_size**2
        values = [int(r["phash"], 16) for r in candidates]
        parent = list(range(len(candidates)))
        texts = [_paired_text(r) for r in candidates]
        for a, b in near_duplicate_pairs(values, bits, cfg.max_hamming):
            if cfg.keep_different_text and texts[a] and texts[b] and texts[a] != texts[b]:
                continue
            ra, rb = _root(parent, a), _root(parent, b)
            parent[max(ra, rb)] = min(ra, rb)  # the earliest image represents its cluster
        for i, row in enumerate(candidates):
            keep = candidates[_root(parent, i)]
            if keep is row:
                continue
            distance = (values[i] ^ int(keep["phash"], 16)).bit_count()
            row.update(duplicate_of=keep["media_id"], duplicate_kind="near")
            row["duplicate_distance"] = distance
            near += 1
            reason = f"near (pHash distance {distance} <= {cfg.max_hamming})"
            dropped.append({"item": _name(row), "kept": _name(keep), "reason": reason})
    exact = sum(1 for r in rows if r["duplicate_kind"] == "exact")
    return {
        "exact": cfg.exact,
        "near": cfg.near,
        "max_hamming": cfg.max_hamming,
        "exact_duplicates": exact,
        "near_duplicates": near,
        "kept": len(rows) - exact - near,
        "dropped": dropped[:EXAMPLES],
    }
