"""Mixing: several document datasets (or the sources of one) into one, by weights or
character budgets, seeded; a recipe's `data.mix` runs `mix_by_source` before the tokenizer.

A source with a budget larger than its size is repeated (whole epochs, then a seeded
sample of the rest); a smaller budget takes a seeded sample of documents. A replay share of
a previous dataset for continued pre-training is one more source with its own weight
(Ibrahim et al., "Simple and scalable strategies to continually pre-train LLMs",
arXiv 2403.08763, replay a few percent of the old data).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from forgeml.core.errors import DataError
from forgeml.core.io import atomic_open


@dataclass(frozen=True)
class MixSource:
    """One input: `weight` (share of the total) or `budget_chars` (absolute), not both."""

    path: str | Path
    name: str
    weight: float | None = None
    budget_chars: int | None = None


def _pick_rows(lengths: np.ndarray, budget: int, rng: np.random.Generator) -> np.ndarray:
    """Row indices (with repeats for up-sampling) whose lengths add up to about `budget`."""
    total = int(lengths.sum())
    if total == 0 or budget <= 0:
        return np.zeros(0, dtype=np.int64)
    epochs, rest = divmod(budget, total)
    picks = [np.arange(len(lengths))] * int(epochs)
    order = rng.permutation(len(lengths))
    take = np.searchsorted(np.cumsum(lengths[order]), rest, side="right")
    picks.append(np.sort(order[:take]))
    return np.concatenate(picks)


def mix_datasets(
    sources: list[MixSource], out_path: str | Path, *, seed: int = 0, total_chars: int | None = None
) -> dict:
    """Write the mixture to `out_path` (atomic) with a `mix_source` column; return per-source
    counts. Weights are shares of `total_chars` (default: the sum of all sources' sizes)."""
    if not sources:
        raise DataError("no sources to mix", "give at least one dataset")
    tables = []
    for src in sources:
        if (src.weight is None) == (src.budget_chars is None):
            raise DataError(f"mix source '{src.name}': give exactly one of weight or budget_chars")
        table = pq.read_table(
            Path(src.path) / "data.parquet" if Path(src.path).is_dir() else src.path
        )
        tables.append(table.select(["doc_id", "text", "path", "type"]))
    return _write_mixture(sources, tables, Path(out_path), seed=seed, total_chars=total_chars)


def mix_by_source(
    parquet: str | Path,
    weights: dict[str, float],
    out_path: str | Path,
    *,
    seed: int = 0,
    total_chars: int | None = None,
) -> dict:
    """Re-weight one document dataset by its `source` column (the folder or file each document
    was ingested from): source `s` gets `weights[s] / sum(weights)` of `total_chars` (default:
    the dataset's characters). Every column is kept, plus `mix_source`; returns per-source
    counts as `mix_datasets` does."""
    table = pq.read_table(parquet)
    if "source" not in table.column_names:
        raise DataError(f"{parquet} has no 'source' column", "mix a dataset made by ingest")
    present = set(pc.unique(table.column("source")).to_pylist())
    missing = sorted(present - set(weights))
    if missing:
        raise DataError(
            f"documents from source {missing[0]} have no mix weight",
            "give every data.sources entry a weight in data.mix.weights",
        )
    empty = sorted(set(weights) - present)
    if empty:
        raise DataError(
            f"mix weight given for {empty[0]}, but the dataset has no documents from it",
            "check that its files were not all skipped at ingest or dropped by curation "
            "(see the stage reports), or remove its weight",
        )
    share = sum(weights.values())
    sources = [MixSource(parquet, name, weight=weights[name] / share) for name in sorted(weights)]
    tables = [table.filter(pc.equal(table.column("source"), src.name)) for src in sources]
    return _write_mixture(sources, tables, Path(out_path), seed=seed, total_chars=total_chars)


def _write_mixture(
    sources: list[MixSource],
    tables: list[pa.Table],
    out_path: Path,
    *,
    seed: int,
    total_chars: int | None,
) -> dict:
    sizes = [int(pc.sum(pc.utf8_length(t.column("text"))).as_py() or 0) for t in tables]
    total = total_chars if total_chars is not None else sum(sizes)
    rng = np.random.default_rng(seed)
    parts, summary = [], {}
    for src, table in zip(sources, tables, strict=True):
        budget = src.budget_chars if src.budget_chars is not None else int(src.weight * total)
        lengths = pc.utf8_length(table.column("text")).to_numpy(zero_copy_only=False)
        rows = _pick_rows(lengths, budget, rng)
        picked = table.take(pa.array(rows, pa.int64()))
        picked = picked.append_column("mix_source", pa.array([src.name] * len(rows), pa.string()))
        parts.append(picked)
        summary[src.name] = {
            "documents": len(rows),
            "chars": int(lengths[rows].sum()) if len(rows) else 0,
            "available_chars": int(lengths.sum()),
        }
    mixed = pa.concat_tables(parts)
    mixed = mixed.take(pa.array(rng.permutation(mixed.num_rows)))  # interleave sources
    with atomic_open(out_path, "wb") as fh:
        pq.write_table(mixed, fh, compression="zstd")
    return summary
