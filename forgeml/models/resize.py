"""Grow a model's embeddings for an extended tokenizer (continued pre-training).

Each new embedding row starts as the mean of the rows of the pieces the old tokenizer split
the new token into; the tokenizer side is forgeml.tokenizer.extend.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer

from forgeml.core.errors import ConfigError
from forgeml.models.dense import Transformer
from forgeml.models.registry import build_model
from forgeml.tokenizer.train import load_tokenizer


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
