"""Deduplication for curation: exact (normalised-text hash) and near-duplicate (MinHash + LSH).

Near duplicates follow Broder's MinHash ("On the resemblance and containment of documents",
1997) over word n-gram shingles, with banded LSH (Leskovec et al., Mining of Massive
Datasets, ch. 3) and a check of the estimated Jaccard of every candidate pair, as in
Lee et al., "Deduplicating training data makes language models better" (arXiv 2107.06499).
Our MinHash is vectorised numpy multiply-shift hashing over a batch of documents at once
(`benchmarks/dedup_throughput.py` compares it with datasketch). For corpora whose signatures
do not fit in memory, `SignatureSpill` + `near_duplicate_clusters_spilled` run the same LSH
out of core: band keys are hash-partitioned to disk and each partition grouped on its own
(the layout of datatrove's MinHash stages), so memory follows the partition size and the
number of duplicates, not the corpus size.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import tempfile
import unicodedata
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

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


def _link_bucket(members: np.ndarray, sigs: np.ndarray, threshold: float, union) -> None:
    """One LSH bucket (sorted member indices, their signatures): link each member whose
    signature agrees with the first member's on at least `threshold` of the positions."""
    same = (sigs[1:] == sigs[0]).mean(axis=1)
    for other in members[1:][same >= threshold]:
        union(int(members[0]), int(other))


def _clusters_of(find, nodes) -> list[list[int]]:
    groups: dict[int, list[int]] = {}
    for i in sorted(nodes):
        groups.setdefault(find(i), []).append(i)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: g[0])


def near_duplicate_clusters(
    signatures: np.ndarray, threshold: float, *, bands: int | None = None, seed: int = 0
) -> list[list[int]]:
    """Clusters (sorted index lists, size >= 2, sorted by first index) of documents whose
    estimated Jaccard similarity reaches `threshold`, found by banded LSH and verified on
    the full signatures; transitive pairs join one cluster."""
    n, num_perm = signatures.shape
    if n < 2:
        return []
    bands, rows, mult = _band_layout(threshold, num_perm, bands, seed)
    uf = _UnionFind(n)
    sig64 = signatures.astype(np.uint64)
    for band in range(bands):
        keys = _band_keys(sig64, band, rows, mult)
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        sizes = np.diff(np.r_[starts, n])
        for s, size in zip(starts[sizes > 1], sizes[sizes > 1], strict=True):
            members = np.sort(order[s : s + size])
            _link_bucket(members, signatures[members], threshold, uf.union)
    return _clusters_of(uf.find, range(n))


# ---------------------------------------------------------------------------------------
# Out of core: signatures on disk, band keys hash-partitioned to disk


class SignatureSpill:
    """Append-only file of MinHash signatures ((n, num_perm) uint32, row-major): memory
    holds one appended batch at a time; rows are read back by range or by index."""

    def __init__(self, path: str | Path, num_perm: int) -> None:
        self.path = Path(path)
        self.num_perm = num_perm
        self.n = 0
        self._fh = open(self.path, "w+b")  # noqa: SIM115 (closed by close())

    def append(self, signatures: np.ndarray) -> None:
        if signatures.ndim != 2 or signatures.shape[1] != self.num_perm:
            raise ValueError(f"expected (n, {self.num_perm}) signatures, got {signatures.shape}")
        self._fh.seek(0, os.SEEK_END)
        self._fh.write(np.ascontiguousarray(signatures, dtype=np.uint32).tobytes())
        self.n += len(signatures)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows start..stop-1."""
        self._fh.flush()
        width = self.num_perm * 4
        raw = os.pread(self._fh.fileno(), (stop - start) * width, start * width)
        return np.frombuffer(raw, dtype=np.uint32).reshape(-1, self.num_perm)

    def rows(self, index: np.ndarray) -> np.ndarray:
        """Rows at the given (any order) indices."""
        self._fh.flush()
        width = self.num_perm * 4
        fd = self._fh.fileno()
        raw = b"".join(os.pread(fd, width, int(i) * width) for i in index)
        return np.frombuffer(raw, dtype=np.uint32).reshape(-1, self.num_perm)

    def chunks(self, size: int) -> Iterator[tuple[int, np.ndarray]]:
        for start in range(0, self.n, size):
            yield start, self.read(start, min(self.n, start + size))

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> SignatureSpill:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _DictUnionFind:
    """Union-find over the documents that have a verified duplicate (a dict, not a list
    over the whole corpus); the smaller index stays root, as in `_UnionFind`."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        parent = self.parent
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while x != root:
            parent[x], x = root, parent[x]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)
            self.parent.setdefault(min(ra, rb), min(ra, rb))


_MAX_PARTS = 512  # open partition files; past that, partitions grow past max_entries


