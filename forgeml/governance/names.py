"""Person-name recogniser for PII redaction (curation and serving policies): a gazetteer plus
capitalisation and context rules, and the values of name keys/columns in exports.

No model and no download: runs of Capitalised words are scored against shipped lists of
given and family names (US Census 1990 + Faker's Latin-script locales, ~22k given and ~36k
family names) and a lexicon of common English words (SCOWL), as in rule-based NER
(Mikheev, Moens and Grover, "Named entity recognition without gazetteers", EACL 1999, for
why context cues matter). Names in ALL CAPS, lower case, single given names ("Ada said")
and names that are also common words on both sides ("Will Hall") are missed by design.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import NamedTuple

from forgeml.governance.pii_fields import Field
from forgeml.governance.spans import Span

GAZETTEER = Path(__file__).parent / "gazetteer"

# A Capitalised word (Latin letters incl. accents), with inner hyphens/apostrophes:
# Jean-Luc, O'Brien, McAllister. ALL-CAPS words are not names here (headings, acronyms).
_CAP = (
    r"Ma?c[A-Z][a-z]+"
    r"|(?:[A-ZÀ-ÖØ-Þ]['’])?[A-ZÀ-ÖØ-Þ][a-zß-öø-ÿ]+(?:[-'’][A-ZÀ-ÖØ-Þ]?[a-zß-öø-ÿ]+)*"
)
_INITIAL = r"[A-Z]\."
_RUN = re.compile(rf"(?<![\w@.])(?:{_CAP})(?:[ \t]+(?:{_CAP}|{_INITIAL}))*(?![\w@])")
_TOKEN = re.compile(rf"{_CAP}|{_INITIAL}")
# Words just before a name that announce a person (lower-cased, trailing colon stripped).
_CUES = frozenset(
    "name names customer client employee contact owner author authors by from to with dear "
    "attendee attendees manager reviewer approver signed cc sender recipient assignee "
    "mr mrs ms miss dr prof sir madam agent user caller requester oncall instructor "
    "presenter speaker chair lead collected prepared written".split()
)


class NameSpan(NamedTuple):
    start: int
    end: int
    rule: str  # gazetteer | given+unknown | unknown+family | context


@cache
def _words(file: str) -> frozenset[str]:
    with gzip.open(GAZETTEER / file, "rt", encoding="utf-8") as fh:
        return frozenset(fh.read().split())


def given_names() -> frozenset[str]:
    return _words("given.txt.gz")


def family_names() -> frozenset[str]:
    return _words("family.txt.gz")


def common_words() -> frozenset[str]:
    return _words("common_words.txt.gz")


def _common(word: str) -> bool:
    # "Jean-Luc": a hyphenated name is common only if every part is a common word
    return all(part.lower() in common_words() for part in re.split(r"[-'’]", word) if part)


def _cue_before(text: str, start: int, previous_end: int) -> bool:
    """A cue word just before (`Name:`, `Dr.`, `by`), an e-mail style signature (`-- `), or
    the previous name a list separator away (`Ada Hollis, Hiro Kettleborough`)."""
    window = text[max(0, start - 40) : start]
    if re.search(r"(?:^|\n)--[ \t]*$", window):
        return True
    if previous_end >= 0 and re.fullmatch(
        r"(?:,|;|,? and|,? or|,? &)[ \t]*", text[previous_end:start]
    ):
        return True
    m = re.search(r"([A-Za-z]+)\.?$", window.rstrip(" \t:,("))
    return bool(m) and m.group(1).lower() in _CUES


# Words that start place names (Santa Clara, Fort Worth, Lake Tahoe), and prepositions of
# place just before a Capitalised pair (`fly into Jackson Hole`, `offices in Kingston Park`).
_PLACE_FIRST_WORDS = frozenset(
    "San Santa Santo São Saint St Ste Fort Port Mount Mt Lake Cape Glen New North South East "
    "West Upper Lower Great Little Old Bad Sankt".split()
)
_PLACE_PREPOSITION = re.compile(
    r"\b(?:in|into|near|around|across|outside|inside|through|towards?)[ \t]+$", re.IGNORECASE
)


def _a_place(text: str, start: int, first: str) -> bool:
    """Whether the Capitalised pair at `start` reads as a place rather than a person."""
    return first in _PLACE_FIRST_WORDS or bool(
        _PLACE_PREPOSITION.search(text, max(0, start - 16), start)
    )


def _classify(first: str, last: str, cue: bool) -> str | None:
    """Which rule, if any, makes `first last` a person name."""
    given, family = given_names(), family_names()
    if first in given and last in family and not (_common(first) and _common(last)):
        return "gazetteer"
    if first in given and not _common(first) and not _common(last) and len(last) > 2:
        return "given+unknown"
    if last in family and not _common(last) and not _common(first) and len(first) > 2:
        return "unknown+family"
    if cue and not _common(first) and not _common(last):
        return "context"
    return None


def find_person_names(text: str, *, strict: bool = False) -> Iterator[NameSpan]:
    """Spans of `Given [Middle|M.] Family` names and `Title Family` ("Dr. Hollis").

    `strict` keeps only names with both parts in the gazetteer (used for code, where
    Capitalised pairs are mostly identifiers and prose is rare)."""
    previous_end = -1
    for run in _RUN.finditer(text):
        tokens = list(_TOKEN.finditer(run.group()))
        i = 0
        while i < len(tokens) - 1:
            found = None
            for width in (3, 2):  # prefer Given Middle Family over Given Middle
                if i + width > len(tokens):
                    continue
                first, last = tokens[i].group(), tokens[i + width - 1].group()
                middle = tokens[i + 1].group() if width == 3 else None
                if last.endswith(".") or first.endswith("."):
                    continue
                if middle is not None and not (
                    middle.endswith(".") or middle in given_names() or middle in family_names()
                ):
                    continue
                start = run.start() + tokens[i].start()
                cue = _cue_before(text, start, previous_end) or (
                    i > 0 and tokens[i - 1].group().lower() in _CUES
                )
                if not cue and _a_place(text, start, first):
                    continue
                rule = _classify(first, last, cue)
                if rule is not None and (not strict or rule == "gazetteer"):
                    found = (
                        width,
                        NameSpan(start, run.start() + tokens[i + width - 1].end(), rule),
                    )
                    break
            if found is None:
                i += 1
                continue
            yield found[1]
            previous_end = found[1].end
            i += found[0]
    if strict:
        return
    for m in re.finditer(rf"\b(Mr|Mrs|Ms|Miss|Dr|Prof)\.?[ \t]+({_CAP})(?![\w@])", text):
        surname = m.group(2)
        if surname in family_names() or not _common(surname):
            yield NameSpan(m.start(2), m.end(2), "title")


# Keys/columns that hold a part of a person's name: any name-shaped value is taken.
_NAME_PART_KEYS = re.compile(
    r"(?:first|last|given|family|middle|sur|maiden)[ _-]?name|^(?:vor|nach|familien|ruf)name$"
    r"|^surname$|^pr[ée]nom$|^nom$|^(?:voor|achter)naam$|^(?:nome|cognome)$|^apellidos?$"
    r"|^nombre$|^(?:för|efter)namn$|^氏名$|^名前$"
)
# Keys/columns that often hold a whole name (and sometimes a team, a product, a firm): taken
# when the gazetteer rules accept the value as a person.
_NAME_KEYS = re.compile(
    r"(?:full|display|contact|customer|employee|patient|user|account|holder|person)[ _-]?name"
    r"|^name$|^requester$|^assignee$|^reporter$|^from$|^to$|^cc$|^owner$|^author$|^employee$"
    r"|^customer$|^patient$|^attn$|^recipient$|^sender$|^contact$"
)
_PARTICLES = r"van|von|de|der|den|del|della|di|da|du|le|la|ter|ten|zu|vom|bin|al"
# A name as a field holds it: 1-5 capitalised words (initials, particles and inner capitals
# as in DeShawn allowed).
_NAME_VALUE = re.compile(
    rf"(?:(?:{_CAP}|[A-Z][a-z]+[A-Z][a-z]+|{_INITIAL}|(?:{_PARTICLES})(?= ))(?: |$)){{1,5}}"
)
# `Given van den Family`: particles break the capitalised run that find_person_names reads.
_PARTICLE_NAME = re.compile(
    rf"[ \t]((?:{_PARTICLES})(?:[ \t]+(?:der|den|de|la|le|los|las))?)[ \t]+({_CAP})(?![\w@])"
)
_WORD_BEFORE = re.compile(rf"(?<![\w@.])({_CAP})\Z")


def field_name_spans(text: str, fields: list[Field]) -> Iterator[Span]:
    """Values of name keys/columns (`first_name`, `Nachname`, `Requester:`) that look like a
    name; under the broad keys (`name`, `From`), only what the gazetteer rules take for a
    person."""
    for f in fields:
        part = _NAME_PART_KEYS.search(f.key)
        if not part and not _NAME_KEYS.search(f.key):
            continue
        value = text[f.start : f.end]
        head = value.split("<")[0].rstrip()  # `From: Ada Hollis <ada@...>`
        if not head or not _NAME_VALUE.fullmatch(head + " "):
            continue
        words = [w for w in head.split() if w[0].isupper()]
        if not part and (len(words) < 2 or _classify(words[0], words[-1], cue=True) is None):
            continue
        yield Span(f.start, f.start + len(head), "person")


def particle_name_spans(text: str) -> Iterator[Span]:
    """`Daan de Vries`, `Bram van den Berg`: a given name of the gazetteer that is not a common
    word, particles, a capitalised family name."""
    for m in _PARTICLE_NAME.finditer(text):  # particle-led: far fewer places to try
        before = _WORD_BEFORE.search(text, max(0, m.start() - 24), m.start())
        if before and before.group(1) in given_names() and not _common(before.group(1)):
            yield Span(before.start(), m.end(), "person")


def person_spans(text: str, fields: list[Field], *, strict: bool = False) -> Iterator[Span]:
    """Person names in running text (`find_person_names`) and in name fields (not in code,
    where `strict` keeps only gazetteer names)."""
    for start, end, _ in find_person_names(text, strict=strict):
        yield Span(start, end, "person")
    if not strict:
        yield from particle_name_spans(text)
        yield from field_name_spans(text, fields)
