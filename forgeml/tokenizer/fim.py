"""Fill-in-the-middle (FIM) training examples, made at packing time.

A share of documents is cut into (prefix, middle, suffix) and rewritten in PSM or SPM order
with the tokenizer's FIM tokens (Bavarian et al., "Efficient Training of Language Models to
Fill in the Middle", arXiv:2207.14255); `pack_fim_shards` writes them as ordinary token shards.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from forgeml.core.config import FimConfig
from forgeml.core.errors import ConfigError, DataError
from forgeml.core.io import atomic_write_text
from forgeml.tokenizer.chat import EOS, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX
from forgeml.tokenizer.pack import pack_token_shards


@dataclass(frozen=True)
class FimTokens:
    """Ids of the three FIM sentinels in one tokenizer."""

    prefix: int
    middle: int
    suffix: int

    @classmethod
    def from_tokenizer(cls, tok: Tokenizer) -> FimTokens:
        ids = [tok.token_to_id(t) for t in (FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX)]
        if None in ids:
            raise DataError(
                "the tokenizer has no fill-in-the-middle tokens "
                f"({FIM_PREFIX}, {FIM_MIDDLE}, {FIM_SUFFIX})",
                hint="use a tokenizer trained by forgeml",
            )
        return cls(*ids)


@dataclass(frozen=True)
class FimPlan:
    """Where one document is cut: [0, lo) prefix, [lo, hi) middle, [hi, n) suffix."""

    lo: int
    hi: int
    spm: bool


UNITS = ("char", "line", "word")
# A word: letters/digits/underscore, with inner hyphens or apostrophes ("bit-rate", "don't").
# Its span stops before punctuation, like the gaps of damaged documents ("[...]." ).
_WORD = re.compile(r"\w+(?:[-']\w+)*")


def _line_boundaries(text: str) -> np.ndarray:
    """Offsets where a line starts, plus 0 and len(text): the cut points of line-level FIM."""
    starts = [i + 1 for i, ch in enumerate(text) if ch == "\n"]
    return np.unique(np.asarray([0, *starts, len(text)], dtype=np.int64))


def _unit_weights(cfg: FimConfig) -> np.ndarray:
    """Probability of each of UNITS for one middle: `cfg.span_mix`, or all on `cfg.unit`."""
    if not cfg.span_mix:
        return np.asarray([u == cfg.unit for u in UNITS], dtype=np.float64)
    weights = np.asarray([cfg.span_mix.get(u, 0.0) for u in UNITS], dtype=np.float64)
    if (weights < 0).any() or weights.sum() <= 0:
        raise ConfigError(
            f"fim.span_mix needs weights >= 0 with a positive sum, got {dict(cfg.span_mix)}",
            hint="e.g. fim.span_mix={word: 0.6, line: 0.2, char: 0.2}",
        )
    return weights / weights.sum()


def _word_span(text: str, rng: np.random.Generator, max_words: int) -> tuple[int, int] | None:
    """A run of 1..max_words whole words (uniform start word, uniform length), or None."""
    words = [(m.start(), m.end()) for m in _WORD.finditer(text)]
    if not words:
        return None
    first = int(rng.integers(0, len(words)))
    count = int(rng.integers(1, max_words + 1))
    return words[first][0], words[min(first + count, len(words)) - 1][1]


def fim_plan(doc: str | Sequence[int], rng: np.random.Generator, cfg: FimConfig) -> FimPlan | None:
    """Draw whether and where to cut `doc` (None: keep it as plain text).

    Each middle's unit is drawn from `cfg.span_mix` (or is `cfg.unit`): "char" draws two cut
    points uniformly, as in the paper (section 3); "line" cuts between lines, so the middle is
    whole lines (the natural unit of code completion); "word" makes the middle a run of
    1..`cfg.max_span_words` whole words, the gaps of a damaged document or a missing name.
    Matching the span lengths to the task matters: a model trained on ~200-character middles
    does not stop after the one word a gap needs. A token-id document is cut between tokens
    (char unit only). The draws per document are a fixed sequence, so a plan depends only on
    the generator's seed.
    """
    apply, spm = rng.random() < cfg.rate, rng.random() < cfg.spm_rate
    unit = UNITS[int(rng.choice(len(UNITS), p=_unit_weights(cfg)))]
    if not isinstance(doc, str) and unit != "char":
        raise ConfigError(
            f"{unit}-level FIM needs the document text, not token ids",
            hint="pass the text, or set fim.unit=char (and no fim.span_mix)",
        )
    if not apply:
        return None
    span = _word_span(doc, rng, cfg.max_span_words) if unit == "word" else None
    if span is not None:
        lo, hi = span
    elif unit == "line":
        points = _line_boundaries(doc)
        lo, hi = np.sort(points[rng.integers(0, len(points), size=2)])
    else:  # char (also token ids), or a word span in a text without words
        lo, hi = np.sort(rng.integers(0, len(doc) + 1, size=2))
    return FimPlan(int(lo), int(hi), bool(spm))


def fim_assemble(
    prefix: list[int],
    middle: list[int],
    suffix: list[int],
    spm: bool,
    tokens: FimTokens,
    end: int | None = None,
) -> list[int]:
    """PSM: <PRE> prefix <SUF> suffix <MID> middle [end].
    SPM: <PRE> <SUF> suffix <MID> prefix middle [end] (the paper's SPM variant, section 3, whose
    prefix+middle is plain left-to-right text, so PSM and SPM training reinforce each other).

    `end` (EOS) closes the middle, the paper's <EOT>: it teaches the model where a middle
    stops, and infill decoding stops there. A whole document needs none, since the packer
    puts EOS after it; a FIM chunk inside a longer document does."""
    tail = [end] if end is not None else []
    if spm:
        return [tokens.prefix, tokens.suffix, *suffix, tokens.middle, *prefix, *middle, *tail]
    return [tokens.prefix, *prefix, tokens.suffix, *suffix, tokens.middle, *middle, *tail]


def fim_transform(
    doc: str | Sequence[int],
    rng: np.random.Generator,
    cfg: FimConfig,
    *,
    tokens: FimTokens,
    encode: Callable[[list[str]], list[list[int]]] | None = None,
) -> list[int]:
    """One document as token ids: FIM-rewritten with probability `cfg.rate`, else unchanged.

    A text `doc` is cut on characters (or lines) and each part is encoded on its own with
    `encode` (texts -> id lists); a token-id `doc` is cut between tokens.
    """
    plan = fim_plan(doc, rng, cfg)
    if isinstance(doc, str):
        if encode is None:
            raise ValueError("a text document needs `encode` (texts -> token id lists)")
        if plan is None:
            return encode([doc])[0]
        pre, mid, suf = encode([doc[: plan.lo], doc[plan.lo : plan.hi], doc[plan.hi :]])
    else:
        ids = list(doc)
        if plan is None:
            return ids
        pre, mid, suf = ids[: plan.lo], ids[plan.lo : plan.hi], ids[plan.hi :]
    return fim_assemble(pre, mid, suf, plan.spm, tokens)


def _chunks(text: str, chunk_chars: int) -> list[str]:
    """`text` cut at line ends into pieces of at least `chunk_chars` (the whole text if 0)."""
    if chunk_chars <= 0 or len(text) <= chunk_chars:
        return [text]
    out, start = [], 0
    while start < len(text):
        cut = text.find("\n", start + chunk_chars)
        end = len(text) if cut < 0 else cut + 1
        out.append(text[start:end])
        start = end
    return out


class FimEncoder:
    """`encoder(tok, texts) -> id lists`: batch encoding with FIM, for the packer.

    Document k (counted over every call) uses a generator seeded with (cfg.seed, k), so the
    output depends on the seed and the document order only, not on how rows are batched.
    """

    def __init__(self, cfg: FimConfig) -> None:
        self.cfg = cfg
        self.docs_seen = 0
        self.fim_docs = 0
        self.spm_docs = 0
        self._tokens: FimTokens | None = None
        self._eos: int | None = None

    def __call__(self, tok: Tokenizer, texts: list[str]) -> list[list[int]]:
        if self._tokens is None:
            self._tokens = FimTokens.from_tokenizer(tok)
            self._eos = tok.token_to_id(EOS)
        # A unit is a whole document, or one chunk of it when cfg.chunk_chars is set, so that
        # a FIM example fits a training window (a document longer than the window would put
        # <|fim_middle|> and the middle in different windows, and nothing would be learned).
        owners, plans, lasts, pieces = [], [], [], []
        for k, text in enumerate(texts):
            doc = self.docs_seen
            self.docs_seen += 1
            units = _chunks(text, self.cfg.chunk_chars)
            for c, unit in enumerate(units):
                seed = [self.cfg.seed, doc] if c == 0 else [self.cfg.seed, doc, c]
                plan = fim_plan(unit, np.random.default_rng(seed), self.cfg)
                owners.append(k)
                plans.append(plan)
                lasts.append(c == len(units) - 1)
                if plan is None:
                    pieces.append(unit)
                else:
                    pieces += [unit[: plan.lo], unit[plan.lo : plan.hi], unit[plan.hi :]]
        encoded = [e.ids for e in tok.encode_batch_fast(pieces, add_special_tokens=False)]
        out: list[list[int]] = [[] for _ in texts]
        i = 0
        for owner, plan, last in zip(owners, plans, lasts, strict=True):
            if plan is None:
                out[owner] += encoded[i]
                i += 1
            else:
                # A middle ends with EOS; the packer adds it after a document's last unit.
                end = None if last else self._eos
                out[owner] += fim_assemble(*encoded[i : i + 3], plan.spm, self._tokens, end)
                self.fim_docs += 1
                self.spm_docs += plan.spm
                i += 3
        return out


def pack_fim_shards(
    parquet_files: list[Path],
    tokenizer_dir: Path,
    out_dir: Path,
    cfg: FimConfig,
    *,
    text_column: str = "text",
    shard_tokens: int = 64 * 1024 * 1024,
    batch_docs: int = 512,
    row_filter: Callable[[dict], bool] | None = None,
) -> dict:
    """`pack_token_shards` with FIM: same format and guarantees, plus a "fim" entry in the index.

    Special-token strings in the raw text are encoded as plain text, as in `pack_token_shards`,
    so only the transform itself emits FIM sentinels.
    """
    encoder = FimEncoder(cfg)
    index = pack_token_shards(
        parquet_files, tokenizer_dir, out_dir, text_column=text_column,
        shard_tokens=shard_tokens, batch_docs=batch_docs, row_filter=row_filter,
        encode_batch=encoder,
    )  # fmt: skip
    index["fim"] = {
        **cfg.model_dump(mode="json"), "fim_docs": encoder.fim_docs, "spm_docs": encoder.spm_docs,
    }  # fmt: skip
    atomic_write_text(Path(out_dir) / "index.json", json.dumps(index, indent=2) + "\n")
    return index
