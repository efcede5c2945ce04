"""Mail: .eml (stdlib `email`, policy.default), .mbox (one document per message) and
Outlook .msg (extract-msg).

A message becomes `From/To/Cc/Subject/Date` headers, a blank line and its text body (an
HTML-only body through the HTML reader). Attachments are files: each is read through the
reader table (`contained_parts`) within the depth and size limits, so a spreadsheet or a
zip attached to a mail is read like one on disk, and a zip bomb inside is skipped.
"""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

from forgeml.data.readers.base import (
    OLE_MAGIC,
    Part,
    ReadOptions,
    SkipDocument,
    contained_parts,
    decode_text,
)
from forgeml.data.readers.documents import read_html

HEADERS = ("From", "To", "Cc", "Subject", "Date")
_MAIL_HEADERS = (*HEADERS, "Message-ID", "Received", "MIME-Version")


def _header(msg: EmailMessage, name: str) -> str:
    """A header's decoded value; a malformed one falls back to its raw text."""
    try:
        value = msg.get(name)
        return " ".join(str(value).split()) if value is not None else ""
    except Exception:  # noqa: BLE001 - email's header classes raise on broken syntax
        raw = [v for k, v in msg.raw_items() if k.lower() == name.lower()]
        return " ".join(str(raw[0]).split()) if raw else ""


def _payload_text(part: Any) -> str:
    """The text of one MIME part, in its declared charset or a detected one."""
    try:
        content = part.get_content()
        if isinstance(content, str):
            return content
    except Exception:  # noqa: BLE001 - unknown charsets, broken transfer encodings
        pass
    raw = part.get_payload(decode=True)
    if isinstance(raw, bytes) and raw:
        try:
            return decode_text(raw)
        except SkipDocument:
            return ""
    return ""


def _body(msg: EmailMessage) -> str:
    body = None
    try:
        body = msg.get_body(preferencelist=("plain", "html"))
    except Exception:  # noqa: BLE001 - a broken multipart structure
        body = None
    if body is None:
        if msg.is_multipart():
            return ""
        body = msg
    text = _payload_text(body)
    if body.get_content_type() == "text/html":
        return read_html(text.encode("utf-8"))
    return text.strip()


def _attachment_name(part: Any, number: int) -> str:
    try:
        name = part.get_filename()
    except Exception:  # noqa: BLE001
        name = None
    if part.get_content_type() == "message/rfc822":
        return name or f"attachment-{number}.eml"
    return _safe_name(name or "") or f"attachment-{number}.bin"


def _safe_name(name: str) -> str:
    """An attachment's name as a member path: its last component only (the sender's
    folders are not ours), without control characters."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    return re.sub(r"[\x00-\x1f]", "_", name).strip(". ")


def _attachment_bytes(part: Any) -> bytes:
    if part.get_content_type() == "message/rfc822":
        inner = part.get_payload()
        inner = inner[0] if isinstance(inner, list) and inner else inner
        return inner.as_bytes() if hasattr(inner, "as_bytes") else b""
    data = part.get_payload(decode=True)
    return data if isinstance(data, bytes) else b""


def message_parts(
    raw: bytes, options: ReadOptions, locator: str = "", prefix: str = ""
) -> Iterator[Part]:
    """The message in `raw` as one document, then its attachments' documents."""
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    if not any(msg.get(h) is not None for h in _MAIL_HEADERS):
        raise SkipDocument("corrupt", "mail: no mail headers")
    try:
        attachments = list(msg.iter_attachments())
    except Exception:  # noqa: BLE001 - broken MIME: the body is still worth reading
        attachments = []
    names = [_attachment_name(p, n) for n, p in enumerate(attachments, start=1)]
    lines = [f"{h}: {v}" for h in HEADERS if (v := _header(msg, h))]
    if names:
        lines.append(f"Attachments: {', '.join(names)}")
    defects = len(msg.defects) + sum(len(p.defects) for p in msg.walk() if p is not msg)
    metadata: dict[str, Any] = {}
    if message_id := _header(msg, "Message-ID"):
        metadata["message_id"] = message_id
    if defects:
        metadata["mime_defects"] = defects
    yield Part("\n".join(lines) + "\n\n" + _body(msg), locator, metadata or None)
    for name, part in zip(names, attachments, strict=True):
        data = _attachment_bytes(part)
        yield from _attachment(prefix + name, data, options, locator)


