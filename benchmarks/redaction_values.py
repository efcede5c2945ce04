"""Seeded random values shaped like real secrets and public material, and `render`, which
fills a template's «slots» and records labelled spans: the building blocks of the redaction
benchmark's secret corpus (benchmarks/redaction_secrets.py)."""

from __future__ import annotations

import base64
import json
import random
import re
import string
import textwrap
import urllib.parse

from redaction_cases import Case

_SLOT = re.compile(r"«(\w+)»")
ALNUM = string.ascii_letters + string.digits
B64 = string.ascii_letters + string.digits + "+/"
B64URL = string.ascii_letters + string.digits + "-_"
WORDS = (
    "amber anchor apple arrow aspen bamboo beacon birch cactus canyon cedar cobalt comet coral "
    "cricket delta ember falcon fjord garnet glacier harbor hazel indigo island jasper juniper "
    "kettle lagoon lantern maple marble meadow nectar nickel oasis orbit pepper pebble quartz "
    "raven river saffron salmon sierra sparrow tundra velvet walnut willow zephyr"
).split()
HOSTS = ["db.internal", "pg-prod-01.acme.lan", "10.20.4.17", "mysql.staging.corp", "localhost"]
USERS = ["app", "svc_billing", "deploy", "admin", "etl_reader", "root", "grafana", "jenkins"]


class Secret(str):
    """A slot value that must not survive curation."""

    kind: str

    def __new__(cls, value: str, kind: str) -> Secret:
        obj = super().__new__(cls, value)
        obj.kind = kind
        return obj


class Keep(Secret):
    """A slot value that looks sensitive but is public and must survive verbatim."""


def render(template: str, file_name: str, doc_type: str, **slots: str) -> Case:
    """Fill «name» slots of `template`; Secret/Keep slot values become labelled spans."""
    out: list[str] = []
    positives: list[tuple[int, int, str]] = []
    negatives: list[tuple[int, int, str]] = []
    pos = length = 0
    for m in _SLOT.finditer(template):
        out.append(template[pos : m.start()])
        length += m.start() - pos
        value = slots[m.group(1)]
        if isinstance(value, Keep):
            negatives.append((length, length + len(value), f"negative:{value.kind}"))
        elif isinstance(value, Secret):
            positives.append((length, length + len(value), f"secret:{value.kind}"))
        out.append(str(value))
        length += len(value)
        pos = m.end()
    out.append(template[pos:])
    return Case("".join(out), file_name, doc_type, positives, negatives)


# ---- random values, shaped like the real thing ------------------------------------------


def rand(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def hexs(rng: random.Random, n: int) -> str:
    return rand(rng, "0123456789abcdef", n)


def b64(rng: random.Random, nbytes: int) -> str:
    return base64.b64encode(rng.randbytes(nbytes)).decode()


def password(rng: random.Random) -> str:
    """What people and password managers choose: word+year+symbol, random mixes, passphrases."""
    style = rng.randrange(5)
    if style == 0:
        return f"{rng.choice(WORDS).capitalize()}{rng.randint(1990, 2026)}{rng.choice('!#$*?')}"
    if style == 1:
        return rand(rng, ALNUM + "!#$%&*+-=?@^_~", rng.randint(12, 24))
    if style == 2:
        words = rng.sample(WORDS, rng.randint(3, 4))
        return "-".join(words) + f"-{rng.randint(2, 99)}"
    if style == 3:
        return rand(rng, ALNUM, rng.randint(16, 32))
    w = rng.choice(WORDS)
    return f"{w[0].upper()}{w[1:].replace('a', '@').replace('o', '0')}{rng.randint(1, 999)}"


def url_password(rng: random.Random) -> str:
    return urllib.parse.quote(password(rng), safe="-_.~!*")


def pem_body(rng: random.Random, prefix: str, nbytes: int, width: int = 64) -> str:
    body = prefix + b64(rng, nbytes)[len(prefix) :]
    return "\n".join(textwrap.wrap(body, width))


def private_pem(rng: random.Random) -> str:
    label, prefix, n = rng.choice(
        [
            ("RSA PRIVATE KEY", "MIIEowIBAAKCAQEA", 1190),
            ("PRIVATE KEY", "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQ", 1218),
            ("EC PRIVATE KEY", "MHcCAQEEI", 121),
            ("ENCRYPTED PRIVATE KEY", "MIIFHDBOBgkqhkiG9w0BBQ0wQTApBgkqhkiG9w0BBQwwHAQI", 1310),
        ]
    )
    return f"-----BEGIN {label}-----\n{pem_body(rng, prefix, n)}\n-----END {label}-----"


def openssh_private(rng: random.Random) -> str:
    body = pem_body(rng, "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAA", 300, 70)
    return f"-----BEGIN OPENSSH PRIVATE KEY-----\n{body}\n-----END OPENSSH PRIVATE KEY-----"


def public_pem(rng: random.Random) -> str:
    label, prefix, n = rng.choice(
        [
            ("PUBLIC KEY", "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA", 294),
            ("CERTIFICATE", "MIIDdzCCAl+gAwIBAgIE", 891),
            ("RSA PUBLIC KEY", "MIIBCgKCAQEA", 270),
        ]
    )
    return f"-----BEGIN {label}-----\n{pem_body(rng, prefix, n)}\n-----END {label}-----"


def ssh_public(rng: random.Random) -> str:
    user = f"{rng.choice(USERS)}@{rng.choice(['laptop', 'build-03', 'bastion'])}"
    if rng.random() < 0.5:
        return f"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{b64(rng, 33)[:43]} {user}"
    return f"ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ{b64(rng, 270)[:342]} {user}"


def aws_access_key_id(rng: random.Random) -> str:
    return "AKIA" + rand(rng, string.ascii_uppercase + "234567", 16)


def aws_secret(rng: random.Random) -> str:
    return rand(rng, B64, 40)


def django_key(rng: random.Random) -> str:
    chars = "abcdefghijklmnopqrstuvwxyz0123456789!@#$%^&*(-_=+)"
    return "django-insecure-" + rand(rng, chars, 50) if rng.random() < 0.6 else rand(rng, chars, 50)


def jwt(rng: random.Random) -> str:
    def seg(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    head = seg({"alg": "RS256", "kid": hexs(rng, 8), "typ": "JWT"})
    body = seg({"sub": f"system:serviceaccount:{rng.choice(WORDS)}", "iat": rng.randint(1, 9)})
    return f"{head}.{body}.{rand(rng, B64URL, 86)}"


def sha_hex(rng: random.Random, n: int = 64) -> str:
    return hexs(rng, n)


def doc_ip(rng: random.Random) -> str:
    return f"{rng.choice(['192.0.2', '198.51.100', '203.0.113'])}.{rng.randint(1, 254)}"
