"""Out-of-core dedup: signatures and exact hashes spilled to disk, LSH band keys and hashes
grouped by partition. Same clusters as the in-memory path; memory flat in corpus size."""

from __future__ import annotations

import random
import tracemalloc

import numpy as np
import pytest
from test_dedup import planted_corpus

from forgeml.data.dedup import (
    MinHasher,
    Sketches,
    deduplicate,
    near_duplicate_clusters,
)
from forgeml.data.dedup_spill import (
    ExactHashSpill,
    SignatureSpill,
    exact_groups_spilled,
    near_duplicate_clusters_spilled,
)


def _spill(path, sigs: np.ndarray | Sketches, batch: int = 37) -> SignatureSpill:
    """Signatures (or sketches: signatures and shingles) appended in batches of `batch`."""
    if isinstance(sigs, Sketches):
        spill = SignatureSpill(path, sigs.signatures.shape[1])
        for i in range(0, len(sigs), batch):
            j = min(i + batch, len(sigs))
            offsets = sigs.offsets[i : j + 1]
            part = sigs.shingles[offsets[0] : offsets[-1]]
            spill.append(Sketches(sigs.signatures[i:j], part, offsets - offsets[0]))
        return spill
    spill = SignatureSpill(path, sigs.shape[1])
    for i in range(0, len(sigs), batch):
        spill.append(sigs[i : i + batch])
    return spill


def test_signature_spill_round_trip(tmp_path):
    sigs = np.random.default_rng(0).integers(0, 1 << 32, (101, 16), dtype=np.uint32)
    with _spill(tmp_path / "s.bin", sigs) as spill:
        assert spill.n == 101
        assert np.array_equal(spill.read(0, 101), sigs)
        assert np.array_equal(spill.rows(np.array([100, 3, 3, 50])), sigs[[100, 3, 3, 50]])
        assert np.array_equal(np.concatenate([c for _, c in spill.chunks(10)]), sigs)
        with pytest.raises(ValueError, match="expected"):
            spill.append(sigs[:, :8])


@pytest.mark.parametrize("threshold", [0.5, 0.8, 0.9])
@pytest.mark.parametrize("max_entries", [64, 1000, 1 << 20])
def test_spilled_lsh_equals_in_memory(tmp_path, threshold, max_entries):
    texts, _ = planted_corpus()
    sigs = MinHasher(128, 5, seed=1).signatures(texts)
    expected = near_duplicate_clusters(sigs, threshold, seed=1)
    assert len(expected) >= 4  # planted near copies (fewer reach 0.9)
    with _spill(tmp_path / "s.bin", sigs) as spill:
        got = near_duplicate_clusters_spilled(
            spill, threshold, seed=1, max_entries=max_entries, work_dir=tmp_path
        )
    assert got == expected
    assert [p.name for p in tmp_path.iterdir()] == ["s.bin"]  # partitions cleaned up


def test_spilled_exact_then_near_equals_deduplicate(tmp_path):
    texts, _ = planted_corpus(2)
    texts += texts[:40] + [t.upper() for t in texts[100:130]]  # exact (normalised) copies
    expected = deduplicate(texts, seed=1)
    with ExactHashSpill(tmp_path / "e.bin", buffer=7) as hashes:
        for i, t in enumerate(texts):
            hashes.add(t, i)
        groups = exact_groups_spilled(hashes, max_entries=50, work_dir=tmp_path)
    assert groups == expected.exact_clusters and len(groups) == 70
    dups = np.array(sorted(i for g in groups for i in g[1:]), dtype=np.int64)
    sketches = MinHasher(128, 5, seed=1).sketch(texts)
    with _spill(tmp_path / "s.bin", sketches) as spill:
        near = near_duplicate_clusters_spilled(
            spill, 0.6, candidate_threshold=0.5, containment=0.9, seed=1, exclude=dups,
            max_entries=300, work_dir=tmp_path,
        )  # fmt: skip
    assert near == expected.near_clusters


