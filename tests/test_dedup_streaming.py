"""Out-of-core dedup: signatures and exact hashes spilled to disk, LSH band keys and hashes
grouped by partition. Same clusters as the in-memory path; memory flat in corpus size."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from test_dedup import planted_corpus

from forgeml.data.dedup import (
    ExactHashSpill,
    MinHasher,
    SignatureSpill,
    deduplicate,
    exact_groups_spilled,
    near_duplicate_clusters,
    near_duplicate_clusters_spilled,
)


def _spill(path, sigs: np.ndarray, batch: int = 37) -> SignatureSpill:
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
    sigs = MinHasher(128, 5, seed=1).signatures(texts)
    with _spill(tmp_path / "s.bin", sigs) as spill:
        near = near_duplicate_clusters_spilled(
            spill, 0.8, seed=1, exclude=dups, max_entries=300, work_dir=tmp_path
        )
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
    # 40k and 160k documents: signatures of 20 MB and 82 MB (the in-memory path would also
    # copy them to uint64: 3x that). Peak traced memory of the spilled path stays flat.
    small, recall_small = _peak_bytes(tmp_path, 40_000, 1 << 16)
    large, recall_large = _peak_bytes(tmp_path, 160_000, 1 << 16)
    assert recall_small >= 0.99 and recall_large >= 0.99
    assert large < 1.25 * small, (small, large)
    assert large < 40e6, large  # well under the 82 MB of signatures alone
