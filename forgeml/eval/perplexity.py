"""Held-out perplexity and bits-per-byte of a model on a packed token dataset.

Bits-per-byte (used by nanochat and "The Pile", arXiv 2101.00027) divides the summed
negative log-likelihood by the UTF-8 bytes the predicted tokens stand for, so models with
different tokenizers compare fairly. Special tokens stand for no bytes and are excluded.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from forgeml.core.errors import DataError
from forgeml.core.runtime import autocast


@dataclass(frozen=True)
class PerplexityResult:
    loss: float
    perplexity: float
    bits_per_byte: float
    tokens: int
    bytes: int
    unigram_loss: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: the printable character standing for each byte."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars = keep[:]
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(keep, map(chr, chars), strict=True))


def token_byte_lengths(tokenizer_dir: Path, vocab_size: int) -> np.ndarray:
    """Number of UTF-8 bytes each token id decodes to (0 for special tokens)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
    specials = {t.content for t in tok.get_added_tokens_decoder().values() if t.special}
    char_to_byte = {c: b for b, c in _bytes_to_unicode().items()}
    lengths = np.zeros(vocab_size, dtype=np.int64)
    for piece, idx in tok.get_vocab().items():
        if idx >= vocab_size or piece in specials:
            continue
        if all(c in char_to_byte for c in piece):
            lengths[idx] = len(piece)
        else:
            lengths[idx] = len(piece.encode("utf-8"))
    return lengths


def unigram_counts(train_shards, max_tokens: int = 50_000_000) -> np.ndarray:
    """Token frequencies of (up to `max_tokens` of) the training stream."""
    n = min(train_shards.n_tokens, max_tokens)
    counts = np.zeros(train_shards.vocab_size, dtype=np.int64)
    step = 1 << 22
    for start in range(0, n, step):
        counts += np.bincount(
            train_shards.window(start, min(step, n - start)), minlength=len(counts)
        )
    return counts


@torch.no_grad()
def evaluate_perplexity(
    model: torch.nn.Module,
    shards,
    *,
    byte_lengths: np.ndarray,
    seq_len: int,
    batch_size: int,
    max_batches: int,
    device: str = "cpu",
    dtype: str = "auto",
    unigram: np.ndarray | None = None,
) -> PerplexityResult:
    """Mean token loss, perplexity and bits-per-byte over contiguous held-out windows."""
    n_windows = (shards.n_tokens - 1) // seq_len
    if n_windows < 1:
        raise DataError(
            f"held-out data has {shards.n_tokens} tokens, fewer than one window of {seq_len + 1}",
            hint="lower eval.seq_len or raise data.heldout_fraction",
        )
    n_windows = min(n_windows, batch_size * max_batches)
    lengths = torch.from_numpy(byte_lengths)
    log_unigram = None
    if unigram is not None:
        probs = (unigram + 1) / (unigram.sum() + len(unigram))  # add-one smoothing
        log_unigram = torch.from_numpy(-np.log(probs))
    model.eval()
    nll_sum = nll_bytes_sum = uni_sum = 0.0
    n_tokens = n_bytes = 0
    for first in range(0, n_windows, batch_size):
        rows = [
            shards.window(w * seq_len, seq_len + 1)
            for w in range(first, min(first + batch_size, n_windows))
        ]
        batch = torch.from_numpy(np.stack(rows)).long()
        x, y = batch[:, :-1].to(device), batch[:, 1:]
        with autocast(device, dtype):
            logits = model(x)
        nll = F.cross_entropy(logits.float().flatten(0, 1).cpu(), y.flatten(), reduction="none")
        token_bytes = lengths[y.flatten()]
        counted = token_bytes > 0
        nll_sum += nll.sum().item()
        n_tokens += y.numel()
        nll_bytes_sum += nll[counted].sum().item()
        n_bytes += int(token_bytes.sum())
        if log_unigram is not None:
            uni_sum += log_unigram[y.flatten()].sum().item()
    loss = nll_sum / n_tokens
    return PerplexityResult(
        loss=loss,
        perplexity=math.exp(min(loss, 50.0)),
        bits_per_byte=nll_bytes_sum / (math.log(2) * max(n_bytes, 1)),
        tokens=n_tokens,
        bytes=n_bytes,
        unigram_loss=uni_sum / n_tokens if log_unigram is not None else None,
    )
