"""The curate stage: a raw dataset asset in, a curated dataset asset out, as a registered run.

The curated asset (`data.parquet`, `report.json`, `report.html`) has the raw dataset as its
parent, so `forgeml lineage` shows where every curated dataset came from; a second call with
the same config and input is answered from the cache by `run_stage`.
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
    from forgeml.data.report import save_report

    cfg = cfg or CurateConfig()
    raw = open_registry(ws).get_asset(dataset_ref)
    parquet = documents_parquet(raw)
    out_name = name or f"{raw.name}-curated"
    # where it runs (curate.executor: local | processes | ray) is not part of the cache key: same output
    config = {"curate": cfg.output_settings(), "name": out_name}

    def body(work: Path) -> tuple[list[Output], dict[str, Any]]:
        out = work / "dataset"
        report = curate_documents(parquet, out / "data.parquet", cfg, progress=progress)
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
        metrics = {k: summary[k] for k in ("input", "kept", "dropped", "failed")}
        metrics["chars_kept"] = summary["chars"]["kept"]
        reasons, redactions = summary["dropped_by_reason"], summary["redactions"]
        metrics["duplicates_removed"] = sum(v for k, v in reasons.items() if k.startswith("dedup:"))
        metrics["secrets_redacted"] = redactions.get("secret", 0)
        metrics["pii_redacted"] = sum(v for k, v in redactions.items() if k != "secret")
        return [Output("dataset", out_name, out, meta, parents=[raw.id])], metrics

    return run_stage(ws, "curate", config, [raw.id], body, force=force, notify=notify)
