"""The curate stage: a raw dataset asset in, a curated dataset asset out, as a registered run.

The curated asset (`data.parquet`, `report.json`, `report.html`; with media, `media.parquet`
and `media/`, see forgeml.data.media_carry) has the raw dataset as its parent, so `forgeml
lineage` shows where every curated dataset came from; a second call with the same config and
input is answered from the cache by `run_stage`. `media_pairs_stage` turns a dataset's media
pairs into the media dataset the multimodal training stages take.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from forgeml.core.config import CurateConfig
from forgeml.core.workspace import Workspace
from forgeml.pipeline.datasets import documents_parquet
from forgeml.pipeline.runtime import Notify, Output, StageResult, run_stage
from forgeml.registry import open_registry


def curate_stage(
    ws: Workspace,
    dataset_ref: str,
    cfg: CurateConfig | None = None,
    *,
    name: str | None = None,
    force: bool = False,
    progress: bool = False,
    notify: Notify | None = None,
) -> StageResult:
    """Curate the dataset `dataset_ref` (id, alias, name or prefix) into a new dataset asset."""
    from forgeml.data.curate import curate_documents
    from forgeml.data.media_carry import carry_media, paired_doc_ids
    from forgeml.data.report import save_report

    cfg = cfg or CurateConfig()
    raw = open_registry(ws).get_asset(dataset_ref)
    parquet = documents_parquet(raw)
    out_name = name or f"{raw.name}-curated"
    # where it runs (curate.executor: local | processes | ray) is not part of the cache key: same output
    config = {"curate": cfg.output_settings(), "name": out_name}
    fates = paired_doc_ids(raw.path)  # None: no media, the text-only path as before
    if fates is not None:  # runs cached before media was carried do not answer
        config["media"] = "carried"

    def body(work: Path) -> tuple[list[Output], dict[str, Any]]:
        out = work / "dataset"
        report = curate_documents(
            parquet, out / "data.parquet", cfg, progress=progress, fates=fates
        )
        if fates is not None:
            report.media = carry_media(raw.path, out, fates, cfg)
        # the asset's content names no path of this run or workspace, so the same documents
        # curated the same way give the same asset id in any workspace
        report.input_path, report.out_path = f"{raw.id}/data.parquet", "data.parquet"
        summary = report.to_dict()
        save_report(summary, out)
        meta = {
            k: summary[k]
            for k in ("input", "kept", "dropped", "failed", "dropped_by_reason", "redactions")
        }
        meta.update(format="curated-documents-parquet", raw_dataset=raw.id)
        if report.media:
            meta["media"] = {k: report.media[k] for k in ("input", "kept", "images", "audio")}
        metrics = {k: summary[k] for k in ("input", "kept", "dropped", "failed")}
        metrics["chars_kept"] = summary["chars"]["kept"]
        reasons, redactions = summary["dropped_by_reason"], summary["redactions"]
        metrics["duplicates_removed"] = sum(v for k, v in reasons.items() if k.startswith("dedup:"))
        metrics["secrets_redacted"] = redactions.get("secret", 0)
        metrics["pii_redacted"] = sum(v for k, v in redactions.items() if k != "secret")
        if report.media:
            metrics["media_kept"] = report.media["kept"]
            metrics["media_pairs_kept"] = report.media["pairs"]["kept"]
            metrics["media_redacted"] = sum(report.media["redactions"].values())
        return [Output("dataset", out_name, out, meta, parents=[raw.id])], metrics

    return run_stage(ws, "curate", config, [raw.id], body, force=force, notify=notify)


def media_pairs_stage(
    ws: Workspace,
    dataset_ref: str,
    *,
    heldout: float = 0.1,
    name: str | None = None,
    force: bool = False,
    notify: Notify | None = None,
) -> StageResult:
    """The media pairs of dataset `dataset_ref` (curated, or raw) as a media dataset asset
    (`train.jsonl`, `heldout.jsonl`, `media/`) that `forgeml train multimodal` takes."""
    from forgeml.data.media_pairs import MEDIA_JSONL, export_media_pairs

    source = open_registry(ws).get_asset(dataset_ref)
    out_name = name or f"{source.name}-media-pairs"
    config = {"heldout": heldout, "name": out_name}

    def body(work: Path) -> tuple[list[Output], dict[str, Any]]:
        out = work / "media-data"
        summary = export_media_pairs(source.path, out, heldout=heldout)
        records = summary["records"]
        meta = {"format": MEDIA_JSONL, "records": records["train"], "heldout": records["heldout"],
                "media_files": summary["media_files"], "with_media": summary["with_media"],
                "source": source.id}  # fmt: skip
        metrics = {"records": records["train"], "heldout_records": records["heldout"],
                   "pairs_skipped": sum(summary["skipped_by_reason"].values())}  # fmt: skip
        return [Output("dataset", out_name, out, meta, parents=[source.id])], metrics

    return run_stage(ws, "media-pairs", config, [source.id], body, force=force, notify=notify)