def _synthetic_spill(spill: SignatureSpill, n: int, seed: int = 0, chunk: int = 10_000) -> set:
    """Random signatures with 1% planted near copies (8% of positions changed)."""
    rng = np.random.default_rng(seed)
    pairs = set()
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        sigs = rng.integers(0, 1 << 32, (m, spill.num_perm), dtype=np.uint32)
        k = m // 100
        src = rng.choice(m // 2, k, replace=False)
        dst = m // 2 + rng.choice(m - m // 2, k, replace=False)
        noise = rng.integers(0, 1 << 32, (k, spill.num_perm), dtype=np.uint32)
        sigs[dst] = np.where(rng.random((k, spill.num_perm)) < 0.08, noise, sigs[src])
        pairs |= {(start + int(a), start + int(b)) for a, b in zip(src, dst, strict=True)}
        spill.append(sigs)
    return pairs


def _peak_bytes(tmp_path, n: int, max_entries: int) -> tuple[int, float]:
    with SignatureSpill(tmp_path / f"s{n}.bin", 128) as spill:
        pairs = _synthetic_spill(spill, n)
        tracemalloc.start()
        clusters = near_duplicate_clusters_spilled(
            spill, 0.8, seed=1, max_entries=max_entries, work_dir=tmp_path
        )
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    found = {tuple(c) for c in clusters}
    return peak, sum(p in found for p in pairs) / len(pairs)


def test_spilled_lsh_memory_does_not_grow_with_corpus(tmp_path):
    # 20k and 80k documents: signatures of 10 MB and 41 MB (the in-memory path would also
    # copy them to uint64: 3x that). Peak traced memory of the spilled path stays flat.
    small, recall_small = _peak_bytes(tmp_path, 20_000, 1 << 15)
    large, recall_large = _peak_bytes(tmp_path, 80_000, 1 << 15)
    assert recall_small >= 0.99 and recall_large >= 0.99
    assert large < 1.25 * small, (small, large)
    assert large < 20e6, large  # well under the 41 MB of signatures alone


# -- curation: the whole pipeline on spilled dedup -------------------------------------------

_FILTERS_OFF = {
    "language": {"enabled": False},
    "gopher_quality": {"enabled": False},
    "gopher_repetition": {"enabled": False},
    # Title-cased random words hold gazetteer given names: redacting them would change copies
    "redact": {"person": "keep"},
}


def _raw_parquet(path, texts: list[str]):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from forgeml.data.ingest import SCHEMA

    n = len(texts)
    cols = {
        "doc_id": [f"d{i}" for i in range(n)],
        "text": texts,
        "path": [f"docs/{i}.txt" for i in range(n)],
        "source": ["test"] * n,
        "sha256": [""] * n,
        "bytes": [len(t) for t in texts],
        "type": ["text"] * n,
        "language": [None] * n,
        "locator": [""] * n,
        "metadata": [None] * n,
    }
    pq.write_table(pa.table(cols, schema=SCHEMA), path, row_group_size=256)
    return path


def test_curate_dedup_equals_in_memory_deduplicate(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from forgeml.core.config import CurateConfig
    from forgeml.data import curate

    monkeypatch.setattr(curate, "_DEDUP_MAX_ENTRIES", 64)  # many partitions
    texts, _ = planted_corpus(3)
    texts += texts[:30] + [t.title() for t in texts[200:220]]
    expected = deduplicate(texts, seed=1)  # the defaults of DedupConfig
    raw = _raw_parquet(tmp_path / "raw.parquet", texts)
    cfg = CurateConfig.model_validate(_FILTERS_OFF)
    report = curate.curate_documents(raw, tmp_path / "out.parquet", cfg)
    rows = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [r["raw_row"] for r in rows] == np.flatnonzero(expected.keep).tolist()
    assert report.duplicates["exact_clusters"] == len(expected.exact_clusters) == 50
    assert report.duplicates["near_clusters"] == len(expected.near_clusters) > 50
    copies = {g[0]: len(g) - 1 for g in expected.exact_clusters}
    for c in expected.near_clusters:
        copies[c[0]] = copies.get(c[0], 0) + len(c) - 1 + sum(copies.get(i, 0) for i in c[1:])
    assert {r["raw_row"]: r["duplicates_removed"] for r in rows if r["duplicates_removed"]} == {
        k: v for k, v in copies.items() if v
    }


def _short_corpus(n: int, seed: int = 5) -> list[str]:
    rng = random.Random(seed)
    vocab = [
        "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 8))) for _ in range(3000)
    ]
    texts: list[str] = []
    for i in range(n):
        if i % 20 == 19:  # a near copy: one word changed
            words = texts[rng.randrange(len(texts))].split()
            words[rng.randrange(len(words))] = "changed"
            texts.append(" ".join(words))
        else:
            texts.append(" ".join(rng.choices(vocab, k=rng.randint(40, 80))))
    return texts


def _curate_peak(tmp_path, n_docs: int) -> tuple[int, dict]:
    from forgeml.core.config import CurateConfig
    from forgeml.data.curate import curate_documents

    raw = _raw_parquet(tmp_path / f"raw{n_docs}.parquet", _short_corpus(n_docs))
    cfg = CurateConfig.model_validate({**_FILTERS_OFF, "redact": {"min_token_length": 64}})
    tracemalloc.start()
    report = curate_documents(raw, tmp_path / f"out{n_docs}.parquet", cfg)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak, report.dropped_by_reason


def test_curate_memory_does_not_grow_with_corpus(tmp_path, monkeypatch):
    from forgeml.data import curate

    # Small batches and partitions, so 250 documents already fill every buffer.
    monkeypatch.setattr(curate, "_BATCH", 16)
    monkeypatch.setattr(curate, "_DEDUP_MAX_ENTRIES", 1 << 9)
    small, dropped_small = _curate_peak(tmp_path, 250)
    large, dropped_large = _curate_peak(tmp_path, 1000)
    assert dropped_large["dedup:near"] > 3 * dropped_small["dedup:near"] > 0
    # The in-memory path held ~1.5 kB per surviving document (signature, sample, hashes):
    # +1.1 MB here. The spilled path grows by the duplicates found only.
    assert large < small + 300_000, (small, large)


def test_parquet_batches_memory_stays_at_one_row_group(tmp_path):
    """Curation reads its Parquet files through `parquet_batches`: the memory Arrow holds
    while streaming a file of 120 row groups stays near one row group (~0.3 MB here)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from forgeml.core.io import parquet_batches

    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghij") for _ in range(6)) for _ in range(3000)]
    texts = [" ".join(rng.choice(words) for _ in range(300)) for _ in range(128)]
    path = tmp_path / "many_groups.parquet"
    with pq.ParquetWriter(path, pa.schema([("text", pa.string())]), compression="zstd") as w:
        for _ in range(120):
            w.write_table(pa.table({"text": texts}))
    peak = rows = 0
    for batch in parquet_batches(pq.ParquetFile(path), 64):
        rows += batch.num_rows
        peak = max(peak, pa.total_allocated_bytes())
    assert rows == 120 * 128
    assert peak < 4 * 2**20, f"Arrow held {peak / 2**20:.1f} MB"


def test_row_group_writer_gathers_small_tables(tmp_path):
    """Many small writes become a few row groups (the writer's per-row-group metadata is
    what grew with the corpus), with every row kept in order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from forgeml.core.io import RowGroupWriter

    schema = pa.schema([("i", pa.int64()), ("text", pa.string())])
    path = tmp_path / "gathered.parquet"
    writer = RowGroupWriter(pq.ParquetWriter(path, schema), max_rows=1000)
    for start in range(0, 4096, 64):
        ids = list(range(start, start + 64))
        writer.write_table(pa.table({"i": ids, "text": [f"t{i}" for i in ids]}, schema=schema))
    writer.close()
    pfile = pq.ParquetFile(path)
    assert pfile.num_row_groups == 4  # 16 writes of 64 rows reach max_rows: 4 x 1024 rows
    assert pfile.read().column("i").to_pylist() == list(range(4096))
