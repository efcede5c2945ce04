"""Dense Transformer: shapes, loss, causality, sliding window and kv-cache invariants."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from forgeml.core.config import ModelConfig
from forgeml.core.errors import ConfigError
from forgeml.models import dense
from forgeml.models.dense import Transformer

VOCAB = 97


def tiny(**overrides) -> Transformer:
    torch.manual_seed(0)
    fields = dict(
        dim=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        ffn_hidden=96,
        vocab_size=VOCAB,
        max_seq_len=64,
    )
    fields.update(overrides)
    model = Transformer(ModelConfig(**fields))
    # Perturb the init so that norms and attention are far from their trivial starting point.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def test_shapes_params_and_deterministic_init():
    model = tiny()
    x = torch.randint(0, VOCAB, (3, 11))
    logits = model(x)
    assert logits.shape == (3, 11, VOCAB) and logits.dtype == torch.float32
    torch.manual_seed(5)
    a = Transformer(model.cfg)
    torch.manual_seed(5)
    b = Transformer(model.cfg)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    # Tied: the embedding is counted once; untied adds a vocab x dim head.
    untied = Transformer(model.cfg.model_copy(update={"tie_embeddings": False}))
    assert untied.num_params() - a.num_params() == VOCAB * 64
    assert a.output.weight is a.tok_embeddings.weight


def test_init_scales_out_projections():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(dim=128, n_layers=8, ffn_hidden=256, vocab_size=VOCAB))
    std = model.cfg.init_std
    assert model.layers[0].attention.wqkv.weight.std().item() == pytest.approx(std, rel=0.05)
    assert model.layers[0].feed_forward.w2.weight.std().item() == pytest.approx(std / 4, rel=0.05)


def test_missing_vocab_size_is_a_config_error():
    with pytest.raises(ConfigError):
        Transformer(ModelConfig())


def test_loss_matches_cross_entropy_and_ignores_minus_100():
    model = tiny()
    x = torch.randint(0, VOCAB, (2, 9))
    y = torch.randint(0, VOCAB, (2, 9))
    y[0, :4] = -100
    y[1, -2:] = -100
    logits = model(x)
    want = F.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1), ignore_index=-100)
    got = model(x, y)
    assert got.shape == ()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    mask = y != -100
    naive = -torch.log_softmax(logits, -1).gather(-1, y.clamp(min=0)[..., None])[..., 0][mask]
    torch.testing.assert_close(got, naive.mean(), atol=1e-5, rtol=1e-5)


def test_loss_backward_reaches_every_parameter():
    model = tiny(tie_embeddings=False).train()
    x = torch.randint(0, VOCAB, (2, 8))
    model(x, x).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("autocast", [False, True])
def test_fused_loss_gradients_match_naive_cross_entropy(monkeypatch, autocast):
    # Small chunks so several chunks (and a ragged last one) are exercised.
    monkeypatch.setattr(dense, "CE_CHUNK", 5)
    model = tiny().train()
    x = torch.randint(0, VOCAB, (2, 9))
    y = torch.randint(0, VOCAB, (2, 9))
    y[0, :3] = -100

    def grads(fused: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            if fused:
                loss = model(x, y)
            else:
                loss = F.cross_entropy(model(x).reshape(-1, VOCAB), y.reshape(-1))
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    loss_f, g_f = grads(True)
    loss_n, g_n = grads(False)
    tol = 2e-2 if autocast else 1e-5
    torch.testing.assert_close(loss_f, loss_n, atol=tol, rtol=tol)
    for a, b in zip(g_f, g_n, strict=True):
        torch.testing.assert_close(a, b, atol=tol * b.abs().max().item() + 1e-7, rtol=tol)


def test_causal_future_tokens_do_not_change_past_logits():
    model = tiny()
    x = torch.randint(0, VOCAB, (1, 12))
    x2 = x.clone()
    x2[0, 8:] = (x2[0, 8:] + 1) % VOCAB
    a, b = model(x), model(x2)
    torch.testing.assert_close(a[:, :8], b[:, :8], atol=1e-6, rtol=0)
    assert (a[:, 8:] - b[:, 8:]).abs().max() > 1e-3


def test_sliding_window_limits_what_a_token_sees():
    window = 4
    model = tiny(sliding_window=window, n_layers=1)
    full = Transformer(model.cfg.model_copy(update={"sliding_window": None}))
    full.load_state_dict(model.state_dict())
    x = torch.randint(0, VOCAB, (1, 12))
    a, b = model(x), full.eval()(x)
    # Inside the window the two agree; beyond it they differ.
    torch.testing.assert_close(a[:, :window], b[:, :window], atol=1e-6, rtol=0)
    assert (a[:, window:] - b[:, window:]).abs().max() > 1e-3
    # With one layer, position 10 sees tokens 7..10 only: changing token 6 leaves it alone,
    # while changing token 7 moves it.
    x2, x3 = x.clone(), x.clone()
    x2[0, 6] = (x2[0, 6] + 1) % VOCAB
    x3[0, 7] = (x3[0, 7] + 1) % VOCAB
    torch.testing.assert_close(model(x2)[:, 10], a[:, 10], atol=1e-6, rtol=0)
    assert (model(x3)[:, 10] - a[:, 10]).abs().max() > 1e-4


@pytest.mark.parametrize("window", [None, 3])
def test_kv_cache_forward_equals_full_forward(window):
    model = tiny(sliding_window=window)
    x = torch.randint(0, VOCAB, (2, 14))
    with torch.no_grad():
        want = model(x)
        cache = model.new_kv_cache(2, 20)
        # A prefill, a chunk of several tokens, then single tokens.
        parts = [model(x[:, :5], kv_cache=cache, start_pos=0)]
        parts.append(model(x[:, 5:9], kv_cache=cache, start_pos=5))
        for t in range(9, 14):
            parts.append(model(x[:, t : t + 1], kv_cache=cache, start_pos=t))
    torch.testing.assert_close(torch.cat(parts, 1), want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError):
        model(x, kv_cache=cache, start_pos=10)


def test_bf16_autocast_runs_and_is_close():
    model = tiny()
    x = torch.randint(0, VOCAB, (2, 10))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss_bf16 = model(x, x)
        logits = model(x)
    assert logits.dtype == torch.float32
    assert abs(loss_bf16.item() - model(x, x).item()) < 0.05
