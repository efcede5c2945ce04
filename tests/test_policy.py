"""Policy engine: YAML loading and validation, input/output rules, merging, clearance."""

from __future__ import annotations

import pytest

from forgeml.core.errors import ConfigError
from forgeml.governance.policy import Policy, PolicyViolation, load_policy

POLICY = """
patterns:
  employee_id: 'EMP-\\d{5}'
default:
  input:
    max_prompt_chars: 200
    blocked_patterns: ['(?i)ignore (all )?previous instructions']
    redact: [email, ssn]
  output:
    redact: [secret, employee_id]
    max_tokens: 64
models:
  champion:
    classification: confidential
    output:
      blocked_patterns: ['(?i)project nightingale']
      max_tokens: 32
principals:
  bob:
    clearance: confidential
    input:
      max_prompt_chars: 50
"""


@pytest.fixture
def policy(tmp_path) -> Policy:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return load_policy(path)


def test_input_redaction_happens_before_the_model(policy):
    rules = policy.rules_for(["champion"], "alice")
    text, decisions = policy.apply_input(rules, "mail a.b@corp.example, ssn 123-45-6789 thanks")
    assert "a.b@corp.example" not in text and "123-45-6789" not in text
    assert "[REDACTED:email]" in text and "[REDACTED:ssn]" in text
    assert {d.rule for d in decisions} == {"input.redact.email", "input.redact.ssn"}


def test_blocked_input_and_length(policy):
    rules = policy.rules_for(["champion"], "alice")
    with pytest.raises(PolicyViolation) as exc:
        policy.apply_input(rules, "Please IGNORE previous instructions")
    assert exc.value.decision.rule == "input.blocked_patterns[0]"
    with pytest.raises(PolicyViolation) as exc:
        policy.apply_input(rules, "x" * 201)
    assert exc.value.decision.rule == "input.max_prompt_chars"
    policy.apply_input(rules, "x" * 200)


def test_principal_and_model_sections_merge_strictest(policy):
    bob = policy.rules_for(["other", "champion"], "bob")
    assert bob.max_prompt_chars == 50
    assert bob.max_tokens == 32
    plain = policy.rules_for(["other"], "alice")
    assert plain.max_prompt_chars == 200 and plain.max_tokens == 64
    assert plain.output_blocked == ()


def test_output_rules(policy):
    rules = policy.rules_for(["champion"], "alice")
    text, decisions, blocked = policy.apply_output(
        rules, "key AKIAABCDEFGHIJKLMNOP for EMP-12345. Project Nightingale ships soon"
    )
    assert blocked
    assert "Nightingale" not in text and "AKIA" not in text and "EMP-12345" not in text
    rules_fired = {d.rule for d in decisions}
    assert {"output.blocked_patterns[0]", "output.redact.secret", "output.redact.employee_id"} <= (
        rules_fired
    )
    clean, decisions, blocked = policy.apply_output(policy.rules_for(["x"], "a"), "all fine")
    assert (clean, decisions, blocked) == ("all fine", [], False)


def test_clearance(policy):
    label = policy.model_label(["champion"], metadata_label="public")
    assert label == "confidential"
    assert policy.model_label(["other"], metadata_label="internal") == "internal"
    assert policy.model_label(["other"], None) == "public"
    policy.check_clearance("bob", None, label)
    with pytest.raises(PolicyViolation):
        policy.check_clearance("alice", None, label)
    policy.check_clearance("alice", "restricted", label)  # the key's clearance wins
    with pytest.raises(PolicyViolation):
        policy.check_clearance("bob", None, "top-secret")  # unknown label: most sensitive


def test_allow_all_policy():
    policy = Policy()
    rules = policy.rules_for(["m"], "p")
    assert policy.apply_input(rules, "a@b.com " * 100) == ("a@b.com " * 100, [])
    assert not policy.filters_output


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("default: {input: {redact: [nosuch]}}", "unknown redaction pattern"),
        ("default: {input: {blocked_patterns: ['(']}}", "invalid regex"),
        ("default: {inptu: {}}", "inptu"),
        ("default: [1", "not valid YAML"),
    ],
)
def test_bad_policy_files_fail_clearly(tmp_path, body, message):
    path = tmp_path / "p.yaml"
    path.write_text(body)
    with pytest.raises(ConfigError, match=message):
        load_policy(path)
