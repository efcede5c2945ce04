"""Mixture-of-experts decoder of the Mixtral family, in plain single-device PyTorch.

The dense model's attention and norms with the MLP replaced by top-k routed SwiGLU experts
(plus an optional shared expert). Capacity-free: every token reaches its k experts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from forgeml.core.config import ModelConfig
from forgeml.core.errors import ConfigError
from forgeml.models.dense import (
    Attention,
    FeedForward,
    KVCache,
    RMSNorm,
    Transformer,
    init_decoder_weights,
    init_feed_forward,
    logits_or_loss,
    matmul_dtype,
    per_row_rope_and_mask,
    require_vocab_size,
    sequence_rope_and_mask,
)


def softmax_top_k(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mixtral routing (Jiang et al., arXiv:2401.04088): softmax over experts, keep the top k,
    renormalise their weights to sum to 1. Returns (weights [N, k], experts [N, k], probs [N, E])
    where probs is the distribution the load-balancing loss reads."""
    probs = logits.float().softmax(dim=-1)
    weights, experts = probs.topk(k, dim=-1)
    return weights / weights.sum(dim=-1, keepdim=True), experts, probs


def sigmoid_top_k(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DeepSeek-V3 routing (arXiv:2412.19437): independent sigmoid affinities, top k kept and
    normalised; the load-balancing loss reads the affinities normalised over all experts."""
    scores = logits.float().sigmoid()
    weights, experts = scores.topk(k, dim=-1)
    probs = scores / scores.sum(dim=-1, keepdim=True)
    return weights / weights.sum(dim=-1, keepdim=True), experts, probs


GATINGS: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {
    "softmax": softmax_top_k,
    "sigmoid": sigmoid_top_k,
}


def load_balancing_loss(probs: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Switch Transformer auxiliary loss (Fedus et al., arXiv:2101.03961, eqs. 4-6), top-k form.

    loss = E * sum_e f_e * P_e, with f_e the share of the N*k routing slots sent to expert e
    (`counts` / sum) and P_e the mean router probability of e over the N tokens. It is 1 at
    perfect balance and E when one expert takes everything; only P carries gradient.
    (transformers' Mixtral computes k times this value.)
    """
    n_experts = probs.shape[-1]
    share = counts.float() / counts.sum()
    return n_experts * (share * probs.float().mean(dim=0)).sum()


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE router z-loss (Zoph et al., arXiv:2202.08906, eq. 5): mean over tokens of
    logsumexp(router logits)^2, which keeps router logits small and routing numerically stable."""
    return torch.logsumexp(logits.float(), dim=-1).square().mean()


class DispatchRows(torch.autograd.Function):
    """Token rows -> expert slots: out[s] = x[token_of_slot[s]]. Backward gathers each
    token's k slot gradients (slot_of_pair) and sums them, instead of the scatter-add that
    autograd would run for `index_select` (much slower than a gather on CPU)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, token_of_slot: torch.Tensor, slot_of_pair: torch.Tensor):
        ctx.save_for_backward(slot_of_pair)
        ctx.n_tokens = x.shape[0]
        return x.index_select(0, token_of_slot)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (slot_of_pair,) = ctx.saved_tensors
        pairs = grad.index_select(0, slot_of_pair).view(ctx.n_tokens, -1, grad.shape[1])
        return pairs.sum(dim=1), None, None


class CombineRows(torch.autograd.Function):
    """Expert slots -> (token, expert) pairs: out[p] = y[slot_of_pair[p]]. Each slot is read
    at most once, so backward is a plain (non-accumulating) copy; padding slots get zero."""

    @staticmethod
    def forward(ctx, y: torch.Tensor, slot_of_pair: torch.Tensor):
        ctx.save_for_backward(slot_of_pair)
        ctx.n_slots = y.shape[0]
        return y.index_select(0, slot_of_pair)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (slot_of_pair,) = ctx.saved_tensors
        out = grad.new_zeros(ctx.n_slots, grad.shape[1])
        return out.index_copy_(0, slot_of_pair, grad), None


