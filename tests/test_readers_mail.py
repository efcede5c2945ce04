"""Mail readers on messages the tests write with the stdlib (`email`, `mailbox`) and, for
Outlook .msg, with extract-msg's OLE writer: headers and bodies, attachments read through
the reader table, broken MIME, a zip bomb attached, mbox files, damaged .msg files."""

from __future__ import annotations

import io
import mailbox
import struct
import zipfile
from email.message import EmailMessage
from pathlib import Path

import pytest

from forgeml.data.ingest import ingest_files
from forgeml.data.readers import ReadOptions, SkipDocument, read_parts, reader_for


def parts_of(name: str, data: bytes, options: ReadOptions | None = None) -> list:
    return list(read_parts(reader_for(Path(name)), data, options))


def message(subject: str = "Quarterly numbers", body: str = "Hi Bob,\nthe numbers.\n"):
    msg = EmailMessage()
    msg["From"] = "Ann Lee <ann@acme.test>"
    msg["To"] = "bob@acme.test"
    msg["Subject"] = subject
    msg["Date"] = "Mon, 07 Dec 2026 10:00:00 +0000"
    msg["Message-ID"] = "<1@acme.test>"
    msg.set_content(body)
    return msg


def zipped(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buf.getvalue()


def test_eml_headers_body_and_attachments_through_the_reader_table():
    msg = message()
    msg.add_alternative("<html><body><p>Hi Bob, <b>HTML</b> copy</p></body></html>", subtype="html")
    msg.add_attachment(
        b"# Plan\n\nShip in May.\n", maintype="text", subtype="markdown", filename="plan.md"
    )
    msg.add_attachment(
        zipped({"a/notes.txt": b"zipped notes"}),
        maintype="application",
        subtype="zip",
        filename="../../etc/bundle.zip",
    )
    parts = parts_of("mail.eml", msg.as_bytes())
    assert parts[0].text == (
        "From: Ann Lee <ann@acme.test>\nTo: bob@acme.test\nSubject: Quarterly numbers\n"
        "Date: Mon, 07 Dec 2026 10:00:00 +0000\n"
        "Attachments: plan.md, bundle.zip\n\nHi Bob,\nthe numbers."
    )
    assert parts[0].metadata == {"message_id": "<1@acme.test>"}
    rest = {p.member: (p.text, p.doc_type) for p in parts[1:]}
    assert rest == {  # the sender's path never becomes a folder
        "plan.md": ("# Plan\n\nShip in May.\n", "markdown"),
        "bundle.zip!/a/notes.txt": ("zipped notes", "text"),
    }


def test_html_only_mail_goes_through_the_html_reader():
    msg = message()
    msg.set_content(
        "<html><body><nav>menu</nav><p>Only <i>HTML</i> here</p></body></html>", subtype="html"
    )
    (part,) = parts_of("mail.eml", msg.as_bytes())
    assert part.text.endswith("\n\nOnly HTML here")


def test_a_zip_bomb_attached_to_a_mail_is_skipped_and_the_mail_kept(tmp_path):
    msg = message()
    bomb = zipped({"zeros.txt": b"\0" * (4 << 20), "readme.md": b"# fine\n"})
    assert len(bomb) < (4 << 20) // 100  # the member expands past the bomb ratio
    msg.add_attachment(bomb, maintype="application", subtype="zip", filename="bomb.zip")
    parts = parts_of("mail.eml", msg.as_bytes())
    got = {p.member: (p.skip, p.text) for p in parts}
    assert got[""][0] == "" and "Hi Bob" in got[""][1]
    assert got["bomb.zip!/readme.md"] == ("", "# fine\n")
    assert got["bomb.zip!/zeros.txt"][0] == "zip bomb"
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "mail.eml").write_bytes(msg.as_bytes())
    report = ingest_files([tmp_path / "in"], tmp_path / "out.parquet")
    assert (report.kept, report.documents) == (1, 2)
    assert report.parts_skipped_by_reason == {"zip bomb": 1}


def test_broken_mime_is_read_as_far_as_it_goes():
    broken = (
        b"From: x@acme.test\nSubject: broken\nDate: not a date at all\n"
        b'Content-Type: multipart/mixed; boundary="XX"\n\n'
        b"--XX\nContent-Type: text/plain; charset=no-such-charset\n\nbody text here\n"
        b"--XX\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n"
        b'Content-Disposition: attachment; filename="a.csv"\n\n!!!not base64 at all\n'
    )  # no closing boundary, an unknown charset, a bad date and bad base64
    parts = parts_of("broken.eml", broken)
    assert parts[0].text.startswith("From: x@acme.test\nSubject: broken\nDate: not a date")
    assert parts[0].text.endswith("\n\nbody text here")
    assert parts[0].metadata["mime_defects"] >= 1
    assert all(p.skip or p.text for p in parts)
    with pytest.raises(SkipDocument) as err:  # no headers at all: not a mail
        parts_of("x.eml", b"\x01\x02 random bytes without headers")
    assert err.value.reason == "corrupt"


