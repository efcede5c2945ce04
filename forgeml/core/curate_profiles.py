"""Curation profiles: `curate.profile` picks the defaults of the curation rules, and the
sections for the documents that are not prose (records, configs, short and structured text).
forgeml.core.data_config's CurateConfig resolves a profile under what the recipe wrote.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Section(BaseModel):
    """A recipe section, as in forgeml.core.config: frozen, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class RecordFilterConfig(_Section):
    """Records (CSV/JSON rows, spreadsheet sheets): kept when they hold a value; the prose
    rules never see them (a CSV row is not a 50-word paragraph)."""

    enabled: bool = True
    min_words: int = Field(1, ge=0, description="words in the record's text")
    null_values: list[str] = Field(
        default_factory=lambda: ["", "null", "none", "nil", "nan", "n/a", "na", "-", "undefined"],
        description="values that count as empty (compared case-insensitively)",
    )


class ConfigFileFilterConfig(_Section):
    """Configuration files (YAML, JSON, INI, TOML, properties, XML): lock files, data blobs
    and minified one-line dumps are dropped; comments, templates and headers saying
    "generated" are not reasons (a config is still a config)."""

    enabled: bool = True
    max_line_length: int = Field(1000, gt=0)
    max_blob_fraction: float = Field(0.5, ge=0, le=1, description="base64/hex runs share")
    require_parseable: bool = Field(
        False,
        description="drop JSON/TOML/YAML files their parser rejects; off by default, since "
        "templates and JSON with comments are valid configs that do not parse",
    )


class ShortTextFilterConfig(_Section):
    """Prose-typed documents under `curate.prose_min_words` words (notes, tickets, captions,
    one-line READMEs): kept when they hold words."""

    enabled: bool = True
    min_words: int = Field(2, ge=0)


class StructuredTextFilterConfig(_Section):
    """Prose-typed documents that do not read as prose by Gopher's word-shape rules (tables,
    grammars, logs, test data, API indexes): dropped only as blobs, symbol soup or one line
    repeated."""

    enabled: bool = True
    max_blob_fraction: float = Field(0.5, ge=0, le=1, description="base64/hex runs share")
    min_alnum_fraction: float = Field(0.25, ge=0, le=1)
    max_dup_line_fraction: float = Field(0.8, ge=0, le=1, description="lines repeating another")


# What each profile changes from the field defaults (which are the `web` profile's: the
# Gopher/C4 rules as published). A recipe's own settings are merged over these.
PROFILE_DEFAULTS: dict[str, dict[str, Any]] = {
    "web": {},
    "enterprise": {
        "prose_min_words": 50,
        "prose_shape_gate": True,
        "record_types": ["records", "spreadsheet"],
        "config_languages": ["yaml", "json", "ini", "toml", "properties", "xml"],
        # An organisation's manuals, changelogs and license files repeat their own
        # headings, API names and notices: only text that is mostly repeats is dropped.
        "gopher_repetition": {
            "max_dup_line_fraction": 0.5,
            "max_dup_para_fraction": 0.5,
            "max_dup_line_char_fraction": 0.5,
            "max_dup_para_char_fraction": 0.5,
            "max_top_ngram_char_fraction": {2: 0.3, 3: 0.3, 4: 0.3},
            "max_dup_ngram_char_fraction": {5: 0.5, 6: 0.5, 7: 0.5, 8: 0.5, 9: 0.5, 10: 0.5},
        },
    },
}


def _explicit(value: Any) -> Any:
    """A section as the settings its author wrote: a model's set fields, a dict as is."""
    if isinstance(value, BaseModel):
        return {k: _explicit(getattr(value, k)) for k in value.model_fields_set}
    return value


def _merged(defaults: dict[str, Any], written: dict[str, Any]) -> dict[str, Any]:
    """`written` over `defaults`, section by section; a dict-valued setting (the n-gram
    thresholds) is replaced whole, as written."""
    out = dict(defaults)
    for key, value in written.items():
        value = _explicit(value)
        section = not key.startswith("max_")
        if section and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


def with_profile(data: Any, default_profile: str = "enterprise") -> Any:
    """`data` (a CurateConfig's input) with its profile's defaults under every setting it
    writes: a profile changes defaults, never what the recipe says."""
    if not isinstance(data, dict):
        return data
    profile = data.get("profile", default_profile)
    if profile not in PROFILE_DEFAULTS:
        return data  # the field's validation names the allowed values
    return _merged(PROFILE_DEFAULTS[profile], data)


class QualityModelConfig(_Section):
    """A quality classifier trained on this corpus (forgeml.data.quality): hashed n-grams
    and a linear model fit to the rule filters' verdicts on a sample of documents. Off by
    default; the report gives its held-out agreement with the rules."""

    enabled: bool = False
    sample_docs: int = Field(20_000, ge=10, description="labelled documents sampled")
    heldout_fraction: float = Field(0.2, gt=0, lt=1, description="of the sample, for testing")
    buckets: int = Field(1 << 18, ge=1024, description="hashed feature columns")
    ngrams: int = Field(2, ge=1, le=4, description="word n-grams up to this length")
    epochs: int = Field(200, ge=1)
    min_score: float | None = Field(
        None, ge=0, le=1, description="drop survivors scoring below this; None: score only"
    )
