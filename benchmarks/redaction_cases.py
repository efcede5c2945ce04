"""The labelled case format shared by the redaction benchmark's corpus generators
(benchmarks/redaction_secrets.py, benchmarks/redaction_pii.py) and its harness
(benchmarks/redaction.py)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Case:
    """One generated document with its labels, as offsets into `text`.

    `positives`: (start, end, kind) of every value that must not survive curation; kind is
    `secret:<what>` (e.g. `secret:postgres_url_password`) or `pii:<what>` (e.g. `pii:phone`).
    `negatives`: (start, end, kind) of hard negatives that must survive verbatim (kind names
    what they are, e.g. `negative:ssh_public_key`, `negative:example_email`).
    A case with neither is control text: it must come out unchanged.
    """

    text: str
    file_name: str  # as the document would be named on disk (decides the reader/doc type)
    doc_type: str  # forgeml's record type: code, config, prose, document, mail, record, ...
    positives: list[tuple[int, int, str]] = field(default_factory=list)
    negatives: list[tuple[int, int, str]] = field(default_factory=list)
