"""Autoregressive sampling from a dense Transformer with its kv cache.

The prompt is prefilled once, then one token per step; greedy, temperature, top-k and
nucleus (top-p, Holtzman et al., arXiv:1904.09751) sampling with a local seeded generator.
`sample_groups` decodes n completions of many prompts as one batch (GRPO, online DPO).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from forgeml.core.errors import DataError
from forgeml.core.runtime import autocast
from forgeml.models.dense import Transformer


def filter_logits(
    logits: torch.Tensor, *, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """Set logits outside the top-k and outside the smallest top-p probability mass to -inf.

    logits: [V]. The most likely token is always kept.
    """
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the mass of the tokens ranked above it already reaches top_p.
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p
        # A top_p below float32's smallest value rounds to 0 in the comparison and would drop
        # every token; the most likely one always stays.
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def _next_token(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator,
) -> int:
    if temperature == 0:
        return int(torch.argmax(logits))
    logits = filter_logits(logits.float() / temperature, top_k=top_k, top_p=top_p)
    return sample_index(torch.softmax(logits, dim=-1), generator)


def sample_index(probs: torch.Tensor, generator: torch.Generator) -> int:
    """One index drawn from the distribution `probs` [V] (non-negative, any finite positive total):
    the inverse of its cumulative sum at one uniform draw of `generator`.

    Exact, and about 10x cheaper than `torch.multinomial` for one sample over a vocabulary
    (15 vs 162 µs at V = 8192 on one CPU thread), which draws V exponentials for it. A token
    of probability 0 (filtered by top-k or top-p) is never drawn.
    """
    return int(sample_indices(probs, generator))


def sample_indices(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """`sample_index` of every row of `probs` [..., V] at once: one uniform draw a row, in row
    order, so a 1-row batch draws what `sample_index` draws. Returns the indices [...]."""
    dtype = torch.float32 if probs.device.type == "mps" else torch.float64
    cdf = probs.to(dtype).cumsum(-1)
    total = cdf[..., -1]
    valid = (total > 0) & (total < math.inf)  # also false for nan
    if not bool(valid.all()):
        bad = float(total[~valid].flatten()[0])
        raise ValueError(f"the probabilities sum to {bad}: they hold inf or nan, or are all 0")
    u = torch.rand(total.shape, generator=generator, device=probs.device, dtype=dtype) * total
    index = torch.searchsorted(cdf, u.unsqueeze(-1), right=True).squeeze(-1)
    past = index >= probs.shape[-1]
    if bool(past.any()):  # u rounded up to the total: the last token with mass
        width = probs.shape[-1]
        last = width - 1 - (probs.flip(-1) > 0).to(torch.int8).argmax(-1)
        index = torch.where(past, last, index)
    return index


@torch.inference_mode()
def iter_generate(
    model: Transformer,
    prompt_ids: list[int],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_ids: set[int] | None = None,
    seed: int | None = None,
    device: str | torch.device = "cpu",
) -> Iterator[int]:
    """Yield new token ids one at a time; stop after `max_new_tokens` or on a stop id (not yielded).

    temperature 0 is greedy. A prompt longer than the model's context keeps its last
    `max_seq_len - 1` tokens, and generation ends when the context is full.
    """
    if not prompt_ids:
        raise ValueError("prompt_ids is empty: give at least one token (e.g. BOS)")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    stop_ids = stop_ids or set()
    max_len = model.cfg.max_seq_len
    prompt_ids = prompt_ids[-(max_len - 1) :] if max_len > 1 else prompt_ids[-1:]
    total = min(max_len, len(prompt_ids) + max_new_tokens)
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    cache = model.new_kv_cache(1, total, device=device)
    idx = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    logits = model(idx, kv_cache=cache, start_pos=0)[0, -1]
    pos = len(prompt_ids)
    for step in range(total - len(prompt_ids)):
        token = _next_token(logits, temperature, top_k, top_p, generator)
        if token in stop_ids:
            return
        yield token
        if step + 1 == total - len(prompt_ids):
            return
        idx = torch.tensor([[token]], dtype=torch.long, device=device)
        logits = model(idx, kv_cache=cache, start_pos=pos)[0, -1]
        pos += 1


def generate(model: Transformer, prompt_ids: list[int], **options: Any) -> list[int]:
    """The new token ids (prompt excluded, stop id excluded); `options` are `iter_generate`'s
    (`max_new_tokens`, required; `temperature`, `top_k`, `top_p`, `stop_ids`, `seed`, `device`)."""
    return list(iter_generate(model, prompt_ids, **options))


def greedy_replies(
    model: Transformer, tokenizer: Any, prompts: Sequence[str], *, max_new_tokens: int,
    device: str | torch.device = "cpu", skip_special_tokens: bool = True,
) -> list[str | None]:  # fmt: skip
    """The greedy continuation of each prompt text, stopped at the chat template's end of turn
    or at EOS (plain and chat prompts alike) and decoded; None for a prompt that leaves no
    room in the model's context. What the held-out evals of post-training compare."""
    from forgeml.tokenizer.chat import END, EOS

    stops = {tokenizer.token_to_id(END), tokenizer.token_to_id(EOS)} - {None}
    replies: list[str | None] = []
    for text in prompts:
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        room = model.cfg.max_seq_len - len(ids)
        if room < 1:
            replies.append(None)
            continue
        new = generate(
            model, ids, max_new_tokens=min(max_new_tokens, room), temperature=0,
            stop_ids=stops, device=device,
        )  # fmt: skip
        replies.append(tokenizer.decode(new, skip_special_tokens=skip_special_tokens))
    return replies


