"""Model assets in Hugging Face format: `save_model` / `load_model` for the dense Transformer.

A saved folder holds `config.json` (MistralForCausalLM), `model.safetensors` with HF parameter
names, `forgeml_model.json` (our ModelConfig) and the tokenizer files, so `transformers` loads
it directly; `load_model` also imports plain HF Mistral/Llama checkpoints.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from forgeml.core.config import ModelConfig
from forgeml.core.errors import ConfigError, NotFoundError
from forgeml.core.io import atomic_write_bytes, atomic_write_text
from forgeml.models.dense import Transformer

FORGEML_CONFIG = "forgeml_model.json"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)

# Our parameter name -> HF name, with {i} the layer index. Fused weights are split below.
WEIGHT_MAP = {
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "layers.{i}.attention_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "layers.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "layers.{i}.attention.wo.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "layers.{i}.feed_forward.w2.weight": "model.layers.{i}.mlp.down_proj.weight",
}
# Our fused weight -> the HF weights concatenated along dim 0, in order.
FUSED_MAP = {
    "layers.{i}.attention.wqkv.weight": (
        "model.layers.{i}.self_attn.q_proj.weight",
        "model.layers.{i}.self_attn.k_proj.weight",
        "model.layers.{i}.self_attn.v_proj.weight",
    ),
    "layers.{i}.feed_forward.w13.weight": (
        "model.layers.{i}.mlp.gate_proj.weight",
        "model.layers.{i}.mlp.up_proj.weight",
    ),
}


def _split_sizes(cfg: ModelConfig, key: str) -> list[int]:
    head_dim = cfg.dim // cfg.n_heads
    if key.endswith("wqkv.weight"):
        return [cfg.n_heads * head_dim, cfg.n_kv_heads * head_dim, cfg.n_kv_heads * head_dim]
    return [cfg.ffn_hidden, cfg.ffn_hidden]


def _template(key: str) -> tuple[str, str | None]:
    """'layers.3.attention.wo.weight' -> ('layers.{i}.attention.wo.weight', '3')."""
    match = re.match(r"^layers\.(\d+)\.", key)
    if match is None:
        return key, None
    return "layers.{i}." + key[match.end() :], match.group(1)


def to_hf_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """Our state dict renamed (and fused weights split) to HF Mistral names."""
    cfg = model.cfg
    out: dict[str, torch.Tensor] = {}
    for key, tensor in model.state_dict().items():
        if key == "output.weight" and cfg.tie_embeddings:
            continue
        tensor = tensor.detach().cpu().contiguous()
        template, layer = _template(key)
        if template in WEIGHT_MAP:
            out[WEIGHT_MAP[template].format(i=layer)] = tensor
        elif template in FUSED_MAP:
            parts = tensor.split(_split_sizes(cfg, key), dim=0)
            for hf_name, part in zip(FUSED_MAP[template], parts, strict=True):
                out[hf_name.format(i=layer)] = part.contiguous()
        else:
            raise KeyError(f"no HF name for parameter {key}")
    return out


def from_hf_state_dict(hf: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """HF Mistral/Llama tensors -> our state dict (fusing q/k/v and gate/up)."""
    out: dict[str, torch.Tensor] = {}
    for layer in [None, *range(cfg.n_layers)]:
        for ours, theirs in WEIGHT_MAP.items():
            if ("{i}" in ours) == (layer is None):
                continue
            if ours == "output.weight" and cfg.tie_embeddings:
                continue
            name = theirs.format(i=layer)
            if name not in hf:
                raise ConfigError(f"checkpoint has no tensor '{name}'", hint="is it Mistral/Llama?")
            out[ours.format(i=layer)] = hf[name]
        if layer is None:
            continue
        for ours, parts in FUSED_MAP.items():
            names = [p.format(i=layer) for p in parts]
            missing = [n for n in names if n not in hf]
            if missing:
                raise ConfigError(f"checkpoint has no tensor '{missing[0]}'")
            out[ours.format(i=layer)] = torch.cat([hf[n] for n in names], dim=0)
    if cfg.tie_embeddings:
        out["output.weight"] = out["tok_embeddings.weight"]
    return out


def hf_config(cfg: ModelConfig, special_ids: dict[str, int | None] | None = None) -> dict[str, Any]:
    """config.json for `transformers.MistralForCausalLM` with the same architecture."""
    special_ids = special_ids or {}
    return {
        "architectures": ["MistralForCausalLM"],
        "model_type": "mistral",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.ffn_hidden,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.dim // cfg.n_heads,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "initializer_range": cfg.init_std,
        "rms_norm_eps": cfg.norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "sliding_window": cfg.sliding_window,
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_dropout": 0.0,
        "use_cache": True,
        "dtype": "float32",
        "bos_token_id": special_ids.get("bos"),
        "eos_token_id": special_ids.get("eos"),
        "pad_token_id": special_ids.get("pad"),
    }


def _special_token_ids(tokenizer_dir: Path) -> dict[str, int | None]:
    """bos/eos/pad ids named in tokenizer_config.json, looked up in tokenizer.json."""
    config_path = tokenizer_dir / "tokenizer_config.json"
    vocab_path = tokenizer_dir / "tokenizer.json"
    if not (config_path.is_file() and vocab_path.is_file()):
        return {}
    config = json.loads(config_path.read_text())
    tok = json.loads(vocab_path.read_text())
    ids = {t["content"]: t["id"] for t in tok.get("added_tokens", [])}
    vocab = (tok.get("model") or {}).get("vocab") or {}
    out: dict[str, int | None] = {}
    for role in ("bos", "eos", "pad"):
        token = config.get(f"{role}_token")
        if isinstance(token, dict):
            token = token.get("content")
        if isinstance(token, str):
            out[role] = ids.get(token, vocab.get(token) if isinstance(vocab, dict) else None)
    return out


def save_model(
    model: Transformer, out_dir: str | Path, tokenizer_dir: str | Path | None = None
) -> Path:
    """Write `model` as an HF-loadable folder (every file written atomically); return it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = model.cfg
    special_ids: dict[str, int | None] = {}
    if tokenizer_dir is not None:
        tokenizer_dir = Path(tokenizer_dir)
        if not tokenizer_dir.is_dir():
            raise NotFoundError(f"tokenizer folder not found: {tokenizer_dir}")
        special_ids = _special_token_ids(tokenizer_dir)
        for name in TOKENIZER_FILES:
            src = tokenizer_dir / name
            if src.is_file():
                atomic_write_bytes(out_dir / name, src.read_bytes())
    atomic_write_bytes(
        out_dir / "model.safetensors", save(to_hf_state_dict(model), {"format": "pt"})
    )
    atomic_write_text(out_dir / "config.json", json.dumps(hf_config(cfg, special_ids), indent=2))
    atomic_write_text(out_dir / FORGEML_CONFIG, cfg.model_dump_json(indent=2))
    return out_dir


