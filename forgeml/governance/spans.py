"""A detected span of text (start, end, kind) and overlap resolution, shared by the secret and
PII detectors."""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple


class Span(NamedTuple):
    start: int
    end: int
    kind: str


def non_overlapping(spans: Iterable[Span]) -> list[Span]:
    """The spans that overlap none taken before them (the earlier one wins), sorted by start."""
    taken: list[Span] = []
    for span in spans:
        if not any(span.start < t.end and t.start < span.end for t in taken):
            taken.append(span)
    return sorted(taken)
