"""Media through curation and out as multimodal SFT data: a curated dataset keeps the media
whose paired texts were kept (files and rows), drops those whose texts were filtered with the
reason, redacts captions like text, and a corpus without media curates to the same bytes; the
media pairs export as JSONL that forgeml.train.multimodal_sft loads.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_media_ingest import picture, tone
from test_multimodal_sft import model_for, tokenizer  # noqa: F401 - tokenizer is a fixture

from forgeml.core.config import CurateConfig
from forgeml.core.data_config import MediaConfig
from forgeml.data.curate import curate_documents
from forgeml.data.media_carry import carry_media, paired_doc_ids
from forgeml.data.media_ingest import MEDIA_SCHEMA
from forgeml.data.media_pairs import export_media_pairs, heldout_media
from forgeml.pipeline.curate_stage import curate_stage, media_pairs_stage
from forgeml.pipeline.ingest_stage import ingest_stage
from forgeml.registry import open_registry

sf = pytest.importorskip("soundfile", reason="soundfile (forgeml[multimodal]) is not installed")
EMAIL_CAPTION = "A red gear beside a blue bolt on the bench; ask jane.doe@acme.example for spares."
TRANSCRIPT = "Stop the pump, then open the valve."
PROSE = " ".join(["The maintenance manual explains how the line is cleaned each week."] * 12)


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    """Two captioned photos (one caption too short for the length filter), a copy of the
    first as BMP (first in path order, so ingest keeps it and marks the PNG), a photo with no
    caption, a recording with its transcript and a text
    document, ingested and curated in a workspace."""
    from forgeml.core.workspace import init_workspace

    root = tmp_path_factory.mktemp("mm-corpus")
    picture(1).save(root / "gear.png")
    (root / "gear.caption.txt").write_text(EMAIL_CAPTION + "\n")
    picture(1).save(root / "gear-copy.bmp")
    picture(2).save(root / "blur.png")
    (root / "blur.caption.txt").write_text("ok\n")  # length:too_short
    picture(3).save(root / "plain.png")
    sf.write(root / "pump.wav", tone(0.5), 16000, subtype="PCM_16")
    (root / "pump.transcript.txt").write_text(TRANSCRIPT + "\n")
    (root / "manual.md").write_text(f"# Cleaning\n\n{PROSE}\n")
    ws = init_workspace(tmp_path_factory.mktemp("ws"))
    raw = ingest_stage(ws, [root], name="mm", media=MediaConfig())
    res = curate_stage(ws, raw.output)
    reg = open_registry(ws)
    return ws, reg.get_asset(raw.output), reg.get_asset(res.output), res


def media_rows(folder: Path) -> dict[str, dict]:
    return {r["path"]: r for r in pq.read_table(folder / "media.parquet").to_pylist()}


def test_curated_dataset_carries_media_with_redacted_captions(curated):
    ws, raw, cur, res = curated
    rows = media_rows(cur.path)
    assert set(rows) == {"gear-copy.bmp", "plain.png", "pump.wav"}
    (caption,) = rows["gear-copy.bmp"]["pairs"]  # moved from gear.png, the marked duplicate
    assert "jane.doe@acme.example" not in caption["text"] and "<EMAIL>" in caption["text"]
    assert rows["plain.png"]["pairs"] == []
    assert rows["pump.wav"]["pairs"][0]["text"] == TRANSCRIPT
    # pairs link to the curated records, and the files are there with the raw bytes
    curated_ids = set(pq.read_table(cur.path / "data.parquet").column("doc_id").to_pylist())
    assert caption["doc_id"] in curated_ids
    assert rows["pump.wav"]["pairs"][0]["doc_id"] in curated_ids
    for row in rows.values():
        stored = (cur.path / row["file"]).read_bytes()
        assert stored == (raw.path / row["file"]).read_bytes()
        assert hashlib.sha256(stored).hexdigest() == row["sha256"]
    media = json.loads((cur.path / "report.json").read_text())["media"]
    assert media["redactions"]["email"] == 1 and media["pairs_redacted"] == 1
    assert res.metrics["media_kept"] == 3 and res.metrics["media_redacted"] == 1


def test_media_whose_text_was_filtered_is_dropped_with_the_reason(curated):
    _, raw, cur, _ = curated
    media = json.loads((cur.path / "report.json").read_text())["media"]
    assert media["input"] == len(media_rows(raw.path)) == 5
    assert media["dropped_by_reason"] == {
        "dedup:exact": 1,  # gear.png, marked by ingest as a copy of gear-copy.bmp
        "paired text: length:too_short": 1,  # blur.png's caption "ok"
    }
    assert media["kept"] + media["dropped"] == media["input"]
    pairs = media["pairs"]
    assert pairs["kept"] + sum(pairs["dropped_by_reason"].values()) == pairs["input"] == 3
    assert cur.metadata["media"]["kept"] == 3
    html = (cur.path / "report.html").read_text()
    assert "<h2>Media</h2>" in html and "paired text: length:too_short" in html


def test_a_text_duplicate_keeps_its_pair_and_policy_drops_remove_it(curated, tmp_path):
    _, raw, cur, _ = curated
    fates = paired_doc_ids(raw.path)
    gear_doc = media_rows(raw.path)["gear.png"]["pairs"][0]["doc_id"]
    curate_documents(raw.path / "data.parquet", tmp_path / "data.parquet", fates=fates)
    assert fates[gear_doc] == ""  # kept: no reason
    fates[gear_doc] = "dedup:near"  # as if another record held nearly the same caption
    empty = pq.read_table(cur.path / "data.parquet").slice(0, 0)
    for name in ("dedup", "drop"):
        (tmp_path / name).mkdir()
        pq.write_table(empty, tmp_path / name / "data.parquet")
    carry_media(raw.path, tmp_path / "dedup", fates)
    (caption,) = media_rows(tmp_path / "dedup")["gear-copy.bmp"]["pairs"]
    assert caption["doc_id"] is None and "<EMAIL>" in caption["text"]  # no record of its own
    strict = CurateConfig.model_validate({"redact": {"email": "drop"}})
    section = carry_media(raw.path, tmp_path / "drop", fates, strict)
    assert section["pairs"]["dropped_by_reason"]["paired text: redact:email"] == 1
    assert media_rows(tmp_path / "drop")["gear-copy.bmp"]["pairs"] == []  # the picture stays


def test_a_corpus_without_media_curates_to_the_same_bytes(workspace, text_folder, tmp_path):
    raw = ingest_stage(workspace, [text_folder], name="docs", media=MediaConfig())
    reg = open_registry(workspace)
    raw_asset = reg.get_asset(raw.output)
    assert paired_doc_ids(raw_asset.path) is None
    cur = reg.get_asset(curate_stage(workspace, raw.output).output)
    direct = tmp_path / "direct.parquet"
    curate_documents(raw_asset.path / "data.parquet", direct)
    assert (cur.path / "data.parquet").read_bytes() == direct.read_bytes()
    assert "media" not in json.loads((cur.path / "report.json").read_text())
    assert not (cur.path / "media.parquet").exists() and not (cur.path / "media").exists()
    followed = tmp_path / "followed.parquet"
    ids = pq.read_table(raw_asset.path / "data.parquet").column("doc_id").to_pylist()
    fates = dict.fromkeys(ids, "")
    curate_documents(raw_asset.path / "data.parquet", followed, fates=fates)
    assert followed.read_bytes() == direct.read_bytes()
    kept = set(pq.read_table(direct, columns=["raw_doc_id"]).column("raw_doc_id").to_pylist())
    assert {d for d, why in fates.items() if not why} == kept  # every other one has its reason
    # without the repetition rules the rotated notes are near copies: dedup reasons too, the
    # same whether the records were judged here or in worker processes
    lax = {"gopher_quality": {"enabled": False}, "gopher_repetition": {"enabled": False}}
    by_executor = []
    for executor in ("local", "processes"):
        cfg = CurateConfig.model_validate({**lax, "executor": executor, "workers": 2})
        by_executor.append(dict.fromkeys(ids, ""))
        curate_documents(raw_asset.path / "data.parquet", tmp_path / f"{executor}.parquet", cfg,
                         fates=by_executor[-1])  # fmt: skip
    assert by_executor[0] == by_executor[1]
    assert any(why.startswith("dedup:") for why in by_executor[0].values())


def test_media_pairs_export_loads_into_multimodal_sft(curated, tokenizer, tmp_path):  # noqa: F811
    from forgeml.tokenizer.train import load_tokenizer
    from forgeml.train.multimodal_sft import load_media_examples

    ws, _, cur, _ = curated
    summary = export_media_pairs(cur.path, tmp_path / "out", heldout=0.5)
    records = [
        json.loads(line)
        for split in ("train", "heldout")
        for line in (tmp_path / "out" / f"{split}.jsonl").read_text().splitlines()
    ]
    assert sum(summary["records"].values()) == len(records) == 2 == summary["pairs"]
    by_prompt = {r["prompt"]: r for r in records}
    assert by_prompt["Transcribe the recording."]["answer"] == TRANSCRIPT
    assert "<EMAIL>" in by_prompt["Describe the image."]["answer"]
    contents = {r["media_id"]: r["content_sha256"] for r in media_rows(cur.path).values()}
    exported = {contents[r["media_id"]] for r in records}
    held = {contents[r["media_id"]] for r in _split(tmp_path / "out", "heldout")}
    by_hash = {c for c in exported if heldout_media(c, 0.5)}
    # the hash decides; with none or both over the line, one item goes to each side
    assert held == by_hash if len(by_hash) == 1 else len(held) == 1
    for r in records:
        media = r.get("image") or r["audio"]
        assert (tmp_path / "out" / media).is_file() and not Path(media).is_absolute()
    tok_dir, ids = tokenizer
    model = model_for(ids, audio=True)
    examples = []
    for split in ("train", "heldout"):
        if (tmp_path / "out" / f"{split}.jsonl").read_text():
            examples += load_media_examples(
                tmp_path / "out" / f"{split}.jsonl", load_tokenizer(tok_dir), model, 4096
            )
    assert len(examples) == 2
    assert sum(e.pixels is not None for e in examples) == 1
    assert sum(e.audio is not None for e in examples) == 1
    # the same export as a registered media dataset the multimodal stages take
    res = media_pairs_stage(ws, cur.id, heldout=0.5)
    asset = open_registry(ws).get_asset(res.output)
    assert asset.metadata["format"] == "media-jsonl" and asset.metadata["source"] == cur.id
    assert (asset.path / "train.jsonl").read_text() == (tmp_path / "out/train.jsonl").read_text()
    stages = pytest.importorskip("forgeml.pipeline.multimodal_stage")
    assert stages._media_dataset(ws, res.output, None).id == asset.id  # what mm-align takes


def _split(folder: Path, split: str) -> list[dict]:
    return [json.loads(x) for x in (folder / f"{split}.jsonl").read_text().splitlines()]


def test_cli_media_pairs(curated, tmp_path):
    ws, _, cur, _ = curated
    out = tmp_path / "pairs"
    cli = [sys.executable, "-m", "forgeml.cli", "-w", str(ws.root), "-q", "data", "media-pairs"]
    res = subprocess.run(
        [*cli, cur.id, "--out", str(out)], capture_output=True, text=True, timeout=300,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "1 train, 1 held-out records from 2 pairs" in res.stdout
    assert json.loads((out / "pairs.json").read_text())["pairs"] == 2


def test_every_pair_kind_is_exported_or_skipped_with_a_reason(curated, tmp_path):
    _, _, cur, _ = curated
    rows = list(media_rows(cur.path).values())
    image = next(r for r in rows if r["path"] == "plain.png")
    page = {"kind": "transcription", "doc_id": None, "path": "plain.png", "offset": None}
    shown = {"kind": "in_document", "doc_id": None, "path": "a.md", "text": "", "offset": 0}
    image["pairs"] = [{**page, "text": "Line one\nLine two"}, shown, {**page, "text": " "}]
    copy = {**image, "media_id": "copy", "duplicate_of": image["media_id"], "pairs": [shown]}
    (tmp_path / "ds").mkdir()
    pq.write_table(
        pa.Table.from_pylist([*rows, copy], schema=MEDIA_SCHEMA), tmp_path / "ds" / "media.parquet"
    )
    for row in rows:
        (tmp_path / "ds" / row["file"]).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "ds" / row["file"]).write_bytes((cur.path / row["file"]).read_bytes())
    summary = export_media_pairs(tmp_path / "ds", tmp_path / "out", heldout=0.0)
    assert summary["records"] == {"train": 3, "heldout": 0} and summary["pairs"] == 6
    assert summary["skipped_by_reason"] == {
        "in_document (image): no instruction": 1,
        "media duplicate": 1,
        "transcription: empty text": 1,
    }
    prompts = [r["prompt"] for r in _split(tmp_path / "out", "train")]
    assert sorted(prompts) == [
        "Describe the image.",
        "Transcribe the page.",
        "Transcribe the recording.",
    ]
