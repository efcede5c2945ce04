"""ViT image encoder (Dosovitskiy et al., arXiv:2010.11929) in the SigLIP layout, plain PyTorch.

Patch embedding, a learned position per cell of the 2D patch grid, pre-norm LayerNorm blocks;
optional pixel shuffle to cut image tokens. `multimodal` joins it to the LM through a
projector; `hf_multimodal_io` maps it to transformers' SiglipVisionModel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

if TYPE_CHECKING:
    from PIL import Image


class EncoderConfig(BaseModel):
    """The transformer of an image or audio encoder: width, depth, heads, MLP, norm."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dim: int = Field(256, gt=0)
    n_layers: int = Field(4, gt=0)
    n_heads: int = Field(4, gt=0)
    ffn_hidden: int = Field(1024, gt=0)
    norm_eps: float = 1e-6
    init_std: float = 0.02

    @model_validator(mode="after")
    def _heads_fit(self) -> EncoderConfig:
        if self.dim % self.n_heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by n_heads ({self.n_heads})")
        return self


class VisionConfig(EncoderConfig):
    """Image encoder: a ViT over `image_size`-pixel squares cut into `patch_size` patches."""

    image_size: int = Field(224, gt=0)
    patch_size: int = Field(16, gt=0)
    channels: int = Field(3, gt=0)
    act: Literal["gelu_tanh", "gelu"] = Field("gelu_tanh", description="MLP activation")
    pixel_shuffle: int = Field(
        1, gt=0, description="merge s x s neighbouring patches into one token (1: off)"
    )
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    @model_validator(mode="after")
    def _shapes_fit(self) -> VisionConfig:
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size ({self.image_size}) must be a multiple of patch_size "
                f"({self.patch_size})"
            )
        if self.grid % self.pixel_shuffle:
            raise ValueError(
                f"the patch grid ({self.grid}) must be a multiple of pixel_shuffle "
                f"({self.pixel_shuffle})"
            )
        return self

    @property
    def grid(self) -> int:
        """Patches along each side of the image."""
        return self.image_size // self.patch_size

    @property
    def tokens_per_image(self) -> int:
        """Placeholder tokens one image takes in the LM's sequence."""
        return (self.grid // self.pixel_shuffle) ** 2

    @property
    def feature_dim(self) -> int:
        """Width of each image token before the projector (pixel shuffle widens it)."""
        return self.dim * self.pixel_shuffle**2


ACTIVATIONS = {
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
}


class EncoderAttention(nn.Module):
    """Bidirectional multi-head attention with biased projections (q/k/v fused).


    A key bias adds q.b to every score of a query, which softmax ignores: the key slice of
    the bias changes nothing, so Whisper's bias-free key projection maps onto this one.
    """

    def __init__(self, dim: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.wqkv = nn.Linear(dim, 3 * dim)
        self.wo = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bsz, seq, dim = x.shape
        qkv = self.wqkv(x).view(bsz, seq, 3, self.n_heads, dim // self.n_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.wo(out.transpose(1, 2).reshape(bsz, seq, dim))


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, n_heads: int, ffn_hidden: int, eps: float, act: str) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(dim, eps=eps)
        self.attention = EncoderAttention(dim, n_heads)
        self.ffn_norm = nn.LayerNorm(dim, eps=eps)
        self.fc1 = nn.Linear(dim, ffn_hidden)
        self.fc2 = nn.Linear(ffn_hidden, dim)
        self.act = ACTIVATIONS[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x))
        return x + self.fc2(self.act(self.fc1(self.ffn_norm(x))))


def check_input(x: torch.Tensor, trailing: tuple[int, int], what: str, hint: str) -> None:
    """Raise a ValueError naming both shapes unless `x` ends in `trailing`."""
    if tuple(x.shape[-2:]) != trailing:
        raise ValueError(f"{what} are {tuple(x.shape[-2:])}, the encoder takes {trailing} ({hint})")


def pixel_shuffle(x: torch.Tensor, grid: int, factor: int) -> torch.Tensor:
    """[B, grid*grid, D] -> [B, (grid/s)^2, D*s^2]: each s x s square of patches becomes one
    token (the space-to-depth connector of Idefics3 and SmolVLM, arXiv:2504.05299)."""
    if factor == 1:
        return x
    bsz, _, dim = x.shape
    side = grid // factor
    x = x.view(bsz, side, factor, side, factor, dim).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(bsz, side * side, factor * factor * dim)


class VisionEncoder(nn.Module):
    """pixels [B, C, H, W] -> patch features [B, tokens_per_image, feature_dim].

    The features are the last block's output without a final norm (the projector follows),
    as LLaVA reads its tower's hidden states.
    """

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embedding = nn.Conv2d(
            cfg.channels, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size
        )
        self.position_embedding = nn.Parameter(torch.zeros(cfg.grid * cfg.grid, cfg.dim))
        self.layers = nn.ModuleList(
            EncoderBlock(cfg.dim, cfg.n_heads, cfg.ffn_hidden, cfg.norm_eps, cfg.act)
            for _ in range(cfg.n_layers)
        )
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Normal(0, init_std) weights, zero biases, unit norms."""
        init_encoder_weights(self, self.cfg.init_std)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        size = (cfg.image_size, cfg.image_size)
        check_input(pixel_values, size, "pixel_values", "resize with image_to_pixels")
        x = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))
        x = x.flatten(2).transpose(1, 2) + self.position_embedding
        for layer in self.layers:
            x = layer(x)
        return pixel_shuffle(x, cfg.grid, cfg.pixel_shuffle)


@torch.no_grad()
def init_encoder_weights(module: nn.Module, std: float) -> None:
    """Normal(0, std) for every weight matrix and embedding, zero biases, unit LayerNorms."""
    for sub in module.modules():
        if isinstance(sub, nn.LayerNorm):
            nn.init.ones_(sub.weight)
            nn.init.zeros_(sub.bias)
        elif isinstance(sub, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            nn.init.normal_(sub.weight, std=std)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
    for name, param in module.named_parameters(recurse=False):
        if name == "position_embedding":
            nn.init.normal_(param, std=std)


def image_to_pixels(image: Image.Image, cfg: VisionConfig) -> torch.Tensor:
    """A PIL image -> pixel_values [C, H, W] (fp32): RGB, bicubic resize to the encoder's
    square, scaled to [0, 1] and normalised by the config's mean/std (SigLIP's processor)."""
    from PIL import Image  # noqa: F811 (imported here: Pillow is only needed for images)

    if image.mode != "RGB":
        image = image.convert("RGB")
    image = image.resize((cfg.image_size, cfg.image_size), resample=Image.Resampling.BICUBIC)
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    mean = np.asarray(cfg.image_mean, dtype=np.float32)
    std = np.asarray(cfg.image_std, dtype=np.float32)
    return torch.from_numpy(((pixels - mean) / std).transpose(2, 0, 1).copy())