def export_hf(
    model: Transformer, out_dir: str | Path, tokenizer_dir: str | Path | None = None
) -> Path:
    """Export for `transformers`: our saved format already is an HF checkpoint."""
    return save_model(model, out_dir, tokenizer_dir)


def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    """ModelConfig for an HF Mistral/Llama config.json, refusing features we do not implement."""
    model_type = hf.get("model_type")
    if model_type not in ("mistral", "llama"):
        raise ConfigError(
            f"unsupported model_type '{model_type}' in config.json",
            hint="forgeml imports Mistral and Llama checkpoints",
        )
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise ConfigError(f"unsupported RoPE type '{rope_type}' in config.json")
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        raise ConfigError("checkpoints with attention or MLP biases are not supported")
    if hf.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"unsupported hidden_act '{hf['hidden_act']}' (expected silu)")
    dim, n_heads = hf["hidden_size"], hf["num_attention_heads"]
    if hf.get("head_dim") not in (None, dim // n_heads):
        raise ConfigError("head_dim != hidden_size / num_attention_heads is not supported")
    window = hf.get("sliding_window") if model_type == "mistral" else None
    if model_type == "mistral" and hf.get("use_sliding_window") is False:
        window = None
    return ModelConfig(
        dim=dim,
        n_layers=hf["num_hidden_layers"],
        n_heads=n_heads,
        n_kv_heads=hf.get("num_key_value_heads") or n_heads,
        ffn_hidden=hf["intermediate_size"],
        vocab_size=hf["vocab_size"],
        max_seq_len=hf.get("max_position_embeddings", 2048),
        rope_theta=rope.get("rope_theta", hf.get("rope_theta", 10000.0)),
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        tie_embeddings=hf.get("tie_word_embeddings", False),
        sliding_window=window,
        init_std=hf.get("initializer_range", 0.02),
    )


def _read_safetensors(model_dir: Path) -> dict[str, torch.Tensor]:
    single = model_dir / "model.safetensors"
    if single.is_file():
        return load_file(single)
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        tensors: dict[str, torch.Tensor] = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            tensors.update(load_file(model_dir / shard))
        return tensors
    raise NotFoundError(
        f"no model.safetensors in {model_dir}",
        hint="save the checkpoint with safetensors (save_pretrained does by default)",
    )


def load_model(model_dir: str | Path, device: str | torch.device = "cpu") -> Transformer:
    """Read a folder written by `save_model` (or a plain HF Mistral/Llama one); fp32 weights."""
    model_dir = Path(model_dir)
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise NotFoundError(f"no config.json in {model_dir}", hint="is this a model folder?")
    ours = model_dir / FORGEML_CONFIG
    if ours.is_file():
        cfg = ModelConfig.model_validate_json(ours.read_text())
    else:
        cfg = config_from_hf(json.loads(config_path.read_text()))
    hf_tensors = _read_safetensors(model_dir)
    state = from_hf_state_dict(hf_tensors, cfg)
    with torch.device("meta"):
        model = Transformer(cfg)
    model.to_empty(device=device)
    if cfg.tie_embeddings:
        model.output.weight = model.tok_embeddings.weight
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model
