"""PII detectors: e-mail, IBAN (ISO 13616 mod-97), card numbers (Luhn and issuer prefixes),
IPv4/IPv6 (octet ranges), phone numbers (libphonenumber's numbering plans), dates of birth,
postal addresses and national identifiers (forgeml.governance.addresses, .national_ids).
No function here ever puts a matched value into a message, a log line or an exception.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection, Iterator
from datetime import date
from functools import cache

import phonenumbers

from forgeml.governance.addresses import address_spans
from forgeml.governance.names import person_spans
from forgeml.governance.national_ids import national_id_spans
from forgeml.governance.pii_fields import Field, document_fields, field_keys, line_before
from forgeml.governance.spans import Span

_EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
)
# Reserved for documentation and tests (RFC 2606, RFC 6761): never a person's address.
_RESERVED_MAIL_DOMAIN = re.compile(
    r"(?:^|\.)(?:example\.(?:com|net|org)|[^.]+\.(?:test|invalid|localhost))$", re.IGNORECASE
)
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")
# Digit-led patterns check the character before their first digit after matching it: a
# leading lookbehind would hide the first digit from the scanner (several times slower).
_CARD = re.compile(r"\d(?<![\w-]\d)(?:[ -]?\d){12,18}(?![\w-])")
# Not after a letter: `v1.5.0.1` is a version, not an address.
_IPV4 = re.compile(r"\d(?<![\w.]\d)\d{0,2}\.(?:\d{1,3}\.){2}\d{1,3}(?!\d|\.\d)")
# Four dotted numbers after these words are a version (`build 10.0.1.2`), not an address.
_VERSION_CONTEXT = re.compile(r"version|\bver\b|\bbuild|release|firmware|\brev\b|patch|\bv$")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
# RFC 5737 and RFC 3849: addresses for documentation and examples.
_DOC_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
)
# Phone candidates: a run of digits with single separators, maybe `+`/`00`-led or with a
# bracketed area code; libphonenumber decides which are numbers.
_PHONE = re.compile(
    r"\d(?<![\w/.-]\d)(?<![\w/.-][+(]\d)"
    r"(?:\)?(?:[ .\-/]|\)[ \t]?|[ \t]\(0\)[ \t]?)?\(?\d){5,16}(?![\w/-])(?!\.\d)"
)
_DATE_LIKE = re.compile(r"\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{2,4}")
PHONE_CONTEXT = re.compile(
    r"tel\b|tel\.|phone|mobile|\bmob\b|cell|\bfax\b|\bcall|\bring\b|whatsapp|\bsms\b|contact"
    r"|telefo|téléphone|portable|\bhandy\b|mobil|móvil|celular|電話|携帯|\bph\b|\b[tmf]:|\bnr\b"
)
# Regions whose national formats are tried for numbers written without a country code.
PHONE_REGIONS = (
    "US", "GB", "DE", "FR", "NL", "IT", "ES", "JP", "SE", "CA", "AT", "CH", "BE", "IE",
    "AU", "PL", "PT", "DK", "NO", "FI",
)  # fmt: skip

_MONTHS = (
    "jan(?:uary|uar|vier|v\\.)?|feb(?:ruary|ruar|\\.)?|févr(?:ier|\\.)?|mar(?:ch|s|\\.)?|märz"
    "|apr(?:il|\\.)?|avr(?:il|\\.)?|may|mai|jun(?:e|i|\\.)?|juin|jul(?:y|i|\\.)?|juil(?:let|\\.)?"
    "|aug(?:ust|\\.)?|août|sep(?:t(?:ember|embre|\\.)?)?|oct(?:ober|obre|\\.)?|okt(?:ober|\\.)?"
    "|nov(?:ember|embre|\\.)?|dec(?:ember|\\.)?|dez(?:ember|\\.)?|déc(?:embre|\\.)?"
    "|enero|febrero|marzo|abril|mayo|junio|julio|agosto|septiembre|octubre|noviembre|diciembre"
    "|gennaio|febbraio|aprile|maggio|giugno|luglio|settembre|ottobre|dicembre"
    "|januari|februari|maart|mei|juni|juli|augustus|oktober|maj|augusti"
)
_DATE = re.compile(
    r"\d(?<![\w.:/-]\d)(?:\d{3}[-./]\d{1,2}[-./]\d{1,2}|\d?[-./]\d{1,2}[-./](?:\d{4}|\d{2}))"
    r"(?![\w:/-])(?!\.\d)"
    rf"|(?i:\b\d{{1,2}}\.?(?:er)?[ \t]+(?:de[ \t]+)?(?:{_MONTHS})[ \t]+(?:de[ \t]+)?\d{{4}}\b)"
    rf"|(?i:\b(?:{_MONTHS})[ \t]+\d{{1,2}}(?:st|nd|rd|th)?,?[ \t]+\d{{4}}\b)"
    r"|\d{4}年\d{1,2}月\d{1,2}日"
)
DOB_CONTEXT = re.compile(
    r"birth|\bborn\b|\bdob\b|d\.o\.b|\bgeb\b|geb\.|geboren|geburt|\bné|\bnée|naissance"
    r"|nacimiento|nacid[oa]|nascita|\bnat[oa]\b|geboorte|födelse|född|生年月日|誕生日|生まれ"
)


_DOB_ANYWHERE = re.compile(DOB_CONTEXT.pattern, re.IGNORECASE)
# Substrings of every DOB_CONTEXT match: a case-insensitive regex scan only where one occurs.
_BIRTH_WORDS = (
    "birth", "born", "dob", "d.o.b", "geb", "né", "naissance", "nacim", "nacid", "nascita",
    "nato", "nata", "geboorte", "födelse", "född", "生年月日", "誕生日", "生まれ",
)  # fmt: skip
_CLAUSE_END = re.compile(r"[;!?]|\.[ \t]+[A-Z]")


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


# Issuer prefixes and lengths (ISO/IEC 7812 ranges as the networks publish them): cut Luhn's
# 1-in-10 false positives on order numbers, national identifiers and other digit runs.
_CARD_ISSUERS = re.compile(
    r"4\d{12}(?:\d{3}){0,2}"  # Visa 13/16/19
    r"|(?:5[1-5]\d\d|222[1-9]|22[3-9]\d|2[3-6]\d\d|27[01]\d|2720)\d{12}"  # Mastercard
    r"|3[47]\d{13}"  # Amex
    r"|3(?:0[0-5]|[689]\d)\d{11,16}"  # Diners
    r"|35(?:2[89]|[3-8]\d)\d{12,15}"  # JCB
    r"|(?:6011|64[4-9]\d|65\d\d|62\d\d|67\d\d)\d{12,15}"  # Discover, UnionPay, Maestro
)


def _card_plausible(digits: str) -> bool:
    return bool(_CARD_ISSUERS.fullmatch(digits)) and len(set(digits)) > 1


def email_spans(text: str) -> Iterator[Span]:
    """E-mail addresses, except those at domains reserved for examples (example.com, .test)."""
    for m in _EMAIL.finditer(text) if "@" in text else ():
        if not _RESERVED_MAIL_DOMAIN.search(m.group().rpartition("@")[2]):
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


def _ip_kept(address: ipaddress.IPv4Address | ipaddress.IPv6Address, keep_private: bool) -> bool:
    if any(address in net for net in _DOC_NETWORKS) or address.is_loopback:
        return True
    return keep_private and address.is_private


def ipv4_spans(
    text: str, fields: list[Field] | None = None, *, keep_private: bool = False
) -> Iterator[Span]:
    """IPv4 addresses, except documentation ranges (RFC 5737), loopback, 0/8 and broadcast,
    private ranges when `keep_private`, and versions (after a version word or under a version
    key)."""
    keys = field_keys(fields)
    for m in _IPV4.finditer(text):
        octets = [int(o) for o in m.group().split(".")]
        if max(octets) > 255 or octets[0] in (0, 255):
            continue
        cue = keys.get(m.start()) or line_before(text, m.start(), 24)
        if _VERSION_CONTEXT.search(cue):
            continue
        if not _ip_kept(ipaddress.IPv4Address(".".join(map(str, octets))), keep_private):
            yield Span(m.start(), m.end(), "ip")


def ipv6_spans(text: str, *, keep_private: bool = False) -> Iterator[Span]:
    """IPv6 addresses, except documentation (RFC 3849), loopback, and private (ULA, link-local)
    when `keep_private`."""
    for m in _IPV6.finditer(text) if ":" in text else ():
        if m.group().count(":") >= 3:
            try:
                address = ipaddress.IPv6Address(m.group())
            except ValueError:
                continue
            if not _ip_kept(address, keep_private):
                yield Span(m.start(), m.end(), "ip")


def ip_spans(
    text: str, fields: list[Field] | None = None, *, keep_private: bool = False
) -> Iterator[Span]:
    yield from ipv4_spans(text, fields, keep_private=keep_private)
    yield from ipv6_spans(text, keep_private=keep_private)


def _groups(s: str) -> list[int]:
    return [len(g) for g in re.findall(r"\d+", s)]


@cache
def _numbering_plans() -> tuple[tuple[str, str, frozenset[int]], ...]:
    """(region, trunk prefix, national number lengths) of PHONE_REGIONS, from libphonenumber's
    metadata."""
    plans = []
    for region in PHONE_REGIONS:
        meta = phonenumbers.PhoneMetadata.metadata_for_region(region)
        plans.append(
            (region, meta.national_prefix or "", frozenset(meta.general_desc.possible_length))
        )
    return tuple(plans)


def _plausible_regions(digits: str) -> Iterator[str]:
    """The regions whose plan allows `digits` as a national-format number (trunk prefix and
    length): libphonenumber's parse is costly, and most regions cannot match."""
    for region, trunk, lengths in _numbering_plans():
        if trunk == "0" and not digits.startswith("0"):  # written nationally with its 0
            continue
        national = len(digits) - len(trunk) if trunk and digits.startswith(trunk) else len(digits)
        if national in lengths:
            yield region


