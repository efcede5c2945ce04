"""Train a byte-level BPE tokenizer (HF `tokenizers`) from a stream of texts.

Writes `tokenizer.json`, `tokenizer_config.json` (with the chat template) and
`special_tokens_map.json`, so `transformers.AutoTokenizer` loads the folder as is.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from forgeml.core.errors import ConfigError, DataError, NotFoundError
from forgeml.core.io import atomic_write_text
from forgeml.tokenizer.chat import BOS, CHAT_TEMPLATE, EOS, PAD, SPECIAL_TOKENS

# The GPT-4 (cl100k) split: letters, numbers of at most 3 digits, punctuation runs, newline runs
# and whitespace runs are separate pieces, so indentation and operators in code get their own
# tokens and a special-token string in raw text (`<|eos|>`) can never be one BPE piece.
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
N_BYTE_TOKENS = 256
# The files of a tokenizer folder, copied next to a model's weights in HF layout.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)


def _build_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    # No normalizer: decode(encode(text)) must give back the exact bytes.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    return tok


def _capped(texts: Iterable[str], max_bytes: int | None, seen: list[int]) -> Iterator[str]:
    """Yield non-empty texts until `max_bytes` UTF-8 bytes were yielded; count them in `seen`."""
    for text in texts:
        if not text:
            continue
        n = len(text.encode("utf-8"))
        if max_bytes is not None and seen[0] + n > max_bytes:
            rest = max_bytes - seen[0]
            if rest > 0:
                # Cut on a character boundary; a partial last document is still useful text.
                piece = text.encode("utf-8")[:rest].decode("utf-8", errors="ignore")
                seen[0] += len(piece.encode("utf-8"))
                if piece:
                    yield piece
            return
        seen[0] += n
        yield text


def _tokenizer_config(model_max_length: int) -> dict:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        # Byte-level BPE covers every byte, so there is no unknown token.
        "unk_token": None,
        "additional_special_tokens": [
            t for t in SPECIAL_TOKENS.values() if t not in (BOS, EOS, PAD)
        ],
        "add_bos_token": False,
        "add_eos_token": False,
        # Cleaning up spaces would break the exact round trip of code.
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "padding_side": "right",
        "chat_template": CHAT_TEMPLATE,
    }


def _special_tokens_map() -> dict:
    return {
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "additional_special_tokens": [
            t for t in SPECIAL_TOKENS.values() if t not in (BOS, EOS, PAD)
        ],
    }


def train_bpe_tokenizer(
    texts: Iterable[str],
    *,
    vocab_size: int,
    out_dir: Path,
    min_frequency: int = 2,
    max_bytes: int | None = None,
    progress: bool = False,
    model_max_length: int = 4096,
) -> Path:
    """Train byte-level BPE on `texts` (streamed, at most `max_bytes`) and save it to `out_dir`.

    Special tokens take ids 0..10 in `SPECIAL_TOKENS` order. Returns `out_dir`.
    """
    min_vocab = N_BYTE_TOKENS + len(SPECIAL_TOKENS)
    if vocab_size < min_vocab:
        raise ConfigError(
            f"vocab_size {vocab_size} is too small for a byte-level BPE tokenizer",
            f"use at least {min_vocab} (256 bytes + {len(SPECIAL_TOKENS)} special tokens)",
        )
    if max_bytes is not None and max_bytes <= 0:
        raise ConfigError(f"max_bytes must be positive, got {max_bytes}")
    seen = [0]
    stream = _capped(texts, max_bytes, seen)
    # Look at the first text before training so an empty corpus fails with a clear message.
    first = next(stream, None)
    if first is None:
        raise DataError(
            "no text to train the tokenizer on", "check that the dataset has non-empty documents"
        )
    tok = _build_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=progress,
    )
    # `train_from_iterator` consumes the stream once; it keeps word counts, never the corpus.
    tok.train_from_iterator(itertools.chain([first], stream), trainer=trainer)
    for i, token in enumerate(SPECIAL_TOKENS.values()):
        assert tok.token_to_id(token) == i, f"special token {token} did not get id {i}"

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # tokenizer.json goes last: its presence marks a complete folder for `load_tokenizer`.
    atomic_write_text(
        out_dir / "tokenizer_config.json",
        json.dumps(_tokenizer_config(model_max_length), indent=2, ensure_ascii=False) + "\n",
    )
    atomic_write_text(
        out_dir / "special_tokens_map.json", json.dumps(_special_tokens_map(), indent=2) + "\n"
    )
    atomic_write_text(out_dir / "tokenizer.json", tok.to_str(pretty=True))
    return out_dir


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load `tokenizer.json` from a tokenizer folder (or the file itself)."""
    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise NotFoundError(
            f"no tokenizer.json at {path}", "train one with `forgeml tokenizer train`"
        )
    return Tokenizer.from_file(str(file))


def special_token_ids(tok: Tokenizer) -> dict[str, int]:
    """Role -> id for every forgeml special token (e.g. `{"eos": 1, ...}`)."""
    ids = {}
    for role, token in SPECIAL_TOKENS.items():
        token_id = tok.token_to_id(token)
        if token_id is None:
            raise DataError(
                f"tokenizer has no special token {token} ({role})",
                "use a tokenizer trained by forgeml",
            )
        ids[role] = token_id
    return ids
