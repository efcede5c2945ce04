"""Encoder towers in Hugging Face names: our VisionEncoder as transformers' SigLIP vision model
and our AudioEncoder as its Whisper/Voxtral encoder (weights and config fields, both ways).

`hf_multimodal_io` builds LLaVA/Voxtral folders on these; `load_vision_tower` and
`load_audio_tower` start an encoder from a pretrained SigLIP or Whisper folder.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from forgeml.core.errors import ConfigError
from forgeml.models.audio import AudioConfig, AudioEncoder
from forgeml.models.hf_io import _read_safetensors
from forgeml.models.vision import EncoderConfig, VisionConfig, VisionEncoder

EncoderT = TypeVar("EncoderT", VisionEncoder, AudioEncoder)


@dataclass(frozen=True)
class TowerMaps:
    """An encoder's renaming: plain weights and q/k/v fused ones (None: a part HF lacks)."""

    weights: dict[str, str]
    fused: dict[str, tuple[str | None, ...]]
    extra: dict[str, str]  # HF-only tensors written as identity: name -> "ones" | "zeros"


def _weight_and_bias(ours: str, theirs: str) -> dict[str, str]:
    return {f"{ours}.weight": f"{theirs}.weight", f"{ours}.bias": f"{theirs}.bias"}


# Our VisionEncoder -> transformers' SiglipVisionModel (under `vision_tower.`).
SIGLIP_MAPS = TowerMaps(
    weights={
        **_weight_and_bias("patch_embedding", "embeddings.patch_embedding"),
        "position_embedding": "embeddings.position_embedding.weight",
        **_weight_and_bias("layers.{i}.attention_norm", "encoder.layers.{i}.layer_norm1"),
        **_weight_and_bias("layers.{i}.ffn_norm", "encoder.layers.{i}.layer_norm2"),
        **_weight_and_bias("layers.{i}.attention.wo", "encoder.layers.{i}.self_attn.out_proj"),
        **_weight_and_bias("layers.{i}.fc1", "encoder.layers.{i}.mlp.fc1"),
        **_weight_and_bias("layers.{i}.fc2", "encoder.layers.{i}.mlp.fc2"),
    },
    fused={
        f"layers.{{i}}.attention.wqkv.{kind}": tuple(
            f"encoder.layers.{{i}}.self_attn.{p}_proj.{kind}" for p in "qkv"
        )
        for kind in ("weight", "bias")
    },
    # LLaVA reads the last block's states before SigLIP's final norm: an identity there.
    extra={"post_layernorm.weight": "ones", "post_layernorm.bias": "zeros"},
)
# Our AudioEncoder -> transformers' Whisper-style VoxtralEncoder (under `audio_tower.`). Whisper
# has no key bias; ours has no effect on attention (see EncoderAttention), so it is dropped.
VOXTRAL_MAPS = TowerMaps(
    weights={
        **_weight_and_bias("conv1", "conv1"),
        **_weight_and_bias("conv2", "conv2"),
        "position_embedding": "embed_positions.weight",
        **_weight_and_bias("layers.{i}.attention_norm", "layers.{i}.self_attn_layer_norm"),
        **_weight_and_bias("layers.{i}.ffn_norm", "layers.{i}.final_layer_norm"),
        **_weight_and_bias("layers.{i}.attention.wo", "layers.{i}.self_attn.out_proj"),
        **_weight_and_bias("layers.{i}.fc1", "layers.{i}.fc1"),
        **_weight_and_bias("layers.{i}.fc2", "layers.{i}.fc2"),
        **_weight_and_bias("norm", "layer_norm"),
    },
    fused={
        "layers.{i}.attention.wqkv.weight": tuple(
            f"layers.{{i}}.self_attn.{p}_proj.weight" for p in "qkv"
        ),
        "layers.{i}.attention.wqkv.bias": (
            "layers.{i}.self_attn.q_proj.bias",
            None,
            "layers.{i}.self_attn.v_proj.bias",
        ),
    },
    extra={},
)


def _template(key: str) -> tuple[str, str | None]:
    match = re.match(r"^layers\.(\d+)\.", key)
    if match is None:
        return key, None
    return "layers.{i}." + key[match.end() :], match.group(1)