def _phone_number(candidate: str, context: bool) -> bool:
    """Whether libphonenumber takes `candidate` for a valid number: with a country code
    (`+`/`00`) on its own; in national format, in one of PHONE_REGIONS, and then only after a
    phone word or key, or written the way that region writes its numbers (bracketed area code,
    the region's digit grouping, or a trunk 0 and separators)."""
    digits = sum(c.isdigit() for c in candidate)
    if not 7 <= digits <= 15 or (not context and _DATE_LIKE.fullmatch(candidate)):
        return False
    if candidate.startswith(("+", "00")):
        try:
            number = phonenumbers.parse(
                "+" + candidate.lstrip("+")[2 * candidate.startswith("00") :]
            )
        except phonenumbers.NumberParseException:
            return False
        return phonenumbers.is_valid_number(number)
    shape = _groups(candidate)
    formatted = len(shape) > 1 and candidate.startswith(("(", "0"))
    if not (context or formatted or len(shape) > 2):  # nothing could accept it: skip parsing
        return False
    for region in _plausible_regions("".join(c for c in candidate if c.isdigit())):
        try:
            number = phonenumbers.parse(candidate, region)
        except phonenumbers.NumberParseException:
            continue
        if not phonenumbers.is_valid_number_for_region(number, region):
            continue
        national = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL)
        if context or formatted or (len(shape) > 2 and _groups(national) == shape):
            return True
    return False


