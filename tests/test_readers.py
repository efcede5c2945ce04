"""Readers on real files the tests write with the libraries: HTML, PDF, DOCX, records,
archives, and their corrupt, encrypted and truncated variants."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from forgeml.data.ingest import ingest_files
from forgeml.data.readers import (
    ReadOptions,
    SkipDocument,
    read_docx,
    read_html,
    read_parts,
    read_pdf,
    reader_for,
)


def make_pdf(pages: list[str], password: str | None = None) -> bytes:
    """A real PDF: a minimal hand-built page per text, rewritten (and optionally
    encrypted) by pypdf's writer."""
    from pypdf import PdfReader, PdfWriter

    objects, kids = [], []
    for i, text in enumerate(pages):
        stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
        page_id, content_id = 4 + 2 * i, 5 + 2 * i
        kids.append(f"{page_id} 0 R")
        objects.append(
            (
                page_id,
                f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {content_id} 0 R"
                " /Resources << /Font << /F1 3 0 R >> >> >>".encode(),
            )
        )
        objects.append(
            (content_id, b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
        )
    objects = [
        (1, b"<< /Type /Catalog /Pages 2 0 R >>"),
        (2, f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(pages)} >>".encode()),
        (3, b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"),
        *objects,
    ]
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = {}
    for num, body in objects:
        offsets[num] = out.tell()
        out.write(b"%d 0 obj\n" % num + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for num in sorted(offsets):
        out.write(b"%010d 00000 n \n" % offsets[num])
    out.write(
        b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    )
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(out.getvalue())))
    if password:
        writer.encrypt(user_password=password, owner_password=password + "-owner")
    buf = io.BytesIO()
    writer.write(buf)
    return buf.getvalue()


def make_docx(paragraphs: list[str], table: list[list[str]] | None = None) -> bytes:
    import docx

    document = docx.Document()
    for p in paragraphs:
        document.add_paragraph(p)
    if table:
        t = document.add_table(rows=len(table), cols=len(table[0]))
        for r, row in enumerate(table):
            for c, value in enumerate(row):
                t.cell(r, c).text = value
    buf = io.BytesIO()
    document.save(buf)
    return buf.getvalue()


def test_pdf_text_per_page_and_failures():
    data = make_pdf(["First page about valves", "Second page about pumps"])
    text = read_pdf(data)
    assert text.split("\f") == ["First page about valves", "Second page about pumps"]
    with pytest.raises(SkipDocument) as err:
        read_pdf(make_pdf(["secret plans"], password="pw"))
    assert err.value.reason == "encrypted"
    with pytest.raises(SkipDocument) as err:
        read_pdf(b"%PDF-1.4\n" + bytes(range(256)) * 4)
    assert err.value.reason == "corrupt"
    with pytest.raises(SkipDocument) as err:  # truncated: the xref and trailer are gone
        read_pdf(data[: len(data) // 3])
    assert err.value.reason in {"corrupt", "no text"}


def test_docx_paragraphs_tables_and_corrupt():
    data = make_docx(["Hello from Word.", "Second paragraph."], [["a", "b"], ["c", "d"]])
    assert read_docx(data) == "Hello from Word.\nSecond paragraph.\na | b\nc | d"
    with pytest.raises(SkipDocument) as err:
        read_docx(data[: len(data) // 2])
    assert err.value.reason == "corrupt"


def test_html_main_text_without_furniture():
    page = b"""<html><head><title>T</title><style>p{}</style><script>var x=1;</script></head>
    <body><nav>Home | About | Contact</nav><header>Site header</header>
    <main><h1>Valve maintenance</h1><p>Check the <b>seals</b> every week.</p>
    <ul><li>one</li><li>two</li></ul></main><footer>(c) 2024 ACME</footer></body></html>"""
    assert read_html(page) == "Valve maintenance\nCheck the seals every week.\none\ntwo"
    latin = '<meta charset="iso-8859-1"><body><p>caf\xe9</p></body>'.encode("latin-1")
    assert read_html(latin) == "caf\xe9"


def test_records_text_fields_and_metadata():
    jsonl = b'{"text": "alpha", "id": 1}\n{"id": 2}\nnot json\n{"text": "beta", "tags": ["x"]}\n'
    parts = list(read_parts(reader_for(Path("a.jsonl")), jsonl))
    assert [(p.text, p.locator, p.skip) for p in parts] == [
        ("alpha", "line 1", ""),
        ("", "line 2", "no text field"),
        ("", "line 3", "bad json"),
        ("beta", "line 4", ""),
    ]
    assert parts[0].metadata == {"id": 1} and parts[3].metadata == {"tags": ["x"]}
    csv_data = b"title,body,author\nT1,first body,ann\nT2,second body,bob\n"
    opts = ReadOptions(text_fields=("title", "body"))
    parts = list(read_parts(reader_for(Path("a.csv")), csv_data, opts))
    assert [p.text for p in parts] == ["T1\n\nfirst body", "T2\n\nsecond body"]
    assert parts[1].metadata == {"author": "bob"} and parts[1].locator == "row 3"
    table = pa.table({"content": ["x1", "x2"], "score": [0.5, 0.9]})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    parts = list(read_parts(reader_for(Path("t.parquet")), buf.getvalue()))
    assert [(p.text, p.metadata) for p in parts] == [("x1", {"score": 0.5}), ("x2", {"score": 0.9})]
    with pytest.raises(SkipDocument) as err:
        list(read_parts(reader_for(Path("t.parquet")), buf.getvalue()[:-20]))
    assert err.value.reason == "corrupt"


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _targz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_archives_in_memory_with_nesting_and_limits():
    inner = _zip({"deep/readme.md": b"# Deep\n\nnested text\n"})
    data = _targz(
        {
            "docs/a.txt": b"plain text",
            "docs/b.py": b"print(1)\n",
            "docs/c.jsonl": b'{"text": "r1"}\n{"text": "r2"}\n',
            "docs/d.pdf": make_pdf(["pdf inside tar"]),
            "docs/e.mp3": b"ID3\x03\x00",
            "docs/inner.zip": inner,
            "docs/big.txt": b"x" * 5000,
        }
    )
    assert reader_for(Path("x.tar.gz")).doc_type == "archive"
    parts = list(read_parts(reader_for(Path("x.tar.gz")), data, ReadOptions(max_member_bytes=4096)))
    got = {(p.member, p.locator): (p.text, p.doc_type, p.language, p.skip) for p in parts}
    assert got[("docs/a.txt", "")] == ("plain text", "text", None, "")
    assert got[("docs/b.py", "")][1:3] == ("code", "python")
    assert got[("docs/c.jsonl", "line 2")][0] == "r2"
    assert got[("docs/d.pdf", "")][0] == "pdf inside tar"
    assert got[("docs/e.mp3", "")][3] == "unsupported type"
    assert got[("docs/big.txt", "")][3] == "too large"
    assert got[("docs/inner.zip!/deep/readme.md", "")][0].startswith("# Deep")
    with pytest.raises(SkipDocument) as err:
        list(read_parts(reader_for(Path("x.zip")), b"PK\x03\x04 broken"))
    assert err.value.reason == "corrupt"


@pytest.mark.parametrize("name,pack", [("x.zip", _zip), ("x.tar.gz", _targz)])
def test_an_archive_past_max_members_reads_the_first_ones_and_says_so(name, pack):
    data = pack({f"m{i}.txt": f"text {i}".encode() for i in range(5)})
    parts = list(read_parts(reader_for(Path(name)), data, ReadOptions(max_members=3)))
    assert [(p.member, p.text) for p in parts[:3]] == [(f"m{i}.txt", f"text {i}") for i in range(3)]
    assert [(p.skip, p.detail) for p in parts[3:]] == [("too many members", "more than 3")]
    exact = list(read_parts(reader_for(Path(name)), data, ReadOptions(max_members=5)))
    assert len(exact) == 5 and not any(p.skip for p in exact)


def test_ingest_every_format_accounts_for_every_file(tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    (root / "page.html").write_bytes(b"<html><body><main><p>Hello page</p></main></body></html>")
    (root / "doc.pdf").write_bytes(make_pdf(["pdf text"]))
    (root / "locked.pdf").write_bytes(make_pdf(["locked"], password="pw"))
    (root / "broken.pdf").write_bytes(make_pdf(["broken"])[:200])
    (root / "letter.docx").write_bytes(make_docx(["Dear reader."]))
    (root / "rows.jsonl").write_text(
        json.dumps({"body": "row one", "k": 1}) + "\n" + json.dumps({"body": "row two"}) + "\n"
    )
    (root / "bad.jsonl").write_text("{oops\n[1]\n")
    (root / "table.csv").write_text("a,b\n1,2\n")  # no text column: one plain document
    (root / "bundle.zip").write_bytes(_zip({"x.md": b"# X\n", "y.txt": b"y text"}))
    before = sorted(p.name for p in tmp_path.rglob("*"))
    report = ingest_files([root], tmp_path / "out.parquet", text_fields=["body"])
    assert report.kept + report.skipped + report.failed == report.found == 9
    status = {f["path"]: (f["status"], f["reason"]) for f in report.files}
    assert status["locked.pdf"] == ("skipped", "encrypted")
    assert status["broken.pdf"][0] == "skipped" and status["broken.pdf"][1] in {
        "corrupt",
        "no text",
    }
    assert status["bad.jsonl"] == ("skipped", "no usable records")
    table = pq.read_table(tmp_path / "out.parquet")
    rows = {(r["path"], r["locator"]): r for r in table.to_pylist()}
    assert rows[("rows.jsonl", "line 1")]["text"] == "row one"
    assert json.loads(rows[("rows.jsonl", "line 1")]["metadata"]) == {"k": 1}
    assert rows[("bundle.zip!/x.md", "")]["type"] == "markdown"
    assert rows[("page.html", "")]["text"] == "Hello page"
    assert rows[("letter.docx", "")]["text"] == "Dear reader."
    assert (rows[("table.csv", "")]["text"], rows[("table.csv", "")]["type"]) == (
        "a,b\n1,2\n",
        "text",
    )
    assert report.documents == table.num_rows == 8
    # nothing was unpacked next to the inputs or the output
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted([*before, "out.parquet"])
