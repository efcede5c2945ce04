"""Serving policies from YAML: input rules, output rules and data-classification clearance.

Rules combine a `default` section with per-model and per-principal sections (lists add up,
limits take the strictest). Every rule that fires is returned as a `PolicyDecision` for the audit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from forgeml.core.errors import ConfigError
from forgeml.governance.labels import LEVELS, most_sensitive

# Built-in detectors for redaction. Deliberately simple and conservative: each is one regex
# that a policy names; organisations add their own through `patterns`.
BUILTIN_PATTERNS: dict[str, str] = {
    "email": r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}",
    "phone": r"(?<!\w)(?:\+?\d{1,3}[ .-]?)?\(?\d{3}\)?[ .-]\d{3}[ .-]\d{4}(?!\w)",
    "ssn": r"\b\d{3}-\d{2}-\d{4}\b",
    "credit_card": r"\b(?:\d[ -]?){13,16}\b",
    "ipv4": r"\b(?:\d{1,3}\.){3}\d{1,3}\b",
    "secret": (
        r"\bAKIA[0-9A-Z]{16}\b|\bsk-[A-Za-z0-9_-]{16,}|\bgh[pousr]_[A-Za-z0-9]{20,}"
        r"|-----BEGIN [A-Z ]*PRIVATE KEY-----|(?i:\b(?:password|passwd|api[_-]?key|secret)"
        r"\s*[:=]\s*\S+)"
    ),
}
DEFAULT_LEVELS = LEVELS


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_regexes(patterns: list[str]) -> list[str]:
    for p in patterns:
        try:
            re.compile(p)
        except re.error as exc:
            raise ValueError(f"invalid regex {p!r}: {exc}") from exc
    return patterns


class InputRules(_Strict):
    max_prompt_chars: int | None = Field(default=None, ge=1)
    blocked_patterns: list[str] = []
    redact: list[str] = []  # names of BUILTIN_PATTERNS or of the policy's `patterns`

    @field_validator("blocked_patterns")
    @classmethod
    def check_patterns(cls, value: list[str]) -> list[str]:
        return _check_regexes(value)


class OutputRules(_Strict):
    max_tokens: int | None = Field(default=None, ge=1)
    blocked_patterns: list[str] = []
    redact: list[str] = []

    @field_validator("blocked_patterns")
    @classmethod
    def check_patterns(cls, value: list[str]) -> list[str]:
        return _check_regexes(value)


class RuleSection(_Strict):
    input: InputRules = InputRules()
    output: OutputRules = OutputRules()


class ModelSection(RuleSection):
    classification: str | None = None


class PrincipalSection(RuleSection):
    clearance: str | None = None


class PolicyConfig(_Strict):
    levels: list[str] = list(DEFAULT_LEVELS)  # classification labels, least to most sensitive
    patterns: dict[str, str] = {}  # extra named redaction patterns
    default: RuleSection = RuleSection()
    models: dict[str, ModelSection] = {}
    principals: dict[str, PrincipalSection] = {}

    @field_validator("patterns")
    @classmethod
    def check_patterns(cls, value: dict[str, str]) -> dict[str, str]:
        _check_regexes(list(value.values()))
        return value


@dataclass(frozen=True)
class PolicyDecision:
    """A rule that fired: e.g. ("input.redact.email", "redacted", 2)."""

    rule: str
    action: str
    count: int = 1

    def as_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "action": self.action, "count": self.count}


class PolicyViolation(Exception):
    """A request refused by a rule (HTTP 400 / 403 upstream)."""

    def __init__(self, decision: PolicyDecision, message: str) -> None:
        super().__init__(message)
        self.decision = decision


@dataclass(frozen=True)
class EffectiveRules:
    """The rules for one (model, principal) pair."""

    max_prompt_chars: int | None
    input_blocked: tuple[str, ...]
    input_redact: tuple[str, ...]
    max_tokens: int | None
    output_blocked: tuple[str, ...]
    output_redact: tuple[str, ...]


def _min(*values: int | None) -> int | None:
    present = [v for v in values if v is not None]
    return min(present) if present else None


class Policy:
    """Rules loaded from a `PolicyConfig`; `Policy()` allows everything."""

    def __init__(self, config: PolicyConfig | None = None) -> None:
        self.config = config or PolicyConfig()
        self.patterns = {**BUILTIN_PATTERNS, **self.config.patterns}
        sections = [self.config.default, *self.config.models.values()]
        sections += list(self.config.principals.values())
        for section in sections:
            for name in (*section.input.redact, *section.output.redact):
                if name not in self.patterns:
                    raise ConfigError(
                        f"policy names an unknown redaction pattern '{name}'",
                        hint=f"use one of {', '.join(sorted(self.patterns))} or define it "
                        "under `patterns:`",
                    )
        self._compiled = {name: re.compile(p) for name, p in self.patterns.items()}

    def rules_for(self, model_names: list[str], principal: str) -> EffectiveRules:
        """Merge default, the first matching model section and the principal's section."""
        sections: list[RuleSection] = [self.config.default]
        model = next((self.config.models[n] for n in model_names if n in self.config.models), None)
        if model is not None:
            sections.append(model)
        if principal in self.config.principals:
            sections.append(self.config.principals[principal])
        return EffectiveRules(
            max_prompt_chars=_min(*(s.input.max_prompt_chars for s in sections)),
            input_blocked=tuple(p for s in sections for p in s.input.blocked_patterns),
            input_redact=tuple(dict.fromkeys(p for s in sections for p in s.input.redact)),
            max_tokens=_min(*(s.output.max_tokens for s in sections)),
            output_blocked=tuple(p for s in sections for p in s.output.blocked_patterns),
            output_redact=tuple(dict.fromkeys(p for s in sections for p in s.output.redact)),
        )

    # -- classification -----------------------------------------------------------------

    def model_label(self, model_names: list[str], metadata_label: str | None) -> str:
        """A model's label: the more sensitive of the policy's and the asset's own (its
        effective label, inherited from its training data: a policy can raise it, never
        lower it), else the lowest level."""
        sections = [self.config.models.get(n) for n in model_names]
        policy = next((s.classification for s in sections if s and s.classification), None)
        return most_sensitive([policy, metadata_label], self.config.levels) or self.config.levels[0]

    def check_clearance(
        self, principal: str, key_clearance: str | None, label: str
    ) -> PolicyDecision:
        """Raise `PolicyViolation` unless the principal is cleared for `label`."""
        section = self.config.principals.get(principal)
        clearance = key_clearance or (section.clearance if section else None)
        clearance = clearance or self.config.levels[0]
        levels = self.config.levels
        # An unknown label is treated as the most sensitive, an unknown clearance as the least.
        need = levels.index(label) if label in levels else len(levels)
        have = levels.index(clearance) if clearance in levels else 0
        if have < need:
            decision = PolicyDecision("classification", "denied")
            raise PolicyViolation(decision, "this key is not cleared for this model")
        return PolicyDecision("classification", "allowed")

    # -- text rules ---------------------------------------------------------------------

    def redact(
        self, text: str, names: tuple[str, ...], where: str
    ) -> tuple[str, list[PolicyDecision]]:
        decisions = []
        for name in names:
            text, n = self._compiled[name].subn(f"[REDACTED:{name}]", text)
            if n:
                decisions.append(PolicyDecision(f"{where}.redact.{name}", "redacted", n))
        return text, decisions

    def apply_input(self, rules: EffectiveRules, text: str) -> tuple[str, list[PolicyDecision]]:
        """The prompt the model may see, or `PolicyViolation`."""
        if rules.max_prompt_chars is not None and len(text) > rules.max_prompt_chars:
            raise PolicyViolation(
                PolicyDecision("input.max_prompt_chars", "blocked"),
                f"the prompt is longer than the {rules.max_prompt_chars} characters allowed",
            )
        for i, pattern in enumerate(rules.input_blocked):
            if re.search(pattern, text):
                raise PolicyViolation(
                    PolicyDecision(f"input.blocked_patterns[{i}]", "blocked"),
                    "the request was blocked by the input policy",
                )
        return self.redact(text, rules.input_redact, "input")

    def apply_output(
        self, rules: EffectiveRules, text: str
    ) -> tuple[str, list[PolicyDecision], bool]:
        """(text to return, decisions, blocked): a blocked pattern cuts the text before it."""
        decisions: list[PolicyDecision] = []
        blocked = False
        for i, pattern in enumerate(rules.output_blocked):
            match = re.search(pattern, text)
            if match:
                text = text[: match.start()]
                blocked = True
                decisions.append(PolicyDecision(f"output.blocked_patterns[{i}]", "truncated"))
        text, redactions = self.redact(text, rules.output_redact, "output")
        return text, decisions + redactions, blocked

    @property
    def filters_output(self) -> bool:
        sections = [self.config.default, *self.config.models.values()]
        sections += list(self.config.principals.values())
        return any(s.output.redact or s.output.blocked_patterns for s in sections)


def load_policy(path: str | Path | None) -> Policy:
    """Read a policy YAML file; None gives the allow-all policy."""
    if path is None:
        return Policy()
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read policy file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    try:
        return Policy(PolicyConfig.model_validate(data))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(
            f"{path}: {where}: {first['msg']}", hint="see docs for the policy format"
        ) from exc
