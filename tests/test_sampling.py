"""Sampling: cached greedy equals recomputed greedy, seeds reproduce, stops stop, filters filter."""

from __future__ import annotations

import pytest
import torch

from forgeml.core.config import ModelConfig
from forgeml.models.dense import Transformer
from forgeml.models.sampling import filter_logits, generate, iter_generate

VOCAB = 61


@pytest.fixture(scope="module")
def model() -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(
        dim=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        ffn_hidden=96,
        vocab_size=VOCAB,
        max_seq_len=48,
    )
    m = Transformer(cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return m.eval()


def greedy_by_full_forward(model: Transformer, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt) :]


@pytest.mark.parametrize("window", [None, 4])
def test_greedy_with_cache_equals_recomputing(model, window):
    m = model
    if window is not None:
        m = Transformer(model.cfg.model_copy(update={"sliding_window": window}))
        m.load_state_dict(model.state_dict())
    prompt = [3, 17, 5, 9, 40]
    got = generate(m, prompt, max_new_tokens=20, temperature=0)
    assert got == greedy_by_full_forward(m, prompt, 20)
    assert len(got) == 20


def test_top_k_one_equals_greedy(model):
    prompt = [1, 2, 3]
    greedy = generate(model, prompt, max_new_tokens=15, temperature=0)
    assert generate(model, prompt, max_new_tokens=15, temperature=1.5, top_k=1, seed=3) == greedy


def test_seeded_sampling_is_reproducible(model):
    kwargs = dict(max_new_tokens=25, temperature=1.0, top_p=0.95, seed=11)
    a = generate(model, [4, 5], **kwargs)
    b = generate(model, [4, 5], **kwargs)
    c = generate(model, [4, 5], **{**kwargs, "seed": 12})
    assert a == b
    assert a != c
    # Streaming yields the same tokens, and the global RNG is untouched.
    state = torch.get_rng_state()
    assert list(iter_generate(model, [4, 5], **kwargs)) == a
    assert torch.equal(torch.get_rng_state(), state)


def test_stop_id_stops_and_is_not_included(model):
    full = generate(model, [7, 8, 9], max_new_tokens=20, temperature=0)
    stop = full[5]
    first = full.index(stop)
    got = generate(model, [7, 8, 9], max_new_tokens=20, temperature=0, stop_ids={stop})
    assert got == full[:first]


def test_generation_stops_at_context_length(model):
    prompt = list(range(1, 60))  # longer than max_seq_len=48: keeps the last 47
    got = generate(model, prompt, max_new_tokens=10, temperature=0)
    assert len(got) == 1
    assert got == generate(model, prompt[-47:], max_new_tokens=1, temperature=0)


def test_filter_logits_top_k_and_top_p():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [False, False, True, True]
    # Mass 0.5 + 0.3 = 0.8 reaches top_p=0.75, so tokens 2 and 3 go.
    kept = ~torch.isinf(filter_logits(logits, top_p=0.75))
    assert kept.tolist() == [True, True, False, False]
    assert (~torch.isinf(filter_logits(logits, top_p=0.1))).tolist() == [True, False, False, False]
    shuffled = logits[[2, 0, 3, 1]]
    kept = ~torch.isinf(filter_logits(shuffled, top_p=0.75))
    assert kept.tolist() == [False, True, False, True]
