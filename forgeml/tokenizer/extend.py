"""Extend a trained tokenizer with domain tokens (ids after the existing vocabulary).

Used by continued pre-training, which then grows the model's embeddings to match
(forgeml.models.resize).
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken

from forgeml.core.errors import ConfigError
from forgeml.core.io import atomic_write_bytes, atomic_write_text
from forgeml.tokenizer.train import TOKENIZER_FILES, load_tokenizer


def extend_tokenizer(
    tokenizer_dir: str | Path,
    new_tokens: list[str],
    out_dir: str | Path,
    *,
    space_variants: bool = False,
) -> dict[str, int]:
    """Copy the tokenizer in `tokenizer_dir` to `out_dir` with `new_tokens` added; return their ids.

    The tokens are ordinary (non-special) added tokens, matched in raw text before BPE, with
    ids appended after the existing vocabulary in the order given. A token that the tokenizer
    already encodes as one piece is skipped. The byte-level pre-tokenizer glues a word's leading
    space to it ("Ġword"), so an added "word" leaves that space as a piece of its own; with
    `space_variants` a " word" token is added too and wins where the word follows a space.
    """
    src, out_dir = Path(tokenizer_dir), Path(out_dir)
    tok = load_tokenizer(src)
    wanted: list[str] = []
    for token in new_tokens:
        if not token or not token.strip():
            raise ConfigError(f"new token {token!r} is empty or only whitespace")
        variants = [token, " " + token] if space_variants and not token[0].isspace() else [token]
        wanted += [v for v in variants if v not in wanted]
    tok.encode_special_tokens = True
    fresh = [t for t in wanted if len(tok.encode(t, add_special_tokens=False).ids) > 1]
    before = tok.get_vocab_size(with_added_tokens=True)
    # normalized=False: matched on the exact raw text (forgeml tokenizers have no normalizer).
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in fresh])
    ids = {t: tok.token_to_id(t) for t in fresh}
    if sorted(ids.values()) != list(range(before, before + len(fresh))):
        raise ConfigError("the new tokens did not get ids after the existing vocabulary")
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if name != "tokenizer.json" and (src / name).is_file():
            atomic_write_bytes(out_dir / name, (src / name).read_bytes())
    atomic_write_text(
        out_dir / "added_domain_tokens.json", json.dumps(ids, indent=1, ensure_ascii=False) + "\n"
    )
    tok.encode_special_tokens = False
    # tokenizer.json last: its presence marks a complete folder (as in train_bpe_tokenizer).
    atomic_write_text(out_dir / "tokenizer.json", tok.to_str(pretty=True))
    return ids
