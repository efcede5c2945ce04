"""Multimodal models in Hugging Face format: LLaVA (SigLIP vision tower) and Voxtral (Whisper
audio tower) folders that `transformers` loads, with the processor files, and back.

A vision-LM saves as LlavaForConditionalGeneration, an audio-LM as
VoxtralForConditionalGeneration; a model transformers has no class for (pixel shuffle, both
towers) saves with a model_type transformers refuses. forgeml_multimodal.json carries our config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from forgeml.core.errors import ConfigError, NotFoundError
from forgeml.core.io import atomic_write_bytes, atomic_write_text
from forgeml.models.hf_io import (
    GENERATION_CONFIG,
    _read_safetensors,
    _special_token_ids,
    _write_weights,
    config_from_hf,
    from_hf_state_dict,
    generation_config,
    hf_config,
    to_hf_state_dict,
)
from forgeml.models.hf_towers import (
    SIGLIP_MAPS,
    VOXTRAL_MAPS,
    audio_config_from_hf,
    read_json,
    siglip_vision_config,
    tower_from_hf,
    tower_to_hf,
    vision_config_from_hf,
    voxtral_encoder_config,
)
from forgeml.models.multimodal import MultimodalConfig, MultimodalLM
from forgeml.tokenizer.train import TOKENIZER_FILES

MULTIMODAL_CONFIG = "forgeml_multimodal.json"

# Checkpoint name prefixes -> the ones transformers' save_pretrained writes for these models.
_PREFIXES = (
    ("model.language_model.", "language_model.model."),
    ("model.vision_tower.", "vision_tower."),
    ("vision_tower.vision_model.", "vision_tower."),
    ("model.audio_tower.", "audio_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("lm_head.", "language_model.lm_head."),
)


def hf_architecture(cfg: MultimodalConfig) -> str | None:
    """'llava' or 'voxtral' when transformers computes exactly this model, else None."""
    if cfg.vision is not None and cfg.audio is None:
        v = cfg.vision
        if v.pixel_shuffle == 1:
            return "llava"
    if cfg.audio is not None and cfg.vision is None:
        a = cfg.audio
        if a.ffn_hidden == a.stack * a.dim and a.norm_eps == 1e-5 and not cfg.audio_projector_bias:
            return "voxtral"
    return None


def to_hf_multimodal_state_dict(model: MultimodalLM) -> dict[str, torch.Tensor]:
    """Our state dict under the names transformers' Llava/Voxtral save_pretrained writes."""
    cfg = model.cfg
    out = {}
    for key, tensor in to_hf_state_dict(model.lm).items():
        out["language_model." + key] = tensor
    if cfg.lm.tie_embeddings and hf_architecture(cfg) == "voxtral":
        # Voxtral does not tie its head: write it out.
        out["language_model.lm_head.weight"] = out[
            "language_model.model.embed_tokens.weight"
        ].clone()
    if cfg.vision is not None:
        out.update(tower_to_hf(model.vision, SIGLIP_MAPS, "vision_tower."))
        out.update(_prefixed(model.vision_projector, "multi_modal_projector."))
    if cfg.audio is not None:
        out.update(tower_to_hf(model.audio, VOXTRAL_MAPS, "audio_tower."))
        out.update(_prefixed(model.audio_projector, _audio_projector_prefix(cfg)))
    return out


