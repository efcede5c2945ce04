"""The pack stage: a document dataset and a tokenizer in, one token-shards asset out.

The asset holds `train/` and `heldout/` shards (flat token ids + JSON index, memory-mapped
by training); with `fim.rate` > 0 the training split gets fill-in-the-middle examples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from forgeml.core.config import FimConfig
from forgeml.core.workspace import Workspace
from forgeml.pipeline.datasets import documents_parquet, heldout_doc_ids
from forgeml.pipeline.runtime import Notify, Output, StageResult, run_stage
from forgeml.registry import open_registry


def pack_stage(
    ws: Workspace,
    dataset_ref: str,
    tokenizer_ref: str,
    *,
    heldout_fraction: float = 0.05,
    fim: FimConfig | None = None,
    force: bool = False,
    progress: bool = False,
    notify: Notify | None = None,
) -> StageResult:
    """Tokenize a dataset into train/ and heldout/ token shards (one asset). With `fim.rate`
    > 0 the training split gets fill-in-the-middle examples; held-out stays plain text."""
    from forgeml.tokenizer.fim import pack_fim_shards
    from forgeml.tokenizer.pack import pack_token_shards

    reg = open_registry(ws)
    dataset, tok = reg.get_asset(dataset_ref), reg.get_asset(tokenizer_ref)
    parquet = documents_parquet(dataset)
    use_fim = fim is not None and fim.rate > 0
    config: dict[str, Any] = {"heldout_fraction": heldout_fraction}
    if use_fim:
        config["fim"] = fim.model_dump(mode="json")

    def body(work: Path) -> tuple[list[Output], dict[str, Any]]:
        held = heldout_doc_ids(parquet, heldout_fraction)
        out = work / "shards"
        out.mkdir(parents=True, exist_ok=True)
        if use_fim:
            train = pack_fim_shards(
                [parquet], Path(tok.path), out / "train", fim,
                row_filter=lambda row: row["doc_id"] not in held,
            )  # fmt: skip
        else:
            train = pack_token_shards(
                [parquet],
                Path(tok.path),
                out / "train",
                progress=progress,
                row_filter=lambda row: row["doc_id"] not in held,
            )
        metrics = {"train_tokens": train["n_tokens"], "train_docs": train["n_docs"]}
        if held:
            heldout = pack_token_shards(
                [parquet],
                Path(tok.path),
                out / "heldout",
                progress=progress,
                row_filter=lambda row: row["doc_id"] in held,
            )
            metrics.update(heldout_tokens=heldout["n_tokens"], heldout_docs=heldout["n_docs"])
        meta = {"format": "token-shards", "dataset": dataset.id, "tokenizer": tok.id, **metrics}
        name = f"{dataset.name}-tokens"
        return [Output("dataset", name, out, meta, parents=[dataset.id, tok.id])], metrics

    return run_stage(ws, "pack", config, [dataset.id, tok.id], body, force=force, notify=notify)
