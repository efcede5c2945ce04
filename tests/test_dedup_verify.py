"""Near duplicates at Jaccard 0.6-0.8: LSH candidates at a lower threshold, each verified on
the exact shingle sets, so copies are clustered and similar-but-distinct documents are not."""

from __future__ import annotations

import random

import numpy as np
import pytest
from test_dedup import shingles

from forgeml.data.dedup import (
    MinHasher,
    deduplicate,
    lsh_candidate_pairs,
    near_duplicate_clusters,
    shingle_overlap,
)
from forgeml.data.dedup_spill import (
    SignatureSpill,
)

_RNG = random.Random(7)
VOCAB = [
    "".join(_RNG.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(_RNG.randint(3, 9)))
    for _ in range(5000)
]


def words(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [rng.choice(VOCAB) for _ in range(n)]


def jaccard(a: str, b: str) -> float:
    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb)


def edited(text: str, rate: float, seed: int) -> str:
    """Substitutions, insertions and deletions at `rate` per word."""
    rng = random.Random(seed)
    out = []
    for w in text.split():
        r = rng.random()
        if r < rate / 3:
            out.append(rng.choice(VOCAB))
        elif r < 2 * rate / 3:
            out += [w, rng.choice(VOCAB)]
        elif r >= rate:
            out.append(w)
    return " ".join(out)


def with_fillers(texts: list[str]) -> list[str]:
    return [" ".join(words(300, 1000 + i)) for i in range(30)] + texts


def test_near_copy_at_jaccard_065_is_clustered():
    source = " ".join(words(600, 1))
    copy = edited(source, 0.045, seed=2)
    j = jaccard(source, copy)
    assert 0.6 < j < 0.7, j  # the band that the old 0.8 threshold missed
    texts = with_fillers([source, copy])
    result = deduplicate(texts)
    assert result.near_clusters == [[30, 31]]
    assert result.reason[31] == "dedup:near" and result.keep[30]
    old = deduplicate(texts, threshold=0.8, candidate_threshold=0.8)
    assert old.near_clusters == []  # and what today's setting would have done


def test_hard_negative_with_shared_boilerplate_is_kept():
    boilerplate = words(360, 3)  # a template shared by both, different content inside
    a = " ".join(boilerplate[:180] + words(260, 4) + boilerplate[180:])
    b = " ".join(boilerplate[:180] + words(260, 5) + boilerplate[180:])
    j = jaccard(a, b)
    assert 0.35 < j < 0.45, j
    result = deduplicate(with_fillers([a, b]))
    assert result.near_clusters == [] and result.keep.all()


def test_verification_rejects_an_lsh_candidate():
    """A pair that LSH at the 0.5 candidate threshold proposes (Jaccard ~0.5: half its band
    keys agree) but that is no near duplicate: the exact check is what keeps it apart."""
    hasher = MinHasher(128, 5, seed=1)
    for seed in range(20):
        shared = words(330, 100 + seed)
        a = " ".join(shared + words(165, 200 + seed))
        b = " ".join(words(165, 300 + seed) + shared)
        sketches = hasher.sketch(with_fillers([a, b]))
        pairs = lsh_candidate_pairs(sketches.signatures, 0.5, seed=1).tolist()
        if [30, 31] in pairs:
            break
    else:
        pytest.fail("no constructed pair became an LSH candidate")
    j, contained = shingle_overlap(sketches.shingle_set(30), sketches.shingle_set(31))
    assert abs(j - jaccard(a, b)) < 0.01 and 0.45 < j < 0.6 and contained < 0.9
    verified = near_duplicate_clusters(sketches, 0.6, candidate_threshold=0.5, seed=1)
    assert verified == []
    unverified = near_duplicate_clusters(sketches.signatures, 0.4, seed=1)  # estimate only
    assert [30, 31] in unverified


