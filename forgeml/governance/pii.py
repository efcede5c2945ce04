"""PII detectors: e-mail, IBAN (ISO 13616 mod-97), card numbers (Luhn and issuer prefixes),
IPv4/IPv6 (octet ranges) and phone numbers. No function here ever puts a matched value into
a message, a log line or an exception.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator

from forgeml.governance.spans import Span

_EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
)
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")
# Digit-led patterns check the character before their first digit after matching it: a
# leading lookbehind would hide the first digit from the scanner (several times slower).
_CARD = re.compile(r"\d(?<![\d-]\d)(?:[ -]?\d){12,18}(?![\d-])")
# Not after a letter: `v1.5.0.1` is a version, not an address.
_IPV4 = re.compile(r"\d(?<![\w.]\d)\d{0,2}\.(?:\d{1,3}\.){2}\d{1,3}(?![\d.])")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?|\d{1,4}[\s.-])(?:\d{2,4}[\s.-]){0,3}"
    r"\d{3,4}(?![\w-])"
)
_DATE = re.compile(r"^\d{4}[-./]\d{1,2}[-./]\d{1,2}$|^\d{1,2}[-./]\d{1,2}[-./]\d{2,4}$")


def iban_valid(candidate: str) -> bool:
    """ISO 13616 check: move the first four characters to the end, letters to 10..35,
    and the number mod 97 must be 1."""
    s = candidate.replace(" ", "")
    if not 15 <= len(s) <= 34:
        return False
    digits = "".join(str(int(c, 36)) for c in s[4:] + s[:4])
    return int(digits) % 97 == 1


def luhn_valid(number: str) -> bool:
    digits = [int(c) for c in number if c.isdigit()]
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card_plausible(digits: str) -> bool:
    # Issuer prefixes (Visa 4, Mastercard 51-55/2221-2720, Amex 34/37, Discover 6, JCB 35,
    # Diners 30/36/38): cuts Luhn's 1-in-10 false positives on arbitrary digit runs.
    return 13 <= len(digits) <= 19 and digits[0] in "23456" and len(set(digits)) > 1


def email_spans(text: str) -> Iterator[Span]:
    for m in _EMAIL.finditer(text) if "@" in text else ():
        yield Span(m.start(), m.end(), "email")


def iban_spans(text: str) -> Iterator[Span]:
    for m in _IBAN.finditer(text):
        if iban_valid(m.group()):
            yield Span(m.start(), m.end(), "iban")


def credit_card_spans(text: str) -> Iterator[Span]:
    for m in _CARD.finditer(text):
        digits = re.sub(r"\D", "", m.group())
        if _card_plausible(digits) and luhn_valid(digits):
            yield Span(m.start(), m.end(), "credit_card")


def ipv4_spans(text: str) -> Iterator[Span]:
    for m in _IPV4.finditer(text):
        octets = [int(o) for o in m.group().split(".")]
        if max(octets) <= 255 and octets[0] not in (0, 127, 255):
            yield Span(m.start(), m.end(), "ip")


def ipv6_spans(text: str) -> Iterator[Span]:
    for m in _IPV6.finditer(text) if ":" in text else ():
        if m.group().count(":") >= 3:
            try:
                ipaddress.IPv6Address(m.group())
            except ValueError:
                continue
            yield Span(m.start(), m.end(), "ip")


def ip_spans(text: str) -> Iterator[Span]:
    yield from ipv4_spans(text)
    yield from ipv6_spans(text)


def phone_spans(text: str) -> Iterator[Span]:
    for m in _PHONE.finditer(text):
        s = m.group()
        n_digits = sum(c.isdigit() for c in s)
        if _DATE.match(s) or not 7 <= n_digits <= 15:
            continue
        if n_digits >= 9 or s.startswith(("(", "+")):
            yield Span(m.start(), m.end(), "phone")


def pii_spans(text: str) -> Iterator[Span]:
    """Every PII span of `text` (may overlap), in the order curation resolves overlaps."""
    yield from email_spans(text)
    yield from iban_spans(text)
    yield from credit_card_spans(text)
    yield from ip_spans(text)
    yield from phone_spans(text)
