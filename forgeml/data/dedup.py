"""Deduplication for curation: exact (normalised-text hash) and near duplicates (MinHash + LSH
candidates, each verified on the exact shingle sets), in memory; out of core in `dedup_spill`.

MinHash: Broder, "On the resemblance and containment of documents" (1997); banded LSH:
Leskovec et al., Mining of Massive Datasets, ch. 3; exact verification of candidates as in Lee
et al., arXiv 2107.06499. LSH proposes pairs below the decision threshold and the exact Jaccard
(or containment, for copies with boilerplate added) decides, so documents that only share a
template or long passages are kept. Out of core, band keys are hash-partitioned to disk as in
datatrove's MinHash stages. `benchmarks/dedup_throughput.py` and `near_dup_recall.py` compare
with datasketch.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

_WORD = re.compile(rb"[\w\x80-\xff]+")  # on UTF-8 bytes: multi-byte letters count
_MIX = np.uint64(0x9E3779B97F4A7C15)  # golden-ratio multiplier for combining word hashes
_BLOCK = 1 << 12  # shingles per numpy block: (128 x 4096) uint64 = 4 MiB, near cache size


def normalize_for_hash(text: str) -> str:
    """NFKC, lower case, whitespace runs collapsed: copies that differ only in layout or
    case hash the same."""
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def exact_hash(text: str) -> str:
    return hashlib.blake2b(normalize_for_hash(text).encode("utf-8"), digest_size=16).hexdigest()


class MinHasher:
    """MinHash signatures of word n-gram shingles; `num_perm` 32-bit values per document.

    Shingle hash g (64-bit, from CRC32 word hashes combined by position); permutation j is
    the multiply-shift hash (a_j * g + b_j) mod 2^64 with a_j odd (Dietzfelbinger et al.,
    1997), whose top 32 bits are kept. Because `>> 32` is monotone, the minimum is taken on
    the full 64-bit values and shifted once per document.
    """

    def __init__(self, num_perm: int = 128, shingle_words: int = 5, seed: int = 1) -> None:
        rng = np.random.default_rng(seed)
        self.num_perm, self.shingle_words = num_perm, shingle_words
        self.a = (rng.integers(0, 1 << 63, num_perm, dtype=np.uint64) << np.uint64(1)) | 1
        self.b = rng.integers(0, 1 << 63, num_perm, dtype=np.uint64)
        self._pos = (_MIX ** np.arange(1, shingle_words + 1, dtype=np.uint64)).astype(np.uint64)

    def shingle_hashes(self, text: str) -> np.ndarray:
        """64-bit hashes of the word n-grams of `text` (lower-cased), one per position."""
        words = _WORD.findall(text.lower().encode("utf-8"))
        h = np.fromiter(map(zlib.crc32, words), dtype=np.uint64, count=len(words))
        n = min(self.shingle_words, len(h))
        if n == 0:
            return np.zeros(1, dtype=np.uint64)
        m = len(h) - n + 1
        with np.errstate(over="ignore"):
            g = h[:m] * self._pos[0]
            for k in range(1, n):
                g += h[k : k + m] * self._pos[k]
        return g

    def signatures(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), num_perm) uint32 signatures."""
        return self.sketch(texts).signatures

    def sketch(self, texts: Sequence[str]) -> Sketches:
        """Signatures plus every document's shingle hashes, for verifying candidates. All
        shingles of the batch are hashed in fixed blocks (a cache-sized buffer, written in
        place); each block's minima per document come from one `minimum.reduceat`, so short
        documents cost no numpy calls."""
        hashes = [self.shingle_hashes(t) for t in texts]
        n_docs = len(hashes)
        best = np.full((n_docs, self.num_perm), np.iinfo(np.uint64).max, dtype=np.uint64)
        if n_docs == 0:
            empty = np.zeros(0, dtype=np.uint32)
            return Sketches(best.astype(np.uint32), empty, np.zeros(1, dtype=np.int64))
        flat = np.concatenate(hashes)
        doc_starts = np.cumsum([0] + [len(h) for h in hashes[:-1]])
        buf = np.empty((self.num_perm, _BLOCK), dtype=np.uint64)
        a, b = self.a[:, None], self.b[:, None]
        for lo in range(0, len(flat), _BLOCK):
            x = flat[lo : lo + _BLOCK]
            vals = buf[:, : len(x)]
            with np.errstate(over="ignore"):
                np.multiply(a, x[None, :], out=vals)
                vals += b
            first = int(np.searchsorted(doc_starts, lo, side="right")) - 1
            last = int(np.searchsorted(doc_starts, lo + len(x) - 1, side="right"))
            segments = np.maximum(doc_starts[first:last], lo) - lo
            mins = np.minimum.reduceat(vals, segments, axis=1).T
            np.minimum(best[first:last], mins, out=best[first:last])
        signatures = (best >> np.uint64(32)).astype(np.uint32)
        offsets = np.append(doc_starts, len(flat)).astype(np.int64)
        return Sketches(signatures, (flat >> np.uint64(32)).astype(np.uint32), offsets)