def tower_to_hf(module: nn.Module, maps: TowerMaps, prefix: str) -> dict[str, torch.Tensor]:
    """An encoder's state dict under HF names (each prefixed with `prefix`)."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in module.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        template, layer = _template(key)
        if template in maps.weights:
            out[prefix + maps.weights[template].format(i=layer)] = tensor
        elif template in maps.fused:
            for name, part in zip(maps.fused[template], tensor.chunk(3), strict=True):
                if name is not None:
                    out[prefix + name.format(i=layer)] = part.contiguous()
        else:
            raise KeyError(f"no HF name for encoder parameter {key}")
    dim = module.cfg.dim
    for name, fill in maps.extra.items():
        out[prefix + name] = torch.ones(dim) if fill == "ones" else torch.zeros(dim)
    return out


def tower_from_hf(
    hf: dict[str, torch.Tensor], maps: TowerMaps, prefix: str, n_layers: int
) -> dict[str, torch.Tensor]:
    """The encoder state dict (first `n_layers` blocks) from HF tensors named `prefix`...;
    a fused part HF lacks (Whisper's key bias) is zero."""

    def pick(name: str) -> torch.Tensor:
        if prefix + name not in hf:
            raise ConfigError(f"checkpoint has no tensor '{prefix + name}'")
        return hf[prefix + name]

    out: dict[str, torch.Tensor] = {}
    for layer in [None, *range(n_layers)]:
        for ours, theirs in maps.weights.items():
            if ("{i}" in ours) == (layer is not None):
                out[ours.format(i=layer)] = pick(theirs.format(i=layer))
        if layer is None:
            continue
        for ours, parts in maps.fused.items():
            tensors = [pick(p.format(i=layer)) if p else None for p in parts]
            like = next(t for t in tensors if t is not None)
            tensors = [torch.zeros_like(like) if t is None else t for t in tensors]
            out[ours.format(i=layer)] = torch.cat(tensors, dim=0)
    return out


def _transformer_fields(cfg: EncoderConfig) -> dict[str, Any]:
    """The HF config fields every encoder config shares."""
    return {
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.ffn_hidden,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
    }


def siglip_vision_config(v: VisionConfig) -> dict[str, Any]:
    """transformers' SiglipVisionConfig fields for our encoder (no attention-pooling head)."""
    return {
        "model_type": "siglip_vision_model",
        **_transformer_fields(v),
        "num_channels": v.channels,
        "image_size": v.image_size,
        "patch_size": v.patch_size,
        "hidden_act": {"gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu"}[v.act],
        "layer_norm_eps": v.norm_eps,
        "attention_dropout": 0.0,
        "vision_use_head": False,
    }


def voxtral_encoder_config(a: AudioConfig) -> dict[str, Any]:
    """transformers' VoxtralEncoderConfig fields for our encoder (ffn_hidden = stack * dim)."""
    return {
        "model_type": "voxtral_encoder",
        **_transformer_fields(a),
        "num_mel_bins": a.n_mels,
        "max_source_positions": a.positions,
        "scale_embedding": False,
        "activation_function": "gelu",
    }


def vision_config_from_hf(hf: dict[str, Any], preprocessor: dict[str, Any]) -> VisionConfig:
    """VisionConfig for a LLaVA config.json's SigLIP tower, up to the block LLaVA reads."""
    vc = hf.get("vision_config") or {}
    if vc.get("model_type") != "siglip_vision_model":
        raise ConfigError(
            f"LLaVA with a '{vc.get('model_type')}' vision tower is not supported",
            hint="forgeml imports SigLIP towers (CLIP adds a class token and a pre-norm)",
        )
    strategy = hf.get("vision_feature_select_strategy", "default")
    if strategy != "full":
        raise ConfigError(
            f"vision_feature_select_strategy '{strategy}' drops a patch of a SigLIP tower",
            hint="forgeml imports LLaVA checkpoints with vision_feature_select_strategy 'full'",
        )
    layer = hf.get("vision_feature_layer", -2)
    n_layers = vc.get("num_hidden_layers", 12)
    if not isinstance(layer, int):
        raise ConfigError("a list of vision_feature_layer is not supported")
    # hidden_states[0] is the patch embedding: layer k keeps blocks 1..k; the rest are unused.
    keep = layer if layer >= 0 else n_layers + 1 + layer
    if not 1 <= keep <= n_layers:
        raise ConfigError(f"vision_feature_layer {layer} selects no encoder block")
    acts = {"gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
    if vc.get("hidden_act", "gelu_pytorch_tanh") not in acts:
        raise ConfigError(f"unsupported vision hidden_act '{vc['hidden_act']}'")
    if hf.get("projector_hidden_act", "gelu") != "gelu":
        raise ConfigError(f"unsupported projector_hidden_act '{hf['projector_hidden_act']}'")
    size = vc.get("image_size", 224)
    return VisionConfig(
        image_size=size,
        patch_size=vc.get("patch_size", 16),
        channels=vc.get("num_channels", 3),
        dim=vc.get("hidden_size", 768),
        n_layers=keep,
        n_heads=vc.get("num_attention_heads", 12),
        ffn_hidden=vc.get("intermediate_size", 3072),
        norm_eps=vc.get("layer_norm_eps", 1e-6),
        act=acts[vc.get("hidden_act", "gelu_pytorch_tanh")],
        image_mean=tuple(preprocessor.get("image_mean", (0.5, 0.5, 0.5))),
        image_std=tuple(preprocessor.get("image_std", (0.5, 0.5, 0.5))),
    )


def audio_config_from_hf(hf: dict[str, Any], preprocessor: dict[str, Any]) -> AudioConfig:
    """AudioConfig for a Voxtral config.json's encoder (frames stacked to its MLP's width)."""
    ac = hf.get("audio_config") or {}
    dim, ffn = ac.get("hidden_size", 1280), ac.get("intermediate_size", 5120)
    if ac.get("scale_embedding") or ac.get("activation_function", "gelu") != "gelu":
        raise ConfigError(
            "Voxtral encoders with scale_embedding or a non-gelu MLP are not supported"
        )
    if ffn % dim:
        raise ConfigError(f"Voxtral intermediate_size ({ffn}) is not a multiple of hidden_size")
    return AudioConfig(
        sample_rate=preprocessor.get("sampling_rate", 16000),
        n_mels=ac.get("num_mel_bins", 128),
        n_fft=preprocessor.get("n_fft", 400),
        hop_length=preprocessor.get("hop_length", 160),
        window_frames=2 * ac.get("max_source_positions", 1500),
        dim=dim,
        n_layers=ac.get("num_hidden_layers", 32),
        n_heads=ac.get("num_attention_heads", 20),
        ffn_hidden=ffn,
        stack=ffn // dim,
    )


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file's object, or {} when the file does not exist."""
    return json.loads(path.read_text()) if path.is_file() else {}


def _tower_prefix(hf: dict[str, torch.Tensor], first: str, prefixes: tuple[str, ...]) -> str:
    for prefix in prefixes:
        if prefix + first in hf:
            return prefix
    raise ConfigError(f"checkpoint has no tensor '{first}' under any of {prefixes}")


def _tower(
    model_dir: Path, encoder: EncoderT, maps: TowerMaps, first: str, prefixes: tuple[str, ...]
) -> EncoderT:
    """`encoder` with the tower weights of the checkpoint in `model_dir` (found under the
    first of `prefixes` that holds `first`)."""
    hf = _read_safetensors(model_dir)
    prefix = _tower_prefix(hf, first, prefixes)
    encoder.load_state_dict(tower_from_hf(hf, maps, prefix, encoder.cfg.n_layers))
    return encoder


def load_vision_tower(model_dir: str | Path, **overrides: Any) -> VisionEncoder:
    """A pretrained SigLIP vision tower (a SiglipModel or SiglipVisionModel folder) as our
    VisionEncoder, to start a vision-LM from; `overrides` set VisionConfig fields (e.g.
    n_layers=N-1 to read the penultimate block, pixel_shuffle=2)."""
    model_dir = Path(model_dir)
    hf_cfg = json.loads((model_dir / "config.json").read_text())
    vc = hf_cfg.get("vision_config", hf_cfg) if hf_cfg.get("model_type") == "siglip" else hf_cfg
    preprocessor = read_json(model_dir / "preprocessor_config.json")
    llava_like = {
        "vision_config": vc,
        "vision_feature_select_strategy": "full",
        "vision_feature_layer": -1,
    }
    base = vision_config_from_hf(llava_like, preprocessor).model_dump()
    cfg = VisionConfig.model_validate({**base, **overrides})
    first = "embeddings.patch_embedding.weight"
    return _tower(model_dir, VisionEncoder(cfg), SIGLIP_MAPS, first, ("", "vision_model."))


def load_audio_tower(model_dir: str | Path, **overrides: Any) -> AudioEncoder:
    """A pretrained Whisper encoder (a Whisper model folder; the decoder is ignored) as our
    AudioEncoder; `overrides` set AudioConfig fields (`stack`: frames per LM token)."""
    model_dir = Path(model_dir)
    hf_cfg = json.loads((model_dir / "config.json").read_text())
    if hf_cfg.get("model_type") != "whisper":
        raise ConfigError(f"expected a Whisper checkpoint, got '{hf_cfg.get('model_type')}'")
    preprocessor = read_json(model_dir / "preprocessor_config.json")
    voxtral_like = {
        "audio_config": {
            "hidden_size": hf_cfg["d_model"],
            "intermediate_size": hf_cfg["encoder_ffn_dim"],
            "num_hidden_layers": hf_cfg["encoder_layers"],
            "num_attention_heads": hf_cfg["encoder_attention_heads"],
            "num_mel_bins": hf_cfg.get("num_mel_bins", 80),
            "max_source_positions": hf_cfg.get("max_source_positions", 1500),
            "scale_embedding": hf_cfg.get("scale_embedding", False),
            "activation_function": hf_cfg.get("activation_function", "gelu"),
        }
    }
    base = audio_config_from_hf(voxtral_like, preprocessor).model_dump()
    cfg = AudioConfig.model_validate({**base, **overrides})
    prefixes = ("model.encoder.", "encoder.")
    return _tower(model_dir, AudioEncoder(cfg), VOXTRAL_MAPS, "conv1.weight", prefixes)