def test_attached_mails_nest_until_the_depth_limit():
    inner = message("Inner", "inner body\n")
    inner.add_attachment(b"deep text", maintype="text", subtype="plain", filename="deep.txt")
    outer = message("Outer", "outer body\n")
    outer.add_attachment(inner)
    members = {p.member: (p.skip, p.text[:40]) for p in parts_of("m.eml", outer.as_bytes())}
    assert members["attachment-1.eml"][1].startswith("From: Ann Lee")
    assert members["attachment-1.eml!/deep.txt"] == ("", "deep text")
    shallow = parts_of("m.eml", outer.as_bytes(), ReadOptions(max_depth=0))
    assert [(p.member, p.skip) for p in shallow[1:]] == [("attachment-1.eml", "nested archive")]


def test_mbox_one_document_per_message(tmp_path):
    box = mailbox.mbox(tmp_path / "in.mbox")
    for i in range(3):
        box.add(message(f"msg {i}", f"From the desk of {i}\nbody {i}\n"))
    box.flush()
    data = (tmp_path / "in.mbox").read_bytes()
    assert b"\n>From the desk" in data  # the writer quoted the body's From line
    parts = parts_of("in.mbox", data)
    assert len(parts) == len(mailbox.mbox(tmp_path / "in.mbox")) == 3
    assert [p.locator for p in parts] == ["message 1", "message 2", "message 3"]
    assert parts[1].text.endswith(
        "Subject: msg 1\nDate: Mon, 07 Dec 2026 10:00:00 +0000\n\nFrom the desk of 1\nbody 1"
    )
    with pytest.raises(SkipDocument):
        parts_of("x.mbox", b"not an mbox\n")


def _mapi_properties(entries: list[tuple[int, object]], header: bytes) -> bytes:
    """A `__properties_version1.0` stream ([MS-OXMSG] 2.4): a header, then 16 bytes per
    property: tag, flags, and the value (fixed types) or the size (strings, binary)."""
    out = bytearray(header)
    for tag, value in entries:
        if isinstance(value, bytes):
            size = len(value) + (2 if tag & 0xFFFF == 0x001F else 0)  # strings: + terminator
            out += struct.pack("<IIII", tag, 0x6, size, 0)
        else:
            out += struct.pack("<IIi4x", tag, 0x6, value)
    return bytes(out)


def make_msg(subject: str, body: str, sender: str, to: str, files: dict[str, bytes]) -> bytes:
    """An Outlook message laid out as [MS-OXMSG] describes (property streams, a recipient
    and attachment storages), written into an OLE file by extract-msg's own `OleWriter`."""
    from extract_msg import OleWriter

    writer = OleWriter()

    def string(prefix: str, tag: int, text: str) -> tuple[int, bytes]:
        writer.addEntry(f"{prefix}__substg1.0_{tag:08X}", text.encode("utf-16-le"))
        return tag, text.encode("utf-16-le")

    top = [
        string("", 0x001A001F, "IPM.Note"),  # message class
        string("", 0x0037001F, subject),
        string("", 0x1000001F, body),
        string("", 0x0C1A001F, sender),
        string("", 0x0E04001F, to),  # display To
    ]
    for stream in ("00020102", "00030102", "00040102"):  # the (empty) named-property map
        writer.addEntry(f"__nameid_version1.0/__substg1.0_{stream}", b"")
    recipient = "__recip_version1.0_#00000000/"
    entries = [string(recipient, 0x3001001F, to), string(recipient, 0x3003001F, to)]
    entries.append((0x0C150003, 1))  # recipient type: To
    writer.addEntry(recipient + "__properties_version1.0", _mapi_properties(entries, bytes(8)))
    for number, (name, data) in enumerate(files.items()):
        prefix = f"__attach_version1.0_#{number:08X}/"
        writer.addEntry(prefix + "__substg1.0_37010102", data)  # attachment data
        entries = [string(prefix, 0x3707001F, name), (0x37010102, data), (0x37050003, 1)]
        writer.addEntry(prefix + "__properties_version1.0", _mapi_properties(entries, bytes(8)))
    header = struct.pack("<8xIIII8x", 1, len(files), 1, len(files))
    writer.addEntry("__properties_version1.0", _mapi_properties(top, header))
    buf = io.BytesIO()
    writer.write(buf)
    return buf.getvalue()


def test_outlook_msg_with_extract_msg():
    pytest.importorskip("extract_msg", reason="forgeml[documents] reads .msg")
    bomb = zipped({"zeros.txt": b"\0" * (4 << 20)})
    data = make_msg(
        "Budget 2027",
        "Please review the attached budget.\nThanks",
        "Ann Lee",
        "bob@acme.test",
        {"notes.txt": b"attached plain notes", "big.zip": bomb},
    )
    parts = parts_of("mail.msg", data)
    assert parts[0].text == (
        "From: Ann Lee\nTo: bob@acme.test <bob@acme.test>\nSubject: Budget 2027\n"
        "Attachments: notes.txt, big.zip\n\nPlease review the attached budget.\nThanks"
    )
    assert [(p.member, p.text, p.skip) for p in parts[1:]] == [
        ("notes.txt", "attached plain notes", ""),
        ("big.zip!/zeros.txt", "", "zip bomb"),
    ]


def test_msg_that_is_not_an_outlook_message_is_skipped():
    assert reader_for(Path("x.msg")).doc_type == "mail"
    for data in (b"plain text", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 1024):
        with pytest.raises(SkipDocument) as err:
            parts_of("x.msg", data)
        assert err.value.reason == "corrupt"