# Under torch.compile the expert MLP runs eagerly (a graph break on each side): inductor's
# fake-tensor rule for `_grouped_mm` accepts only bf16 (torch 2.13), while the CPU kernel runs
# fp32 too, and the sort/segment sizes are data-dependent anyway. The GEMMs are the same.
@torch.compiler.disable
def grouped_expert_mlp(
    x: torch.Tensor,
    experts: torch.Tensor,
    weights: torch.Tensor,
    counts: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
) -> torch.Tensor:
    """Sorted dispatch with one grouped GEMM per projection: sum_k weights * SwiGLU_e(x).

    x [N, D]; experts, weights [N, k]; counts [E]; w13 [E, 2H, D] (gate then up); w2 [E, D, H].
    The N*k (token, expert) pairs are sorted by expert, so each expert's rows are one
    contiguous segment, and `F.grouped_mm` multiplies every segment by its expert's matrix in
    one call: no padding, no token dropped (capacity-free, as MegaBlocks, arXiv:2211.15841).
    """
    n_tokens, dim = x.shape
    k = experts.shape[1]
    flat = experts.reshape(-1)
    order = flat.argsort(stable=True)  # sorted row -> pair
    position = torch.empty_like(order)  # pair -> sorted row
    position[order] = torch.arange(flat.numel(), device=x.device)
    dtype = matmul_dtype(x)
    rows = DispatchRows.apply(x.to(dtype), order // k, position)
    offsets = counts.cumsum(0).to(torch.int32)
    gate, up = F.grouped_mm(rows, w13.to(dtype).transpose(1, 2), offs=offsets).chunk(2, dim=-1)
    out = F.grouped_mm(F.silu(gate) * up, w2.to(dtype).transpose(1, 2), offs=offsets)
    pairs = CombineRows.apply(out, position)
    return (pairs.view(n_tokens, k, dim) * weights.to(pairs.dtype)[..., None]).sum(dim=1)


def padded_expert_mlp(
    x: torch.Tensor,
    experts: torch.Tensor,
    weights: torch.Tensor,
    counts: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
) -> torch.Tensor:
    """`grouped_expert_mlp` for torch without `F.grouped_mm`: one padded `bmm` per projection.

    The sorted pairs are laid out in an [E, C, D] block with C = the largest expert load, the
    other experts' rows padded, so compute grows with the imbalance (C * E / (N * k)): with the
    uneven loads of a freshly initialised router it is markedly slower than `F.grouped_mm`.
    """
    n_tokens, dim = x.shape
    n_experts, k = w13.shape[0], experts.shape[1]
    n_pairs = experts.numel()
    flat = experts.reshape(-1)
    order = flat.argsort(stable=True)
    sorted_experts = flat[order]
    capacity = int(counts.max())
    starts = counts.cumsum(0) - counts
    rank = torch.arange(n_pairs, device=x.device) - starts[sorted_experts]
    # slot_of_pair[p]: where pair p (token p // k with its (p % k)-th expert) sits in the block.
    slot_of_pair = torch.empty_like(flat)
    slot_of_pair[order] = sorted_experts * capacity + rank
    # Padding slots copy token 0: their outputs are never read and get zero gradient, so
    # they need no zero row (which would cost a copy of x).
    token_of_slot = flat.new_zeros(n_experts * capacity)
    token_of_slot[slot_of_pair] = torch.arange(n_pairs, device=x.device) // k
    dtype = matmul_dtype(x)
    block = DispatchRows.apply(x.to(dtype), token_of_slot, slot_of_pair)
    block = block.view(n_experts, capacity, dim)
    gate, up = torch.bmm(block, w13.to(dtype).transpose(1, 2)).chunk(2, dim=-1)
    out = torch.bmm(F.silu(gate) * up, w2.to(dtype).transpose(1, 2))
    pairs = CombineRows.apply(out.view(-1, dim), slot_of_pair)
    return (pairs.view(n_tokens, k, dim) * weights.to(pairs.dtype)[..., None]).sum(dim=1)


# Both compute the same function; the grouped GEMM wherever torch has it (2.10+).
EXPERT_MLPS = {"grouped_mm": grouped_expert_mlp, "padded_bmm": padded_expert_mlp}
DEFAULT_EXPERT_MLP = "grouped_mm" if hasattr(F, "grouped_mm") else "padded_bmm"


@dataclass
class RouterOutput:
    """One MoE layer's routing: the loss terms (with gradient) and the expert loads."""

    aux_loss: torch.Tensor
    z_loss: torch.Tensor
    counts: torch.Tensor


class MoEFeedForward(nn.Module):
    """Top-k routed SwiGLU experts (Shazeer et al., arXiv:1701.06538; Mixtral), optionally plus
    an always-on shared expert (DeepSeekMoE, arXiv:2401.06066). Expert weights are stacked
    [E, out, in] like transformers' MixtralExperts, so the grouped GEMMs need no copies."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_experts, self.top_k = cfg.n_experts, cfg.top_k
        self.hidden = cfg.moe_ffn_hidden or cfg.ffn_hidden
        self.route = GATINGS[cfg.gating]
        self.expert_mlp = EXPERT_MLPS[DEFAULT_EXPERT_MLP]
        self.router = nn.Linear(cfg.dim, cfg.n_experts, bias=False)
        self.w13 = nn.Parameter(torch.empty(cfg.n_experts, 2 * self.hidden, cfg.dim))
        self.w2 = nn.Parameter(torch.empty(cfg.n_experts, cfg.dim, self.hidden))
        self.shared = (
            FeedForward(cfg.model_copy(update={"ffn_hidden": self.hidden}))
            if cfg.shared_expert
            else None
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, RouterOutput]:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        logits = self.router(flat)
        weights, experts, probs = self.route(logits, self.top_k)
        counts = torch.bincount(experts.reshape(-1), minlength=self.n_experts)
        out = self.expert_mlp(flat, experts, weights, counts, self.w13, self.w2)
        if self.shared is not None:
            out = out + self.shared(flat)
        routing = RouterOutput(load_balancing_loss(probs, counts), router_z_loss(logits), counts)
        return out.view(shape), routing


@torch.no_grad()
def init_moe_feed_forward(ffn: MoEFeedForward, std: float, out_std: float) -> None:
    nn.init.normal_(ffn.router.weight, std=std)
    nn.init.normal_(ffn.w13, std=std)
    nn.init.normal_(ffn.w2, std=out_std)
    if ffn.shared is not None:
        init_feed_forward(ffn.shared, std, out_std)


class MoEBlock(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attention = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.feed_forward = MoEFeedForward(cfg)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        cache: tuple[torch.Tensor, torch.Tensor] | None,
        start_pos: int | torch.Tensor,
    ) -> tuple[torch.Tensor, RouterOutput]:
        x = x + self.attention(self.attention_norm(x), cos, sin, mask, cache, start_pos)
        ffn, routing = self.feed_forward(self.ffn_norm(x))
        return x + ffn, routing


class MoETransformer(nn.Module):
    """Mixtral-style decoder with the dense model's interface (forward, kv cache, num_params).

    `forward(idx, targets)` returns the mean cross-entropy; in training mode it adds
    aux_loss_coef * load-balancing loss + z_loss_coef * router z-loss (means over layers),
    so the training loop needs no MoE-specific code. Each forward leaves detached routing
    statistics in `last_router_stats` (see `router_metrics`).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        vocab_size = require_vocab_size(cfg)
        if cfg.top_k > cfg.n_experts:
            raise ConfigError(
                f"model.top_k ({cfg.top_k}) > model.n_experts ({cfg.n_experts})",
                hint="route each token to at most n_experts experts",
            )
        self.cfg = cfg
        self.head_dim = cfg.dim // cfg.n_heads
        self.tok_embeddings = nn.Embedding(vocab_size, cfg.dim)
        self.layers = nn.ModuleList(MoEBlock(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        self.last_router_stats: dict[str, torch.Tensor] = {}
        self.init_weights()

    def init_weights(self) -> None:
        """As the dense model; experts like its MLP, the router like its input projections."""
        init_decoder_weights(self, init_moe_feed_forward)

    # The cache and the parameter count only read cfg, head_dim and the embedding.
    new_kv_cache = Transformer.new_kv_cache
    num_params = Transformer.num_params

    def active_params(self) -> int:
        """Parameters one token uses: all but the (n_experts - top_k) experts it skips."""
        cfg, hidden = self.cfg, self.cfg.moe_ffn_hidden or self.cfg.ffn_hidden
        skipped = (cfg.n_experts - cfg.top_k) * 3 * hidden * cfg.dim * cfg.n_layers
        return self.num_params() - skipped

    @torch.inference_mode()
    def decode_rows(
        self, tokens: torch.Tensor, kv_cache: KVCache, positions: torch.Tensor
    ) -> torch.Tensor:
        """Logits [B, V] of one token per cache row at its own position (see the dense model)."""
        cos, sin, mask = per_row_rope_and_mask(self.cfg, positions, kv_cache)
        h = self.tok_embeddings(tokens[:, None])
        for i, layer in enumerate(self.layers):
            h, _ = layer(h, cos, sin, mask, (kv_cache.k[i], kv_cache.v[i]), positions)
        return self.output(self.norm(h)).float()[:, 0]

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        kv_cache: KVCache | None = None,
        start_pos: int = 0,
        doc_ids: torch.Tensor | None = None,
        logits_at: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """idx [B, T] -> logits [B, T, V] (fp32), or the mean loss if `targets` given;
        `doc_ids` [B, T] marks packed documents and `logits_at` [B] picks one position per row
        (logits [B, V]), and `inputs_embeds` replaces the token embeddings, as in the dense
        model."""
        cos, sin, mask = sequence_rope_and_mask(self.cfg, idx, start_pos, kv_cache, doc_ids)
        h = self.tok_embeddings(idx) if inputs_embeds is None else inputs_embeds
        routings = []
        for i, layer in enumerate(self.layers):
            cache = (kv_cache.k[i], kv_cache.v[i]) if kv_cache is not None else None
            h, routing = layer(h, cos, sin, mask, cache, start_pos)
            routings.append(routing)
        aux = torch.stack([r.aux_loss for r in routings]).mean()
        z = torch.stack([r.z_loss for r in routings]).mean()
        counts = torch.stack([r.counts for r in routings])
        self.last_router_stats = {
            "aux_loss": aux.detach(),
            "z_loss": z.detach(),
            "load": (counts.float() / counts.sum(dim=1, keepdim=True)).detach(),
        }
        out = logits_or_loss(self, h, targets, logits_at)
        if targets is None or not self.training:
            return out
        return out + self.cfg.aux_loss_coef * aux + self.cfg.z_loss_coef * z


def router_metrics(model: nn.Module) -> dict[str, float]:
    """Routing statistics of the model's last forward, for the metrics log ({} for dense).

    moe_load_e{j}: share of routing slots expert j received (mean over layers; 1/E is
    balanced); moe_max_load / moe_min_load: the largest / smallest per-layer share times E
    (1.0 is perfect balance); moe_dropped_tokens: always 0, dispatch is capacity-free.
    """
    stats = getattr(model, "last_router_stats", None)
    if not stats:
        return {}
    load = stats["load"].float().cpu()
    n_experts = load.shape[1]
    out = {
        "moe_aux_loss": stats["aux_loss"].item(),
        "moe_z_loss": stats["z_loss"].item(),
        "moe_max_load": load.max().item() * n_experts,
        "moe_min_load": load.min().item() * n_experts,
        "moe_dropped_tokens": 0,
    }
    out.update({f"moe_load_e{j}": share for j, share in enumerate(load.mean(dim=0).tolist())})
    return out
