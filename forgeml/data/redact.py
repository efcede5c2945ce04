"""PII and secret redaction for curation: typed placeholders, or the record dropped by policy.

The detectors are governance's (forgeml.governance.detectors, shared with serving policies),
person names included (forgeml.governance.names); a kind whose policy is `keep` is not scanned.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import NamedTuple

from forgeml.core.config import RedactConfig
from forgeml.governance.detectors import PII_KINDS, Span, non_overlapping, pii_spans, secret_spans

PLACEHOLDERS = {
    "email": "<EMAIL>",
    "phone": "<PHONE>",
    "iban": "<IBAN>",
    "credit_card": "<CREDIT_CARD>",
    "ip": "<IP>",
    "dob": "<DOB>",
    "address": "<ADDRESS>",
    "national_id": "<NATIONAL_ID>",
    "person": "<PERSON>",
    "secret": "<SECRET>",
}
KINDS = tuple(PLACEHOLDERS)


class Redaction(NamedTuple):
    text: str
    counts: dict[str, int]  # kind -> number of spans replaced (or found, when dropped)
    drop: str | None  # "redact:<kind>" when policy drops the record


def find_sensitive(text: str, cfg: RedactConfig | None = None, in_code: bool = False) -> list[Span]:
    """Non-overlapping spans to replace, secrets first (they win overlaps), sorted by start.
    In code, person names only with both parts in the gazetteer."""
    cfg = cfg or RedactConfig()
    kinds = [k for k in PII_KINDS if getattr(cfg, k) != "keep"]
    pii = pii_spans(text, kinds, keep_private_ips=cfg.keep_private_ips, in_code=in_code)
    return non_overlapping((*secret_spans(text, cfg, in_code), *pii))


def redact_text(text: str, cfg: RedactConfig | None = None, *, in_code: bool = False) -> Redaction:
    """`text` with every detected span replaced by its typed placeholder, the counts by
    kind, and `drop` set when a kind whose policy is `drop` was found."""
    cfg = cfg or RedactConfig()
    spans = find_sensitive(text, cfg, in_code)
    counts = dict(Counter(s.kind for s in spans))
    for kind in KINDS:
        if counts.get(kind) and getattr(cfg, kind) == "drop":
            return Redaction("", counts, f"redact:{kind}")
    out, pos = [], 0
    for span in spans:
        out.append(text[pos : span.start])
        out.append(PLACEHOLDERS[span.kind])
        pos = span.end
    out.append(text[pos:])
    return Redaction("".join(out), counts, None)


def text_redactor(cfg: RedactConfig) -> Callable[[str], str]:
    """For anything shown to people (report samples): redact, never drop."""
    return lambda text: redact_text(text, cfg.model_copy(update={"secret": "redact"})).text
