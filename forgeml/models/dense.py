"""Dense decoder-only transformer of the Mistral/Llama family, in plain single-device PyTorch.

RMSNorm, rotary embeddings, grouped-query attention (optionally sliding-window), SwiGLU MLP.
Used by pre-training, fine-tuning, eval and generation; `hf_io` maps it to and from HF files.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from forgeml.core.config import ModelConfig
from forgeml.core.errors import ConfigError

IGNORE_INDEX = -100


class RMSNorm(nn.Module):
    """Root-mean-square layer norm (Zhang & Sennrich, arXiv:1910.07467)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The fused kernel normalises in fp32 and matches HF's RMSNorm bit for bit on fp32
        # inputs (the residual stream stays fp32 under autocast).
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


def rope_cos_sin(
    positions: torch.Tensor, head_dim: int, theta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and signed sin tables [T, head_dim] for RoFormer rotary embeddings (arXiv:2104.09864).

    Rotate-half layout (the HF Llama/Mistral convention), so HF weights need no permutation.
    The sin table carries the minus sign of rotate_half in its first half, which saves a
    negation per call. Computed per call in fp32 so a bf16 model keeps exact frequencies.
    """
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device)
    inv_freq = 1.0 / (theta ** (exponents.float() / head_dim))
    freqs = positions.float()[:, None] * inv_freq[None, :]
    sin = freqs.sin()
    return torch.cat((freqs, freqs), dim=-1).cos(), torch.cat((-sin, sin), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """x: [..., T, H, D]; cos/signed_sin: [T, 1, D]. Equals HF's x*cos + rotate_half(x)*sin."""
    half = x.shape[-1] // 2
    swapped = torch.cat((x[..., half:], x[..., :half]), dim=-1)
    return (x * cos + swapped * signed_sin).to(x.dtype)


@dataclass
class KVCache:
    """Preallocated keys/values for incremental decoding: [n_layers, B, n_kv_heads, max_len, D]."""

    k: torch.Tensor
    v: torch.Tensor

    @property
    def max_len(self) -> int:
        return self.k.shape[3]


def per_row_rope_and_mask(
    cfg: ModelConfig, positions: torch.Tensor, kv_cache: KVCache
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RoPE tables [B, 1, 1, D] and mask [B, 1, 1, K] for one token per row at `positions` [B].

    The mask covers the first K = max(positions) + 1 cache keys: causal per row, and within
    the sliding window if the model has one. It is additive (0 or -inf, in the cache's dtype):
    SDPA turns a boolean mask into exactly that on every call, here it is built once per step.
    """
    kv_len = int(positions.max()) + 1
    if kv_len > kv_cache.max_len:
        raise ValueError(f"position {kv_len - 1} does not fit a kv cache of {kv_cache.max_len}")
    cos, sin = rope_cos_sin(positions, cfg.dim // cfg.n_heads, cfg.rope_theta)
    keys = torch.arange(kv_len, device=positions.device)[None, :]
    mask = keys <= positions[:, None]
    if cfg.sliding_window is not None:
        mask = mask & (keys > positions[:, None] - cfg.sliding_window)
    dtype = kv_cache.k.dtype if kv_cache.k.is_floating_point() else torch.float32
    additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(
        ~mask, float("-inf")
    )
    return cos[:, None, None, :], sin[:, None, None, :], additive[:, None, None, :]


def attention_mask(
    q_start: int, q_len: int, kv_len: int, window: int | None, device: torch.device
) -> torch.Tensor:
    """Boolean [q_len, kv_len] mask, True = attend: causal, and within `window` keys if set.

    Query i sits at absolute position q_start + i; keys sit at positions 0..kv_len-1. A window
    of W lets a query see itself and the W-1 keys before it (the HF Mistral convention).
    """
    q = torch.arange(q_start, q_start + q_len, device=device)[:, None]
    k = torch.arange(kv_len, device=device)[None, :]
    mask = k <= q
    if window is not None:
        mask = mask & (k > q - window)
    return mask


def packed_rope_and_mask(
    doc_ids: torch.Tensor, head_dim: int, theta: float, window: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RoPE tables and attention mask for rows packing several documents (SFT packing).

    doc_ids [B, T]: the document of each token, each document one contiguous run. Positions
    restart at 0 at every document start and the mask is block-diagonal causal (a token sees
    only earlier tokens of its own document), so a packed example computes exactly what it
    computes alone. Returns cos/sin [B, T, 1, D] and a boolean mask [B, 1, T, T].
    """
    bsz, seq = doc_ids.shape
    idx = torch.arange(seq, device=doc_ids.device).expand(bsz, seq)
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    positions = idx - torch.where(starts, idx, 0).cummax(dim=1).values
    cos, sin = rope_cos_sin(positions.reshape(-1), head_dim, theta)
    mask = (doc_ids[:, :, None] == doc_ids[:, None, :]) & attention_mask(
        0, seq, seq, window, doc_ids.device
    )
    return cos.view(bsz, seq, 1, -1), sin.view(bsz, seq, 1, -1), mask[:, None]


class Attention(nn.Module):
    """Grouped-query attention (Ainslie et al., arXiv:2305.13245) with fused q/k/v projection."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.n_kv_heads = cfg.n_kv_heads
        self.head_dim = cfg.dim // cfg.n_heads
        self.window = cfg.sliding_window
        self.wqkv = nn.Linear(
            cfg.dim, (cfg.n_heads + 2 * cfg.n_kv_heads) * self.head_dim, bias=cfg.qkv_bias
        )
        self.wo = nn.Linear(cfg.n_heads * self.head_dim, cfg.dim, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        cache: tuple[torch.Tensor, torch.Tensor] | None,
        start_pos: int | torch.Tensor,
    ) -> torch.Tensor:
        bsz, seq, _ = x.shape
        hd = self.head_dim
        heads = self.n_heads + self.n_kv_heads
        qkv = self.wqkv(x).view(bsz, seq, heads + self.n_kv_heads, hd)
        # Rotate queries and keys in one call, then move heads before time for SDPA.
        qk = apply_rope(qkv[:, :, :heads], cos, sin).transpose(1, 2)
        q, k = qk.split([self.n_heads, self.n_kv_heads], dim=1)
        v = qkv[:, :, heads:].transpose(1, 2)
        # Unmasked multi-token calls start at position 0 (training, prefill): there SDPA's
        # causal flag is exact and cheaper than a mask tensor.
        is_causal = mask is None and seq > 1
        if cache is not None and isinstance(start_pos, torch.Tensor):
            # One token per row, each at its own position (`decode_rows`): the mask hides each
            # row's keys beyond its position.
            cache_k, cache_v = cache
            rows = torch.arange(bsz, device=x.device)
            cache_k[rows, :, start_pos] = k[:, :, 0].to(cache_k.dtype)
            cache_v[rows, :, start_pos] = v[:, :, 0].to(cache_v.dtype)
            first, end = 0, mask.shape[-1]
            if mask.is_floating_point() and mask.dtype != q.dtype:  # autocast: q in another dtype
                mask = mask.to(q.dtype)
        elif cache is not None:
            cache_k, cache_v = cache
            end = start_pos + seq
            cache_k[:, :, start_pos:end] = k
            cache_v[:, :, start_pos:end] = v
            # One new token with no window needs no mask: it sees every cached key. With a
            # window, slicing the cache to the window does the masking for free.
            first = 0
            if seq == 1 and self.window is not None:
                first = max(0, end - self.window)
        if cache is not None:
            k = cache_k[:, :, first:end].to(q.dtype)
            v = cache_v[:, :, first:end].to(q.dtype)
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=is_causal,
            enable_gqa=self.n_kv_heads != self.n_heads,
        )
        return self.wo(out.transpose(1, 2).reshape(bsz, seq, self.n_heads * hd))


class FeedForward(nn.Module):
    """SwiGLU MLP (Shazeer, arXiv:2002.05202) with the gate and up projections fused."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.hidden = cfg.ffn_hidden
        self.w13 = nn.Linear(cfg.dim, 2 * cfg.ffn_hidden, bias=False)
        self.w2 = nn.Linear(cfg.ffn_hidden, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w13(x).split(self.hidden, dim=-1)
        return self.w2(F.silu(gate) * up)


class TransformerBlock(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attention = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.feed_forward = FeedForward(cfg)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        cache: tuple[torch.Tensor, torch.Tensor] | None,
        start_pos: int | torch.Tensor,
    ) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), cos, sin, mask, cache, start_pos)
        return x + self.feed_forward(self.ffn_norm(x))


class Transformer(nn.Module):
    """Mistral/Llama-style decoder. `forward` returns logits, or the mean loss given targets."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.head_dim = cfg.dim // cfg.n_heads
        self.tok_embeddings = nn.Embedding(require_vocab_size(cfg), cfg.dim)
        self.layers = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        self.init_weights()

    def init_weights(self) -> None:
        """Normal(0, init_std); residual out-projections scaled by 1/sqrt(2 * n_layers) (GPT-2)."""
        init_decoder_weights(self, init_feed_forward)

    def num_params(self) -> int:
        """Number of distinct parameters (a tied embedding counts once)."""
        return sum(p.numel() for p in self.parameters())

    def new_kv_cache(
        self,
        batch_size: int,
        max_len: int,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
    ) -> KVCache:
        """Zeroed cache for positions 0..max_len-1; dtype defaults to the parameters' dtype."""
        dtype = dtype or self.tok_embeddings.weight.dtype
        shape = (self.cfg.n_layers, batch_size, self.cfg.n_kv_heads, max_len, self.head_dim)
        return KVCache(
            torch.zeros(shape, device=device, dtype=dtype),
            torch.zeros(shape, device=device, dtype=dtype),
        )

    @torch.inference_mode()
    def decode_rows(
        self, tokens: torch.Tensor, kv_cache: KVCache, positions: torch.Tensor
    ) -> torch.Tensor:
        """Logits [B, V] of one token per cache row, row b at its own position `positions[b]`.

        The batched decode step of continuous-batching serving: rows hold requests of
        different lengths. `forward` with `start_pos=positions[b]` on row b alone is the same.
        """
        cos, sin, mask = per_row_rope_and_mask(self.cfg, positions, kv_cache)
        h = self.tok_embeddings(tokens[:, None])
        for i, layer in enumerate(self.layers):
            h = layer(h, cos, sin, mask, (kv_cache.k[i], kv_cache.v[i]), positions)
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
        """idx [B, T] -> logits [B, T, V] (fp32), or the mean cross-entropy if `targets` given.

        With `kv_cache`, idx holds positions start_pos..start_pos+T-1 and their keys/values
        are written into the cache; earlier positions are read from it. `doc_ids` [B, T]
        marks packed documents: each attends only within itself, from position 0
        (`packed_rope_and_mask`). `logits_at` [B] picks one position per row: the logits are
        then [B, V], of that position only (a batched prefill needs each prompt's last).
        `inputs_embeds` [B, T, D] replaces the token embeddings of idx (a multimodal model
        splices image/audio features in; idx still gives the shape).
        """
        cos, sin, mask = sequence_rope_and_mask(self.cfg, idx, start_pos, kv_cache, doc_ids)
        h = self.tok_embeddings(idx) if inputs_embeds is None else inputs_embeds
        for i, layer in enumerate(self.layers):
            cache = (kv_cache.k[i], kv_cache.v[i]) if kv_cache is not None else None
            h = layer(h, cos, sin, mask, cache, start_pos)
        return logits_or_loss(self, h, targets, logits_at)


def require_vocab_size(cfg: ModelConfig) -> int:
    """The model's vocabulary size, which the tokenizer fills in before a model is built."""
    if cfg.vocab_size is None:
        raise ConfigError(
            "model.vocab_size is not set",
            hint="fill it from the tokenizer: cfg.model_copy(update={'vocab_size': n})",
        )
    return cfg.vocab_size


def init_feed_forward(ffn: FeedForward, std: float, out_std: float) -> None:
    nn.init.normal_(ffn.w13.weight, std=std)
    nn.init.normal_(ffn.w2.weight, std=out_std)


@torch.no_grad()
def init_decoder_weights(
    model: nn.Module, init_mlp: Callable[[nn.Module, float, float], None]
) -> None:
    """Normal(0, init_std) for embeddings and input projections, std / sqrt(2 * n_layers) for
    the residual out-projections (GPT-2), unit norms; `init_mlp(feed_forward, std, out_std)`
    initialises each layer's MLP (dense or experts). Layers are drawn in order, attention
    before MLP, so a seed gives the same weights whatever MLP the layers hold."""
    cfg = model.cfg
    std = cfg.init_std
    out_std = std / math.sqrt(2 * cfg.n_layers)
    nn.init.normal_(model.tok_embeddings.weight, std=std)
    if not cfg.tie_embeddings:
        nn.init.normal_(model.output.weight, std=std)
    for layer in model.layers:
        nn.init.normal_(layer.attention.wqkv.weight, std=std)
        if layer.attention.wqkv.bias is not None:
            layer.attention.wqkv.bias.zero_()
        nn.init.normal_(layer.attention.wo.weight, std=out_std)
        init_mlp(layer.feed_forward, std, out_std)
        layer.attention_norm.weight.fill_(1.0)
        layer.ffn_norm.weight.fill_(1.0)
    model.norm.weight.fill_(1.0)


def sequence_rope_and_mask(
    cfg: ModelConfig,
    idx: torch.Tensor,
    start_pos: int,
    kv_cache: KVCache | None,
    doc_ids: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """RoPE tables [T, 1, D] and attention mask for `forward` over idx [B, T] at positions
    start_pos.. (None where SDPA's causal flag, or slicing the cache, does the masking);
    with `doc_ids`, the packed documents' tables and block-diagonal mask."""
    head_dim = cfg.dim // cfg.n_heads
    seq = idx.shape[1]
    end = start_pos + seq
    if kv_cache is not None and end > kv_cache.max_len:
        raise ValueError(f"positions up to {end} do not fit a kv cache of {kv_cache.max_len}")
    positions = torch.arange(start_pos, end, device=idx.device)
    cos, sin = rope_cos_sin(positions, head_dim, cfg.rope_theta)
    cos, sin = cos[:, None, :], sin[:, None, :]
    mask = None
    window = cfg.sliding_window
    needs_mask = kv_cache is not None and seq > 1 and (start_pos > 0 or window is not None)
    if needs_mask or (kv_cache is None and window is not None and seq > window):
        mask = attention_mask(start_pos, seq, end, window, idx.device)
    if doc_ids is not None:
        if kv_cache is not None:
            raise ValueError("doc_ids (packed documents) cannot be used with a kv cache")
        cos, sin, mask = packed_rope_and_mask(doc_ids, head_dim, cfg.rope_theta, window)
    return cos, sin, mask


def logits_or_loss(
    model: nn.Module,
    h: torch.Tensor,
    targets: torch.Tensor | None,
    logits_at: torch.Tensor | None,
) -> torch.Tensor:
    """The head on the last layer's states h [B, T, D]: fp32 logits (of one position per row
    with `logits_at`), or the mean cross-entropy against `targets`."""
    if logits_at is not None:
        h = h[torch.arange(h.shape[0], device=h.device), logits_at]
    h = model.norm(h)
    if targets is None:
        return model.output(h).float()
    return cross_entropy_loss(h, model.output.weight, targets)


def cross_entropy_loss(
    h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Mean cross-entropy of logits h @ weight.T over targets != -100, with an fp32 softmax.

    When gradients are needed, `LinearCrossEntropy` computes them chunk by chunk during the
    forward pass, so the tokens x vocab logits never exist at once and are not kept for
    backward (the fused linear + cross-entropy of Liger Kernel, arXiv:2410.10989).
    """
    h = h.reshape(-1, h.shape[-1])
    targets = targets.reshape(-1)
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        return LinearCrossEntropy.apply(h, weight, targets)
    dtype = matmul_dtype(h)
    logits = (h.to(dtype) @ weight.to(dtype).t()).float()
    return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX)


# Rows per chunk of the fused loss: 1024 x vocab fp32 logits at a time.
CE_CHUNK = 1024


def matmul_dtype(h: torch.Tensor) -> torch.dtype:
    """The matmul dtype autocast would pick: our autograd Functions and `F.grouped_mm` run
    outside its dispatch, so they cast by hand."""
    device = h.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else h.dtype


class LinearCrossEntropy(torch.autograd.Function):
    """loss = mean CE(h @ W.T, y); the gradients are computed in forward, backward scales them."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor):
        dtype = matmul_dtype(h)
        w = weight.to(dtype)
        valid = targets != IGNORE_INDEX
        n_valid = valid.sum()
        grad_h = torch.empty_like(h)
        grad_w = torch.zeros_like(weight, dtype=torch.float32)
        total = h.new_zeros((), dtype=torch.float32)
        for start in range(0, h.shape[0], CE_CHUNK):
            h_c = h[start : start + CE_CHUNK].to(dtype)
            y_c = targets[start : start + CE_CHUNK].clamp(min=0)[:, None]
            # 1/n_valid on valid rows, 0 on ignored ones: the weight of each row in the mean.
            row_w = valid[start : start + CE_CHUNK].float() / n_valid
            logits = (h_c @ w.t()).float()
            lse = torch.logsumexp(logits, dim=-1)
            total += ((lse - logits.gather(1, y_c)[:, 0]) * row_w).sum()
            # d loss / d logits = (softmax - onehot) * row weight, built in place.
            grad = logits.sub_(lse[:, None]).exp_()
            grad.scatter_add_(1, y_c, torch.full_like(lse, -1.0)[:, None])
            grad = grad.mul_(row_w[:, None]).to(dtype)
            grad_h[start : start + CE_CHUNK] = grad @ w
            grad_w += (grad.t() @ h_c).float()
        ctx.save_for_backward(grad_h, grad_w.to(weight.dtype))
        return total

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_out, grad_w * grad_out, None
