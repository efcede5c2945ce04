"""Curation end to end: the ACME corpus through ingest -> curate_stage, with no planted
secret or PII left in the curated Parquet or the reports, every record accounted for,
planted near-duplicates removed, provenance columns, lineage, show and diff."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from acme import generate_corpus

from forgeml.core.config import CurateConfig
from forgeml.data.curate import SCHEMA, curate_documents
from forgeml.data.report import dataset_stats, diff_datasets
from forgeml.pipeline.curate_stage import curate_stage
from forgeml.pipeline.ingest_stage import ingest_stage
from forgeml.registry import open_registry

# Keep the record files (Gopher rules drop tables of names and numbers) so redaction is
# what removes their PII, not a filter.
NO_GOPHER = {"gopher_quality": {"enabled": False}, "gopher_repetition": {"enabled": False}}


def _acme_with_copies(root: Path) -> list[str]:
    """The ACME corpus plus planted near-copies of three memos; returns the copies' paths."""
    generate_corpus(root, seed=0, scale=0.1)
    copies = []
    for i, memo in enumerate(sorted((root / "memos").glob("*.txt"))[:3]):
        text = memo.read_text()
        copy = root / "zz_copies" / f"copy_{i}.txt"
        copy.parent.mkdir(exist_ok=True)
        copy.write_text(text.replace("\n\n", "\n\nNote: forwarded copy.\n\n", 1) + "\nThanks.\n")
        copies.append(f"zz_copies/copy_{i}.txt")
    first = sorted((root / "memos").glob("*.txt"))[5]
    (root / "zz_copies" / "exact.txt").write_text(first.read_text().upper())
    return copies


def test_curate_stage_acme_no_leaks(workspace, tmp_path):
    root = tmp_path / "acme"
    copies = _acme_with_copies(root)
    planted = json.loads((root / "records" / "planted.json").read_text())["items"]
    raw = ingest_stage(workspace, [root], name="acme", exclude=["answers.json", "planted.json"])
    cfg = CurateConfig.model_validate({**NO_GOPHER, "dedup": {"threshold": 0.7}})
    res = curate_stage(workspace, raw.output, cfg)
    asset = open_registry(workspace).get_asset(res.output)
    out = Path(asset.path)
    table = pq.read_table(out / "data.parquet")
    assert table.schema.equals(SCHEMA, check_metadata=False)
    report = json.loads((out / "report.json").read_text())
    html = (out / "report.html").read_text()

    # nothing planted survives anywhere a person or a model could read it
    rows = table.to_pylist()
    dumped = json.dumps(rows, default=str)
    for item in planted:
        assert item["value"] not in dumped
        assert item["value"] not in html and item["value"] not in json.dumps(report)
    records = [r for r in rows if r["path"].startswith("records/")]
    assert records and all(sum(r["redactions"].values()) for r in records)
    assert report["redactions"]["secret"] == sum(
        i["kind"] in ("api_key", "password") for i in planted
    )

    # every input record is accounted for
    assert report["input"] == pq.ParquetFile(raw_path(workspace, raw.output)).metadata.num_rows
    assert (
        report["kept"] + sum(report["dropped_by_reason"].values()) + report["failed"]
        == report["input"]
    )
    assert report["kept"] == table.num_rows

    # planted copies go, their originals stay and say how many they stand for
    paths = set(table.column("path").to_pylist())
    assert not paths & set(copies) and "zz_copies/exact.txt" not in paths
    # the upper-cased copy is exact under normalisation, or near once names are redacted in
    # the original (ALL-CAPS names are not names to the recogniser)
    dropped = report["dropped_by_reason"]
    assert dropped["dedup:near"] >= 3 and dropped["dedup:near"] + dropped.get("dedup:exact", 0) >= 4
    assert sum(table.column("duplicates_removed").to_pylist()) >= 4
    assert "<svg" in html and "<script" not in html and "dedup:near" in html

    # provenance and lineage
    row = rows[0]
    assert row["filters_passed"][0] == "length" and row["raw_doc_id"] and row["sha256"]
    up = open_registry(workspace).lineage(res.output, "up")
    assert raw.output in [n["id"] for n in up.nodes]
    assert curate_stage(workspace, raw.output, cfg).cached

    # show and diff
    stats = dataset_stats(out)
    assert stats["rows"] == table.num_rows and stats["redactions"]["email"] > 0
    diff = diff_datasets(Path(open_registry(workspace).get_asset(raw.output).path), out)
    assert diff["records_removed"] == report["input"] - report["kept"]
    # records_redacted counts redactions before dedup; the diff sees the kept records only
    kept_redacted = sum(bool(sum(r["redactions"].values())) for r in rows)
    assert kept_redacted <= report["records_redacted"]
    assert diff["records_changed"] == kept_redacted + _changed_by_boilerplate(rows)


def raw_path(ws, ref: str) -> Path:
    return Path(open_registry(ws).get_asset(ref).path) / "data.parquet"


def _changed_by_boilerplate(rows: list[dict]) -> int:
    return sum(
        1 for r in rows if r["boilerplate_lines_removed"] and not sum(r["redactions"].values())
    )


