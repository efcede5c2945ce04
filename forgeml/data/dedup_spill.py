"""Out-of-core deduplication for curation: signatures, shingle sets and exact hashes appended
to files batch by batch, then band keys and hashes hash-partitioned to disk and grouped one
partition at a time (as datatrove's MinHash stages do), so memory stays bounded whatever the
corpus size. The in-memory path and the candidate verification are in `dedup`.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from forgeml.data.dedup import (
    Sketches,
    _band_keys,
    _band_layout,
    _bucket_pairs,
    _clusters_of,
    _PairCheck,
    exact_hash,
)


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
