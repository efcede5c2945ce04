"""Sampling: cached greedy equals recomputed greedy, seeds reproduce, stops stop, filters filter."""

from __future__ import annotations

import pytest
import torch

from forgeml.core.config import ModelConfig
from forgeml.models.dense import Transformer
from forgeml.models.sampling import (
    filter_logits,
    generate,
    iter_generate,
    sample_index,
    sample_indices,
)

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


def test_sample_index_draws_each_token_at_its_probability():
    probs = torch.tensor([0.1, 0.0, 0.2, 0.3, 0.4])
    generator = torch.Generator().manual_seed(0)
    n = 20_000
    counts = torch.bincount(
        torch.tensor([sample_index(probs * 3, generator) for _ in range(n)]), minlength=5
    )  # unnormalised: any positive total
    assert counts[1] == 0  # a filtered (zero-probability) token is never drawn
    # Binomial standard deviation at n = 20000 is at most 0.0035: 0.015 is over 4 sigma.
    assert torch.allclose(counts.float() / n, probs, atol=0.015)


def test_sample_index_at_the_top_of_the_range_keeps_to_tokens_with_mass(monkeypatch):
    # A uniform draw that rounds up to the total falls past the last bucket: the last token
    # with probability takes it, not a zero-probability one after it.
    monkeypatch.setattr(torch, "rand", lambda *a, **k: torch.tensor(1.0, dtype=torch.float64))
    assert sample_index(torch.tensor([0.5, 0.5, 0.0, 0.0]), torch.Generator()) == 1


@pytest.mark.parametrize("bad", [[0.5, float("nan")], [0.0, 0.0], [1.0, float("inf")]])
def test_sample_index_rejects_invalid_probabilities(bad):
    with pytest.raises(ValueError, match="sum to"):
        sample_index(torch.tensor(bad), torch.Generator())


def test_sample_indices_draws_each_row_as_sample_index_would():
    probs = torch.softmax(torch.randn(6, 50, generator=torch.Generator().manual_seed(1)), -1)
    probs[2, 10:] = 0.0  # a filtered row: its tokens past 10 are never drawn
    batched, single = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for _ in range(200):
        rows = sample_indices(probs, batched).tolist()
        assert rows == [sample_index(row, single) for row in probs]
        assert rows[2] < 10


def test_sample_indices_at_the_top_of_the_range_keeps_to_tokens_with_mass(monkeypatch):
    monkeypatch.setattr(
        torch, "rand", lambda *a, **k: torch.tensor([0.3, 1.0], dtype=torch.float64)
    )
    probs = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.0]])
    assert sample_indices(probs, torch.Generator()).tolist() == [0, 1]


def test_sample_indices_rejects_a_row_without_mass():
    with pytest.raises(ValueError, match="sum to 0"):
        sample_indices(torch.tensor([[0.5, 0.5], [0.0, 0.0]]), torch.Generator())
