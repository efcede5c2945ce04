"""Postal addresses: street lines (US/UK/CA `12 Oak Street`, DE/NL/SE `Hauptstraße 12`,
FR `12 rue de la Paix`, IT `Via Roma 15`, ES `Calle Mayor 8, 3º B`, JP prefecture + 丁目/番地)
and postcodes (US state + ZIP, UK, CA, JP 〒; the plain digit codes of DE/FR/IT/ES/NL/SE only
where an address block or a postcode key/column places them).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from forgeml.governance.pii_fields import Field
from forgeml.governance.spans import Span

_CAPWORD = r"[A-ZÀ-ÖØ-Þ][\wÀ-ÿ'’.-]*"
_UNIT = r"(?:,?[ \t]+(?:Apt|Apartment|Suite|Ste|Unit|Floor|Fl|Room|#)\.?[ \t]*#?[\w-]{1,6})?"
# US/UK/CA: number, up to four capitalised words (or a direction), a street type.
_STREET_EN = re.compile(
    r"\d(?<![\w.,-]\d)\d{0,5}[A-Za-z]?[ \t]+"
    rf"(?:(?:[NSEW]\.?|North|South|East|West|\d{{1,3}}(?:st|nd|rd|th)|{_CAPWORD})[ \t]+){{1,4}}"
    r"(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Drive|Dr|Lane|Ln|Court|Ct|Way|Place|Pl"
    r"|Terrace|Ter|Circle|Cir|Parkway|Pkwy|Highway|Hwy|Trail|Close|Gardens|Crescent|Cres"
    r"|Square|Sq|Row|Mews|Grove|Hill|Walk|Green|Park)\b\.?" + _UNIT
)
# DE/AT/CH, NL, SE: a compound street name, then the house number; or `Am Markt 3`.
_STREET_SUFFIXES = (
    r"(?:straße|strasse|str\.|weg|allee|platz|gasse|ring|damm|ufer|chaussee|straat|gracht|laan"
    r"|plein|kade|singel|dijk|dreef|gatan|vägen|gränd|torget|stigen|backen)"
)
_STREET_SUFFIXED = re.compile(
    rf"(?<![\w-])[A-ZÄÖÜÅ][\wäöüßåé-]*{_STREET_SUFFIXES}[ \t]+\d{{1,4}}[ \t]?[a-zA-Z]?(?![\w-])"
)
_SUFFIX_HIT = re.compile(rf"{_STREET_SUFFIXES}[ \t]+\d")
_STREET_PREFIXED = re.compile(
    r"(?:A[mn]|Im|Auf|In|Zu[mr])(?<![\w-]..)(?:[ \t]+(?:der|dem))?[ \t]+[A-ZÄÖÜ][\wäöüß-]+"
    r"[ \t]+\d{1,4}[a-z]?(?![\w-])"
)
_LINKS = r"(?:de|du|des|la|le|les|l'|d'|del|della|dei|degli|delle|di|de[ \t]+la|el|los|las)"
# FR: number, street type, the name.
_STREET_FR = re.compile(
    r"\d(?<![\w.,-]\d)\d{0,3}(?:[ \t]?(?:bis|ter))?,?[ \t]+(?i:rue|avenue|av\.|boulevard|bd|place"
    r"|allée|chemin|impasse|quai|route|cours|square|passage)"
    rf"(?:[ \t]+(?:{_LINKS}[ \t]*)?{_CAPWORD}){{1,4}}"
)
# IT/ES: street type, the name, the number (ES: then floor and door).
_STREET_IT_ES = re.compile(
    r"(?<![\w-])(?:Via|Viale|Corso|Piazza|Piazzale|Largo|Vicolo|Calle|C/|Avenida|Avda\.|Paseo"
    r"|Plaza|Camino|Carretera|Ronda|Travesía)"
    rf"(?:[ \t]+(?:{_LINKS}|{_CAPWORD})){{1,6}},?[ \t]+\d{{1,4}}[a-zA-Z]?(?![\w-])"
    r"(?:,[ \t]*\d{1,2}[ºª°][ \t]*[A-Z]?)?"
)
# JP: prefecture, then city/ward/town and 丁目/番地/番/号 or digit-dash-digit.
_STREET_JP = re.compile(
    r"(?:東京都|北海道|(?:京都|大阪)府|[\u4e00-\u9fff]{2,3}県)[\u3040-\u30ff\u4e00-\u9fff]{1,20}?"
    r"[0-9０-９]+(?:丁目|番地?|[-－])[0-9０-９]+(?:(?:番地?|号|[-－])[0-9０-９]*)?(?:号)?"
)
_US_STATES = (
    "AL AK AZ AR CA CO CT DE FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH NJ "
    "NM NY NC ND OH OK OR PA RI SC SD TN TX UT VT VA WA WV WI WY DC PR"
)
_US_STATES_SET = frozenset(_US_STATES.split())
# Letter- and digit-led patterns check the character before their first one after matching
# it: a leading lookbehind would make the scanner try every position (several times slower).
_US_ZIP = re.compile(r"[A-Z](?<![\w-][A-Z])[A-Z][ \t]+\d{5}(?:-\d{4})?(?![\w-])")
_CA_POSTCODE = re.compile(
    r"[ABCEGHJ-NPRSTVXY](?<![\w-][A-Z])\d[ABCEGHJ-NPRSTV-Z][ \t]?\d[ABCEGHJ-NPRSTV-Z]\d(?![\w-])"
)
_UK_POSTCODE = re.compile(
    r"[A-PR-UWYZ](?<![\w-][A-Z])[A-HK-Y]?\d[A-Z\d]?[ \t]\d[ABD-HJLNP-UW-Z]{2}(?![\w-])"
)
_JP_POSTCODE = re.compile(r"〒[ \t]?\d{3}-?\d{4}")
# A plain postcode (DE/FR/IT/ES 5 digits, NL 4 digits + 2 letters, SE 3+2 digits) alone with a
# town on its line (the last line of an address block) or right after a street on the line.
_EU_POSTCODE = r"(?:\d{5}|\d{4}[ \t]?[A-Z]{2}|\d{3}[ \t]\d{2})"
_POSTCODE_TOWN_LINE = re.compile(
    rf"(?m)^[ \t]*(?:[A-Z]{{1,2}}-)?(?P<pc>{_EU_POSTCODE})[ \t]+[A-ZÀ-ÖØ-Þ][\wÀ-ÿ'’ -]*$"
)
_POSTCODE_AFTER_STREET = re.compile(rf",?[ \t]+(?P<pc>{_EU_POSTCODE})[ \t]+[A-ZÀ-ÖØ-Þ]")
_POSTCODE_VALUE = re.compile(
    rf"^(?:{_EU_POSTCODE}|\d{{5}}(?:-\d{{4}})?|[A-Z]{{1,2}}\d[A-Z\d]?[ \t]?\d[A-Z]{{2}}"
    r"|[A-Z]\d[A-Z][ \t]?\d[A-Z]\d|〒?\d{3}-\d{4})$"
)
ADDRESS_KEYS = re.compile(
    r"street|address|addr|line1|line2|anschrift|adresse|stra(?:ß|ss)e|direcci[oó]n|indirizzo"
    r"|\badres\b|住所|domicile|domicilio|wohnort|residence"
)
POSTCODE_KEYS = re.compile(
    r"zip|post(?:al)?[ _-]?code|postcode|\bplz\b|\bcap\b|\bcp\b|c[oó]digo[ _]postal"
    r"|postnummer|郵便番号|code[ _]postal|postleitzahl"
)
# Words without which a pattern cannot match: a substring test is far cheaper than its scan.
_IT_ES_WORDS = (
    "Via ", "Viale", "Corso", "Piazza", "Largo", "Vicolo", "Calle", "C/", "Avenida", "Avda",
    "Paseo", "Plaza", "Camino", "Carretera", "Ronda", "Travesía",
)  # fmt: skip
_DIGIT = re.compile(r"\d")


def street_spans(text: str) -> Iterator[Span]:
    patterns = [_STREET_EN, _STREET_PREFIXED, _STREET_FR]
    if any(w in text for w in _IT_ES_WORDS):
        patterns.append(_STREET_IT_ES)
    if any(c in text for c in "都道府県"):
        patterns.append(_STREET_JP)
    for pattern in patterns:
        for m in pattern.finditer(text):
            yield Span(m.start(), m.end(), "address")
    seen = set()
    for hit in _SUFFIX_HIT.finditer(text):  # the suffix and a number first: a rare pair
        m = _STREET_SUFFIXED.search(text, max(0, hit.start() - 40), hit.end() + 8)
        if m and m.span() not in seen:
            seen.add(m.span())
            yield Span(m.start(), m.end(), "address")


def address_spans(text: str, fields: list[Field] | None = None) -> Iterator[Span]:
    """Street lines and postcodes (see the module docstring), and the values of address and
    postcode keys/columns."""
    if not _DIGIT.search(text):  # every street line and postcode holds a digit
        return
    streets = list(street_spans(text))
    yield from streets
    for m in _US_ZIP.finditer(text):
        if m.group()[:2] in _US_STATES_SET:
            yield Span(m.start(), m.end(), "address")
    postcodes = [_CA_POSTCODE, _UK_POSTCODE] + ([_JP_POSTCODE] if "〒" in text else [])
    for pattern in postcodes:
        for m in pattern.finditer(text):
            yield Span(m.start(), m.end(), "address")
    for m in _POSTCODE_TOWN_LINE.finditer(text):
        yield Span(m.start("pc"), m.end("pc"), "address")
    for street in streets:
        m = _POSTCODE_AFTER_STREET.match(text, street.end, street.end + 20)
        if m:
            yield Span(m.start("pc"), m.end("pc"), "address")
    for f in fields or ():
        value = text[f.start : f.end]
        if POSTCODE_KEYS.search(f.key) and _POSTCODE_VALUE.match(value):
            yield Span(f.start, f.end, "address")
        elif ADDRESS_KEYS.search(f.key) and any(c.isdigit() for c in value) and len(value) > 4:
            yield Span(f.start, f.end, "address")
