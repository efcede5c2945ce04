"""Reading the document datasets stages take as input: a dataset asset's Parquet, and the
deterministic held-out split of its documents."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow.parquet as pq

from forgeml.core.errors import ForgeError
from forgeml.registry import Asset


def documents_parquet(asset: Asset) -> Path:
    """The `data.parquet` of a document dataset asset (one row per document)."""
    path = Path(asset.path) / "data.parquet"
    if asset.kind != "dataset" or not path.is_file():
        raise ForgeError(
            f"asset {asset.id} is a {asset.kind}, not a document dataset",
            hint="pass a dataset id from `forgeml data ingest` (see `forgeml assets list`)",
        )
    return path


def heldout_doc_ids(parquet: Path, fraction: float) -> set[str]:
    """Deterministic held-out split: the `fraction` of distinct documents with the smallest
    hash of their id (at least one when there are two or more documents)."""
    if fraction <= 0:
        return set()
    ids = sorted(set(pq.read_table(parquet, columns=["doc_id"]).column("doc_id").to_pylist()))
    if len(ids) < 2:
        return set()
    ranked = sorted(ids, key=lambda d: hashlib.sha256(f"heldout:{d}".encode()).hexdigest())
    n = max(1, round(fraction * len(ids)))
    return set(ranked[: min(n, len(ids) - 1)])
