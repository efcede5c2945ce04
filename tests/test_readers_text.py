"""Text by content and encoding, notebooks, XML, and key and credential files: read, typed
and accounted for by ingest, never skipped as an unsupported type."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from forgeml.data.ingest import ingest_files
from forgeml.data.readers import (
    ReadOptions,
    SkipDocument,
    decode_text,
    read_parts,
    reader_for,
    sniffed_reader,
)


def parts_of(name: str, data: bytes, options: ReadOptions | None = None) -> list:
    return list(read_parts(reader_for(Path(name)), data, options))


@pytest.mark.parametrize(
    ("text", "encoding"),
    [
        ("\u201cSmart quotes\u201d and caf\xe9 \u2014 na\xefve r\xe9sum\xe9 for 5\u20ac", "cp1252"),
        ("caf\xe9 cr\xe8me br\xfbl\xe9e", "latin-1"),
        ("It\u2019s the caf\xe9\u2019s cr\xe8me \u2013 don\u2019t miss it", "cp1252"),
        ("Windows export: caf\xe9 \u20ac 5", "utf-16"),
        ("Stra\xdfe und Gr\xfc\xdfe aus M\xfcnchen, sch\xf6ne \xc4pfel.", "cp1252"),
        (
            "Za\u017c\xf3\u0142\u0107 g\u0119\u015bl\u0105 ja\u017a\u0144. Dzie\u0144 dobry.",
            "cp1250",
        ),
        (
            "\u041f\u0440\u0438\u0432\u0435\u0442, \u043a\u0430\u043a \u0434\u0435\u043b\u0430?",
            "cp1251",
        ),
    ],
)
def test_legacy_encodings_decode_to_the_right_characters(text, encoding):
    data = text.encode(encoding)
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")
    assert decode_text(data) == text


def test_binary_and_control_soup_are_not_text():
    for data in (b"\x00\x01binary", bytes(range(1, 32)) * 20):
        with pytest.raises(SkipDocument) as err:
            decode_text(data)
        assert err.value.reason == "binary"


def test_files_without_a_reader_are_sniffed_by_content():
    assert reader_for(Path("README.api")) is None
    assert sniffed_reader(Path("README.api"), b"The API is documented here.\n").doc_type == "text"
    assert sniffed_reader(Path("notes.v2"), "caf\xe9".encode("cp1252")).doc_type == "text"
    assert sniffed_reader(Path("logo.png"), b"looks like text") is None  # a binary format
    assert sniffed_reader(Path("blob.xyz"), b"\x89PNG\r\n\x1a\n....") is None
    assert sniffed_reader(Path("blob.xyz"), bytes(range(1, 32)) * 4) is None
    assert reader_for(Path("go.mod")).language == "go-mod"
    assert reader_for(Path("go.sum")).language == "go-sum"
    assert reader_for(Path("LICENSE")).doc_type == "text"


def notebook(nbformat: int = 4) -> bytes:
    cells = [
        {"cell_type": "markdown", "metadata": {}, "source": ["# Pump model\n", "Fit the curve."]},
        {
            "cell_type": "code",
            "metadata": {},
            "execution_count": 1,
            "source": "print(2 + 2)",
            "outputs": [
                {"output_type": "stream", "name": "stdout", "text": ["4\n"]},
                {"output_type": "display_data", "data": {"image/png": "iVBOR"}, "metadata": {}},
            ],
        },
        {"cell_type": "raw", "metadata": {}, "source": ""},
    ]
    meta = {"kernelspec": {"name": "python3", "language": "python"}}
    if nbformat == 3:
        for cell in cells:
            if cell["cell_type"] == "code":
                cell["input"] = cell.pop("source")
        return json.dumps(
            {"nbformat": 3, "metadata": meta, "worksheets": [{"cells": cells}]}
        ).encode()
    return json.dumps(
        {"nbformat": 4, "nbformat_minor": 5, "metadata": meta, "cells": cells}
    ).encode()


def test_notebook_cells_and_optional_outputs():
    (part,) = parts_of("fit.ipynb", notebook())
    assert part.text == "# Pump model\nFit the curve.\n\n```python\nprint(2 + 2)\n```"
    assert part.language == "python"
    (with_outputs,) = parts_of("fit.ipynb", notebook(), ReadOptions(notebook_outputs=True))
    assert with_outputs.text.endswith("```python\nprint(2 + 2)\n```\n\n```output\n4\n```")
    (v3,) = parts_of("old.ipynb", notebook(3))
    assert v3.text == part.text
    with pytest.raises(SkipDocument) as err:
        parts_of("bad.ipynb", b'{"cells": [')
    assert err.value.reason == "corrupt"


def test_xml_prose_config_and_entity_bombs():
    docbook = (
        b"<article><title>Valve care</title><para>Check the <emphasis>seals</emphasis> every"
        b" week before start.</para><para>Replace worn gaskets with the approved part.</para>"
        b"</article>"
    )
    (prose,) = parts_of("guide.xml", docbook)
    assert (prose.text, prose.doc_type) == (
        "Valve care\nCheck the seals every week before start.\n"
        "Replace worn gaskets with the approved part.",
        "document",
    )
    pom = b"<project><groupId>com.acme</groupId><version>1.0</version></project>\n"
    (config,) = parts_of("pom.xml", pom)
    assert (config.text, config.doc_type) == (pom.decode(), None)  # stays code, as written
    lol = (
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]><lolz>&lol2;</lolz>'
    )
    external = (
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>'
    )
    for data, reason in ((lol, "unsafe xml"), (external, "unsafe xml"), (b"<a><b></a>", "corrupt")):
        with pytest.raises(SkipDocument) as err:
            parts_of("x.xml", data)
        assert err.value.reason == reason


PRIVATE_PEM = b"-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----\n"


@pytest.mark.parametrize(
    ("name", "data", "kind"),
    [
        ("server.pem", PRIVATE_PEM, "private-key"),
        ("tls/server.key", PRIVATE_PEM, "private-key"),
        (
            "ca.pem",
            b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
            "certificate",
        ),
        ("id_ed25519.pub", b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5 ops@acme\n", "public-key"),
        (
            "home/.ssh/id_rsa",
            b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3Bl\n-----END OPENSSH PRIVATE KEY-----\n",
            "private-key",
        ),
        (".env", b"DB_PASSWORD=hunter2\n", "dotenv"),
        ("deploy/.env.example", b"DB_PASSWORD=changeme\n", "dotenv"),
        ("prod.env", b"API_KEY=abc\n", "dotenv"),
        ("home/.kube/config", b"apiVersion: v1\nkind: Config\nclusters: []\n", "kubeconfig"),
        ("home/.netrc", b"machine git.acme.test login ci password s3cret\n", "credentials"),
        ("home/.aws/credentials", b"[default]\naws_access_key_id = AKIA\n", "credentials"),
    ],
)
def test_key_and_credential_files_are_read_and_typed(name, data, kind):
    reader = reader_for(Path(name))
    assert reader is not None and reader.doc_type == "sensitive_file"
    (part,) = parts_of(name, data)
    assert (part.text, part.language) == (data.decode(), kind)


def test_ingest_accounts_for_every_new_kind_of_file(tmp_path):
    root = tmp_path / "org"
    (root / "keys").mkdir(parents=True)
    (root / "README.api").write_text("How to call the billing API.\n")
    (root / "legacy.txt").write_bytes("\u201cQuoted\u201d caf\xe9 memo".encode("cp1252"))
    (root / "go.mod").write_text("module acme.test/billing\n\ngo 1.22\n")
    (root / "go.sum").write_text("golang.org/x/text v0.14.0 h1:abc=\n")
    (root / ".env.example").write_text("DB_PASSWORD=changeme\n")
    (root / "keys" / "deploy.pem").write_bytes(PRIVATE_PEM)
    (root / "keys" / "store.p12").write_bytes(b"0\x82\x0b\x00" + bytes(range(256)))
    (root / "fit.ipynb").write_bytes(notebook())
    (root / "lolz.xml").write_bytes(b'<!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;</x>')
    (root / "picture.xyz").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    report = ingest_files([root], tmp_path / "out.parquet")
    assert report.kept + report.skipped + report.failed == report.found == 10
    status = {f["path"]: (f["status"], f["reason"]) for f in report.files}
    assert status["keys/store.p12"] == ("skipped", "binary key store")
    assert status["lolz.xml"] == ("skipped", "unsafe xml")
    assert status["picture.xyz"] == ("skipped", "binary")
    assert report.by_type == {"code": 2, "notebook": 1, "sensitive_file": 2, "text": 2}
    assert report.by_language["dotenv"] == 1 and report.by_language["private-key"] == 1
    rows = {r["path"]: r for r in pq.read_table(tmp_path / "out.parquet").to_pylist()}
    assert rows["legacy.txt"]["text"] == "\u201cQuoted\u201d caf\xe9 memo"
    assert rows["README.api"]["type"] == "text"
    assert (rows["keys/deploy.pem"]["type"], rows["keys/deploy.pem"]["language"]) == (
        "sensitive_file",
        "private-key",
    )
    ingest_files([root], tmp_path / "outputs.parquet", notebook_outputs=True)
    rows = {r["path"]: r for r in pq.read_table(tmp_path / "outputs.parquet").to_pylist()}
    assert rows["fit.ipynb"]["text"].endswith("```output\n4\n```")
    assert rows["fit.ipynb"]["language"] == "python"


def test_gzip_files_are_read_as_text_or_as_tars():
    import gzip
    import io
    import tarfile

    (part,) = parts_of("changelog.Debian.gz", gzip.compress(b"pkg (1.0) unstable\n  * First.\n"))
    assert (part.text, part.doc_type) == ("pkg (1.0) unstable\n  * First.\n", "text")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("docs/a.md")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"# A\n"))
    (member,) = parts_of("bundle.gz", gzip.compress(buf.getvalue()))
    assert (member.member, member.text, member.doc_type) == ("docs/a.md", "# A\n", "markdown")
    for data, reason in (
        (gzip.compress(b"\0" * (2 << 20)), "zip bomb"),
        (gzip.compress(bytes(range(256)).hex().encode() * 10), "too large"),
        (b"\x1f\x8b not gzip", "corrupt"),
    ):
        with pytest.raises(SkipDocument) as err:
            parts_of("a.gz", data, ReadOptions(max_member_bytes=4096))
        assert err.value.reason == reason


def test_config_files_that_hold_credentials_are_typed_by_content():
    kubeconfig = b"apiVersion: v1\nkind: Config\nclusters:\n- name: prod\nusers:\n- name: admin\n"
    service_key = b'{"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY-----"}'
    cases = [
        ("etc/kubernetes/admin.conf", kubeconfig, "sensitive_file", "kubeconfig"),
        ("deploy/prod-cluster.yaml", kubeconfig, "sensitive_file", "kubeconfig"),
        ("gcp/key.json", service_key, "sensitive_file", "service-account-key"),
        ("app.toml", b'tls_key = """\n' + PRIVATE_PEM + b'"""\n', "sensitive_file", "private-key"),
        ("deploy/app.yaml", b"kind: Deployment\nreplicas: 2\n", "code", "yaml"),
        ("package.json", b'{"name": "billing"}', "code", "json"),
    ]
    for name, data, doc_type, language in cases:
        reader = reader_for(Path(name))
        (part,) = parts_of(name, data)
        assert (part.doc_type or reader.doc_type, part.language or reader.language) == (
            doc_type,
            language,
        ), name
        assert part.text == data.decode()
