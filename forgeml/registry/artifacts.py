"""Content-addressed artifact store on local disk: `<root>/<kind>/<asset id>/...`.

Files are copied into a temp folder, made read-only (0400 in a private workspace, 0440 in a
shared one), then renamed into place, so an asset folder is either absent or complete. The registry records what lives here.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from forgeml.core.errors import DataError, NotFoundError
from forgeml.core.io import dir_mode, file_mode, fsync_dir, sha256_file


@dataclass(frozen=True)
class TreeDigest:
    """sha256 over the sorted (relative path, file sha256) manifest of a file or folder."""

    sha256: str
    size_bytes: int
    n_files: int
    files: tuple[tuple[str, str], ...]


def _list_files(src: Path) -> list[tuple[str, Path]]:
    if src.is_file():
        return [(src.name, src)]
    files = []
    for dirpath, _, filenames in os.walk(src, followlinks=True):  # as copytree does
        for fname in filenames:
            full = Path(dirpath) / fname
            files.append((full.relative_to(src).as_posix(), full))
    files.sort()
    return files


def tree_digest(src: Path) -> TreeDigest:
    """Hash a file or a folder. A single file hashes as a folder holding only that file,
    so an asset stored as `<id>/<name>` re-hashes to the id it was registered under."""
    src = Path(src)
    if not src.exists():
        raise NotFoundError(f"no such file or folder: {src}", hint="check the path")
    files = _list_files(src)
    if not files:
        raise DataError(f"{src} holds no files", hint="register a non-empty folder or a file")
    h = hashlib.sha256()
    manifest = []
    size = 0
    for rel, full in files:
        digest = sha256_file(full)
        manifest.append((rel, digest))
        size += full.stat().st_size
        # NUL and newline cannot appear in a POSIX relative path, so the encoding is unambiguous.
        h.update(f"{rel}\0{digest}\n".encode())
    return TreeDigest(h.hexdigest(), size, len(files), tuple(manifest))


def _set_tree_mode(root: Path, writable: bool) -> None:
    # chmod needs ownership, not write access to the parent, so one pass in any order works.
    # Modes follow the umask the workspace set: 0400/0500 private, 0440/0550 shared, never
    # readable by others (a copied file's own mode, e.g. 0644, is not kept).
    files, dirs = file_mode(read_only=not writable), dir_mode(read_only=not writable)
    os.chmod(root, dirs)
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            os.chmod(Path(dirpath) / d, dirs)
        for f in filenames:
            os.chmod(Path(dirpath) / f, files)


def remove_tree(path: Path) -> None:
    """Delete a (possibly read-only) stored tree."""
    if path.exists():
        _set_tree_mode(path, writable=True)
        shutil.rmtree(path)


class ArtifactStore:
    """Local content-addressed store; never moves or modifies the caller's source files."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def folder(self, kind: str, asset_id: str) -> Path:
        return self.root / kind / asset_id

    def exists(self, kind: str, asset_id: str) -> bool:
        return self.folder(kind, asset_id).is_dir()

    def put(self, kind: str, asset_id: str, src: Path) -> Path:
        """Copy `src` (file or folder) to `<root>/<kind>/<asset_id>/` atomically; return that
        folder. If it already exists (same content, maybe another process) keep it."""
        dest = self.folder(kind, asset_id)
        if dest.is_dir():
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f".tmp-{asset_id}-{secrets.token_hex(4)}"
        try:
            if src.is_file():
                tmp.mkdir()
                shutil.copy2(src, tmp / src.name)
            else:
                shutil.copytree(src, tmp, symlinks=False)
            for dirpath, _, filenames in os.walk(tmp):
                for fname in filenames:
                    with open(Path(dirpath) / fname, "rb") as fh:
                        os.fsync(fh.fileno())
            _set_tree_mode(tmp, writable=False)
            try:
                os.rename(tmp, dest)
            except OSError:
                # Lost a race with another writer of the same content: theirs is identical.
                if not dest.is_dir():
                    raise
            fsync_dir(dest.parent)
        finally:
            remove_tree(tmp)
        return dest

    def remove(self, kind: str, asset_id: str) -> None:
        remove_tree(self.folder(kind, asset_id))

    def detach(self, kind: str, asset_id: str) -> Path | None:
        """Rename an asset's folder out of the store's namespace in one step (the registry
        deletes it for good once the deletion is committed, or puts it back with `reattach`);
        None when there is no folder."""
        folder = self.folder(kind, asset_id)
        if not folder.is_dir():
            return None
        detached = folder.parent / f".deleting-{asset_id}-{secrets.token_hex(4)}"
        os.rename(folder, detached)
        os.utime(detached)  # its age is the time of the detach (see `interrupted_detaches`)
        fsync_dir(folder.parent)
        return detached

    def interrupted_detaches(self, older_than_s: float) -> Iterator[tuple[str, str, Path]]:
        """(kind, asset id, folder) of each folder detached more than `older_than_s` ago: a
        deletion whose process died between the rename and its commit (a younger one may
        still be committing)."""
        if not self.root.is_dir():
            return
        now = time.time()
        for kind_dir in self.root.iterdir():
            for entry in kind_dir.glob(".deleting-*") if kind_dir.is_dir() else ():
                if now - entry.stat().st_mtime > older_than_s:
                    asset_id = entry.name.removeprefix(".deleting-").rsplit("-", 1)[0]
                    yield kind_dir.name, asset_id, entry

    def reattach(self, kind: str, asset_id: str, detached: Path) -> None:
        """Undo `detach` (the deletion it was for did not commit)."""
        os.rename(detached, self.folder(kind, asset_id))
        fsync_dir(detached.parent)

    def verify(self, kind: str, asset_id: str, sha256: str) -> bool:
        """Re-hash the stored folder and compare with the registered content hash."""
        folder = self.folder(kind, asset_id)
        if not folder.is_dir():
            return False
        return tree_digest(folder).sha256 == sha256


def is_read_only(path: Path) -> bool:
    """True when no write bit is set (root ignores modes, so check bits, not access())."""
    return stat.S_IMODE(path.stat().st_mode) & 0o222 == 0