def _prefixed(module: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """A projector's tensors: LLaVA and Voxtral name them linear_1/linear_2 as we do."""
    return {prefix + k: v.detach().cpu() for k, v in module.state_dict().items()}


def _audio_projector_prefix(cfg: MultimodalConfig) -> str:
    # No transformers class holds both towers: then the audio projector has a name of our own.
    return "audio_projector." if cfg.vision is not None else "multi_modal_projector."


def hf_multimodal_config(
    cfg: MultimodalConfig, special_ids: dict[str, int | None] | None = None
) -> dict[str, Any]:
    """config.json: Llava or Voxtral, or a model_type transformers refuses (see module doc)."""
    text = hf_config(cfg.lm, special_ids or {})
    arch = hf_architecture(cfg)
    if arch == "llava":
        return {
            "architectures": ["LlavaForConditionalGeneration"],
            "model_type": "llava",
            "text_config": text,
            "vision_config": siglip_vision_config(cfg.vision),
            "image_token_index": cfg.image_token_id,
            "image_seq_length": cfg.vision.tokens_per_image,
            "projector_hidden_act": "gelu",
            "vision_feature_select_strategy": "full",
            "vision_feature_layer": -1,
            "multimodal_projector_bias": cfg.vision_projector_bias,
            "tie_word_embeddings": cfg.lm.tie_embeddings,
            "dtype": "float32",
        }
    if arch == "voxtral":
        return {
            "architectures": ["VoxtralForConditionalGeneration"],
            "model_type": "voxtral",
            "text_config": {**text, "tie_word_embeddings": False},
            "audio_config": voxtral_encoder_config(cfg.audio),
            "audio_token_id": cfg.audio_token_id,
            "projector_hidden_act": "gelu",
            "dtype": "float32",
        }
    return {
        "architectures": ["ForgemlMultimodalForCausalLM"],
        "model_type": "forgeml_multimodal",
        "note": "no transformers class computes this model; forgeml_multimodal.json has it",
        "text_config": text,
    }


def _placeholder_token(tokenizer_dir: Path, token_id: int) -> str:
    """The text of added token `token_id` in tokenizer.json: the placeholder processors expand."""
    tok = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    for added in tok.get("added_tokens", []):
        if added["id"] == token_id:
            return added["content"]
    # A BPE piece would merge with its neighbours: only an added token stays one token.
    raise ConfigError(
        f"the tokenizer in {tokenizer_dir} has no added token with id {token_id} (the placeholder)",
        hint="add the placeholder tokens to the tokenizer before training the model",
    )


def _processor_files(cfg: MultimodalConfig, tokenizer_dir: Path | None) -> dict[str, Any]:
    """preprocessor_config.json (and processor_config.json for LLaVA): what AutoProcessor /
    AutoImageProcessor / AutoFeatureExtractor read."""
    files: dict[str, Any] = {}
    arch = hf_architecture(cfg)
    if cfg.vision is not None:
        v = cfg.vision
        files["preprocessor_config.json"] = {
            "image_processor_type": "SiglipImageProcessor",
            "processor_class": "LlavaProcessor",
            "do_convert_rgb": True,
            "do_resize": True,
            "size": {"height": v.image_size, "width": v.image_size},
            "resample": 3,  # PIL bicubic, as image_to_pixels
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": list(v.image_mean),
            "image_std": list(v.image_std),
        }
        if arch == "llava" and tokenizer_dir is not None:
            files["processor_config.json"] = {
                "processor_class": "LlavaProcessor",
                "image_token": _placeholder_token(tokenizer_dir, cfg.image_token_id),
                "patch_size": v.patch_size,
                "vision_feature_select_strategy": "full",
                "num_additional_image_tokens": 0,
            }
    if cfg.audio is not None and cfg.vision is None:
        a = cfg.audio
        files["preprocessor_config.json"] = {
            "feature_extractor_type": "WhisperFeatureExtractor",
            "processor_class": "VoxtralProcessor",
            "feature_size": a.n_mels,
            "sampling_rate": a.sample_rate,
            "hop_length": a.hop_length,
            "n_fft": a.n_fft,
            "chunk_length": a.window_samples / a.sample_rate,
            "n_samples": a.window_samples,
            "nb_max_frames": a.window_frames,
            "padding_side": "right",
            "padding_value": 0.0,
            "return_attention_mask": False,
        }
    return files


# forgeml's chat template keeps only the text parts of a message's content; the processor's
# copy also renders media parts as their placeholder, which the processor then expands.
TEXT_PART = "{%- if part.type == 'text' -%}{{- part.text -}}{%- endif -%}"


def _media_chat_template(cfg: MultimodalConfig, tokenizer_dir: Path) -> str | None:
    """The tokenizer's chat template with image/audio content parts rendered as placeholders
    (OpenAI `image_url`/`input_audio` and HF `image`/`audio` parts); None without one."""
    jinja = tokenizer_dir / "chat_template.jinja"
    if jinja.is_file():
        template = jinja.read_text()
    else:
        config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
        template = config.get("chat_template")
    if not isinstance(template, str):
        return None
    media = ""
    for kinds, token_id in (
        ("('image', 'image_url')", cfg.image_token_id if cfg.vision is not None else None),
        ("('audio', 'input_audio')", cfg.audio_token_id if cfg.audio is not None else None),
    ):
        if token_id is not None:
            token = _placeholder_token(tokenizer_dir, token_id)
            media += f"{{%- elif part.type in {kinds} -%}}{{{{- {json.dumps(token)} -}}}}"
    return template.replace(TEXT_PART, TEXT_PART.replace("{%- endif", media + "{%- endif"))


def save_multimodal(
    model: MultimodalLM, out_dir: str | Path, tokenizer_dir: str | Path | None = None
) -> Path:
    """Write `model` as an HF folder (Llava or Voxtral where transformers has the class) with
    the tokenizer and processor files; return it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = model.cfg
    special_ids: dict[str, int | None] = {}
    if tokenizer_dir is not None:
        tokenizer_dir = Path(tokenizer_dir)
        if not (tokenizer_dir / "tokenizer.json").is_file():
            raise NotFoundError(f"no tokenizer.json in {tokenizer_dir}")
        special_ids = _special_token_ids(tokenizer_dir)
        for name in TOKENIZER_FILES:
            if (tokenizer_dir / name).is_file():
                atomic_write_bytes(out_dir / name, (tokenizer_dir / name).read_bytes())
    _write_weights(to_hf_multimodal_state_dict(model), out_dir, None)
    for name, content in _processor_files(cfg, tokenizer_dir).items():
        atomic_write_text(out_dir / name, json.dumps(content, indent=2))
    template = _media_chat_template(cfg, tokenizer_dir) if tokenizer_dir is not None else None
    if template is not None:
        atomic_write_text(out_dir / "chat_template.jinja", template)
    config = hf_multimodal_config(cfg, special_ids)
    atomic_write_text(out_dir / "config.json", json.dumps(config, indent=2))
    atomic_write_text(
        out_dir / GENERATION_CONFIG, json.dumps(generation_config(special_ids), indent=2)
    )
    atomic_write_text(out_dir / MULTIMODAL_CONFIG, cfg.model_dump_json(indent=2))
    return out_dir


def multimodal_config_from_hf(
    hf: dict[str, Any], preprocessor: dict[str, Any] | None = None
) -> MultimodalConfig:
    """MultimodalConfig for an HF Llava (SigLIP) or Voxtral config.json, refusing what we lack."""
    preprocessor = preprocessor or {}
    model_type = hf.get("model_type")
    text = config_from_hf(hf.get("text_config") or {})
    if model_type == "llava":
        return MultimodalConfig(
            lm=text,
            vision=vision_config_from_hf(hf, preprocessor),
            image_token_id=hf.get("image_token_index", hf.get("image_token_id", 32000)),
            vision_projector_bias=hf.get("multimodal_projector_bias", True),
        )
    if model_type == "voxtral":
        return MultimodalConfig(
            lm=text.model_copy(update={"tie_embeddings": False}),  # Voxtral never ties its head
            audio=audio_config_from_hf(hf, preprocessor),
            audio_token_id=hf["audio_token_id"],
        )
    raise ConfigError(
        f"unsupported multimodal model_type '{model_type}' in config.json",
        hint="forgeml imports llava (SigLIP tower) and voxtral checkpoints",
    )


def read_multimodal_config(model_dir: str | Path) -> MultimodalConfig:
    """forgeml_multimodal.json, else derived from config.json (+ preprocessor_config.json)."""
    model_dir = Path(model_dir)
    if (model_dir / MULTIMODAL_CONFIG).is_file():
        return MultimodalConfig.model_validate_json((model_dir / MULTIMODAL_CONFIG).read_text())
    if not (model_dir / "config.json").is_file():
        raise NotFoundError(f"no config.json in {model_dir}", hint="is this a model folder?")
    preprocessor = read_json(model_dir / "preprocessor_config.json")
    return multimodal_config_from_hf(
        json.loads((model_dir / "config.json").read_text()), preprocessor
    )


def _canonical_names(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, tensor in hf.items():
        for old, new in _PREFIXES:
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        out[key] = tensor
    return out


def from_hf_multimodal_state_dict(
    hf: dict[str, torch.Tensor], cfg: MultimodalConfig
) -> dict[str, torch.Tensor]:
    """HF Llava/Voxtral tensors (either naming) -> our MultimodalLM state dict."""
    hf = _canonical_names(hf)
    text = {
        key.removeprefix("language_model."): t
        for key, t in hf.items()
        if key.startswith("language_model.")
    }
    out = {f"lm.{k}": v for k, v in from_hf_state_dict(text, cfg.lm).items()}
    if cfg.vision is not None:
        tower = tower_from_hf(hf, SIGLIP_MAPS, "vision_tower.", cfg.vision.n_layers)
        out.update({f"vision.{k}": v for k, v in tower.items()})
        out.update(_unprefixed(hf, "multi_modal_projector.", "vision_projector."))
    if cfg.audio is not None:
        tower = tower_from_hf(hf, VOXTRAL_MAPS, "audio_tower.", cfg.audio.n_layers)
        out.update({f"audio.{k}": v for k, v in tower.items()})
        out.update(_unprefixed(hf, _audio_projector_prefix(cfg), "audio_projector."))
    return out


def _unprefixed(hf: dict[str, torch.Tensor], prefix: str, ours: str) -> dict[str, torch.Tensor]:
    return {ours + k.removeprefix(prefix): v for k, v in hf.items() if k.startswith(prefix)}


def load_multimodal(model_dir: str | Path, device: str | torch.device = "cpu") -> MultimodalLM:
    """Read a folder written by `save_multimodal`, or an HF Llava (SigLIP) / Voxtral one; fp32."""
    model_dir = Path(model_dir)
    cfg = read_multimodal_config(model_dir)
    state = from_hf_multimodal_state_dict(_read_safetensors(model_dir), cfg)
    with torch.device("meta"):
        model = MultimodalLM(cfg)
    model.to_empty(device=device)
    if cfg.lm.tie_embeddings:
        model.lm.output.weight = model.lm.tok_embeddings.weight
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model
