"""The tokenizer stage: a document dataset in, a byte-level BPE tokenizer asset out.

It trains on the dataset's training documents only (the held-out split stays unseen), with
the chat and FIM special tokens; `tokenizer.json` loads in `transformers` as it is.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from forgeml.core.config import TokenizerConfig
from forgeml.core.io import parquet_batches
from forgeml.core.workspace import Workspace
from forgeml.pipeline.datasets import documents_parquet, heldout_doc_ids
from forgeml.pipeline.runtime import Notify, Output, StageResult, run_stage
from forgeml.registry import open_registry


def _iter_texts(parquet: Path, skip: set[str]) -> Iterator[str]:
    for batch in parquet_batches(pq.ParquetFile(parquet), 1024, ["doc_id", "text"]):
        for doc_id, text in zip(
            batch.column(0).to_pylist(), batch.column(1).to_pylist(), strict=True
        ):
            if doc_id not in skip:
                yield text


def tokenizer_stage(
    ws: Workspace,
    dataset_ref: str,
    cfg: TokenizerConfig,
    *,
    heldout_fraction: float = 0.05,
    force: bool = False,
    progress: bool = False,
    notify: Notify | None = None,
) -> StageResult:
    """Train a byte-level BPE tokenizer on the dataset's training documents."""
    from forgeml.tokenizer.train import train_bpe_tokenizer

    reg = open_registry(ws)
    dataset = reg.get_asset(dataset_ref)
    parquet = documents_parquet(dataset)
    config = {"tokenizer": cfg.model_dump(mode="json"), "heldout_fraction": heldout_fraction}

    def body(work: Path) -> tuple[list[Output], dict[str, Any]]:
        skip = heldout_doc_ids(parquet, heldout_fraction)
        out = train_bpe_tokenizer(
            _iter_texts(parquet, skip),
            vocab_size=cfg.vocab_size,
            out_dir=work / "tokenizer",
            min_frequency=cfg.min_frequency,
            max_bytes=cfg.max_train_bytes,
            progress=progress,
        )
        from tokenizers import Tokenizer

        size = Tokenizer.from_file(str(Path(out) / "tokenizer.json")).get_vocab_size()
        meta = {"vocab_size": size, "dataset": dataset.id}
        return [Output("tokenizer", f"{dataset.name}-bpe{cfg.vocab_size}", Path(out), meta)], {
            "vocab_size": size
        }

    return run_stage(ws, "tokenizer", config, [dataset.id], body, force=force, notify=notify)
