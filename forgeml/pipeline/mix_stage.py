"""The mix stage: a document dataset in, the same documents re-weighted by source out, as a
registered run between curation and the tokenizer (a recipe's `data.mix` section).

The mixed asset (`data.parquet` with a `mix_source` column, `report.json` with each source's
documents and characters) has the input dataset as its parent.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from forgeml.core.config import MixConfig
from forgeml.core.io import atomic_write_text
from forgeml.core.workspace import Workspace
from forgeml.pipeline.datasets import documents_parquet
from forgeml.pipeline.runtime import Notify, Output, StageResult, run_stage
from forgeml.registry import open_registry


def mix_stage(
    ws: Workspace,
    dataset_ref: str,
    cfg: MixConfig,
    *,
    name: str | None = None,
    force: bool = False,
    notify: Notify | None = None,
) -> StageResult:
    """Re-weight the sources of dataset `dataset_ref` by `cfg.weights` (keyed by source path,
    as `data.sources` names them) into a new dataset asset."""
    from forgeml.data.mix import mix_by_source

    dataset = open_registry(ws).get_asset(dataset_ref)
    parquet = documents_parquet(dataset)
    # ingest records each source as its resolved path
    weights = {str(Path(s).expanduser().resolve()): w for s, w in cfg.weights.items()}
    out_name = name or f"{dataset.name}-mixed"
    config = {
        "mix": {"weights": weights, "total_chars": cfg.total_chars, "seed": cfg.seed},
        "name": out_name,
    }

    def body(work: Path) -> tuple[list[Output], dict[str, Any]]:
        out = work / "dataset"
        out.mkdir(parents=True, exist_ok=True)
        summary = mix_by_source(
            parquet, weights, out / "data.parquet", seed=cfg.seed, total_chars=cfg.total_chars
        )
        atomic_write_text(out / "report.json", json.dumps({"sources": summary}, indent=1))
        chars = sum(s["chars"] for s in summary.values())
        share = {src: s["chars"] / chars if chars else 0.0 for src, s in summary.items()}
        metrics: dict[str, Any] = {
            "documents": sum(s["documents"] for s in summary.values()),
            "chars": chars,
            **{f"share:{Path(src).name}": round(v, 4) for src, v in share.items()},
        }
        meta = {
            "format": "mixed-documents-parquet",
            "sources": summary,
            "share": share,
            "input": dataset.id,
        }
        return [Output("dataset", out_name, out, meta, parents=[dataset.id])], metrics

    return run_stage(ws, "mix", config, [dataset.id], body, force=force, notify=notify)
