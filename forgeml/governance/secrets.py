"""Secret detectors: private keys, connection-string passwords, known key formats, values named
like secrets, and unnamed high-entropy tokens (the detect-secrets approach). No function here
ever puts a matched value into a message, a log line or an exception.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterator

from forgeml.core.config import RedactConfig
from forgeml.governance.spans import Span

_PRIVATE_KEY = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----"
    r"(?:.*?-----END [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----|[\sA-Za-z0-9+/=:,-]*)",
    re.DOTALL,
)
_CONNECTION_PASSWORD = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/\s@]+:(?P<v>[^@\s/]+)@")
_KNOWN_KEYS = re.compile(
    r"\b(?:"
    r"[a-z]{2,12}_(?:sk|pk|rk|key|secret|token)_[A-Za-z0-9]{16,}"  # acme_sk_..., stripe-like
    r"|sk-(?:proj-)?[A-Za-z0-9_-]{20,}"  # OpenAI-style
    r"|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{22,}"
    r"|AKIA[0-9A-Z]{16}|ASIA[0-9A-Z]{16}"  # AWS access key ids
    r"|xox[abprs]-[A-Za-z0-9-]{10,}"  # Slack
    r"|AIza[0-9A-Za-z_-]{35}"  # Google
    r"|glpat-[A-Za-z0-9_-]{20,}"  # GitLab
    r"|eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"  # JWT
    r")"
)
_SECRET_NAME = (
    r"passw(?:or)?d|passwd|pwd|passphrase|secret|token|api[_-]?key|apikey|access[_-]?key"
    r"|private[_-]?key|client[_-]?secret|auth[_-]?key|credentials?"
)
_NAMED_SECRET = re.compile(
    r"(?i)(?:" + _SECRET_NAME + r")(?P<k>[\w.-]*)[\"']?\s*(?::=|=>|[:=])\s*"
    r"(?P<q>[\"']?)(?P<v>[^\s\"',;]+)"
)
_SECRET_NAME_FOLDED = re.compile(_SECRET_NAME)  # case-sensitive: far faster than (?i)
_PLACEHOLDER_VALUES = frozenset(
    "none null nil true false undefined required optional string str bytes int password "
    "secret token xxx yyy changeme redacted".split()
)
_TOKEN = re.compile(r"(?<![\w+/=-])[A-Za-z0-9+/_=-]{16,}(?![\w+/=-])")
_WORD = re.compile(r"[a-z]+\d*|[A-Z]+\d*|[A-Z][a-z]+\d*")
_CAMEL_PARTS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")
_HUMP = re.compile(r"[A-Z]?[a-z]{3,}")  # a camel-case word of 4+ letters (all-caps runs not)
_PLAIN_PART = re.compile(r"[0-9a-fA-F-]+|[a-z]+|[A-Z]+|[A-Z][a-z]+")
# A key named for a secret but holding something about it (`token_type = 'bearer'`,
# `password_min_length = 12`, `api_key_header = 'X-Api-Key'`), not the secret itself.
_ABOUT_A_SECRET = frozenset(
    "type types kind name names field header length len min max count format prefix "
    "pattern regex url uri path file dir env var expiry expires ttl policy label hint "
    "class scope method endpoint algorithm algo mode size "
    "java py js ts txt md html xml json yaml yml cfg ini conf c h cc cpp go rs rb sh".split()
)
# `args.password`, `self.tokens[1]`: a variable, maybe subscripted, not a literal.
_IDENTIFIER_PATH = re.compile(r"^[A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)*(?:\[[\w.'\"-]*\])*$")


def shannon_entropy(s: str) -> float:
    """Bits per character of `s` from its own character frequencies."""
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values()) if n else 0.0


def _class_changes(token: str) -> float:
    """Share of adjacent characters of different classes (lower/upper/digit/other): random
    keys switch often, paths and identifiers (`docs/025_quick_ref`) seldom."""

    def cls(c: str) -> int:
        return 0 if c.islower() else 1 if c.isupper() else 2 if c.isdigit() else 3

    classes = [cls(c) for c in token]
    return sum(a != b for a, b in zip(classes, classes[1:], strict=False)) / max(1, len(token))


def _wordy(token: str) -> bool:
    """Paths and identifiers: most characters sit in plain words. Either separator-delimited
    segments of three letters or more (`Modules/_blake2/impl/round`), or at least three
    camel-case words of four letters or more (`InvalidBase64LengthDefect`; capitalised or
    lower case, not all-caps runs), which a random key (`kJ8sD2mQ9xZ4vB7n`) seldom has."""
    segments = [seg for seg in re.split(r"[/_.+=-]", token) if seg]
    total = sum(map(len, segments))
    if len(segments) >= 2:
        words = sum(len(seg) for seg in segments if len(seg) >= 3 and _WORD.fullmatch(seg))
        if words >= 0.6 * total:
            return True
    humps = [p for p in _CAMEL_PARTS.findall(token) if _HUMP.fullmatch(p)]
    return len(humps) >= 3 and sum(map(len, humps)) >= 0.8 * total


def _named_value_is_secret(value: str, quoted: bool, in_code: bool) -> bool:
    if len(value) < 4 or value.lower().strip("<>[]{}()*") in _PLACEHOLDER_VALUES:
        return False
    if value[0] in "$%<{[(" or "(" in value or set(value) <= set("*xX.-_"):
        return False  # an expression, template or mask, not a literal
    # In code an unquoted name (`password = args.password`) is a variable, not a value.
    return not (in_code and not quoted and _IDENTIFIER_PATH.match(value))


def _named_secret_matches(text: str) -> Iterator[re.Match[str]]:
    """`_NAMED_SECRET.finditer(text)`, fast: a case-sensitive scan of the case-folded text
    finds where a name starts, and the full pattern is tried only there. Where a character
    folds to several (the positions would shift) it scans the slow way."""
    folded = text.casefold().replace("\u0131", "i")  # dotless i: (?i) matches it to "i"
    if len(folded) != len(text):
        yield from _NAMED_SECRET.finditer(text)
        return
    pos = 0
    while hit := _SECRET_NAME_FOLDED.search(folded, pos):
        m = _NAMED_SECRET.match(text, hit.start())
        if m:
            yield m
        pos = m.end() if m else hit.start() + 1


def secret_spans(
    text: str, cfg: RedactConfig | None = None, in_code: bool = False
) -> Iterator[Span]:
    """Secrets in `text`: private keys, connection-string passwords, known key formats,
    values named like secrets, and unnamed high-entropy tokens (may overlap)."""
    cfg = cfg or RedactConfig()
    for m in _PRIVATE_KEY.finditer(text):
        yield Span(m.start(), m.end(), "secret")
    for m in _CONNECTION_PASSWORD.finditer(text) if "://" in text else ():
        yield Span(m.start("v"), m.end("v"), "secret")
    for m in _KNOWN_KEYS.finditer(text):
        yield Span(m.start(), m.end(), "secret")
    for m in _named_secret_matches(text):
        about = re.split(r"[_.-]", m.group("k"))[-1].lower()
        if about in _ABOUT_A_SECRET:
            continue
        if _named_value_is_secret(m.group("v"), bool(m.group("q")), in_code):
            yield Span(m.start("v"), m.end("v"), "secret")
    for m in _TOKEN.finditer(text):
        # A path whose every part is hex, one plain word or words (`node/commit/67a1f0c5...`)
        # is not a key; else the token, or any part of it, decides (base64 has `/`).
        token = m.group()
        parts = token.split("/")
        if len(parts) > 1 and all(not p or _PLAIN_PART.fullmatch(p) or _wordy(p) for p in parts):
            continue
        if _random_key(token, cfg) or (len(parts) > 1 and any(_random_key(p, cfg) for p in parts)):
            yield Span(m.start(), m.end(), "secret")


def _random_key(token: str, cfg: RedactConfig) -> bool:
    """An unnamed token that looks like a generated key: long, letters and digits, high
    entropy, frequent class changes, and not hex or made of words."""
    if len(token) < cfg.min_token_length or re.fullmatch(r"[0-9a-fA-F-]+", token):
        return False  # hex: commit ids and digests, which are everywhere and not secret
    if not (re.search(r"\d", token) and re.search(r"[A-Za-z]", token)) or _wordy(token):
        return False
    return shannon_entropy(token) >= cfg.min_entropy and _class_changes(token) >= 0.2
