"""Redaction: every planted ACME secret and PII value is found; validators reject look-alikes;
policies drop or replace; no value ever shows up in what redaction returns."""

from __future__ import annotations

import json

import pytest
from acme import build_corpus

from forgeml.core.config import RedactConfig
from forgeml.data.redact import find_sensitive, redact_text
from forgeml.governance.detectors import iban_valid, luhn_valid


def test_acme_planted_recall():
    files, _ = build_corpus(seed=0, scale=0.2)
    planted = json.loads(files["records/planted.json"])["items"]
    hits: dict[str, list[int]] = {}
    for item in planted:
        spans = find_sensitive(files[item["file"]].decode())
        found = any(s.start <= item["start"] and item["end"] <= s.end for s in spans)
        hits.setdefault(item["kind"], []).append(found)
    secrets = hits.pop("api_key") + hits.pop("password")
    assert secrets and all(secrets)  # secrets: 100%
    for kind, found in hits.items():
        assert sum(found) / len(found) >= 0.95, kind
    for path in {i["file"] for i in planted}:
        out = redact_text(files[path].decode()).text
        assert not [i for i in planted if i["file"] == path and i["value"] in out]


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("mail me at jane.doe+x@example.co.uk today", "email"),
        ("call +44 20 7946 0958 now", "phone"),
        ("call (415) 555-0134 now", "phone"),
        ("pay to DE89 3704 0044 0532 0130 00 please", "iban"),
        ("pay to GB82WEST12345698765432 please", "iban"),
        ("card 4111 1111 1111 1111 exp 12/29", "credit_card"),
        ("server 192.168.10.24 is down", "ip"),
        ("server 2a02:6b8:85a3::8a2e:370:7334 is down", "ip"),
        ("export OPENAI_API_KEY=sk-proj-abcdefghijklmnopqrstuvwxyz123456", "secret"),
        ("aws AKIAIOSFODNN7EXAMPLE key", "secret"),
        ("db = postgres://admin:S3cr3tPass@db.internal:5432/app", "secret"),
        ('password: "hunter2hunter2"', "secret"),
        ("token ghp_abcdefghijklmnopqrstuvwxyzABCDEFGHIJ", "secret"),
        ("blob kJ8sD2mQ9xZ4vB7nL1pR5tY3wE6uI0oA in a line", "secret"),
        ("url https://x.io/u/kJ8sD2mQ9xZ4vB7nL1pR5tY3wE6uI0oA/profile", "secret"),
        ("aws wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY here", "secret"),
        ("DB_PASSWORD=Xk9#[mQ2!pLs", "secret"),
        ('password = "s3cr[et]Pass"', "secret"),
    ],
)
def test_detectors(text, kind):
    kinds = [s.kind for s in find_sensitive(text)]
    assert kind in kinds, kinds


@pytest.mark.parametrize(
    "text",
    [
        "released on 2024-03-15 at noon",
        "card-like 4111 1111 1111 1112 fails Luhn",
        "IBAN-like DE89 3704 0044 0532 0130 01 fails mod-97",
        "version 1.2.3 and 300.1.1.1",
        "commit 3f786850e387550fdab836ed7e6dc881de23001b is hex",
        "path docs/reference/while_loops_2024.md stays",
        "password = args.password",
        "GIT v1.5.0.1 Release Notes, fixes since v1.5.0.3",
        "return encoded, [errors.InvalidBase64LengthDefect()]",
        "    token_type = 'encoded-word'",
        "password_min_length = 12345678",
        "see https://github.com/nodejs/node/commit/67a1f0c52e0708e2596f3f2134b8386d6112561e",
        "tools/security/EmptyPassword.java: Java Keystore",
        "token = self[1]",
    ],
)
def test_look_alikes_are_kept(text):
    in_code = text.lstrip().startswith(("password", "return", "token"))
    assert find_sensitive(text, in_code=in_code) == [], text


def test_checksums():
    assert iban_valid("DE89370400440532013000") and not iban_valid("DE89370400440532013001")
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")


def test_private_key_and_policies():
    key = (
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA7x\nabc+/=\n-----END RSA PRIVATE KEY-----"
    )
    out = redact_text(f"before\n{key}\nafter mail a@b.io")
    assert out.text == "before\n<SECRET>\nafter mail <EMAIL>"
    assert out.counts == {"secret": 1, "email": 1} and out.drop is None
    truncated = redact_text("x\n-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkq\nhkiG9w0B")
    assert "MIIE" not in truncated.text
    dropped = redact_text("mail a@b.io", RedactConfig(email="drop"))
    assert dropped.drop == "redact:email" and dropped.text == ""
    kept = redact_text("mail a@b.io and acme_sk_0123456789abcdefghij", RedactConfig(email="keep"))
    assert kept.text == "mail a@b.io and <SECRET>"


def test_random_keys_are_caught_whatever_their_alphabet():
    """Unnamed generated keys (base62, base64 with `/` and `+`) of 32 characters: the
    identifier and path exemptions must not let them through."""
    import base64
    import random
    import string

    rng = random.Random(0)
    b62 = ["".join(rng.choice(string.ascii_letters + string.digits) for _ in range(32))
           for _ in range(1000)]  # fmt: skip
    b64 = [base64.b64encode(rng.randbytes(24)).decode() for _ in range(1000)]
    for keys in (b62, b64):
        caught = sum(
            any(s.kind == "secret" for s in find_sensitive(f"value {k} end")) for k in keys
        )
        assert caught >= 990, caught
