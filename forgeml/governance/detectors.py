"""The PII and secret detectors, shared by curation (forgeml.data.redact) and serving policies
(forgeml.governance.policy): one import point for forgeml.governance.secrets and .pii.

Regular expressions with validators that cut false positives: IBAN mod-97 (ISO 13616), Luhn
for card numbers, octet ranges for IPv4, Shannon entropy for unnamed key-like tokens.
"""

from __future__ import annotations

from forgeml.governance.addresses import address_spans
from forgeml.governance.names import person_spans
from forgeml.governance.national_ids import national_id_spans
from forgeml.governance.pii import (
    PII_KINDS,
    credit_card_spans,
    dob_spans,
    email_spans,
    iban_spans,
    iban_valid,
    ip_spans,
    ipv4_spans,
    ipv6_spans,
    luhn_valid,
    phone_spans,
    pii_spans,
)
from forgeml.governance.secrets import secret_spans, shannon_entropy
from forgeml.governance.spans import Span, non_overlapping

__all__ = [
    "PII_KINDS",
    "Span",
    "address_spans",
    "credit_card_spans",
    "dob_spans",
    "email_spans",
    "iban_spans",
    "iban_valid",
    "ip_spans",
    "ipv4_spans",
    "ipv6_spans",
    "luhn_valid",
    "national_id_spans",
    "non_overlapping",
    "person_spans",
    "phone_spans",
    "pii_spans",
    "secret_spans",
    "shannon_entropy",
]
