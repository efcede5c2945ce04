"""Extend a trained tokenizer with domain tokens, and grow a model's embeddings to match.

Used by continued pre-training: new tokens get ids after the existing vocabulary, and each new
embedding row starts as the mean of the rows of the pieces the old tokenizer split it into.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer

from forgeml.core.errors import ConfigError
from forgeml.core.io import atomic_write_bytes, atomic_write_text
from forgeml.models.dense import Transformer
from forgeml.models.hf_io import TOKENIZER_FILES
from forgeml.models.registry import build_model
from forgeml.tokenizer.train import load_tokenizer


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


def _as_tokenizer(tok: Tokenizer | str | Path) -> Tokenizer:
    return tok if isinstance(tok, Tokenizer) else load_tokenizer(tok)


@torch.no_grad()
def resize_embeddings_mean_init(
    model: Transformer,
    old_tokenizer: Tokenizer | str | Path,
    new_tokenizer: Tokenizer | str | Path,
) -> Transformer:
    """A copy of `model` sized for `new_tokenizer`, new rows = mean of their old sub-token rows.

    For every token of the new tokenizer that the old one lacks, the input embedding row (and
    the output row when untied) is the mean of the rows of the pieces the OLD tokenizer splits
    its text into: the model starts out reading the new token roughly as it read those pieces
    (the sub-word mean of Gee et al. 2022, "Fast Vocabulary Transfer for Language Model
    Compression"). A mean of existing rows also stays inside their convex hull, so the new
    tokens do not swamp the softmax at step 0 (Hewitt 2021, "Initializing New Word Embeddings
    for Pretrained Language Models"). Rows of existing ids are copied unchanged; a model padded
    beyond its tokenizer keeps its size when the new ids already fit.
    """
    old, new = _as_tokenizer(old_tokenizer), _as_tokenizer(new_tokenizer)
    old_vocab = old.get_vocab(with_added_tokens=True)
    new_vocab = new.get_vocab(with_added_tokens=True)
    for token, i in old_vocab.items():
        if new_vocab.get(token) != i:
            raise ConfigError(
                f"token {token!r} has id {i} in the old tokenizer but "
                f"{new_vocab.get(token)} in the new one",
                hint="the new tokenizer must extend the old one (see extend_tokenizer)",
            )
    cfg = model.cfg
    added = {t: i for t, i in new_vocab.items() if t not in old_vocab}
    size = max(cfg.vocab_size, max(new_vocab.values()) + 1)
    resized = build_model(cfg.model_copy(update={"vocab_size": size})).to(
        model.tok_embeddings.weight.device
    )
    state = model.state_dict()
    for key, value in resized.state_dict().items():
        if key in ("tok_embeddings.weight", "output.weight"):
            value[: cfg.vocab_size] = state[key]
        else:
            value.copy_(state[key])
    before = old.encode_special_tokens
    old.encode_special_tokens = True
    try:
        pieces = {t: old.encode(t, add_special_tokens=False).ids for t in added}
    finally:
        old.encode_special_tokens = before
    tables = [resized.tok_embeddings.weight]
    if not cfg.tie_embeddings:
        tables.append(resized.output.weight)
    for token, i in added.items():
        if not pieces[token]:
            raise ConfigError(f"the old tokenizer encodes new token {token!r} as nothing")
        for table in tables:
            table[i] = table[pieces[token]].mean(dim=0)
    return resized
