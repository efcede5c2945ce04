"""Person-name recogniser, re-exported from forgeml.governance.names (where serving policies
reach it too): curation's import point for the gazetteer and its rules."""

from __future__ import annotations

from forgeml.governance.names import (
    GAZETTEER,
    NameSpan,
    common_words,
    family_names,
    find_person_names,
    given_names,
)

__all__ = [
    "GAZETTEER",
    "NameSpan",
    "common_words",
    "family_names",
    "find_person_names",
    "given_names",
]
