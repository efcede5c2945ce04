"""Atomic file writes (temp file in the same folder, fsync, rename), the modes new files and
folders get under the process umask, hashing helpers, and reading JSONL and YAML files."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import yaml

from forgeml.core.errors import ConfigError

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """This process's umask (which an open workspace sets: see core/workspace.py), read
    without changing it where Linux reports it, else by setting and restoring it."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o077)  # a restrictive value for the instant it is in force
        os.umask(mask)
    return mask


def file_mode(*, read_only: bool = False) -> int:
    """The mode a new file gets under the umask: 0600 in a private workspace, 0640 in a shared
    one; without write bits when `read_only` (0400 / 0440)."""
    return (0o444 if read_only else 0o666) & ~current_umask() | (0o400 if read_only else 0o600)


def dir_mode(*, read_only: bool = False) -> int:
    """The mode a new folder gets under the umask (0700 / 0750; 0500 / 0550 when read-only)."""
    return (0o555 if read_only else 0o777) & ~current_umask() | (0o500 if read_only else 0o700)


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temp file next to `path`; on success fsync and rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())  # mkstemp's 0600, or group-readable in a shared workspace
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def fsync_dir(path: str | Path) -> None:
    """fsync a directory so a rename inside it survives a crash."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w") as fh:
        fh.write(text)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def iter_jsonl(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    """(line number, parsed record or None, JSON error or None) for each non-blank line."""
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line), None
            except json.JSONDecodeError as exc:
                yield number, None, f"not valid JSON ({exc.msg} at column {exc.colno})"


def read_yaml(path: Path) -> Any:
    """The parsed content of the YAML file `path`; a ConfigError naming it if it does not parse."""
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None


def parquet_batches(
    pfile: pq.ParquetFile, batch_size: int, columns: list[str] | None = None
) -> Iterator[pa.RecordBatch]:
    """`pfile.iter_batches(batch_size, columns=...)` one row group at a time.

    pyarrow 26's reader over a whole file keeps memory that grows with every row group it
    has read (110 MB after 200 row groups of 1.4 MB in a test); reading row group by row
    group keeps it at about one row group, whatever the file's size."""
    for group in range(pfile.num_row_groups):
        yield from pfile.iter_batches(batch_size=batch_size, row_groups=[group], columns=columns)


class RowGroupWriter:
    """A `pq.ParquetWriter` that gathers the small tables it is given into row groups of
    about `max_bytes` (or `max_rows`) before writing them.

    A Parquet writer keeps the metadata of every row group and column chunk it wrote until
    the footer goes out at `close()`: one row group per small batch made that memory grow
    with the corpus (~20 MB per 1000 row groups of the curated schema). Gathered tables are
    concatenated without copying."""

    def __init__(
        self,
        writer: pq.ParquetWriter,
        *,
        max_bytes: int = 32 << 20,
        max_rows: int = 1 << 16,
    ) -> None:
        self.writer = writer
        self.max_bytes, self.max_rows = max_bytes, max_rows
        self._pending: list[pa.Table] = []
        self._rows = self._bytes = 0

    def write_table(self, table: pa.Table) -> None:
        self._pending.append(table)
        self._rows += table.num_rows
        self._bytes += table.nbytes
        if self._rows >= self.max_rows or self._bytes >= self.max_bytes:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            import pyarrow as pa

            table = pa.concat_tables(self._pending)
            self.writer.write_table(table, row_group_size=max(1, table.num_rows))
            self._pending, self._rows, self._bytes = [], 0, 0

    def close(self) -> None:
        self.flush()
        self.writer.close()
