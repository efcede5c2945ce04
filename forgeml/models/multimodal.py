"""Vision- and audio-language models: encoders joined to the dense or MoE LM by MLP projectors.

Image and audio placeholder tokens in `idx` are replaced by the projected encoder features
(LLaVA, Liu et al. arXiv:2304.08485; Voxtral's frame stacking for audio); the rest is the LM.
`hf_multimodal_io` maps it to transformers' Llava and Voxtral.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from forgeml.core.config import ModelConfig
from forgeml.models.audio import AudioConfig, AudioEncoder, stack_frames
from forgeml.models.dense import KVCache
from forgeml.models.registry import build_model
from forgeml.models.vision import VisionConfig, VisionEncoder


class MultimodalConfig(BaseModel):
    """An LM with an image encoder, an audio encoder, or both, and their placeholder ids."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lm: ModelConfig
    vision: VisionConfig | None = None
    audio: AudioConfig | None = None
    image_token_id: int | None = Field(None, ge=0, description="the <|image|> placeholder id")
    audio_token_id: int | None = Field(None, ge=0, description="the <|audio|> placeholder id")
    vision_projector_bias: bool = True
    audio_projector_bias: bool = False

    @model_validator(mode="after")
    def _placeholders_set(self) -> MultimodalConfig:
        vocab = self.lm.vocab_size
        for name, encoder, token in (
            ("vision", self.vision, self.image_token_id),
            ("audio", self.audio, self.audio_token_id),
        ):
            placeholder = "image_token_id" if name == "vision" else "audio_token_id"
            if encoder is not None and token is None:
                raise ValueError(f"a model with a {name} encoder needs {placeholder}")
            if token is not None and vocab is not None and token >= vocab:
                raise ValueError(f"{placeholder} ({token}) is outside the vocabulary ({vocab})")
        if self.vision is None and self.audio is None:
            raise ValueError("a multimodal model needs a vision or an audio encoder")
        return self


class Projector(nn.Module):
    """LLaVA-1.5's two-layer MLP from encoder features to the LM's width: linear, GELU, linear."""

    def __init__(self, in_dim: int, out_dim: int, bias: bool) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, out_dim, bias=bias)
        self.linear_2 = nn.Linear(out_dim, out_dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.gelu(self.linear_1(x)))


class MultimodalLM(nn.Module):
    """`forward(idx, targets, pixel_values=..., audio_features=...)`: the LM's forward on token
    embeddings whose placeholder positions hold the projected image/audio features.

    Each image fills `vision.tokens_per_image` consecutive image placeholders, each audio
    window `audio.tokens_per_window` audio placeholders, in order of appearance.
    """

    def __init__(self, cfg: MultimodalConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.lm = build_model(cfg.lm)
        lm_dim = cfg.lm.dim
        if cfg.vision is not None:
            self.vision = VisionEncoder(cfg.vision)
            self.vision_projector = Projector(
                cfg.vision.feature_dim, lm_dim, cfg.vision_projector_bias
            )
        if cfg.audio is not None:
            self.audio = AudioEncoder(cfg.audio)
            self.audio_projector = Projector(
                cfg.audio.feature_dim, lm_dim, cfg.audio_projector_bias
            )
        self.init_projectors()

    @torch.no_grad()
    def init_projectors(self) -> None:
        """Normal(0, the LM's init_std) projector weights, zero biases."""
        for module in self.modules():
            if isinstance(module, Projector):
                for linear in (module.linear_1, module.linear_2):
                    nn.init.normal_(linear.weight, std=self.cfg.lm.init_std)
                    if linear.bias is not None:
                        nn.init.zeros_(linear.bias)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values [N, C, H, W] -> LM-width features [N, tokens_per_image, lm.dim]."""
        return self.vision_projector(self.vision(pixel_values))

    def audio_embeddings(self, audio_features: torch.Tensor) -> torch.Tensor:
        """log-mel windows [N, n_mels, frames] -> LM-width features [N, tokens_per_window, dim]."""
        frames = stack_frames(self.audio(audio_features), self.cfg.audio.stack)
        return self.audio_projector(frames)

    def embed(
        self,
        idx: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        audio_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token embeddings [B, T, D] with image/audio placeholders replaced by features."""
        h = self.lm.tok_embeddings(idx)
        if pixel_values is not None:
            h = _splice(h, idx, self.cfg.image_token_id, self.image_features(pixel_values), "image")
        if audio_features is not None:
            feats = self.audio_embeddings(audio_features)
            h = _splice(h, idx, self.cfg.audio_token_id, feats, "audio")
        return h

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        pixel_values: torch.Tensor | None = None,
        audio_features: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        start_pos: int = 0,
        doc_ids: torch.Tensor | None = None,
        logits_at: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """idx [B, T] -> logits [B, T, V] (fp32), or the mean loss given `targets` (the LM's
        forward; targets at placeholder positions should be -100)."""
        h = self.embed(idx, pixel_values, audio_features)
        return self.lm(
            idx,
            targets,
            kv_cache=kv_cache,
            start_pos=start_pos,
            doc_ids=doc_ids,
            logits_at=logits_at,
            inputs_embeds=h,
        )

    def new_kv_cache(self, *args, **kwargs) -> KVCache:
        """The LM's kv cache (prefill with the media, then decode text tokens)."""
        return self.lm.new_kv_cache(*args, **kwargs)

    def decode_rows(
        self, tokens: torch.Tensor, kv_cache: KVCache, positions: torch.Tensor
    ) -> torch.Tensor:
        """The LM's batched one-token decode step (decoded tokens are text)."""
        return self.lm.decode_rows(tokens, kv_cache, positions)


def _splice(
    h: torch.Tensor, idx: torch.Tensor, token_id: int, features: torch.Tensor, kind: str
) -> torch.Tensor:
    """h with the embeddings at `idx == token_id` replaced, in order, by features' rows."""
    mask = idx == token_id
    rows = features.reshape(-1, features.shape[-1])
    n_slots = int(mask.sum())
    if n_slots != rows.shape[0]:
        raise ValueError(
            f"{n_slots} {kind} placeholder tokens for {rows.shape[0]} {kind} features "
            f"({features.shape[0]} {kind}s of {features.shape[1]} tokens each): expand each "
            f"{kind} placeholder to that many tokens"
        )
    return h.masked_scatter(mask[..., None], rows.to(h.dtype))


def expand_placeholders(ids: list[int], token_id: int, counts: list[int]) -> list[int]:
    """Token ids with the i-th `token_id` repeated counts[i] times: a chat renders one
    placeholder per image or audio clip, the model takes one per feature row
    (`tokens_per_image`; `tokens_per_window` times the clip's windows)."""
    slots = [i for i, t in enumerate(ids) if t == token_id]
    if len(slots) != len(counts):
        raise ValueError(f"{len(slots)} placeholders of id {token_id} for {len(counts)} media")
    out: list[int] = []
    start = 0
    for slot, count in zip(slots, counts, strict=True):
        out += ids[start:slot] + [token_id] * count
        start = slot + 1
    return out + ids[start:]