def _attachment(name: str, data: bytes, options: ReadOptions, locator: str) -> Iterator[Part]:
    for part in contained_parts(name, lambda limit: data[:limit], len(data), options):
        yield part._replace(locator=part.locator or locator)


def read_eml_parts(data: bytes, options: ReadOptions) -> Iterator[Part]:
    yield from message_parts(data, options)


_MBOX_FROM = re.compile(rb"^From ", re.MULTILINE)
_MBOX_QUOTED_FROM = re.compile(rb"^>(>*From )", re.MULTILINE)


def read_mbox_parts(data: bytes, options: ReadOptions) -> Iterator[Part]:
    """One document per message of an mbox file, split where the stdlib `mailbox` module
    splits (every line that starts with `From `), in memory; body lines that mbox writers
    quoted (`>From `) lose one `>` (the mboxrd convention)."""
    if not data.startswith(b"From "):
        raise SkipDocument("corrupt", "mbox: does not start with a 'From ' line")
    starts = [m.start() for m in _MBOX_FROM.finditer(data)]
    for number, (start, end) in enumerate(
        zip(starts, [*starts[1:], len(data)], strict=True), start=1
    ):
        chunk = data[start:end]
        raw = chunk.split(b"\n", 1)[1] if b"\n" in chunk else b""
        raw = _MBOX_QUOTED_FROM.sub(rb"\1", raw)  # ">From " written for a body's "From "
        try:
            yield from message_parts(raw, options, f"message {number}", f"message-{number}/")
        except SkipDocument as skip:
            yield Part("", f"message {number}", skip=skip.reason, detail=skip.detail)


def read_msg_parts(data: bytes, options: ReadOptions) -> Iterator[Part]:
    """An Outlook .msg message with extract-msg: headers, text body (else HTML), and its
    attachments through the reader table (embedded messages as .msg files)."""
    import logging

    if not data.startswith(OLE_MAGIC):
        raise SkipDocument("corrupt", "msg: not an OLE file")
    try:
        import extract_msg
    except ImportError:
        raise SkipDocument("no reader library", "msg needs extract-msg") from None
    logging.getLogger("extract_msg").setLevel(logging.ERROR)
    try:
        msg = extract_msg.openMsg(data)
    except Exception as err:  # noqa: BLE001 - extract-msg raises many types on bad files
        raise SkipDocument("corrupt", f"msg: {type(err).__name__}") from None
    try:
        fields = {
            "From": msg.sender,
            "To": msg.to,
            "Cc": msg.cc,
            "Subject": msg.subject,
            "Date": msg.date,
        }
        body = msg.body or ""
        if not body.strip() and msg.htmlBody:
            body = read_html(msg.htmlBody)
        files = []
        for number, att in enumerate(msg.attachments, start=1):
            payload = att.data
            name = att.longFilename or att.shortFilename or f"attachment-{number}.bin"
            if hasattr(payload, "exportBytes"):  # an embedded message
                payload, name = payload.exportBytes(), f"{name}.msg"
            if isinstance(payload, bytes):
                files.append((_safe_name(name) or f"attachment-{number}.bin", payload))
    except Exception as err:  # noqa: BLE001
        raise SkipDocument("corrupt", f"msg: {type(err).__name__}") from None
    finally:
        msg.close()
    lines = [f"{k}: {' '.join(str(v).split())}" for k, v in fields.items() if v]
    if files:
        lines.append(f"Attachments: {', '.join(name for name, _ in files)}")
    yield Part("\n".join(lines) + "\n\n" + body.strip())
    for name, payload in files:
        yield from _attachment(name, payload, options, "")
