"""Serving policies from YAML: input/output rules (redaction by governance's detectors) and
data-classification clearance, per model and principal. Every rule that fires is returned as a
`PolicyDecision` for the audit.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from forgeml.core.errors import ConfigError
from forgeml.governance.detectors import (
    PII_KINDS,
    Span,
    ipv4_spans,
    non_overlapping,
    pii_spans,
    secret_spans,
)
from forgeml.governance.labels import LEVELS, most_sensitive
from forgeml.governance.national_ids import ssn_spans


def _pii_detector(kind: str) -> Callable[[str], Iterable[Span]]:
    return partial(pii_spans, kinds=(kind,))


# What a policy's `redact:` may name: governance's detectors, the function curation calls
# (forgeml.data.redact -> pii_spans, with the same validity checks: Luhn, IBAN mod-97, IP
# ranges, libphonenumber, national-ID check digits, birth and address context, the name
# gazetteer; entropy for unnamed keys), one kind at a time ...
BUILTIN_DETECTORS: dict[str, Callable[[str], Iterable[Span]]] = {
    **{kind: _pii_detector(kind) for kind in PII_KINDS},
    "ipv4": ipv4_spans,
    "ssn": ssn_spans,  # the US subset of national_id
    "secret": secret_spans,
}
# ... and patterns a policy file defines under `patterns:`.
DEFAULT_LEVELS = LEVELS
# The kinds of media content part a request may carry, unless a policy section narrows them.
MEDIA_KINDS = ("image", "audio")


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
    # Media content parts: the kinds this section allows (None: no limit set here; the
    # sections that set one intersect), and hosts whose http(s) image URLs may be fetched.
    media: list[Literal["image", "audio"]] | None = None
    media_url_hosts: list[str] = []
    max_prompt_chars: int | None = Field(default=None, ge=1)
    blocked_patterns: list[str] = []
    redact: list[str] = []  # names of BUILTIN_DETECTORS or of the policy's `patterns`

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
    media: tuple[str, ...] = MEDIA_KINDS
    media_url_hosts: tuple[str, ...] = ()


def _regex_detector(name: str, pattern: str) -> Callable[[str], Iterator[Span]]:
    compiled = re.compile(pattern)
    return lambda text: (Span(m.start(), m.end(), name) for m in compiled.finditer(text))


def _replace(text: str, spans: list[Span], placeholder: str) -> str:
    out, pos = [], 0
    for span in spans:
        out += [text[pos : span.start], placeholder]
        pos = span.end
    return "".join([*out, text[pos:]])


def _min(*values: int | None) -> int | None:
    present = [v for v in values if v is not None]
    return min(present) if present else None


class Policy:
    """Rules loaded from a `PolicyConfig`; `Policy()` allows everything."""

    def __init__(self, config: PolicyConfig | None = None) -> None:
        self.config = config or PolicyConfig()
        self.detectors = {
            **BUILTIN_DETECTORS,
            **{name: _regex_detector(name, p) for name, p in self.config.patterns.items()},
        }
        sections = [self.config.default, *self.config.models.values()]
        sections += list(self.config.principals.values())
        for section in sections:
            for name in (*section.input.redact, *section.output.redact):
                if name not in self.detectors:
                    raise ConfigError(
                        f"policy names an unknown redaction pattern '{name}'",
                        hint=f"use one of {', '.join(sorted(self.detectors))} or define it "
                        "under `patterns:`",
                    )

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
            media=tuple(
                k
                for k in MEDIA_KINDS
                if all(k in s.input.media for s in sections if s.input.media is not None)
            ),
            media_url_hosts=tuple(
                dict.fromkeys(h for s in sections for h in s.input.media_url_hosts)
            ),
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
        """Each named detector in turn replaces what it finds by `[REDACTED:<name>]`."""
        decisions = []
        for name in names:
            spans = non_overlapping(self.detectors[name](text))
            if spans:
                text = _replace(text, spans, f"[REDACTED:{name}]")
                decisions.append(PolicyDecision(f"{where}.redact.{name}", "redacted", len(spans)))
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
