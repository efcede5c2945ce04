"""MoE model: sorted grouped dispatch vs a per-expert loop, routing losses vs naive formulas,
the loss contract (aux terms in training only), router statistics, kv-cache decoding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from forgeml.core.config import ModelConfig
from forgeml.core.errors import ConfigError
from forgeml.models.dense import Transformer
from forgeml.models.moe import (
    EXPERT_MLPS,
    MoETransformer,
    load_balancing_loss,
    router_metrics,
    router_z_loss,
    sigmoid_top_k,
    softmax_top_k,
)
from forgeml.models.registry import build_model, model_class

VOCAB = 97


def tiny_cfg(**overrides) -> ModelConfig:
    fields = dict(
        arch="moe",
        dim=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        ffn_hidden=160,
        moe_ffn_hidden=48,
        n_experts=4,
        top_k=2,
        vocab_size=VOCAB,
        max_seq_len=64,
    )
    fields.update(overrides)
    return ModelConfig(**fields)


def loop_expert_mlp(x, experts, weights, w13, w2):
    """The naive reference: every (token, expert) pair through its expert, one at a time."""
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for slot in range(experts.shape[1]):
            e = experts[t, slot]
            gate, up = (w13[e] @ x[t]).chunk(2)
            out[t] = out[t] + weights[t, slot] * (w2[e] @ (F.silu(gate) * up))
    return out


@pytest.mark.parametrize("kernel", sorted(EXPERT_MLPS))
@pytest.mark.parametrize("skewed", [False, True])
def test_grouped_dispatch_matches_per_expert_loop_with_gradients(kernel, skewed):
    torch.manual_seed(0)
    n, dim, hidden, n_experts, k = 24, 16, 12, 5, 2
    x = torch.randn(n, dim)
    if skewed:  # expert 0 takes every token, expert 4 none: capacity = N, padding heavy
        experts = torch.stack([torch.zeros(n, dtype=torch.long), torch.randint(1, 4, (n,))], 1)
    else:
        experts = torch.randn(n, n_experts).topk(k, dim=-1).indices
    weights = torch.rand(n, k)
    w13 = torch.randn(n_experts, 2 * hidden, dim)
    w2 = torch.randn(n_experts, dim, hidden)
    counts = torch.bincount(experts.reshape(-1), minlength=n_experts)
    leaves = [t.requires_grad_() for t in (x, weights, w13, w2)]
    ours = EXPERT_MLPS[kernel](x, experts, weights, counts, w13, w2)
    ref = loop_expert_mlp(x, experts, weights, w13, w2)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)
    cot = torch.randn_like(ref)
    g_ours = torch.autograd.grad(ours, leaves, cot)
    g_ref = torch.autograd.grad(ref, leaves, cot)
    for a, b in zip(g_ours, g_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    if skewed:
        assert g_ours[2][4].abs().sum() == 0  # the idle expert gets no gradient


def test_gatings_pick_top_k_and_normalise():
    torch.manual_seed(0)
    logits = torch.randn(50, 6)
    for route in (softmax_top_k, sigmoid_top_k):
        weights, experts, probs = route(logits, 2)
        torch.testing.assert_close(weights.sum(-1), torch.ones(50))
        torch.testing.assert_close(probs.sum(-1), torch.ones(50))
        assert torch.equal(experts, logits.topk(2, dim=-1).indices)
    weights, _, _ = softmax_top_k(logits, 2)
    top = logits.softmax(-1).topk(2, dim=-1).values
    torch.testing.assert_close(weights, top / top.sum(-1, keepdim=True))
    weights, _, _ = sigmoid_top_k(logits, 2)
    top = logits.sigmoid().topk(2, dim=-1).values
    torch.testing.assert_close(weights, top / top.sum(-1, keepdim=True))


def test_load_balancing_loss_against_naive_formula_and_bounds():
    torch.manual_seed(0)
    n, n_experts, k = 40, 4, 2
    logits = torch.randn(n, n_experts)
    _, experts, probs = softmax_top_k(logits, k)
    counts = torch.bincount(experts.reshape(-1), minlength=n_experts)
    naive = 0.0
    for e in range(n_experts):
        share = (experts == e).sum().item() / (n * k)
        naive += share * probs[:, e].mean().item()
    assert load_balancing_loss(probs, counts).item() == pytest.approx(n_experts * naive, rel=1e-6)
    uniform = torch.full((n, n_experts), 1 / n_experts)
    balanced = torch.full((n_experts,), n * k // n_experts)
    assert load_balancing_loss(uniform, balanced).item() == pytest.approx(1.0)
    collapsed = torch.zeros(n, n_experts)
    collapsed[:, 0] = 1.0
    one_hot = torch.tensor([n * k, 0, 0, 0])
    assert load_balancing_loss(collapsed, one_hot).item() == pytest.approx(n_experts)


def test_router_z_loss_against_naive_formula():
    logits = torch.tensor([[0.0, 1.0, 2.0], [3.0, -1.0, 0.5]])
    naive = sum(torch.log(torch.exp(row).sum()).item() ** 2 for row in logits) / 2
    assert router_z_loss(logits).item() == pytest.approx(naive, rel=1e-6)


def test_loss_adds_aux_terms_in_training_only():
    torch.manual_seed(0)
    model = MoETransformer(tiny_cfg(aux_loss_coef=0.5, z_loss_coef=0.25))
    x = torch.randint(0, VOCAB, (2, 16))
    y = torch.randint(0, VOCAB, (2, 16))
    model.eval()
    with torch.no_grad():
        ce = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        assert model(x, y).item() == pytest.approx(ce.item(), rel=1e-5)
    model.train()
    loss = model(x, y)
    stats = model.last_router_stats
    expected = ce + 0.5 * stats["aux_loss"] + 0.25 * stats["z_loss"]
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert stats["aux_loss"].item() >= 1.0 - 1e-6  # 1 is the perfectly balanced minimum
    loss.backward()
    router = model.layers[0].feed_forward.router.weight
    assert router.grad is not None and router.grad.abs().sum() > 0


def test_router_stats_and_metrics():
    torch.manual_seed(0)
    model = MoETransformer(tiny_cfg())
    assert router_metrics(model) == {}
    model(torch.randint(0, VOCAB, (2, 8)))
    load = model.last_router_stats["load"]
    assert load.shape == (2, 4)
    torch.testing.assert_close(load.sum(dim=1), torch.ones(2))
    metrics = router_metrics(model)
    assert metrics["moe_dropped_tokens"] == 0
    assert metrics["moe_max_load"] >= 1.0 >= metrics["moe_min_load"]
    assert sum(metrics[f"moe_load_e{j}"] for j in range(4)) == pytest.approx(1.0)
    assert router_metrics(Transformer(ModelConfig(dim=32, n_heads=4, vocab_size=50))) == {}


@pytest.mark.parametrize("overrides", [{}, {"gating": "sigmoid", "shared_expert": True}])
def test_kv_cache_decoding_matches_full_forward(overrides):
    torch.manual_seed(0)
    model = MoETransformer(tiny_cfg(**overrides)).eval()
    x = torch.randint(0, VOCAB, (1, 12))
    with torch.no_grad():
        full = model(x)
        cache = model.new_kv_cache(1, 16)
        prefix = model(x[:, :8], kv_cache=cache)
        steps = [model(x[:, t : t + 1], kv_cache=cache, start_pos=t) for t in range(8, 12)]
    torch.testing.assert_close(prefix, full[:, :8], atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.cat(steps, 1), full[:, 8:], atol=1e-5, rtol=0)


def test_sigmoid_shared_expert_model_learns():
    torch.manual_seed(0)
    model = MoETransformer(tiny_cfg(gating="sigmoid", shared_expert=True)).train()
    assert model.layers[0].feed_forward.shared is not None
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x = torch.randint(0, VOCAB, (4, 16))
    losses = []
    for _ in range(15):
        loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.0


def test_parameter_counts():
    model = MoETransformer(tiny_cfg())
    cfg = model.cfg
    per_expert = 3 * cfg.moe_ffn_hidden * cfg.dim
    assert model.num_params() - model.active_params() == 2 * per_expert * cfg.n_layers
    assert model.layers[0].feed_forward.w13.shape == (4, 2 * 48, 64)


def test_build_model_picks_the_architecture():
    assert type(build_model(tiny_cfg(arch="dense"))) is Transformer
    assert type(build_model(tiny_cfg())) is MoETransformer
    with pytest.raises(ConfigError, match="unknown model.arch"):
        model_class("rwkv")
    with pytest.raises(ConfigError, match="top_k"):
        MoETransformer(tiny_cfg(top_k=5))


def test_dense_recipes_are_unchanged_by_moe_fields():
    cfg = ModelConfig()
    assert cfg.arch == "dense"
    torch.manual_seed(0)
    a = build_model(tiny_cfg(arch="dense"))
    torch.manual_seed(0)
    b = Transformer(tiny_cfg(arch="dense", n_experts=2, top_k=1, shared_expert=True))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
