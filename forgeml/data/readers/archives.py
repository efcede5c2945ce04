"""Archives (.zip, .tar, compressed tars, gzip files) read in memory: nothing is unpacked
to disk.

Each member is read through the reader table like a file on disk (`contained_parts`), within
the depth, size and member-count limits; a member that expands past `ZIP_BOMB_RATIO` times
its compressed size is skipped as a zip bomb before any of it is read.
"""

from __future__ import annotations

import io
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator

from forgeml.data.readers.base import (
    ZIP_BOMB_MIN_BYTES,
    ZIP_BOMB_RATIO,
    Part,
    ReadOptions,
    SkipDocument,
    contained_parts,
    decode_text,
)


def _members_left_out(n_members: int, options: ReadOptions) -> Iterator[Part]:
    """A part saying that an archive's members past `options.max_members` were not read."""
    if n_members > options.max_members:
        yield Part("", skip="too many members", detail=f"more than {options.max_members}")


def read_zip_parts(data: bytes, options: ReadOptions) -> Iterator[Part]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = [i for i in archive.infolist() if not i.is_dir()]
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise SkipDocument("corrupt", f"zip: {type(err).__name__}") from None
    for info in sorted(infos, key=lambda i: i.filename)[: options.max_members]:
        if info.flag_bits & 0x1:
            yield Part("", member=info.filename, skip="encrypted", detail="password-protected")
            continue
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size >= ZIP_BOMB_MIN_BYTES and ratio > ZIP_BOMB_RATIO:
            detail = f"{info.compress_size} bytes expand to {info.file_size}"
            yield Part("", member=info.filename, skip="zip bomb", detail=detail)
            continue

        def read_member(limit: int, info: zipfile.ZipInfo = info) -> bytes:
            with archive.open(info) as fh:
                return fh.read(limit)

        yield from _member_parts(
            info.filename, read_member, info.file_size, options, zipfile.BadZipFile
        )
    yield from _members_left_out(len(infos), options)


def _member_parts(
    name: str,
    read_member: Callable[[int], bytes],
    size: int,
    options: ReadOptions,
    archive_error: type[Exception],
) -> Iterator[Part]:
    """One archive member's documents; a member the archive cannot give back is `corrupt`."""
    try:
        yield from contained_parts(name, read_member, size, options)
    except (archive_error, OSError, EOFError, ValueError) as err:
        yield Part("", member=name, skip="corrupt", detail=type(err).__name__)


def read_tar_parts(data: bytes, options: ReadOptions) -> Iterator[Part]:
    try:
        archive = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
        members = [m for m in archive.getmembers() if m.isfile()]
    except (tarfile.TarError, OSError, EOFError) as err:
        raise SkipDocument("corrupt", f"tar: {type(err).__name__}") from None
    for info in sorted(members, key=lambda m: m.name)[: options.max_members]:

        def read_member(limit: int, info: tarfile.TarInfo = info) -> bytes:
            fh = archive.extractfile(info)
            return fh.read(limit) if fh is not None else b""

        yield from _member_parts(info.name, read_member, info.size, options, tarfile.TarError)
    yield from _members_left_out(len(members), options)


def read_gzip_parts(data: bytes, options: ReadOptions) -> Iterator[Part]:
    """A gzip-compressed file (`changelog.gz`, a man page): a tar inside is read as an
    archive, anything else as text, decompressed in memory up to `max_member_bytes`."""
    inflate = zlib.decompressobj(wbits=47)  # gzip or zlib header, detected
    try:
        inner = inflate.decompress(data, options.max_member_bytes + 1)
    except zlib.error as err:
        raise SkipDocument("corrupt", f"gzip: {err}") from None
    if len(inner) > options.max_member_bytes:
        consumed = len(data) - len(inflate.unconsumed_tail)
        if len(inner) > ZIP_BOMB_RATIO * consumed:
            raise SkipDocument("zip bomb", f"{consumed} bytes expand to {len(inner)} and more")
        raise SkipDocument("too large", f"more than {options.max_member_bytes} bytes unpacked")
    if _is_tar(inner):
        yield from read_tar_parts(inner, options)
        return
    yield Part(decode_text(inner), doc_type="text")


def _is_tar(data: bytes) -> bool:
    return len(data) >= 512 and data[257:262] == b"ustar"
