"""One detector set: serving policies redact what curation redacts, with the same validity
checks (Luhn, IBAN mod-97, IP octets, entropy), plus `ssn`, the US subset of `national_id`."""

from __future__ import annotations

import pytest

from forgeml.data.redact import find_sensitive
from forgeml.governance.policy import Policy, PolicyConfig

TEXT = (
    "Mail ops@acme.example or call +44 20 7946 0958. Card 4111 1111 1111 1111 (not "
    "4111 1111 1111 1112), IBAN GB82 WEST 1234 5698 7654 32 (not GB82 WEST 1234 5698 7654 33), "
    "host 10.1.2.3 (not 999.1.2.3), api_key = 'kJ8sD2mQ9xZ4vB7nT5wR3yU1' and AKIAABCDEFGHIJKLMNOP."
)


def _policy(*names: str) -> Policy:
    return Policy(PolicyConfig.model_validate({"default": {"output": {"redact": list(names)}}}))


@pytest.mark.parametrize("name", ["email", "phone", "credit_card", "iban", "ip", "secret"])
def test_policy_redacts_what_curation_finds(name):
    # Curation resolves overlaps between kinds (a phone-like run inside a rejected card
    # number); a policy applies each named detector on its own, so it may find more.
    found = [TEXT[s.start : s.end] for s in find_sensitive(TEXT) if s.kind == name]
    assert found  # every kind is planted in TEXT
    text, decisions = _policy(name).redact(TEXT, (name,), "output")
    assert all(value not in text for value in found)
    assert decisions[0].count == text.count(f"[REDACTED:{name}]") >= len(found)


def test_validity_checks_apply_to_serving():
    text, _ = _policy().redact(TEXT, ("credit_card", "iban", "ipv4"), "output")
    assert "4111 1111 1111 1112" in text and "GB82 WEST 1234 5698 7654 33" in text
    assert "999.1.2.3" in text and "10.1.2.3" not in text


def test_ssn_is_the_us_subset_of_national_id():
    text, decisions = _policy().redact("ssn 123-45-6789, not 000-45-6789.", ("ssn",), "input")
    assert text == "ssn [REDACTED:ssn], not 000-45-6789."
    assert decisions[0].rule == "input.redact.ssn"
