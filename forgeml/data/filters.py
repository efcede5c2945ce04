"""Quality filters for curation: each a small function `(text, record, cfg) -> reason | None`.

A filter returns None to keep a record or a short reason string (`gopher_quality:few_words`)
that the curation report counts. `document_kind` sorts each document to the rules made for
it (curate.profile): prose gets length, Gopher quality and repetition (Rae et al., arXiv
2112.11446) and language rules; code gets The Stack / StarCoder heuristics (Kocetkov et al.,
arXiv 2211.15533; Li et al., arXiv 2305.06161); records, configs, short and structured text
get rules of their own. `build_filters` turns a `CurateConfig` into the ordered list
`forgeml.data.curate` runs.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from typing import Any, NamedTuple

from forgeml.core.config import (
    BoilerplateConfig,
    CodeFilterConfig,
    CurateConfig,
    GopherQualityConfig,
    GopherRepetitionConfig,
    LanguageFilterConfig,
    LengthFilterConfig,
)
from forgeml.core.curate_profiles import (
    ConfigFileFilterConfig,
    RecordFilterConfig,
    ShortTextFilterConfig,
    StructuredTextFilterConfig,
)
from forgeml.core.errors import ConfigError
from forgeml.core.plugins import load_plugin

Record = dict[str, Any]


class Filter(NamedTuple):
    """One step of the chain: `applies(record)` chooses the records `check` looks at."""

    name: str
    applies: Callable[[Record], bool]
    check: Callable[[str, Record], str | None]


class UserFilterError(Exception):
    """A user hook raised: the record is counted as failed (the message never holds text)."""


# ---------------------------------------------------------------------------------------
# Length


def length_filter(text: str, record: Record, cfg: LengthFilterConfig) -> str | None:
    n = len(text)
    if n < cfg.min_chars:
        return "length:too_short"
    if n > cfg.max_chars:
        return "length:too_long"
    return None


# ---------------------------------------------------------------------------------------
# Gopher quality and repetition (Rae et al., arXiv 2112.11446, appendix A)

STOP_WORDS = frozenset(("the", "be", "to", "of", "and", "that", "have", "with"))
_BULLETS = ("•", "-", "*", "‣", "⁃", "◦", "●")
_PUNCT_ONLY = re.compile(r"^\W+$")


# whitespace-separated words of punctuation only / without a letter, found in one pass
_PUNCT_WORD = re.compile(r"(?<!\S)[^\w\s]+(?!\S)")
_NO_LETTER_WORD = re.compile(r"(?<!\S)(?:[^\w\s]|[\d_])+(?!\S)")


def word_shape(text: str, words: list[str], cfg: GopherQualityConfig) -> str | None:
    """Gopher's word-shape rules (mean word length, symbols per word, words with letters):
    the reason a text does not read as prose, or None. `gopher_quality_filter`'s numbers,
    counted with two regex passes instead of a loop per word (one difference: a word whose
    only alphanumerics are digits outside Unicode's decimal class, like `²`, has a letter)."""
    n_words = max(1, len(words))
    punct = _PUNCT_WORD.findall(text)
    real_chars = sum(map(len, words)) - sum(map(len, punct))
    mean_len = real_chars / max(1, len(words) - len(punct))
    if not cfg.min_mean_word_length <= mean_len <= cfg.max_mean_word_length:
        return "gopher_quality:mean_word_length"
    symbols = text.count("#") + text.count("...") + text.count("…")
    if symbols / n_words > cfg.max_symbol_word_ratio:
        return "gopher_quality:symbol_ratio"
    if (len(words) - len(_NO_LETTER_WORD.findall(text))) / n_words < cfg.min_alpha_words_ratio:
        return "gopher_quality:alpha_words"
    return None


def gopher_quality_filter(text: str, record: Record, cfg: GopherQualityConfig) -> str | None:
    words = text.split()
    n_words = len(words)
    if n_words < cfg.min_words:
        return "gopher_quality:few_words"
    if n_words > cfg.max_words:
        return "gopher_quality:many_words"
    real = [w for w in words if not _PUNCT_ONLY.match(w)]
    mean_len = sum(map(len, real)) / max(1, len(real))
    if not cfg.min_mean_word_length <= mean_len <= cfg.max_mean_word_length:
        return "gopher_quality:mean_word_length"
    symbols = text.count("#") + text.count("...") + text.count("…")
    if symbols / n_words > cfg.max_symbol_word_ratio:
        return "gopher_quality:symbol_ratio"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if lines:
        if sum(line.startswith(_BULLETS) for line in lines) / len(lines) > (
            cfg.max_bullet_lines_ratio
        ):
            return "gopher_quality:bullet_lines"
        ellipsis = sum(line.endswith(("...", "…")) for line in lines)
        if ellipsis / len(lines) > cfg.max_ellipsis_lines_ratio:
            return "gopher_quality:ellipsis_lines"
    if sum(any(c.isalpha() for c in w) for w in words) / n_words < cfg.min_alpha_words_ratio:
        return "gopher_quality:alpha_words"
    if sum(w.lower() in STOP_WORDS for w in words) < cfg.min_stop_words:
        return "gopher_quality:stop_words"
    return None


def _dup_stats(items: list[str]) -> tuple[float, float]:
    """(fraction of items that repeat an earlier one, fraction of their characters)."""
    seen: set[str] = set()
    dup_n = dup_chars = total_chars = 0
    for item in items:
        total_chars += len(item)
        if item in seen:
            dup_n += 1
            dup_chars += len(item)
        seen.add(item)
    return dup_n / max(1, len(items)), dup_chars / max(1, total_chars)


def _dup_ngram_chars(words: list[str], n: int) -> int:
    """Characters in n-grams that repeat an earlier n-gram, each word counted once."""
    seen: set[tuple[str, ...]] = set()
    i = dup = 0
    while i <= len(words) - n:
        gram = tuple(words[i : i + n])
        if gram in seen:
            dup += sum(map(len, gram))
            i += n
        else:
            seen.add(gram)
            i += 1
    return dup


def gopher_repetition_filter(text: str, record: Record, cfg: GopherRepetitionConfig) -> str | None:
    paras = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    frac, char_frac = _dup_stats(paras)
    if frac > cfg.max_dup_para_fraction:
        return "gopher_repetition:dup_paragraphs"
    if char_frac > cfg.max_dup_para_char_fraction:
        return "gopher_repetition:dup_paragraph_chars"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    frac, char_frac = _dup_stats(lines)
    if frac > cfg.max_dup_line_fraction:
        return "gopher_repetition:dup_lines"
    if char_frac > cfg.max_dup_line_char_fraction:
        return "gopher_repetition:dup_line_chars"
    words = text.split()
    total = max(1, sum(map(len, words)))
    for n, limit in sorted(cfg.max_top_ngram_char_fraction.items()):
        grams = Counter(zip(*(words[i:] for i in range(n)), strict=False))
        if grams:
            gram, count = grams.most_common(1)[0]
            if count > 1 and sum(map(len, gram)) * count / total > limit:
                return f"gopher_repetition:top_{n}gram"
    for n, limit in sorted(cfg.max_dup_ngram_char_fraction.items()):
        if _dup_ngram_chars(words, n) / total > limit:
            return f"gopher_repetition:dup_{n}gram"
    return None


# ---------------------------------------------------------------------------------------
# Language (langdetect: a port of Google's language-detection; profiles ship in the wheel)


def detect_language(text: str, cfg: LanguageFilterConfig, seed: int = 0) -> tuple[str, float]:
    """(ISO code, probability) of the first `sample_chars` characters; ("unknown", 0) when
    the text has no letters. langdetect samples randomly: the seed makes it deterministic."""
    from langdetect import DetectorFactory, detect_langs
    from langdetect.lang_detect_exception import LangDetectException

    DetectorFactory.seed = seed
    try:
        best = detect_langs(text[: cfg.sample_chars])[0]
    except LangDetectException:
        return "unknown", 0.0
    return best.lang, float(best.prob)


def language_filter(text: str, record: Record, cfg: LanguageFilterConfig) -> str | None:
    """Uses the `natural_language` / `language_score` curation set on the record."""
    lang = record.get("natural_language") or "unknown"
    if cfg.keep and lang not in cfg.keep:
        return f"language:{lang}"
    if record.get("language_score", 1.0) < cfg.min_confidence:
        return "language:low_confidence"
    return None


# ---------------------------------------------------------------------------------------
# Boilerplate lines (a text modifier, not a filter: C4, Raffel et al., arXiv 1910.10683)


def boilerplate_remover(cfg: BoilerplateConfig) -> Callable[[str], tuple[str, int]]:
    """A function text -> (text without boilerplate lines, number of lines removed)."""
    patterns = [re.compile(p, re.MULTILINE) for p in cfg.patterns]

    def remove(text: str) -> tuple[str, int]:
        # A line that matches alone also matches within the text (MULTILINE): most texts
        # have none, and one search over the text is cheaper than one per line.
        if not any(p.search(text) for p in patterns):
            return text, 0
        kept, removed = [], 0
        for line in text.split("\n"):
            if line.strip() and any(p.search(line) for p in patterns):
                removed += 1
            else:
                kept.append(line)
        return ("\n".join(kept), removed) if removed else (text, 0)

    return remove


# ---------------------------------------------------------------------------------------
# Code (The Stack, arXiv 2211.15533; StarCoder, arXiv 2305.06161)

_BLOB = re.compile(r"[A-Za-z0-9+/=]{64,}|(?:0x)?[0-9A-Fa-f]{64,}")


def code_filter(text: str, record: Record, cfg: CodeFilterConfig) -> str | None:
    name = str(record.get("path", "")).rsplit("/", 1)[-1]
    if name in cfg.lock_files:
        return "code:lock_file"
    head = "\n".join(text.splitlines()[:5]).lower()
    if any(marker in head for marker in cfg.generated_markers):
        return "code:auto_generated"
    lines = text.splitlines() or [""]
    if max(map(len, lines)) > cfg.max_line_length:
        return "code:long_lines"
    if len(text) / len(lines) > cfg.max_mean_line_length:
        return "code:minified"
    if sum(c.isalnum() for c in text) / max(1, len(text)) < cfg.min_alnum_fraction:
        return "code:low_alnum"
    if sum(len(m) for m in _BLOB.findall(text)) / max(1, len(text)) > cfg.max_blob_fraction:
        return "code:data_blob"
    return None


# ---------------------------------------------------------------------------------------
# Records, configs, short and structured text (the enterprise profile's kinds)

_VALUE_SEPARATORS = re.compile(r"[\n;|\t]")


def records_filter(text: str, record: Record, cfg: RecordFilterConfig) -> str | None:
    """A record (CSV/JSON row, sheet) is dropped when all its values are empty or null
    (`name: null; id: -`), or it has fewer than `min_words` words."""
    if len(text.split()) < cfg.min_words:
        return "records:few_words"
    nulls = {v.casefold() for v in cfg.null_values}
    for field in _VALUE_SEPARATORS.split(text):
        value = field.split(": ", 1)[-1] if ": " in field else field
        if value.strip().strip("\"'").casefold() not in nulls:
            return None
    return "records:all_null"


def _parses(text: str, language: str) -> bool:
    import json
    import tomllib

    import yaml

    try:
        if language == "json":
            json.loads(text)
        elif language == "toml":
            tomllib.loads(text)
        elif language == "yaml":
            list(yaml.safe_load_all(text))
    except (ValueError, yaml.YAMLError):
        return False
    return True


def config_filter(
    text: str, record: Record, cfg: ConfigFileFilterConfig, lock_files: frozenset[str]
) -> str | None:
    """Configuration files: lock files, one-line dumps and data blobs are dropped."""
    name = str(record.get("path", "")).rsplit("/", 1)[-1]
    if name in lock_files:
        return "config:lock_file"
    if max(map(len, text.splitlines() or [""])) > cfg.max_line_length:
        return "config:long_lines"
    if sum(len(m) for m in _BLOB.findall(text)) / max(1, len(text)) > cfg.max_blob_fraction:
        return "config:data_blob"
    if cfg.require_parseable and not _parses(text, str(record.get("language"))):
        return "config:unparseable"
    return None


def short_text_filter(text: str, record: Record, cfg: ShortTextFilterConfig) -> str | None:
    """Short prose-typed documents: kept when they hold `min_words` words with letters."""
    if sum(any(c.isalpha() for c in w) for w in text.split()) < cfg.min_words:
        return "short_text:few_words"
    return None


def structured_text_filter(
    text: str, record: Record, cfg: StructuredTextFilterConfig
) -> str | None:
    """Text that is not prose (tables, grammars, logs): blobs, symbol soup, one line repeated."""
    if sum(len(m) for m in _BLOB.findall(text)) / max(1, len(text)) > cfg.max_blob_fraction:
        return "structured_text:data_blob"
    if sum(c.isalnum() for c in text) / max(1, len(text)) < cfg.min_alnum_fraction:
        return "structured_text:low_alnum"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if _dup_stats(lines)[0] > cfg.max_dup_line_fraction:
        return "structured_text:dup_lines"
    return None


def document_kind(text: str, record: Record, cfg: CurateConfig) -> str:
    """Which rules judge a document: `records`, `config`, `code`, `prose`, `short_text`,
    `structured_text` or `other` (only the length rule), from its type and, for prose
    types, its length and word shape (curate.prose_min_words, curate.prose_shape_gate)."""
    doc_type = record.get("type")
    if doc_type in cfg.record_types:
        return "records"
    if doc_type == "code":
        return "config" if record.get("language") in cfg.config_languages else "code"
    if doc_type not in cfg.prose_types:
        return "other"
    if cfg.prose_min_words or cfg.prose_shape_gate:
        words = text.split()
        if len(words) < cfg.prose_min_words:
            return "short_text"
        if cfg.prose_shape_gate and word_shape(text, words, cfg.gopher_quality):
            return "structured_text"
    return "prose"


# ---------------------------------------------------------------------------------------
# User hooks


def load_user_filter(import_path: str) -> Callable[[str, Record], Any]:
    """`pkg.module:function`, `pkg.module.function` or `path/to/file.py:function` -> the
    function (forgeml.core.plugins)."""
    spec = import_path
    if ":" not in spec:
        module_name, _, attr = spec.rpartition(".")
        spec = f"{module_name}:{attr}"
    try:
        fn = load_plugin(spec)
    except ConfigError as err:
        raise ConfigError(
            f"curate.user_filters: cannot import '{import_path}' ({err.message})",
            hint="write 'package.module:function'; the module must be importable",
        ) from None
    if not callable(fn):
        raise ConfigError(f"curate.user_filters: '{import_path}' is not callable")
    return fn


def user_filter(fn: Callable[[str, Record], Any], name: str) -> Callable[[str, Record], str | None]:
    """Wrap a hook returning True/None (keep), False (drop) or a reason string (drop)."""

    def check(text: str, record: Record) -> str | None:
        try:
            verdict = fn(text, record)
        except Exception as err:  # noqa: BLE001 - a hook bug fails one record, not the run
            # Only the type: an exception message may quote the (unredacted) text.
            raise UserFilterError(f"user_filter_error:{name}:{type(err).__name__}") from None
        if verdict is None or verdict is True:
            return None
        if verdict is False:
            return f"user:{name}"
        return f"user:{name}:{str(verdict)[:60]}"

    return check


# ---------------------------------------------------------------------------------------
# The chain


def build_filters(cfg: CurateConfig) -> list[Filter]:
    """The filters curation runs, in order; a record stops at the first that drops it.
    Each applies to documents of some kinds (`document_kind`; curation sets `record["kind"]`)."""
    lock_files = frozenset(cfg.code.lock_files)

    def kind(*kinds: str) -> Callable[[Record], bool]:
        wanted = frozenset(kinds)
        # a record that curation has not sorted (a caller's own) is sorted here, by its text
        return lambda r: (r.get("kind") or document_kind(r.get("text") or "", r, cfg)) in wanted

    def everything(r: Record) -> bool:
        return True

    prose = kind("prose")
    chain = [Filter("length", everything, lambda t, r: length_filter(t, r, cfg.length))]
    if cfg.code.enabled:
        chain.append(Filter("code", kind("code"), lambda t, r: code_filter(t, r, cfg.code)))
    if cfg.config_files.enabled:
        conf = cfg.config_files
        chain.append(
            Filter("config", kind("config"), lambda t, r: config_filter(t, r, conf, lock_files))
        )
    if cfg.records.enabled:
        rec = cfg.records
        chain.append(Filter("records", kind("records"), lambda t, r: records_filter(t, r, rec)))
    if cfg.short_text.enabled:
        short = cfg.short_text
        chain.append(
            Filter("short_text", kind("short_text"), lambda t, r: short_text_filter(t, r, short))
        )
    if cfg.structured_text.enabled:
        st = cfg.structured_text
        chain.append(
            Filter(
                "structured_text",
                kind("structured_text"),
                lambda t, r: structured_text_filter(t, r, st),
            )
        )
    if cfg.language.enabled:
        chain.append(Filter("language", prose, lambda t, r: language_filter(t, r, cfg.language)))
    if cfg.gopher_quality.enabled:
        q = cfg.gopher_quality
        chain.append(Filter("gopher_quality", prose, lambda t, r: gopher_quality_filter(t, r, q)))
    if cfg.gopher_repetition.enabled:
        rep = cfg.gopher_repetition
        chain.append(
            Filter("gopher_repetition", prose, lambda t, r: gopher_repetition_filter(t, r, rep))
        )
    for path in cfg.user_filters:
        name = path.replace(":", ".").rsplit(".", 1)[-1]
        chain.append(Filter(f"user:{name}", everything, user_filter(load_user_filter(path), name)))
    return chain
