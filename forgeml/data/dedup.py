"""Deduplication for curation: exact (normalised-text hash) and near duplicates (MinHash + LSH
candidates, each verified on the exact shingle sets), in memory or out of core.

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
import math
import os
import re
import tempfile
import unicodedata
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

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


class SignatureSpill:
    """Append-only file of MinHash signatures ((n, num_perm) uint32, row-major): memory
    holds one appended batch at a time; rows are read back by range or by index. Appended
    as `Sketches`, the documents' shingle hashes go to two side files (`<path>.shingles`,
    and `<path>.offsets`: 0 and each document's end), read back by `shingle_set`."""

    def __init__(self, path: str | Path, num_perm: int) -> None:
        self.path = Path(path)
        self.num_perm = num_perm
        self.n = 0
        self.has_shingles: bool | None = None  # set by the first append
        self._fh = open(self.path, "w+b")  # noqa: SIM115 (closed by close())
        self._shingles = self._offsets = None
        self._n_shingles = 0

    def append(self, signatures: np.ndarray | Sketches) -> None:
        sketches = signatures if isinstance(signatures, Sketches) else None
        sigs = sketches.signatures if sketches is not None else signatures
        if sigs.ndim != 2 or sigs.shape[1] != self.num_perm:
            raise ValueError(f"expected (n, {self.num_perm}) signatures, got {sigs.shape}")
        if self.has_shingles is None:
            self.has_shingles = sketches is not None
            if sketches is not None:
                self._shingles = open(f"{self.path}.shingles", "w+b")  # noqa: SIM115
                self._offsets = open(f"{self.path}.offsets", "w+b")  # noqa: SIM115
                self._offsets.write(np.zeros(1, "<i8").tobytes())  # document 0 starts at 0
        elif self.has_shingles != (sketches is not None):
            raise ValueError("append Sketches to every batch of a spill, or to none")
        self._fh.seek(0, os.SEEK_END)
        self._fh.write(np.ascontiguousarray(sigs, dtype=np.uint32).tobytes())
        self.n += len(sigs)
        if sketches is not None:
            self._shingles.write(np.ascontiguousarray(sketches.shingles, "<u4").tobytes())
            ends = self._n_shingles + sketches.offsets[1:].astype("<i8")
            self._offsets.write(ends.tobytes())
            self._n_shingles += int(sketches.offsets[-1])

    def shingle_set(self, i: int) -> np.ndarray:
        """Sorted distinct shingle hashes of document i (the spill was given `Sketches`)."""
        if not self.has_shingles:
            raise ValueError(f"{self.path} holds signatures only: append Sketches")
        self._shingles.flush()
        self._offsets.flush()
        raw = os.pread(self._offsets.fileno(), 16, i * 8)
        start, stop = (int(v) for v in np.frombuffer(raw, "<i8"))
        raw = os.pread(self._shingles.fileno(), (stop - start) * 4, start * 4)
        return np.unique(np.frombuffer(raw, dtype="<u4"))

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
        for fh in (self._fh, self._shingles, self._offsets):
            if fh is not None:
                fh.close()
        if self.has_shingles:
            for suffix in (".shingles", ".offsets"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)

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
    candidate_threshold: float | None = None,
    containment: float | None = None,
    bands: int | None = None,
    seed: int = 0,
    exclude: np.ndarray | None = None,
    max_entries: int = 1 << 20,
    work_dir: str | Path | None = None,
) -> list[list[int]]:
    """`near_duplicate_clusters` over signatures on disk, with the same result (rows in
    the sorted array `exclude` take no part, as if they were not in the spill); candidates
    are verified on exact shingle sets when the spill holds them.

    Pass one reads the signatures in chunks and appends each (band, key, doc) entry to one
    of P partition files chosen by key, P sized so a partition holds about `max_entries`
    entries (20 bytes each). Pass two loads one partition at a time, groups equal
    (band, key) entries and verifies each bucket's candidate pairs, reading signatures or
    shingle sets back from the spill. Peak memory: one chunk, one partition, and the
    union-find over documents that have duplicates. (A partition can exceed `max_entries`
    only when very many documents share one band key, i.e. a cluster of that size.)"""
    n, num_perm = spill.n, spill.num_perm
    if n < 2:
        return []
    candidate = threshold if candidate_threshold is None else min(candidate_threshold, threshold)
    bands, rows, mult = _band_layout(candidate, num_perm, bands, seed)
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
    check = _PairCheck(
        threshold,
        candidate,
        containment,
        spill.shingle_set if spill.has_shingles else None,
        spill.rows,
    )
    with tempfile.TemporaryDirectory(prefix="lsh-", dir=work_dir) as tmp:
        for members in _partitioned_runs(entries(), "key", ("band", "key"), parts, Path(tmp)):
            check.link(_bucket_pairs(members), uf.union, uf.find)
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
