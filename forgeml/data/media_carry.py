"""Media through curation: the raw dataset's `media.parquet` and `media/` files carried into
the curated dataset after the text side (forgeml.data.curate says what became of each paired
text record), captions and transcripts redacted like the text. Run by the curate stage.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from forgeml.core.config import CurateConfig
from forgeml.core.io import atomic_open
from forgeml.data.media_ingest import MEDIA_SCHEMA
from forgeml.data.redact import KINDS, redact_text

MEDIA_TABLE = "media.parquet"


def paired_doc_ids(dataset_dir: str | Path) -> dict[str, str] | None:
    """The text records the dataset's media pairs name, as `curate_documents(fates=...)`
    wants them ({doc_id: ""}); None when the dataset holds no media."""
    path = Path(dataset_dir) / MEDIA_TABLE
    if not path.is_file():
        return None
    pairs = pq.read_table(path, columns=["pairs"]).column("pairs").to_pylist()
    return {p["doc_id"]: "" for row in pairs for p in row or [] if p["doc_id"]}


def _curated_ids(curated: Path, raw_ids: list[str]) -> dict[str, str]:
    """Raw doc id -> the curated record's doc id, for the followed ids that were kept."""
    if not raw_ids:
        return {}
    table = pq.read_table(
        curated, columns=["raw_doc_id", "doc_id"], filters=[("raw_doc_id", "in", raw_ids)]
    )
    raw, curated_ids = table.column("raw_doc_id").to_pylist(), table.column("doc_id").to_pylist()
    return dict(reversed(list(zip(raw, curated_ids, strict=True))))  # the first kept one wins


class _PairJudge:
    """Each pair's verdict: (the pair as curated, None) or (None, why it was dropped)."""

    def __init__(self, cfg: CurateConfig, kept: dict[str, str], fates: dict[str, str]) -> None:
        self.cfg, self.kept, self.fates = cfg, kept, fates
        self.redactions: Counter[str] = Counter()
        self.redacted = 0

    def judge(self, pair: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
        raw_id = pair["doc_id"]
        doc_id, offset = None, None
        if raw_id in self.kept:
            doc_id = self.kept[raw_id]
            # the offset points into the raw text: still right only if the text is unchanged
            offset = pair["offset"] if doc_id == raw_id else None
        elif self.fates.get(raw_id) and not self.fates[raw_id].startswith("dedup:"):
            return None, f"paired text: {self.fates[raw_id]}"
        red = redact_text(pair["text"] or "", self.cfg.redact)
        self.redactions.update(red.counts)
        if red.drop:
            return None, f"paired text: {red.drop}"
        self.redacted += bool(red.counts)
        return {**pair, "doc_id": doc_id, "text": red.text, "offset": offset}, None


def carry_media(
    raw_dir: str | Path,
    out_dir: str | Path,
    fates: dict[str, str],
    cfg: CurateConfig | None = None,
) -> dict[str, Any]:
    """Write `out_dir/media.parquet` and `out_dir/media/` from the raw dataset at `raw_dir`,
    given the curated `out_dir/data.parquet` and the drop reasons `curate_documents` filled
    into `fates`; return the curate report's `media` section ({} when there is no media).

    A pair whose text record was kept (or that has none) stays, its `doc_id` now the curated
    record's; one whose record a filter, a redaction policy or the quality model dropped goes
    with that reason. A record dropped as a duplicate of another text leaves its pair in
    place (a picture is not a copy because its caption is), with no `doc_id`. Media with
    pairs left, or that never had any, are kept; media ingest marked as duplicates are
    dropped, their pairs moved to the copy kept. Every row and pair is counted."""
    cfg = cfg or CurateConfig()
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    if not (raw_dir / MEDIA_TABLE).is_file():
        return {}
    rows = pq.read_table(raw_dir / MEDIA_TABLE).to_pylist()
    judge = _PairJudge(cfg, _curated_ids(out_dir / "data.parquet", sorted(fates)), fates)
    pairs_in, pairs_dropped, dropped = 0, Counter(), Counter()
    first_drop: dict[str, str] = {}  # media_id -> why its first dropped pair went
    survivors: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        survivors[row["media_id"]] = []
        for pair in row["pairs"] or []:
            pairs_in += 1
            kept, why = judge.judge(pair)
            if kept is None:
                pairs_dropped[why] += 1
                first_drop.setdefault(row["media_id"], why)
            else:
                survivors[row["media_id"]].append(kept)
    for row in rows:  # a copy's pairs go to the kept copy (a second caption of one picture)
        if row["duplicate_of"]:
            _move_pairs(
                survivors[row["media_id"]], survivors.get(row["duplicate_of"]), pairs_dropped
            )
    out_rows = []
    for row in rows:
        mine = survivors[row["media_id"]]
        if row["duplicate_of"]:
            dropped[f"dedup:{row['duplicate_kind']}"] += 1
        elif row["pairs"] and not mine:
            dropped[first_drop[row["media_id"]]] += 1
        else:
            out_rows.append({**row, "pairs": mine})
    stored = link_media_files(raw_dir, out_dir, out_rows)
    if out_rows:
        with atomic_open(out_dir / MEDIA_TABLE, "wb") as fh:
            table = pa.Table.from_pylist(out_rows, schema=MEDIA_SCHEMA)
            pq.write_table(table, fh, compression="zstd")
    kinds = Counter(r["kind"] for r in out_rows)
    section = {
        "table": MEDIA_TABLE if out_rows else None,
        "input": len(rows),
        "kept": len(out_rows),
        "dropped": sum(dropped.values()),
        "dropped_by_reason": dict(sorted(dropped.items())),
        "images": kinds["image"],
        "audio": kinds["audio"],
        "stored_bytes": stored,
        "pairs": {
            "input": pairs_in,
            "kept": sum(len(r["pairs"]) for r in out_rows),
            "dropped_by_reason": dict(sorted(pairs_dropped.items())),
            "by_kind": dict(
                sorted(Counter(p["kind"] for r in out_rows for p in r["pairs"]).items())
            ),
        },
        "redactions": {k: judge.redactions.get(k, 0) for k in KINDS},
        "pairs_redacted": judge.redacted,
    }
    assert section["kept"] + section["dropped"] == section["input"]
    assert section["pairs"]["kept"] + pairs_dropped.total() == pairs_in
    return section


def _move_pairs(
    pairs: list[dict[str, Any]], target: list[dict[str, Any]] | None, dropped: Counter[str]
) -> None:
    """A duplicate's pairs onto the kept copy's, unless it holds the same text already."""
    for pair in pairs:
        if target is None:
            dropped["media duplicate"] += 1
        elif any((p["kind"], p["text"]) == (pair["kind"], pair["text"]) for p in target):
            dropped["same pair on the kept copy"] += 1
        else:
            target.append(pair)


def link_media_files(src_dir: Path, out_dir: Path, rows: list[dict[str, Any]]) -> int:
    """Hard-link (or copy, across file systems) the media files of `rows` from the dataset at
    `src_dir` into `out_dir`, each appearing whole or not at all; the bytes stored."""
    stored = 0
    for file in sorted({r["file"] for r in rows}):
        src, dst = src_dir / file, out_dir / file
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.tmp")
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
        stored += dst.stat().st_size
    return stored