def test_filters_drop_with_reasons_and_user_hook_failures(tmp_path, monkeypatch):
    import sys
    import types

    import pyarrow as pa

    from forgeml.data.ingest import SCHEMA as RAW

    mod = types.ModuleType("curate_test_hooks")
    mod.explode = lambda text, record: (_ for _ in ()).throw(ValueError(text))
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    texts = ["short", "x = 1\n" * 3, "word " * 5, "call acme_sk_abcdefghij0123456789xyz"]
    rows = [
        {
            "doc_id": str(i),
            "text": t,
            "path": f"f{i}.txt",
            "source": "s",
            "sha256": "h",
            "bytes": 1,
            "type": "code" if i == 1 else "text",
            "language": "python" if i == 1 else None,
            "locator": "",
            "metadata": None,
        }
        for i, t in enumerate(texts)
    ]
    raw = tmp_path / "raw.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=RAW), raw)
    cfg = CurateConfig.model_validate(
        {
            **NO_GOPHER,
            "length": {"min_chars": 10},
            "language": {"enabled": False},
            "user_filters": ["curate_test_hooks:explode"],
            "redact": {"secret": "drop"},
        }
    )
    report = curate_documents(raw, tmp_path / "out.parquet", cfg)
    assert report.dropped_by_reason == {"length:too_short": 1}
    assert report.failed_by_reason == {"user_filter_error:explode:ValueError": 3}
    assert "acme_sk_" not in json.dumps(report.to_dict())
    cfg = cfg.model_copy(update={"user_filters": []})
    report = curate_documents(raw, tmp_path / "out.parquet", cfg)
    assert report.dropped_by_reason == {"length:too_short": 1, "redact:secret": 1}
    assert report.kept == 2 and pq.read_table(tmp_path / "out.parquet").num_rows == 2


def test_mix_weights_upsampling_and_seed(tmp_path):
    import pyarrow as pa

    from forgeml.data.mix import MixSource, mix_datasets

    def write(name: str, n: int) -> Path:
        path = tmp_path / f"{name}.parquet"
        rows = [
            {"doc_id": f"{name}{i}", "text": "x" * 100, "path": f"{i}", "type": "text"}
            for i in range(n)
        ]
        pq.write_table(pa.Table.from_pylist(rows), path)
        return path

    domain, general = write("domain", 10), write("general", 100)
    srcs = [MixSource(domain, "domain", weight=0.5), MixSource(general, "replay", weight=0.5)]
    summary = mix_datasets(srcs, tmp_path / "mix.parquet", seed=3, total_chars=4000)
    assert summary["domain"] == {"documents": 20, "chars": 2000, "available_chars": 1000}
    assert summary["replay"]["documents"] == 20  # down-sampled
    first = pq.read_table(tmp_path / "mix.parquet")
    mix_datasets(srcs, tmp_path / "again.parquet", seed=3, total_chars=4000)
    assert first.equals(pq.read_table(tmp_path / "again.parquet"))
    assert sorted(set(first.column("mix_source").to_pylist())) == ["domain", "replay"]


def test_curation_in_worker_processes_is_identical_to_local(workspace, tmp_path, monkeypatch):
    """`curate.executor: processes`: the per-record work in two spawned processes, merged in
    input order: the same curated Parquet and the same report as one process."""
    from test_ray import _raw_acme

    from forgeml.data import curate

    raw = _raw_acme(workspace, tmp_path)
    monkeypatch.setattr(curate, "_BATCH", 32)  # many batches, so their order matters
    base = {"gopher_repetition": {"enabled": False}, "dedup": {"threshold": 0.7}}
    local = curate_documents(raw, tmp_path / "local.parquet", CurateConfig.model_validate(base))
    cfg = CurateConfig.model_validate({**base, "executor": "processes", "workers": 2})
    assert cfg.output_settings() == CurateConfig.model_validate(base).output_settings()
    procs = curate_documents(raw, tmp_path / "procs.parquet", cfg)

    assert local.input > 5 * 32 and local.kept and local.dropped
    assert local.duplicates["near_clusters"] and local.redactions["email"]
    assert pq.read_table(tmp_path / "local.parquet").equals(
        pq.read_table(tmp_path / "procs.parquet")
    )
    report_a, report_b = local.to_dict(), procs.to_dict()
    assert report_a.pop("out_path") != report_b.pop("out_path")
    assert json.dumps(report_a) == json.dumps(report_b)


def die_in_filter(text: str, record: dict) -> str | None:
    os._exit(1)  # a worker killed mid-batch (as by the OOM killer)


def test_a_dead_curation_worker_is_a_clear_error(tmp_path):
    import pyarrow as pa

    from forgeml.core.errors import DataError
    from forgeml.data.ingest import SCHEMA as RAW

    texts = ["a plain sentence of some words for the test"] * 4
    rows = {f.name: [None] * len(texts) for f in RAW}
    rows.update(text=texts, doc_id=[f"d{i}" for i in range(4)], type=["text"] * 4)
    raw = tmp_path / "raw.parquet"
    pq.write_table(pa.table(rows, schema=RAW), raw)
    cfg = CurateConfig.model_validate(
        {
            **NO_GOPHER,
            "executor": "processes",
            "workers": 1,
            "user_filters": ["test_curate:die_in_filter"],
        }
    )
    with pytest.raises(DataError, match="worker process died"):
        curate_documents(raw, tmp_path / "out.parquet", cfg)
    assert not (tmp_path / "out.parquet").exists()
