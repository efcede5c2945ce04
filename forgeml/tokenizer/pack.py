"""Pack Parquet text into flat token shards (`forgeml-shards-v1`) and read them back memory-mapped.

The format is the contract between tokenization and the training loop: shard `.bin` files of
little-endian token ids, documents each followed by EOS, plus a JSON index (see `TokenShards`).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from tokenizers import Tokenizer

from forgeml.core.errors import DataError, ForgeError, NotFoundError
from forgeml.core.io import fsync_dir, parquet_batches, sha256_file
from forgeml.tokenizer.chat import BOS, EOS
from forgeml.tokenizer.train import load_tokenizer

FORMAT = "forgeml-shards-v1"
_WRITE_BUFFER = 1 << 20


def token_dtype(vocab_size: int) -> np.dtype:
    """Little-endian uint16 when every id fits in 16 bits, else uint32."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


class _ShardWriter:
    """Appends token runs to fixed-size shards; a document may continue into the next shard."""

    def __init__(self, folder: Path, dtype: np.dtype, shard_tokens: int) -> None:
        self.folder, self.dtype, self.shard_tokens = folder, dtype, shard_tokens
        self.shards: list[dict] = []
        self._fh: IO[bytes] | None = None
        self._n = 0
        self._starts: list[np.ndarray] = []

    def add(self, tokens: np.ndarray, doc_starts: np.ndarray) -> None:
        """Write `tokens`; `doc_starts` are the sorted offsets in `tokens` where documents begin."""
        pos = 0
        while pos < len(tokens):
            if self._fh is None:
                name = f"shard_{len(self.shards):05d}.bin"
                self._fh = open(self.folder / name, "wb", buffering=_WRITE_BUFFER)
            take = min(self.shard_tokens - self._n, len(tokens) - pos)
            self._fh.write(tokens[pos : pos + take].tobytes())
            lo, hi = np.searchsorted(doc_starts, [pos, pos + take])
            self._starts.append(doc_starts[lo:hi].astype(np.uint64) - pos + self._n)
            self._n += take
            pos += take
            if self._n == self.shard_tokens:
                self.close_shard()

    def close_shard(self) -> None:
        if self._fh is None:
            return
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        self._fh = None
        i = len(self.shards)
        starts = np.concatenate(self._starts) if self._starts else np.zeros(0, np.uint64)
        docs_file = f"shard_{i:05d}.docs.npy"
        with open(self.folder / docs_file, "wb") as fh:
            np.save(fh, starts.astype(np.uint64))
            fh.flush()
            os.fsync(fh.fileno())
        self.shards.append(
            {
                "file": f"shard_{i:05d}.bin",
                "docs_file": docs_file,
                "n_tokens": self._n,
                "n_docs": len(starts),
            }
        )
        self._n, self._starts = 0, []

    def abort(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _flatten(
    id_lists: list[list[int]], dtype: np.dtype, eos_id: int, bos_id: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate documents as `[bos] ids eos`; return the tokens and each document's start."""
    extra = 2 if bos_id is not None else 1
    lens = np.fromiter((len(ids) for ids in id_lists), np.int64, len(id_lists)) + extra
    ends = np.cumsum(lens)
    starts = ends - lens
    out = np.empty(int(ends[-1]), dtype)
    body = np.ones(len(out), bool)
    body[ends - 1] = False
    if bos_id is not None:
        body[starts] = False
        out[starts] = bos_id
    n_body = len(out) - extra * len(id_lists)
    out[body] = np.fromiter(itertools.chain.from_iterable(id_lists), dtype, n_body)
    out[ends - 1] = eos_id
    return out, starts


def _text_batches(
    files: list[Path], text_column: str, batch_docs: int, row_filter: Callable[[dict], bool] | None
):
    """Yield (number of rows read, non-empty texts kept, their UTF-8 bytes) per record batch."""
    for file in files:
        pf = pq.ParquetFile(file)
        field = pf.schema_arrow.field(text_column) if text_column in pf.schema_arrow.names else None
        if field is None:
            raise DataError(
                f"{file} has no column {text_column!r}",
                f"columns are {pf.schema_arrow.names}; pass text_column=",
            )
        if not (pa.types.is_string(field.type) or pa.types.is_large_string(field.type)):
            raise DataError(f"column {text_column!r} of {file} is {field.type}, not text")
        # The filter sees whole rows (it may route on an id or split column); else read only text.
        columns = None if row_filter is not None else [text_column]
        for batch in parquet_batches(pf, batch_docs, columns):
            col = batch.column(text_column)
            if row_filter is not None:
                keep = pa.array([bool(row_filter(row)) for row in batch.to_pylist()], pa.bool_())
                col = col.filter(keep)
            # Null and empty documents would only add a lone EOS; they are skipped.
            nbytes = pc.binary_length(col)
            col = col.filter(pc.fill_null(pc.greater(nbytes, 0), False))
            yield batch.num_rows, col.to_pylist(), int(pc.sum(nbytes).as_py() or 0)


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ForgeError(
            f"{out_dir} already exists and is not empty",
            "choose a new output folder or remove the old one",
        )


def pack_token_shards(
    parquet_files: list[Path],
    tokenizer_dir: Path,
    out_dir: Path,
    *,
    text_column: str = "text",
    shard_tokens: int = 64 * 1024 * 1024,
    batch_docs: int = 512,
    progress: bool = False,
    row_filter: Callable[[dict], bool] | None = None,
    add_bos: bool = False,
    encode_batch: Callable[[Tokenizer, list[str]], list[list[int]]] | None = None,
) -> dict:
    """Tokenize `text_column` of `parquet_files` into shards in `out_dir`; return the index.

    Documents are streamed in batches of `batch_docs` rows, encoded with the tokenizer's
    threads, and written as `[bos] tokens eos` (BOS only with `add_bos`, and then the index
    `bos_id` is set; otherwise it is null). Special-token strings inside the raw text (e.g. a
    document quoting "<|eos|>") are encoded as ordinary text, never as special ids, so a corpus
    cannot forge document or chat boundaries. `row_filter(row) -> bool` keeps a subset of rows
    (e.g. the train or held-out split). `encode_batch(tok, texts) -> id lists` replaces plain
    encoding (the FIM transform uses it). The folder appears only when complete: it is built in
    a temporary sibling folder and renamed.
    """
    out_dir = Path(out_dir)
    files = [Path(f) for f in parquet_files]
    if shard_tokens <= 0 or batch_docs <= 0:
        raise ForgeError(
            f"shard_tokens and batch_docs must be positive ({shard_tokens=}, {batch_docs=})"
        )
    if not files:
        raise DataError("no Parquet files to pack")
    for f in files:
        if not f.is_file():
            raise NotFoundError(f"Parquet file {f} does not exist")
    _check_out_dir(out_dir)

    tok = load_tokenizer(tokenizer_dir)
    # Without this, HF tokenizers maps special-token strings found in raw text to their ids.
    tok.encode_special_tokens = True
    eos_id = tok.token_to_id(EOS)
    if eos_id is None:
        raise DataError(
            f"tokenizer in {tokenizer_dir} has no {EOS} token", "use a forgeml tokenizer"
        )
    bos_id = tok.token_to_id(BOS) if add_bos else None
    if add_bos and bos_id is None:
        raise DataError(
            f"tokenizer in {tokenizer_dir} has no {BOS} token", "pack with add_bos=False"
        )
    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    dtype = token_dtype(vocab_size)
    tok_file = Path(tokenizer_dir) / "tokenizer.json"

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    writer = _ShardWriter(tmp, dtype, shard_tokens)
    n_tokens = n_docs = n_bytes = 0
    total_rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    bar = Progress(
        TextColumn("[bold]packing[/] {task.fields[tokens]:,} tokens"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=not progress,
    )
    try:
        with bar:
            task = bar.add_task("pack", total=total_rows, tokens=0)
            for n_rows, texts, nbytes in _text_batches(files, text_column, batch_docs, row_filter):
                if texts:
                    if encode_batch is not None:  # e.g. the FIM transform
                        ids = encode_batch(tok, texts)
                    else:
                        encodings = tok.encode_batch_fast(texts, add_special_tokens=False)
                        ids = [e.ids for e in encodings]
                    tokens, starts = _flatten(ids, dtype, eos_id, bos_id)
                    writer.add(tokens, starts)
                    n_tokens += len(tokens)
                    n_docs += len(texts)
                    n_bytes += nbytes
                bar.update(task, advance=n_rows, tokens=n_tokens)
        writer.close_shard()
        if n_docs == 0:
            raise DataError(
                f"no non-empty {text_column!r} documents to pack in {len(files)} file(s)",
                "check the dataset and the row filter",
            )
        index = {
            "format": FORMAT,
            "dtype": dtype.name,
            "vocab_size": vocab_size,
            "eos_id": eos_id,
            "bos_id": bos_id,
            "n_tokens": n_tokens,
            "n_docs": n_docs,
            "n_bytes": n_bytes,
            "tokenizer_sha256": sha256_file(tok_file) if tok_file.is_file() else None,
            "shards": writer.shards,
        }
        with open(tmp / "index.json", "w") as fh:
            fh.write(json.dumps(index, indent=2) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        fsync_dir(tmp)
        _check_out_dir(out_dir)
        if out_dir.exists():
            out_dir.rmdir()
        os.rename(tmp, out_dir)
        fsync_dir(out_dir.parent)
    except BaseException:
        writer.abort()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return index


class TokenShards:
    """Read-only view of a packed token folder as one concatenated stream of token ids."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        index_file = self.path / "index.json"
        if not index_file.is_file():
            raise NotFoundError(f"no token shards at {self.path} (index.json missing)")
        self.index: dict = json.loads(index_file.read_text())
        if self.index.get("format") != FORMAT:
            raise DataError(f"{index_file} is not in {FORMAT} format")
        self.dtype = np.dtype(self.index["dtype"]).newbyteorder("<")
        self.n_tokens: int = self.index["n_tokens"]
        self.n_docs: int = self.index["n_docs"]
        self.n_bytes: int = self.index["n_bytes"]
        self.vocab_size: int = self.index["vocab_size"]
        self.eos_id: int = self.index["eos_id"]
        self.bos_id: int | None = self.index["bos_id"]
        sizes = [s["n_tokens"] for s in self.index["shards"]]
        for shard, size in zip(self.index["shards"], sizes, strict=True):
            file = self.path / shard["file"]
            if not file.is_file() or file.stat().st_size != size * self.dtype.itemsize:
                raise DataError(f"shard {file} is missing or truncated", "repack the dataset")
        # _bounds[i] is the global offset of shard i's first token; _bounds[-1] == n_tokens.
        self._bounds = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        if self._bounds[-1] != self.n_tokens:
            raise DataError(f"{index_file}: shard sizes do not add up to n_tokens")
        self._maps: dict[int, np.memmap] = {}

    def _shard(self, i: int) -> np.memmap:
        # Opened lazily so a reader (or a forked data-loader worker) maps only shards it touches.
        if i not in self._maps:
            shard = self.index["shards"][i]
            self._maps[i] = np.memmap(
                self.path / shard["file"], dtype=self.dtype, mode="r", shape=(shard["n_tokens"],)
            )
        return self._maps[i]

    def __len__(self) -> int:
        return self.n_tokens

    def window(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) of the whole stream, as an int64 copy."""
        if start < 0 or length < 0 or start + length > self.n_tokens:
            raise IndexError(
                f"window [{start}, {start + length}) is outside the {self.n_tokens} tokens"
            )
        out = np.empty(length, np.int64)
        i = int(np.searchsorted(self._bounds, start, side="right")) - 1
        done = 0
        while done < length:
            lo = start + done - int(self._bounds[i])
            take = min(length - done, int(self._bounds[i + 1]) - (start + done))
            out[done : done + take] = self._shard(i)[lo : lo + take]
            done += take
            i += 1
        return out

    def doc_offsets(self) -> np.ndarray:
        """Global start offset (uint64) of every document, in order."""
        parts = [
            np.load(self.path / shard["docs_file"]).astype(np.uint64) + np.uint64(self._bounds[i])
            for i, shard in enumerate(self.index["shards"])
        ]
        return np.concatenate(parts) if parts else np.zeros(0, np.uint64)
