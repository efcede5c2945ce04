"""Ingest: readers by type, walking and patterns, the report, and the Parquet output."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from acme import generate_corpus

from forgeml.core.errors import DataError
from forgeml.data import ingest_files, reader_for
from forgeml.data.ingest import SCHEMA, compile_glob


def tree_state(root: Path) -> dict[str, tuple]:
    """Every path under root with its bytes hash, mode and mtime: to prove nothing changed."""
    state = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        digest = ""
        if path.is_file() and not path.is_symlink():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        state[path.relative_to(root).as_posix()] = (digest, st.st_mode, st.st_mtime_ns)
    return state


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    (root / "guide" / "deep").mkdir(parents=True)
    (root / "src").mkdir()
    (root / ".git").mkdir()
    (root / "README").write_text("Plain text without an extension.\n")
    (root / "guide" / "intro.md").write_text("# Intro\n\nHello.\n")
    (root / "guide" / "deep" / "more.md").write_text("# More\n\nDetails.\n")
    (root / "guide" / "copy.md").write_text("# Intro\n\nHello.\n")  # exact duplicate
    (root / "src" / "main.py").write_text("print('hi')\n")
    (root / "src" / "calc.acl").write_text("DISPLAY 1 + 2.\n")
    (root / "src" / "Makefile").write_text("all:\n\techo hi\n")
    (root / "notes.txt").write_bytes(b"\xef\xbb\xbfwith a byte-order mark\n")
    (root / ".git" / "config").write_text("[core]\n")
    (root / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00" + bytes(range(256)))
    (root / "data.bin").write_bytes(bytes(range(256)) * 8)
    (root / "latin.txt").write_bytes("caf\xe9 cr\xe8me br\xfbl\xe9e".encode("latin-1"))
    (root / "empty.md").write_bytes(b"")
    (root / "blank.txt").write_text("   \n\n")
    (root / "big.txt").write_text("x" * 5000)
    (root / "table.xyz").write_text("a text file of a type with no reader\n")
    return root


def test_counts_reasons_and_rows(docs, tmp_path):
    out = tmp_path / "out" / "docs.parquet"
    report = ingest_files([docs], out, max_file_bytes=4096)
    assert report.kept + report.skipped + report.failed == report.found == 16
    assert (report.kept, report.failed) == (11, 0)
    assert report.skipped_by_reason == {"binary": 1, "corrupt": 1, "empty": 2, "too large": 1}
    status = {f["path"]: (f["status"], f["reason"]) for f in report.files}
    assert status["latin.txt"] == ("kept", "")  # legacy encodings are decoded, not skipped
    assert status["logo.png"] == ("skipped", "corrupt")  # a page image (OCR), not a valid one
    assert status["data.bin"] == ("skipped", "binary")
    assert status["empty.md"] == ("skipped", "empty")
    assert status["blank.txt"] == ("skipped", "empty")
    assert status["big.txt"] == ("skipped", "too large")
    assert status["table.xyz"] == ("kept", "")  # no reader by name: text by its content
    assert report.by_type == {"code": 3, "markdown": 3, "text": 5}
    assert report.by_language == {"acme-cl": 1, "make": 1, "python": 1}

    table = pq.read_table(out)
    assert table.schema.equals(SCHEMA, check_metadata=False)
    assert table.num_rows == report.kept
    rows = {r["path"]: r for r in table.to_pylist()}
    assert sorted(rows) == [p for p, (s, _) in status.items() if s == "kept"]
    assert list(rows) == sorted(rows)  # deterministic sorted order
    main = rows["src/main.py"]
    assert main["type"] == "code" and main["language"] == "python"
    assert main["text"] == "print('hi')\n"
    assert main["doc_id"] == hashlib.sha256(b"print('hi')\n").hexdigest()
    assert main["sha256"] == hashlib.sha256((docs / "src/main.py").read_bytes()).hexdigest()
    assert main["bytes"] == len(b"print('hi')\n")
    assert main["source"] == str(docs)
    assert rows["src/Makefile"]["language"] == "make"
    assert rows["README"]["type"] == "text" and rows["README"]["language"] is None
    assert rows["guide/deep/more.md"]["type"] == "markdown"
    # the BOM is dropped from the text but the raw hash and size are of the file's bytes
    assert rows["notes.txt"]["text"] == "with a byte-order mark\n"
    assert rows["notes.txt"]["bytes"] == len((docs / "notes.txt").read_bytes())
    assert rows["latin.txt"]["text"] == "caf\xe9 cr\xe8me br\xfbl\xe9e"
    assert rows["table.xyz"]["type"] == "text"
    # exact duplicates are kept (dedup is a curation stage)
    assert rows["guide/copy.md"]["doc_id"] == rows["guide/intro.md"]["doc_id"]
    assert report.bytes_kept == sum(r["bytes"] for r in rows.values())
    d = report.to_dict()
    assert d["found"] == 16 and len(d["files"]) == 16 and "skipped" in report.summary()


def test_include_exclude_patterns(docs, tmp_path):
    out = tmp_path / "x.parquet"
    report = ingest_files([docs], out, include=["*.md"], exclude=["deep"])
    kept = sorted(f["path"] for f in report.files if f["status"] == "kept")
    assert kept == ["guide/copy.md", "guide/intro.md"]
    excluded = [f for f in report.files if f["reason"] == "excluded"]
    assert {f["path"] for f in excluded} >= {"guide/deep/more.md", "src/main.py"}
    assert any("exclude pattern 'deep'" in f["detail"] for f in excluded)
    assert report.kept + report.skipped + report.failed == report.found

    report = ingest_files([docs], out, include=["guide/**/*.md", "src/*"], exclude=[".git"])
    kept = sorted(f["path"] for f in report.files if f["status"] == "kept")
    assert kept == [
        "guide/copy.md",
        "guide/deep/more.md",
        "guide/intro.md",
        "src/Makefile",
        "src/calc.acl",
        "src/main.py",
    ]
    report = ingest_files([docs], out, exclude=["guide/", "src/**", ".git", "*.txt", "*.xyz"])
    kept = sorted(f["path"] for f in report.files if f["status"] == "kept")
    assert kept == ["README"]


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("**/*", "a.txt", True),
        ("**/*", "a/b/c.txt", True),
        ("*.md", "a/b/c.md", True),
        ("*.md", "a/b/c.mdx", False),
        ("docs/**/*.md", "docs/a.md", True),
        ("docs/**/*.md", "docs/x/y/a.md", True),
        ("docs/**/*.md", "other/docs/a.md", False),
        ("docs/*.md", "docs/x/a.md", False),
        ("build/", "build/out/a.o", True),
        ("build/", "src/build.c", False),
        ("node_modules", "web/node_modules/x/index.js", True),
        ("file?.txt", "file1.txt", True),
        ("file?.txt", "file12.txt", False),
        ("[!a]*.py", "b.py", True),
        ("[!a]*.py", "a.py", False),
    ],
)
def test_glob_semantics(pattern, path, matches):
    assert compile_glob(pattern)(path) is matches


def test_errors_for_missing_and_empty_sources(tmp_path):
    with pytest.raises(DataError, match="does not exist: .*nope"):
        ingest_files([tmp_path / "nope"], tmp_path / "o.parquet")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no files found"):
        ingest_files([empty], tmp_path / "o.parquet")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.bin").write_bytes(b"\x00\x01")
    (junk / "b.txt").write_bytes(b"\x01\x02\x03\x04\x05 control characters, not text")
    out = tmp_path / "o.parquet"
    out.write_bytes(b"previous output")
    with pytest.raises(DataError, match=r"no readable text files .* \(2 skipped: 2 binary\)"):
        ingest_files([junk], out)
    assert out.read_bytes() == b"previous output"  # atomic: the old output is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "junk", "o.parquet"]


def test_file_source_symlinks_and_unreadable(docs, tmp_path, monkeypatch):
    outside = tmp_path / "secret.txt"
    outside.write_text("outside the tree\n")
    os.symlink(outside, docs / "leak.txt")
    os.symlink(docs / "src" / "main.py", docs / "alias.py")
    os.symlink(tmp_path, docs / "loop")
    report = ingest_files([docs, docs / "README"], tmp_path / "o.parquet")
    status = {(f["source"], f["path"]): (f["status"], f["reason"]) for f in report.files}
    assert status[(str(docs), "leak.txt")] == ("skipped", "symlink")
    assert status[(str(docs), "alias.py")] == ("kept", "")
    assert status[(str(docs), "loop")] == ("skipped", "symlink")
    assert status[(str(docs / "README"), "README")] == ("kept", "")
    assert not any(path.startswith("loop/") for _, path in status)

    import forgeml.data.ingest as ingest_mod

    real = ingest_mod._read_limited

    def deny(path: Path, limit: int) -> bytes:
        if path.name == "main.py":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, limit)

    monkeypatch.setattr(ingest_mod, "_read_limited", deny)
    report = ingest_files([docs], tmp_path / "o.parquet")
    failed = [f for f in report.files if f["status"] == "failed"]
    assert [f["path"] for f in failed] == ["src/main.py"]
    assert "Permission denied" in failed[0]["detail"]
    assert report.kept + report.skipped + report.failed == report.found


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read files without permission")
def test_unreadable_file_fails_with_error(docs, tmp_path):
    (docs / "src" / "main.py").chmod(0)
    report = ingest_files([docs], tmp_path / "o.parquet")
    failed = {f["path"]: f for f in report.files if f["status"] == "failed"}
    assert "Permission" in failed["src/main.py"]["detail"]


def test_inputs_are_untouched(docs, tmp_path):
    before = tree_state(docs)
    ingest_files([docs], tmp_path / "o.parquet", progress=True)
    assert tree_state(docs) == before


def test_reader_table():
    assert reader_for(Path("a.cbl")).language == "cobol"
    assert reader_for(Path("x/CMakeLists.txt")).language == "cmake"
    assert reader_for(Path("NOTES")).doc_type == "text"
    assert reader_for(Path("doc.MD")).doc_type == "markdown"
    assert reader_for(Path("scan.png")).doc_type == "scan"  # OCR'd
    assert reader_for(Path("clip.mp4")) is None


def test_ingest_acme_corpus(tmp_path):
    root = tmp_path / "acme"
    generate_corpus(root, seed=0, scale=0.1)
    before = tree_state(root)
    out = tmp_path / "acme.parquet"
    report = ingest_files([root], out, exclude=["answers.json", "planted.json"])
    assert tree_state(root) == before
    reasons = {f["path"]: f["reason"] for f in report.files if f["status"] == "skipped"}
    assert reasons == {
        "assets/logo.bin": "binary",
        "legacy/empty.txt": "empty",
        "damaged/answers.json": "excluded",
        "records/planted.json": "excluded",
    }
    assert report.failed == 0
    table = pq.read_table(out)
    assert table.num_rows == report.kept == report.found - 4
    latin = [r["text"] for r in table.to_pylist() if r["path"] == "legacy/notes_latin1.txt"]
    assert "Mr. M\u00fcller at the caf\u00e9" in latin[0] and "\u00a3 1200" in latin[0]
    langs = pc.value_counts(table.column("language")).to_pylist()
    assert {"values": "acme-cl", "counts": len(list((root / "programs").glob("*.acl")))} in langs


def test_names_that_are_not_utf8_are_kept_readable(tmp_path):
    """A Latin-1 file name on disk and a tar member named in raw bytes are read and stored
    with U+FFFD for the bytes that do not decode (they used to crash the Parquet writer)."""
    import io
    import tarfile

    docs = tmp_path / "docs"
    docs.mkdir()
    body = b"a memo with enough plain words in it to be kept by every reader here.\n"
    with open(os.fsencode(docs) + b"/caf\xe9.txt", "wb") as fh:
        fh.write(body)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo(name=os.fsdecode(b"r\xe9sum\xe9.txt"))
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    (docs / "bundle.tar").write_bytes(buf.getvalue())
    out = tmp_path / "raw.parquet"
    report = ingest_files([docs], out)
    assert report.kept == 2 and report.failed == 0
    paths = sorted(pq.read_table(out).column("path").to_pylist())
    assert paths == ["bundle.tar!/r\ufffdsum\ufffd.txt", "caf\ufffd.txt"]