def test_containment_clusters_a_copy_with_long_boilerplate():
    body = " ".join(words(300, 8))
    header, footer = " ".join(words(120, 9)), " ".join(words(110, 10))
    copy = f"{header} {body} {footer}"
    j = jaccard(body, copy)
    assert 0.5 < j < 0.6, j  # below the Jaccard threshold: only containment finds it
    texts = with_fillers([body, copy])
    assert deduplicate(texts).near_clusters == [[30, 31]]
    assert deduplicate(texts, containment=None).near_clusters == []


def test_spill_keeps_shingle_sets(tmp_path):
    hasher = MinHasher(64, 5, seed=1)
    texts = [" ".join(words(50 + 10 * i, i)) for i in range(7)] + [""]
    whole = hasher.sketch(texts)
    with SignatureSpill(tmp_path / "s.bin", 64) as spill:
        spill.append(hasher.sketch(texts[:3]))
        spill.append(hasher.sketch(texts[3:]))
        assert np.array_equal(spill.read(0, 8), whole.signatures)
        for i in range(8):
            assert np.array_equal(spill.shingle_set(i), whole.shingle_set(i))
        with pytest.raises(ValueError, match="Sketches"):
            spill.append(whole.signatures)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.bin"]


def test_curation_report_names_what_each_near_copy_duplicates(tmp_path):
    import pyarrow.parquet as pq
    from test_dedup_streaming import _FILTERS_OFF, _raw_parquet

    from forgeml.core.config import CurateConfig
    from forgeml.data.curate import curate_documents

    source = " ".join(words(500, 11))
    copy = edited(source, 0.055, seed=12)
    boilerplate = words(340, 13)
    neg_a = " ".join(boilerplate[:170] + words(250, 14) + boilerplate[170:])
    neg_b = " ".join(boilerplate[:170] + words(250, 15) + boilerplate[170:])
    assert 0.6 < jaccard(source, copy) < 0.7 and jaccard(neg_a, neg_b) < 0.45
    texts = with_fillers([source, neg_a, copy, neg_b])
    raw = _raw_parquet(tmp_path / "raw.parquet", texts)
    report = curate_documents(
        raw, tmp_path / "out.parquet", CurateConfig.model_validate(_FILTERS_OFF)
    )
    assert report.dropped_by_reason == {"dedup:near": 1}
    assert report.input == report.kept + report.dropped == len(texts)
    (cluster,) = report.duplicates["top_clusters"]
    assert cluster["kind"] == "near" and cluster["representative"]["path"] == "docs/30.txt"
    assert cluster["raw_rows"] == [30, 32]
    kept = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [r["raw_row"] for r in kept] == [i for i in range(len(texts)) if i != 32]
    assert {r["raw_row"]: r["duplicates_removed"] for r in kept}[30] == 1


def test_large_bucket_of_copies_forms_one_cluster():
    """More copies than `_ALL_PAIRS` share every band: linked through the first member and
    each one's predecessor, they still make one cluster, and a hard negative stays out."""
    source = words(400, 20)
    copies = []
    for k in range(40):
        w = list(source)
        w[(7 * k) % len(w)] = f"changed{k}"
        copies.append(" ".join(w))
    negative = " ".join(source[:200] + words(250, 21))
    result = deduplicate(with_fillers([" ".join(source), *copies, negative]))
    assert result.near_clusters == [list(range(30, 71))]
    assert result.keep[71] and result.keep[30] and not result.keep[31:71].any()


@pytest.mark.parametrize("max_entries", [64, 1 << 20])
def test_spilled_verified_lsh_equals_in_memory(tmp_path, max_entries):
    from test_dedup import planted_corpus
    from test_dedup_streaming import _spill

    from forgeml.data.dedup_spill import near_duplicate_clusters_spilled

    texts, _ = planted_corpus(4)
    sketches = MinHasher(128, 5, seed=1).sketch(texts)
    kwargs = {"candidate_threshold": 0.5, "containment": 0.9, "seed": 1}
    expected = near_duplicate_clusters(sketches, 0.6, **kwargs)
    assert len(expected) >= 50
    with _spill(tmp_path / "s.bin", sketches) as spill:
        got = near_duplicate_clusters_spilled(
            spill, 0.6, max_entries=max_entries, work_dir=tmp_path, **kwargs
        )
    assert got == expected
