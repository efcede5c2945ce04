"""National identifiers with their check rules: US SSN (area/group/serial), UK NINO (prefixes),
FR INSEE/NIR (mod-97 key), DE Steuer-ID (ISO 7064 MOD 11,10), NL BSN (11-proof), ES DNI/NIE
(mod-23 letter), IT codice fiscale (odd/even table), SE personnummer (Luhn), CA SIN (Luhn).
Formats that collide with other numbers (BSN, SIN, plain digit runs) need a context word.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import date

from forgeml.governance.pii_fields import Field, field_keys, line_before
from forgeml.governance.spans import Span

# Words naming an identifier, before the value on its line or as its key/column: each
# ambiguous format needs its own (a BSN's nine digits can pass a SIN's Luhn check).
_ANY_ID = r"national[ _-]?id|id[ _-]?(?:number|no|nr)|personal[ _-]?(?:id|number)|\bid\b"
SSN_CONTEXT = re.compile(rf"ssn|social[ _-]?security|{_ANY_ID}")
STEUER_CONTEXT = re.compile(
    rf"steuer|\btin\b|tax[ _-]?(?:id|identification)|idnr|identifikationsnummer|{_ANY_ID}"
)
BSN_CONTEXT = re.compile(rf"\bbsn\b|burgerservice|sofi|{_ANY_ID}")
SIN_CONTEXT = re.compile(rf"\bsin\b|social[ _-]?insurance|\bnas\b|{_ANY_ID}")

_SSN = re.compile(r"\d(?<![\w-]\d)\d{2}[- ]?\d{2}[- ]?\d{4}(?![\w-])")
# Letter- and digit-led patterns check the character before their first one after matching
# it: a leading lookbehind would make the scanner try every position (several times slower).
_NINO = re.compile(r"[A-Z](?<![\w][A-Z])[A-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D](?!\w)")
_INSEE = re.compile(r"[12](?<![\w-][12]) ?\d{2} ?\d{2} ?(?:\d{2}|2[AB]) ?\d{3} ?\d{3} ?\d{2}(?!\w)")
_STEUER = re.compile(r"\d(?<![\w-]\d)\d ?\d{3} ?\d{3} ?\d{3}(?![\w-])")
_NINE = re.compile(
    r"\d(?<![\w.-]\d)(?:\d{8}|\d{3}\.\d{2}\.\d{3}|\d{2}[ -]\d{3}[ -]\d{3})(?![\w-]|\.\d)"
)
_DNI = re.compile(r"\d(?<![\w.]\d)(?:\d{7}|\d\.\d{3}\.\d{3})[ -]?[A-Z](?!\w)")
_NIE = re.compile(r"[XYZ](?<![\w.][XYZ])-?\d{7}[ -]?[A-Z](?!\w)")
_CODICE = re.compile(r"[A-Z](?<!\w[A-Z])[A-Z]{5}\d{2}[A-EHLMPRST]\d{2}[A-Z]\d{3}[A-Z](?!\w)")
_PERSONNUMMER = re.compile(r"\d(?<![\w-]\d)\d(?:\d{2})?\d{4}[-+]\d{4}(?![\w-])")

_TWO_DIGITS = re.compile(r"\d\d")
_NINO_FIRST, _NINO_SECOND = set("ABCEGHJKLMNOPRSTWXYZ"), set("ABCEGHJKLMNPRSTWXYZ")
_NINO_BAD_PREFIXES = frozenset({"BG", "GB", "NK", "KN", "TN", "NT", "ZZ"})
_DNI_LETTERS = "TRWAGMYFPDXBNJZSQVHLCKE"
_CF_ODD = [
    int(n) for n in "1 0 5 7 9 13 15 17 19 21 2 4 18 20 11 3 6 8 12 14 16 10 22 25 24 23".split()
]


def _digits(s: str) -> str:
    return "".join(c for c in s if c.isdigit())


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, c in enumerate(reversed(digits)):
        d = int(c)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


# Numbers the SSA voided after they were printed in advertisements and on sample cards.
_SSN_PUBLISHED = frozenset({"078051120", "457555462", "219099999"})


def ssn_valid(value: str) -> bool:
    """SSA rules: area not 000, 666 or 900-999; group not 00; serial not 0000; not one of the
    published sample numbers."""
    d = _digits(value)
    area, group, serial = int(d[:3]), d[3:5], d[5:]
    return (
        len(d) == 9
        and 0 < area < 900
        and area != 666
        and group != "00"
        and serial != "0000"
        and d not in _SSN_PUBLISHED
    )


def nino_valid(value: str) -> bool:
    """HMRC: first letter not D F I Q U V, second not D F I O Q U V, no BG GB NK KN TN NT ZZ."""
    s = value.replace(" ", "")
    return s[0] in _NINO_FIRST and s[1] in _NINO_SECOND and s[:2] not in _NINO_BAD_PREFIXES


def insee_valid(value: str) -> bool:
    """NIR: 13 characters (Corsica's 2A/2B as 19/18) and a key of 97 - (number mod 97)."""
    s = value.replace(" ", "")
    body = s[:13].replace("2A", "19").replace("2B", "18")
    month = int(s[3:5])
    return (1 <= month <= 12 or 20 <= month <= 42 or month > 49) and int(s[13:]) == 97 - int(
        body
    ) % 97


def steuer_id_valid(value: str) -> bool:
    """Steuerliche Identifikationsnummer: no leading 0, in the first ten digits exactly one
    digit twice or thrice, and the ISO 7064 MOD 11,10 check digit."""
    d = _digits(value)
    if len(d) != 11 or d[0] == "0":
        return False
    counts = sorted((d[:10].count(c) for c in set(d[:10])), reverse=True)
    if counts[0] not in (2, 3) or counts[1:].count(1) != len(counts) - 1:
        return False
    product = 10
    for c in d[:10]:
        s = (int(c) + product) % 10 or 10
        product = (s * 2) % 11
    return (11 - product) % 10 == int(d[10])


def bsn_valid(value: str) -> bool:
    """Burgerservicenummer 11-proof: 9*d1 + 8*d2 + ... + 2*d8 - d9 divisible by 11."""
    d = _digits(value)
    if len(d) != 9 or d[0] == "0":
        return False
    total = sum(w * int(c) for w, c in zip(range(9, 1, -1), d[:8], strict=True)) - int(d[8])
    return total % 11 == 0


def dni_valid(value: str) -> bool:
    """DNI/NIE: the letter is the number mod 23 (NIE: X/Y/Z read as 0/1/2)."""
    s = re.sub(r"[\s.-]", "", value)
    number = str("XYZ".index(s[0])) + s[1:-1] if s[0] in "XYZ" else s[:-1]
    return _DNI_LETTERS[int(number) % 23] == s[-1]


def codice_fiscale_valid(value: str) -> bool:
    """The 16th character from the odd/even position tables of the first 15 (DM 23/12/1976)."""
    total = 0
    for i, c in enumerate(value[:15]):
        v = int(c) if c.isdigit() else ord(c) - 65
        total += _CF_ODD[v] if i % 2 == 0 else v
    return chr(65 + total % 26) == value[15]


def personnummer_valid(value: str) -> bool:
    """YYMMDD (or YYYYMMDD) that is a date (or a samordningsnummer: day + 60), then Luhn over
    the ten digits."""
    d = _digits(value)[-10:]
    day = int(d[4:6])
    day = day - 60 if day > 60 else day
    try:
        date(2000 + int(d[:2]), int(d[2:4]), day)
    except ValueError:
        return False
    return luhn_ok(d)


def sin_valid(value: str) -> bool:
    """Canadian SIN: nine digits, first not 0 or 8, Luhn."""
    d = _digits(value)
    return len(d) == 9 and d[0] not in "08" and luhn_ok(d)


def _has_context(text: str, start: int, keys: dict[int, str], context: re.Pattern[str]) -> bool:
    key = keys.get(start)
    return bool(context.search(line_before(text, start) if key is None else key))


def ssn_spans(text: str, fields: list[Field] | None = None) -> Iterator[Span]:
    """US social security numbers: `123-45-6789` on its own, nine plain digits after an SSN
    word or under an SSN key; the SSA's area/group/serial rules hold."""
    keys = field_keys(fields)
    for m in _SSN.finditer(text):
        separators = m.group()[3::3][:2] if len(m.group()) == 11 else ""
        if len(m.group()) not in (9, 11) or separators not in ("", "--", "  "):
            continue
        dashed = separators == "--"
        if ssn_valid(m.group()) and (dashed or _has_context(text, m.start(), keys, SSN_CONTEXT)):
            yield Span(m.start(), m.end(), "national_id")


def national_id_spans(text: str, fields: list[Field] | None = None) -> Iterator[Span]:
    """National identifiers whose check rules hold; the ambiguous formats (nine or eleven plain
    digits, SIN and BSN always) only after an identifier word or under such a key/column."""
    if not _TWO_DIGITS.search(text):  # every format holds a run of digits
        return
    keys = field_keys(fields)
    yield from ssn_spans(text, fields)
    for m in _NINO.finditer(text):
        if nino_valid(m.group()):
            yield Span(m.start(), m.end(), "national_id")
    for m in _INSEE.finditer(text):
        if insee_valid(m.group()):
            yield Span(m.start(), m.end(), "national_id")
    for m in _STEUER.finditer(text):
        if steuer_id_valid(m.group()) and (
            " " in m.group() or _has_context(text, m.start(), keys, STEUER_CONTEXT)
        ):
            yield Span(m.start(), m.end(), "national_id")
    for m in _NINE.finditer(text):
        v = m.group()
        if (bsn_valid(v) and _has_context(text, m.start(), keys, BSN_CONTEXT)) or (
            sin_valid(v) and _has_context(text, m.start(), keys, SIN_CONTEXT)
        ):
            yield Span(m.start(), m.end(), "national_id")
    for m in (*_DNI.finditer(text), *_NIE.finditer(text)):
        if dni_valid(m.group()):
            yield Span(m.start(), m.end(), "national_id")
    for m in _CODICE.finditer(text):
        if codice_fiscale_valid(m.group()):
            yield Span(m.start(), m.end(), "national_id")
    for m in _PERSONNUMMER.finditer(text):
        if personnummer_valid(m.group()):
            yield Span(m.start(), m.end(), "national_id")