def phone_spans(text: str, fields: list[Field] | None = None) -> Iterator[Span]:
    """Phone numbers in E.164, international and national formats (see `_phone_number`)."""
    keys = field_keys(fields)
    for m in _PHONE.finditer(text):
        start = m.start() - (m.start() > 0 and text[m.start() - 1] in "+(")  # `+44`, `(212)`
        key = keys.get(start)
        cue = line_before(text, start, 32) if key is None else key
        if _phone_number(text[start : m.end()], bool(PHONE_CONTEXT.search(cue))):
            yield Span(start, m.end(), "phone")


def _year(value: str) -> int | None:
    years = re.findall(r"(?<!\d)(\d{4}|\d{2})(?!\d)", value)
    if not years:
        return None
    four = [int(y) for y in years if len(y) == 4]
    return four[0] if four else 1900 + int(years[-1])


def _birth_windows(text: str, fields: list[Field]) -> Iterator[tuple[int, int]]:
    """Where a date of birth may stand: the rest of a line after a birth word (or the next
    line, when the word ends its line: a form), and the values of birth keys/columns."""
    lowered = text.lower()
    cues = () if not any(w in lowered for w in _BIRTH_WORDS) else _DOB_ANYWHERE.finditer(text)
    for cue in cues:
        end = text.find("\n", cue.end())
        end = len(text) if end == -1 else end
        if not text[cue.end() : end].strip(" \t:|：-"):
            nxt = text.find("\n", end + 1)
            end = len(text) if nxt == -1 else nxt
        stop = _CLAUSE_END.search(text, cue.end(), end)  # `born in 2019; opened on ...`
        yield cue.end(), min(end if stop is None else stop.start(), cue.end() + 40)
    for f in fields:
        if DOB_CONTEXT.search(f.key):
            yield f.start, f.end


def dob_spans(text: str, fields: list[Field] | None = None) -> Iterator[Span]:
    """The first date after a birth word (`DOB`, `born on`, `Geburtsdatum`, `né le`,
    `生年月日` ...) on its line, or under a birth key/column; any other date is not PII."""
    seen = set()
    for start, end in _birth_windows(text, fields or []):
        m = _DATE.search(text, start, end)
        year = None if m is None else _year(m.group())
        if year is not None and 1900 <= year <= date.today().year and m.span() not in seen:
            seen.add(m.span())
            yield Span(m.start(), m.end(), "dob")


PII_KINDS = (
    "email", "iban", "credit_card", "ip", "phone", "dob", "address", "national_id", "person",
)  # fmt: skip
_FIELD_KINDS = frozenset({"ip", "phone", "dob", "address", "national_id", "person"})


def pii_spans(
    text: str,
    kinds: Collection[str] = PII_KINDS,
    *,
    keep_private_ips: bool = False,
    in_code: bool = False,
) -> Iterator[Span]:
    """Every PII span of `text` of the given kinds (may overlap), in the order curation
    resolves overlaps: structured identifiers first, addresses and names last. In code
    (`in_code`), person names only with both parts in the gazetteer."""
    fields = document_fields(text) if _FIELD_KINDS.intersection(kinds) else []
    if "email" in kinds:
        yield from email_spans(text)
    if "iban" in kinds:
        yield from iban_spans(text)
    if "credit_card" in kinds:
        yield from credit_card_spans(text)
    if "national_id" in kinds:
        yield from national_id_spans(text, fields)
    if "ip" in kinds:
        yield from ip_spans(text, fields, keep_private=keep_private_ips)
    if "dob" in kinds:
        yield from dob_spans(text, fields)
    if "phone" in kinds:
        yield from phone_spans(text, fields)
    if "address" in kinds:
        yield from address_spans(text, fields)
    if "person" in kinds:
        yield from person_spans(text, fields, strict=in_code)