@dataclass
class Sketches:
    """A batch's MinHash signatures and the 32-bit hashes of each document's shingles (in
    text order, repeats included: document i owns shingles[offsets[i]:offsets[i + 1]])."""

    signatures: np.ndarray  # (n, num_perm) uint32
    shingles: np.ndarray  # uint32
    offsets: np.ndarray  # (n + 1,) int64

    def __len__(self) -> int:
        return len(self.signatures)

    def shingle_set(self, i: int) -> np.ndarray:
        """Sorted distinct shingle hashes of document i."""
        return np.unique(self.shingles[self.offsets[i] : self.offsets[i + 1]])


def shingle_overlap(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(Jaccard, containment of the smaller set in the larger) of two sorted distinct
    shingle-hash arrays."""
    if len(a) > len(b):
        a, b = b, a
    if len(a) == 0:
        return 0.0, 0.0
    pos = np.minimum(np.searchsorted(b, a), len(b) - 1)
    common = int(np.count_nonzero(b[pos] == a))
    return common / (len(a) + len(b) - common), common / len(a)


def lsh_params(threshold: float, num_perm: int, fn_weight: float = 0.8) -> tuple[int, int]:
    """(bands, rows) minimising the weighted false-positive and false-negative areas of the
    S-curve 1 - (1 - s^r)^b around `threshold` (datasketch's criterion, weights 0.5/0.5).
    Candidates are verified afterwards, so a false positive costs a comparison while a false
    negative is a missed duplicate: misses weigh more."""
    s = np.linspace(0.0, 1.0, 1001)
    best, best_err = (1, num_perm), float("inf")
    for bands in range(1, num_perm + 1):
        rows = num_perm // bands
        p = 1.0 - (1.0 - s**rows) ** bands
        err = np.trapezoid(np.where(s < threshold, (1 - fn_weight) * p, fn_weight * (1 - p)), s)
        if err < best_err:
            best, best_err = (bands, rows), err
    return best


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:  # the smaller index stays root: the earliest document represents
            self.parent[max(ra, rb)] = min(ra, rb)


def _band_layout(threshold: float, num_perm: int, bands: int | None, seed: int):
    if bands is None:
        bands, rows = lsh_params(threshold, num_perm)
    else:
        rows = num_perm // bands
    mult = np.random.default_rng(seed).integers(1, 1 << 63, rows, dtype=np.uint64) | 1
    return bands, rows, mult


def _band_keys(sig64: np.ndarray, band: int, rows: int, mult: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return (sig64[:, band * rows : (band + 1) * rows] * mult).sum(axis=1)


_ALL_PAIRS = 16  # LSH buckets up to this size yield every pair as a candidate


def _bucket_pairs(members: np.ndarray) -> np.ndarray:
    """Candidate pairs (k, 2) of one LSH bucket (ascending member indices): every pair of a
    small bucket; in a larger one each member with the first and with its predecessor, so
    that a band shared by a big cluster costs linear, not quadratic, work."""
    m = len(members)
    if m <= _ALL_PAIRS:
        i, j = np.triu_indices(m, 1)
    else:
        i = np.r_[np.zeros(m - 1, dtype=np.int64), np.arange(1, m - 1)]
        j = np.r_[np.arange(1, m), np.arange(2, m)]
    return np.stack([members[i], members[j]], axis=1).astype(np.int64)


class _PairCheck:
    """Decides whether a candidate pair is a near duplicate. With shingle sets: Jaccard >=
    `threshold`, or (copies with boilerplate added) the smaller set at least `containment`
    inside the larger with Jaccard >= the candidate threshold. Without: the signatures'
    estimated Jaccard >= `threshold`."""

    def __init__(
        self,
        threshold: float,
        candidate_threshold: float,
        containment: float | None,
        shingle_set: Callable[[int], np.ndarray] | None,
        signature_rows: Callable[[np.ndarray], np.ndarray],
    ) -> None:
        self.threshold, self.floor, self.containment = threshold, candidate_threshold, containment
        self._set = lru_cache(maxsize=1024)(shingle_set) if shingle_set else None
        self._rows = signature_rows
        # Out of core, a pair meets again in every band it shares: remember recent verdicts.
        self.is_near = lru_cache(maxsize=1 << 16)(self._is_near)

    def _is_near(self, a: int, b: int) -> bool:
        assert self._set is not None
        jaccard, contained = shingle_overlap(self._set(a), self._set(b))
        boilerplate_copy = self.containment is not None and contained >= self.containment
        return jaccard >= self.threshold or (boilerplate_copy and jaccard >= self.floor)

    def link(self, pairs: np.ndarray, union: Callable[[int, int], None], find) -> None:
        """Union every verified pair; pairs already in one cluster are not checked again."""
        if not len(pairs):
            return
        if self._set is None:
            docs, inverse = np.unique(pairs, return_inverse=True)
            sigs = self._rows(docs)
            inverse = inverse.reshape(pairs.shape)
            same = (sigs[inverse[:, 0]] == sigs[inverse[:, 1]]).mean(axis=1)
            for a, b in pairs[same >= self.threshold].tolist():
                union(a, b)
            return
        for a, b in pairs.tolist():
            if find(a) != find(b) and self.is_near(a, b):
                union(a, b)


def _clusters_of(find, nodes) -> list[list[int]]:
    groups: dict[int, list[int]] = {}
    for i in sorted(nodes):
        groups.setdefault(find(i), []).append(i)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: g[0])


def lsh_candidate_pairs(
    signatures: np.ndarray, threshold: float, *, bands: int | None = None, seed: int = 0
) -> np.ndarray:
    """Distinct candidate pairs (k, 2), (smaller, larger) index, sorted: documents that share
    a bucket in some band of an LSH whose S-curve has its midpoint near `threshold`."""
    n, num_perm = signatures.shape
    found = [np.zeros((0, 2), dtype=np.int64)]
    if n < 2:
        return found[0]
    bands, rows, mult = _band_layout(threshold, num_perm, bands, seed)
    sig64 = signatures.astype(np.uint64)
    for band in range(bands):
        keys = _band_keys(sig64, band, rows, mult)
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        sizes = np.diff(np.r_[starts, n])
        two = starts[sizes == 2]  # most buckets with a candidate hold one pair
        found.append(np.sort(np.stack([order[two], order[two + 1]], axis=1), axis=1))
        for s, size in zip(starts[sizes > 2], sizes[sizes > 2], strict=True):
            found.append(_bucket_pairs(np.sort(order[s : s + size])))
    pairs = np.concatenate(found).astype(np.int64)
    codes = np.unique(pairs[:, 0] * n + pairs[:, 1])
    return np.stack([codes // n, codes % n], axis=1)


def near_duplicate_clusters(
    signatures: np.ndarray | Sketches,
    threshold: float,
    *,
    candidate_threshold: float | None = None,
    containment: float | None = None,
    bands: int | None = None,
    seed: int = 0,
) -> list[list[int]]:
    """Clusters (sorted index lists, size >= 2, sorted by first index) of near duplicates;
    transitive pairs join one cluster. Banded LSH at `candidate_threshold` (default and
    cap: `threshold`) proposes pairs; given `Sketches`, each pair is verified on exact shingle
    sets (`_PairCheck`), given bare signatures on their estimated Jaccard."""
    sketches = signatures if isinstance(signatures, Sketches) else None
    sigs = sketches.signatures if sketches is not None else signatures
    n = len(sigs)
    if n < 2:
        return []
    candidate = threshold if candidate_threshold is None else min(candidate_threshold, threshold)
    pairs = lsh_candidate_pairs(sigs, candidate, bands=bands, seed=seed)
    uf = _UnionFind(n)
    check = _PairCheck(
        threshold,
        candidate,
        containment,
        sketches.shingle_set if sketches is not None else None,
        lambda idx: sigs[idx],
    )
    check.link(pairs, uf.union, uf.find)
    return _clusters_of(uf.find, range(n))


# ---------------------------------------------------------------------------------------
# Out of core: signatures on disk, band keys hash-partitioned to disk


@dataclass
class DedupResult:
    """Which documents to keep; `clusters` lists [representative, duplicates...] by kind."""

    keep: np.ndarray  # bool per document
    reason: list[str]  # "" kept, "dedup:exact" or "dedup:near"
    exact_clusters: list[list[int]] = field(default_factory=list)
    near_clusters: list[list[int]] = field(default_factory=list)


def deduplicate(
    texts: Sequence[str],
    *,
    exact: bool = True,
    near: bool = True,
    threshold: float = 0.6,
    candidate_threshold: float = 0.5,
    containment: float | None = 0.9,
    num_perm: int = 128,
    shingle_words: int = 5,
    seed: int = 1,
) -> DedupResult:
    """Exact then near-duplicate removal over `texts`, keeping the first of each cluster.
    Near duplicates: exact shingle-set Jaccard >= `threshold`, or containment >=
    `containment` (see `_PairCheck`), among LSH candidates at `candidate_threshold`."""
    n = len(texts)
    keep = np.ones(n, dtype=bool)
    reason = [""] * n
    exact_groups: dict[str, list[int]] = {}
    if exact:
        for i, text in enumerate(texts):
            exact_groups.setdefault(exact_hash(text), []).append(i)
        for group in exact_groups.values():
            for i in group[1:]:
                keep[i], reason[i] = False, "dedup:exact"
    result = DedupResult(keep, reason, sorted(g for g in exact_groups.values() if len(g) > 1))
    if near:
        alive = np.flatnonzero(keep)
        sketches = MinHasher(num_perm, shingle_words, seed).sketch([texts[i] for i in alive])
        clusters = near_duplicate_clusters(
            sketches,
            threshold,
            candidate_threshold=candidate_threshold,
            containment=containment,
            seed=seed,
        )
        for cluster in clusters:
            members = [int(alive[i]) for i in cluster]
            result.near_clusters.append(members)
            for i in members[1:]:
                keep[i], reason[i] = False, "dedup:near"
    return result