def _partitioned_runs(
    chunks: Iterator[np.ndarray], key: str, fields: tuple[str, ...], parts: int, tmp: Path
) -> Iterator[np.ndarray]:
    """Out-of-core group-by: entries (a structured dtype) are appended to `parts` files by
    `key` modulo `parts`; then each file is loaded alone, sorted by `fields` and then
    `idx`, and the `idx` of every run of >= 2 entries equal on `fields` is yielded
    (ascending)."""
    files = [open(tmp / f"part-{p:05d}.bin", "wb") for p in range(parts)]  # noqa: SIM115
    dtype = None
    try:
        for entries in chunks:
            dtype = entries.dtype
            part = (entries[key] % np.uint64(parts)).astype(np.int64)
            order = np.argsort(part, kind="stable")
            bounds = np.searchsorted(part[order], np.arange(parts + 1))
            for p in range(parts):
                if bounds[p] < bounds[p + 1]:
                    files[p].write(entries[order[bounds[p] : bounds[p + 1]]].tobytes())
    finally:
        for fh in files:
            fh.close()
    for p in range(parts):
        path = tmp / f"part-{p:05d}.bin"
        if dtype is None or path.stat().st_size < 2 * dtype.itemsize:
            continue
        entries = np.fromfile(path, dtype=dtype)
        entries = entries[np.lexsort([entries["idx"], *(entries[f] for f in reversed(fields))])]
        same = np.ones(len(entries) - 1, dtype=bool)
        for f in fields:
            same &= entries[f][1:] == entries[f][:-1]
        starts = np.flatnonzero(np.r_[True, ~same])
        sizes = np.diff(np.r_[starts, len(entries)])
        for s, size in zip(starts[sizes > 1], sizes[sizes > 1], strict=True):
            yield entries["idx"][s : s + size].astype(np.int64)
        del entries
        path.unlink()


_BAND_ENTRY = np.dtype([("band", "<u4"), ("key", "<u8"), ("idx", "<u8")])


def near_duplicate_clusters_spilled(
    spill: SignatureSpill,
    threshold: float,
    *,
    bands: int | None = None,
    seed: int = 0,
    exclude: np.ndarray | None = None,
    max_entries: int = 1 << 20,
    work_dir: str | Path | None = None,
) -> list[list[int]]:
    """`near_duplicate_clusters` over signatures on disk, with the same result (rows in
    the sorted array `exclude` take no part, as if they were not in the spill).

    Pass one reads the signatures in chunks and appends each (band, key, doc) entry to one
    of P partition files chosen by key, P sized so a partition holds about `max_entries`
    entries (20 bytes each). Pass two loads one partition at a time, groups equal
    (band, key) entries and verifies each bucket against the first member's signature, read
    back from the spill. Peak memory: one chunk, one partition, and the union-find over
    documents that have duplicates. (A partition can exceed `max_entries` only when very
    many documents share one band key, i.e. a cluster of that size.)"""
    n, num_perm = spill.n, spill.num_perm
    if n < 2:
        return []
    bands, rows, mult = _band_layout(threshold, num_perm, bands, seed)
    parts = min(_MAX_PARTS, max(1, math.ceil(n * bands / max_entries)))
    chunk = max(1, min(max_entries // bands, 1 << 13))  # signature rows read at once

    def entries() -> Iterator[np.ndarray]:
        for start, sigs in spill.chunks(chunk):
            idx = np.arange(start, start + len(sigs), dtype=np.int64)
            if exclude is not None and len(exclude):
                alive = ~np.isin(idx, exclude, assume_unique=True)
                idx, sigs = idx[alive], sigs[alive]
            sig64 = sigs.astype(np.uint64)
            out = np.empty((bands, len(sigs)), dtype=_BAND_ENTRY)
            for band in range(bands):
                out["band"][band] = band
                out["key"][band] = _band_keys(sig64, band, rows, mult)
                out["idx"][band] = idx
            yield out.ravel()

    uf = _DictUnionFind()
    with tempfile.TemporaryDirectory(prefix="lsh-", dir=work_dir) as tmp:
        for members in _partitioned_runs(entries(), "key", ("band", "key"), parts, Path(tmp)):
            _link_bucket(members, spill.rows(members), threshold, uf.union)
    return _clusters_of(uf.find, uf.parent)


_EXACT_ENTRY = np.dtype([("h1", "<u8"), ("h2", "<u8"), ("idx", "<u8")])


class ExactHashSpill:
    """Append-only file of (128-bit normalised-text hash, document index) entries, for
    exact dedup whose memory does not grow with the corpus (`exact_groups_spilled`)."""

    def __init__(self, path: str | Path, buffer: int = 1 << 13) -> None:
        self.path = Path(path)
        self.n = 0
        self._fh = open(self.path, "wb")  # noqa: SIM115 (closed by close())
        self._buf: list[bytes] = []
        self._buffer = buffer

    def add(self, text: str, idx: int) -> None:
        self.add_hash(exact_hash(text), idx)

    def add_hash(self, digest: str, idx: int) -> None:
        """Add the entry of a text whose `exact_hash` was taken elsewhere (a Ray task)."""
        self._buf.append(bytes.fromhex(digest) + idx.to_bytes(8, "little"))
        self.n += 1
        if len(self._buf) >= self._buffer:
            self.flush()

    def flush(self) -> None:
        if self._buf:
            self._fh.write(b"".join(self._buf))
            self._fh.flush()
            self._buf = []

    def chunks(self, size: int) -> Iterator[np.ndarray]:
        self.flush()
        with open(self.path, "rb") as fh:
            while raw := fh.read(size * _EXACT_ENTRY.itemsize):
                yield np.frombuffer(raw, dtype=_EXACT_ENTRY)

    def close(self) -> None:
        if not self._fh.closed:
            self.flush()
            self._fh.close()

    def __enter__(self) -> ExactHashSpill:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def exact_groups_spilled(
    spill: ExactHashSpill, *, max_entries: int = 1 << 20, work_dir: str | Path | None = None
) -> list[list[int]]:
    """Groups (ascending indices, size >= 2, sorted by first index) of equal hashes."""
    parts = min(_MAX_PARTS, max(1, math.ceil(spill.n / max_entries)))
    with tempfile.TemporaryDirectory(prefix="exact-", dir=work_dir) as tmp:
        runs = _partitioned_runs(spill.chunks(max_entries), "h1", ("h1", "h2"), parts, Path(tmp))
        return sorted((r.tolist() for r in runs), key=lambda g: g[0])


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