@contextlib.contextmanager
def _decode_threads(device: str) -> Iterator[None]:
    # One token per step is hundreds of tiny ops: on CPU one intra-op thread beats two
    # (measured on the 2-core box, 8 x 128 tokens of a 2.4M model: 0.7 s vs 6.0 s CPU time).
    before = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def sample_group(
    model: nn.Module, prompt_ids: list[int], n: int, *, max_new_tokens: int, stop_ids: set[int],
    temperature: float, top_k: int | None, top_p: float | None, generator: torch.Generator,
    device: str, dtype: str,
) -> list[list[int]]:  # fmt: skip
    """`n` sampled completions of one prompt (`sample_groups` of one prompt)."""
    return sample_groups(
        model, [prompt_ids], n, max_new_tokens=max_new_tokens, stop_ids=stop_ids,
        temperature=temperature, top_k=top_k, top_p=top_p, generator=generator, device=device,
        dtype=dtype,
    )[0]  # fmt: skip


@torch.inference_mode()
def sample_groups(
    model: nn.Module, prompts: list[list[int]], n: int, *, max_new_tokens: int,
    stop_ids: set[int], temperature: float, top_k: int | None, top_p: float | None,
    generator: torch.Generator, device: str, dtype: str, reserve: int = 0,
) -> list[list[list[int]]]:  # fmt: skip
    """`n` sampled completions of each prompt, all decoded together as one batch with the kv
    cache: each prompt is prefilled once and its cache copied to its n rows, then every live
    row takes one token per step at its own position (the model's `decode_rows`, as in
    serving). A row ends at its first stop token (kept) or after its token budget, and leaves
    the batch; `reserve` context positions stay free after each. Returns, per prompt, its n
    completions."""
    budgets = []
    for ids in prompts:
        budget = min(max_new_tokens, model.cfg.max_seq_len - len(ids) - reserve)
        if budget < 1:
            raise DataError(
                f"a prompt of {len(ids)} tokens leaves no room in the model's context "
                f"({model.cfg.max_seq_len})",
                hint="shorten the prompts",
            )
        budgets.append(budget)
    width = max(len(ids) + b for ids, b in zip(prompts, budgets, strict=True))
    rows_total = len(prompts) * n
    cache = model.new_kv_cache(rows_total, width, device=device)
    out: list[list[int]] = [[] for _ in range(rows_total)]
    stops = torch.tensor(sorted(stop_ids), device=device)
    with autocast(device, dtype), _decode_threads(device):
        first = []
        for p, ids in enumerate(prompts):
            one = model.new_kv_cache(1, len(ids), device=device, dtype=cache.k.dtype)
            logits = model(torch.tensor([ids], device=device), kv_cache=one, start_pos=0)[:, -1]
            rows = slice(p * n, (p + 1) * n)
            cache.k[:, rows, :, : len(ids)] = one.k
            cache.v[:, rows, :, : len(ids)] = one.v
            first.append(logits.expand(n, -1))
        logits = torch.cat(first)
        live = torch.arange(rows_total, device=device)  # the output row of each cache row
        positions = torch.tensor(
            [len(ids) for ids in prompts for _ in range(n)], device=device
        )  # fmt: skip
        left = torch.tensor([b for b in budgets for _ in range(n)], device=device)
        while True:
            scaled = logits.float() / temperature
            if top_k is not None or top_p is not None:
                scaled = torch.stack(
                    [filter_logits(row, top_k=top_k, top_p=top_p) for row in scaled]
                )
            token = sample_indices(torch.softmax(scaled, -1), generator)
            for r, t in zip(live.tolist(), token.tolist(), strict=True):
                out[r].append(t)
            left -= 1
            keep = ~torch.isin(token, stops) & (left > 0)
            if not bool(keep.any()):
                break
            if not bool(keep.all()):  # finished rows leave the batch and its cache
                idx = keep.nonzero()[:, 0]
                live, token, positions, left = live[idx], token[idx], positions[idx], left[idx]
                cache = type(cache)(cache.k[:, idx], cache.v[:, idx])
            logits = model.decode_rows(token, cache, positions)
            positions = positions + 1
    return [out[p * n : (p + 1) * n] for p in range(len(prompts))]
