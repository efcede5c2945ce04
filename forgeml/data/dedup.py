"""Deduplication for curation: exact (normalised-text hash) and near-duplicate (MinHash + LSH).

Near duplicates follow Broder's MinHash ("On the resemblance and containment of documents",
1997) over word n-gram shingles, with banded LSH (Leskovec et al., Mining of Massive
Datasets, ch. 3) and a check of the estimated Jaccard of every candidate pair, as in
Lee et al., "Deduplicating training data makes language models better" (arXiv 2107.06499).
Our MinHash is vectorised numpy multiply-shift hashing over a batch of documents at once
(`benchmarks/dedup_throughput.py` compares it with datasketch).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

_WORD = re.compile(rb"(?:\w|[\x80-\xff])+")  # on UTF-8 bytes: multi-byte letters count
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
        """(len(texts), num_perm) uint32 signatures. All shingles of the batch are hashed in
        fixed blocks (a cache-sized buffer, written in place); each block's minima per
        document come from one `minimum.reduceat`, so short documents cost no numpy calls."""
        hashes = [self.shingle_hashes(t) for t in texts]
        n_docs = len(hashes)
        best = np.full((n_docs, self.num_perm), np.iinfo(np.uint64).max, dtype=np.uint64)
        if n_docs == 0:
            return best.astype(np.uint32)
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
        return (best >> np.uint64(32)).astype(np.uint32)


def lsh_params(threshold: float, num_perm: int, fn_weight: float = 0.8) -> tuple[int, int]:
    """(bands, rows) minimising the weighted false-positive and false-negative areas of the
    S-curve 1 - (1 - s^r)^b around `threshold` (datasketch's criterion, weights 0.5/0.5).
    Candidates are verified on the full signature afterwards, so a false positive costs a
    comparison while a false negative is a missed duplicate: misses weigh more."""
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


def near_duplicate_clusters(
    signatures: np.ndarray, threshold: float, *, bands: int | None = None, seed: int = 0
) -> list[list[int]]:
    """Clusters (sorted index lists, size >= 2, sorted by first index) of documents whose
    estimated Jaccard similarity reaches `threshold`, found by banded LSH and verified on
    the full signatures; transitive pairs join one cluster."""
    n, num_perm = signatures.shape
    if n < 2:
        return []
    if bands is None:
        bands, rows = lsh_params(threshold, num_perm)
    else:
        rows = num_perm // bands
    mult = np.random.default_rng(seed).integers(1, 1 << 63, rows, dtype=np.uint64) | 1
    uf = _UnionFind(n)
    sig64 = signatures.astype(np.uint64)
    for band in range(bands):
        with np.errstate(over="ignore"):
            keys = (sig64[:, band * rows : (band + 1) * rows] * mult).sum(axis=1)
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        sizes = np.diff(np.r_[starts, n])
        for s, size in zip(starts[sizes > 1], sizes[sizes > 1], strict=True):
            members = np.sort(order[s : s + size])
            head = members[0]
            same = (signatures[members[1:]] == signatures[head]).mean(axis=1)
            for other in members[1:][same >= threshold]:
                uf.union(int(head), int(other))
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(uf.find(i), []).append(i)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: g[0])


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
    threshold: float = 0.8,
    num_perm: int = 128,
    shingle_words: int = 5,
    seed: int = 1,
) -> DedupResult:
    """Exact then near-duplicate removal over `texts`, keeping the first of each cluster."""
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
        sigs = MinHasher(num_perm, shingle_words, seed).signatures([texts[i] for i in alive])
        for cluster in near_duplicate_clusters(sigs, threshold, seed=seed):
            members = [int(alive[i]) for i in cluster]
            result.near_clusters.append(members)
            for i in members[1:]:
                keep[i], reason[i] = False, "dedup:near"
    return result
