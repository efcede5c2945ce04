"""Model assets in Hugging Face format: `save_model` / `load_model` for every architecture.

A saved folder holds `config.json` (MistralForCausalLM for dense, MixtralForCausalLM for MoE),
`generation_config.json` (chat turns stop at `<|end|>`), `model.safetensors` with HF parameter
names, `forgeml_model.json` (our ModelConfig) and the tokenizer files, so `transformers` loads
and generates with it directly; `load_model` also imports plain HF
Mistral/Llama/Qwen2/Mixtral checkpoints. Name maps are plain dicts, one set per `cfg.arch`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save
from torch import nn

from forgeml.core.config import GenerateConfig, ModelConfig
from forgeml.core.errors import ConfigError, NotFoundError
from forgeml.core.io import atomic_write_bytes, atomic_write_text
from forgeml.models.registry import model_class
from forgeml.tokenizer.chat import END
from forgeml.tokenizer.train import TOKENIZER_FILES

FORGEML_CONFIG = "forgeml_model.json"
GENERATION_CONFIG = "generation_config.json"
SAFETENSORS_INDEX = "model.safetensors.index.json"

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
# Our fused weight -> the HF weights concatenated along dim 0, in order. The q/k/v biases
# exist only with `qkv_bias` (Qwen2).
FUSED_MAP = {
    "layers.{i}.attention.wqkv.weight": (
        "model.layers.{i}.self_attn.q_proj.weight",
        "model.layers.{i}.self_attn.k_proj.weight",
        "model.layers.{i}.self_attn.v_proj.weight",
    ),
    "layers.{i}.attention.wqkv.bias": (
        "model.layers.{i}.self_attn.q_proj.bias",
        "model.layers.{i}.self_attn.k_proj.bias",
        "model.layers.{i}.self_attn.v_proj.bias",
    ),
    "layers.{i}.feed_forward.w13.weight": (
        "model.layers.{i}.mlp.gate_proj.weight",
        "model.layers.{i}.mlp.up_proj.weight",
    ),
}


# Mixtral: the MLP becomes a router and stacked experts (transformers still writes Mixtral
# checkpoints with one w1/w2/w3 per expert, the layout every other tool reads).
MOE_WEIGHT_MAP = {
    **{k: v for k, v in WEIGHT_MAP.items() if ".feed_forward." not in k},
    "layers.{i}.feed_forward.router.weight": "model.layers.{i}.block_sparse_moe.gate.weight",
    # The optional shared expert has no Mixtral equivalent: Qwen2-MoE-like names, and a
    # config.json that transformers refuses rather than silently dropping it.
    "layers.{i}.feed_forward.shared.w2.weight": (
        "model.layers.{i}.block_sparse_moe.shared_expert.down_proj.weight"
    ),
}
MOE_FUSED_MAP = {
    "layers.{i}.attention.wqkv.weight": FUSED_MAP["layers.{i}.attention.wqkv.weight"],
    "layers.{i}.attention.wqkv.bias": FUSED_MAP["layers.{i}.attention.wqkv.bias"],
    "layers.{i}.feed_forward.shared.w13.weight": (
        "model.layers.{i}.block_sparse_moe.shared_expert.gate_proj.weight",
        "model.layers.{i}.block_sparse_moe.shared_expert.up_proj.weight",
    ),
}
# Our stacked expert weight [E, ...] -> per-expert HF weights ({j} the expert), concatenated
# along dim 0 within each expert: w13 = [gate (w1); up (w3)].
EXPERT_MAP = {
    "layers.{i}.feed_forward.w13": (
        "model.layers.{i}.block_sparse_moe.experts.{j}.w1.weight",
        "model.layers.{i}.block_sparse_moe.experts.{j}.w3.weight",
    ),
    "layers.{i}.feed_forward.w2": ("model.layers.{i}.block_sparse_moe.experts.{j}.w2.weight",),
}


@dataclass(frozen=True)
class NameMaps:
    """One architecture's renaming: plain, fused (split along dim 0) and per-expert weights."""

    weights: dict[str, str]
    fused: dict[str, tuple[str, ...]]
    experts: dict[str, tuple[str, ...]] = field(default_factory=dict)


NAME_MAPS = {
    "dense": NameMaps(WEIGHT_MAP, FUSED_MAP),
    "moe": NameMaps(MOE_WEIGHT_MAP, MOE_FUSED_MAP, EXPERT_MAP),
}


def _split_sizes(cfg: ModelConfig, key: str, n_parts: int, rows: int) -> list[int]:
    """Rows of each HF weight inside our fused one: q/k/v by heads, the rest in equal parts."""
    if ".wqkv." in key:
        head_dim = cfg.dim // cfg.n_heads
        return [cfg.n_heads * head_dim, cfg.n_kv_heads * head_dim, cfg.n_kv_heads * head_dim]
    return [rows // n_parts] * n_parts


def _template(key: str) -> tuple[str, str | None]:
    """'layers.3.attention.wo.weight' -> ('layers.{i}.attention.wo.weight', '3')."""
    match = re.match(r"^layers\.(\d+)\.", key)
    if match is None:
        return key, None
    return "layers.{i}." + key[match.end() :], match.group(1)


def _split(cfg: ModelConfig, key: str, tensor: torch.Tensor, names: tuple[str, ...]):
    sizes = _split_sizes(cfg, key, len(names), tensor.shape[0])
    return zip(names, tensor.split(sizes, dim=0), strict=True)


def to_hf_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Our state dict renamed (fused weights split, experts unstacked) to HF names."""
    cfg = model.cfg
    maps = NAME_MAPS[cfg.arch]
    out: dict[str, torch.Tensor] = {}
    for key, tensor in model.state_dict().items():
        if key == "output.weight" and cfg.tie_embeddings:
            continue
        tensor = tensor.detach().cpu().contiguous()
        template, layer = _template(key)
        if template in maps.weights:
            out[maps.weights[template].format(i=layer)] = tensor
        elif template in maps.fused:
            for hf_name, part in _split(cfg, key, tensor, maps.fused[template]):
                out[hf_name.format(i=layer)] = part.contiguous()
        elif template in maps.experts:
            for j, expert in enumerate(tensor):
                for hf_name, part in _split(cfg, key, expert, maps.experts[template]):
                    out[hf_name.format(i=layer, j=j)] = part.contiguous()
        else:
            raise KeyError(f"no HF name for parameter {key}")
    return out


def _pick(hf: dict[str, torch.Tensor], names: list[str], cfg: ModelConfig) -> list[torch.Tensor]:
    missing = [n for n in names if n not in hf]
    if missing:
        raise ConfigError(
            f"checkpoint has no tensor '{missing[0]}'",
            hint=f"is it a {'Mixtral' if cfg.arch == 'moe' else 'Mistral/Llama'} checkpoint?",
        )
    return [hf[n] for n in names]


def from_hf_state_dict(hf: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """HF tensors -> our state dict (fusing q/k/v and gate/up, stacking experts)."""
    maps = NAME_MAPS[cfg.arch]
    out: dict[str, torch.Tensor] = {}
    shared = cfg.arch == "moe" and cfg.shared_expert
    for layer in [None, *range(cfg.n_layers)]:
        for ours, theirs in maps.weights.items():
            if ("{i}" in ours) == (layer is None):
                continue
            if ours == "output.weight" and cfg.tie_embeddings:
                continue
            if ".shared." in ours and not shared:
                continue
            out[ours.format(i=layer)] = _pick(hf, [theirs.format(i=layer)], cfg)[0]
        if layer is None:
            continue
        for ours, parts in maps.fused.items():
            if (".shared." in ours and not shared) or (ours.endswith(".bias") and not cfg.qkv_bias):
                continue
            names = [p.format(i=layer) for p in parts]
            out[ours.format(i=layer)] = torch.cat(_pick(hf, names, cfg), dim=0)
        for ours, parts in maps.experts.items():
            stacked = [
                torch.cat(_pick(hf, [p.format(i=layer, j=j) for p in parts], cfg), dim=0)
                for j in range(cfg.n_experts)
            ]
            out[ours.format(i=layer)] = torch.stack(stacked)
    if cfg.tie_embeddings:
        out["output.weight"] = out["tok_embeddings.weight"]
    return out


def hf_config(cfg: ModelConfig, special_ids: dict[str, int | None] | None = None) -> dict[str, Any]:
    """config.json for the transformers class with the same architecture as `cfg`."""
    return HF_CONFIGS[cfg.arch](cfg, special_ids or {})


def _dense_config(cfg: ModelConfig, special_ids: dict[str, int | None]) -> dict[str, Any]:
    """Mistral, or Qwen2 when the model has q/k/v biases (Qwen2's attention has them)."""
    return _qwen2_config(cfg, special_ids) if cfg.qkv_bias else _mistral_config(cfg, special_ids)


def _qwen2_config(cfg: ModelConfig, special_ids: dict[str, int | None]) -> dict[str, Any]:
    out = _mistral_config(cfg, special_ids)
    if cfg.sliding_window is not None:
        raise ConfigError(
            "a model with q/k/v biases and a sliding window has no transformers equivalent",
            hint="export it with model.sliding_window unset",
        )
    out.update(
        architectures=["Qwen2ForCausalLM"],
        model_type="qwen2",
        use_sliding_window=False,
        max_window_layers=cfg.n_layers,
        layer_types=["full_attention"] * cfg.n_layers,
    )
    return out


def _mistral_config(cfg: ModelConfig, special_ids: dict[str, int | None]) -> dict[str, Any]:
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
        # Readers before transformers 5 (and vLLM, llama.cpp's converter) look for it here.
        "rope_theta": cfg.rope_theta,
        "bos_token_id": special_ids.get("bos"),
        "eos_token_id": _stop_ids(special_ids),
        "pad_token_id": special_ids.get("pad"),
    }


def _stop_ids(special_ids: dict[str, int | None]) -> int | list[int] | None:
    """The ids that end a generation: `<|end|>` (every chat turn ends with it) and the
    eos token; a tokenizer without `<|end|>` keeps its single eos id."""
    ids = [special_ids[role] for role in ("end", "eos") if special_ids.get(role) is not None]
    return ids if len(ids) > 1 else (ids[0] if ids else None)


def generation_config(
    special_ids: dict[str, int | None], base: dict[str, Any] | None = None
) -> dict[str, Any]:
    """generation_config.json: stop at the end of a chat turn, sample with forgeml's chat
    defaults (those of `forgeml generate`). `base` is an imported checkpoint's own file: its
    settings are kept and our stop ids are added to its eos ids."""
    defaults = GenerateConfig()
    out: dict[str, Any] = {
        "do_sample": defaults.temperature > 0,
        "temperature": defaults.temperature,
        "top_k": defaults.top_k,
        "top_p": defaults.top_p,
    }
    out.update(base or {})
    theirs = out.get("eos_token_id")
    theirs = [theirs] if isinstance(theirs, int) else list(theirs or [])
    ours = _stop_ids(special_ids)
    ours = [ours] if isinstance(ours, int) else list(ours or [])
    stop = list(dict.fromkeys(ours + theirs))
    if stop:
        out["eos_token_id"] = stop if len(stop) > 1 else stop[0]
    for role in ("bos", "pad"):
        if special_ids.get(role) is not None:
            out.setdefault(f"{role}_token_id", special_ids[role])
    return out


def mixtral_compatible(cfg: ModelConfig) -> bool:
    """Whether transformers' Mixtral computes exactly this MoE (softmax top-k, no shared expert)."""
    return (
        cfg.arch == "moe" and cfg.gating == "softmax" and not cfg.shared_expert and not cfg.qkv_bias
    )


def _mixtral_config(cfg: ModelConfig, special_ids: dict[str, int | None]) -> dict[str, Any]:
    out = _mistral_config(cfg, special_ids)
    out.update(
        architectures=["MixtralForCausalLM"],
        model_type="mixtral",
        intermediate_size=cfg.moe_ffn_hidden or cfg.ffn_hidden,
        num_local_experts=cfg.n_experts,
        num_experts_per_tok=cfg.top_k,
        # transformers' Mixtral aux loss is top_k times ours (see moe.load_balancing_loss).
        router_aux_loss_coef=cfg.aux_loss_coef / cfg.top_k,
        router_jitter_noise=0.0,
        output_router_logits=False,
    )
    if not mixtral_compatible(cfg):
        # A model type transformers does not know: loading fails loudly instead of silently
        # computing a different function. forgeml_model.json carries the full config.
        out.update(
            architectures=["ForgemlMoeForCausalLM"],
            model_type="forgeml_moe",
            gating=cfg.gating,
            shared_expert=cfg.shared_expert,
            qkv_bias=cfg.qkv_bias,
        )
    return out


HF_CONFIGS: dict[str, Callable[[ModelConfig, dict[str, int | None]], dict[str, Any]]] = {
    "dense": _dense_config,
    "moe": _mixtral_config,
}


def _special_token_ids(tokenizer_dir: Path) -> dict[str, int | None]:
    """bos/eos/pad ids named in tokenizer_config.json, looked up in tokenizer.json, and the
    id of forgeml's end-of-turn token `<|end|>` when the tokenizer has it."""
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
    if END in ids:  # a forgeml chat tokenizer: every turn ends with it
        out["end"] = ids[END]
    return out


def save_model(
    model: nn.Module,
    out_dir: str | Path,
    tokenizer_dir: str | Path | None = None,
    *,
    max_shard_size: int | str | None = None,
) -> Path:
    """Write `model` as an HF-loadable folder (every file written atomically); return it.

    `max_shard_size` (bytes or "5GB"): split the weights into `model-0000i-of-0000n.safetensors`
    files of at most that size plus `model.safetensors.index.json`, as transformers'
    `save_pretrained` does (one file when they fit); None: always one `model.safetensors`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = model.cfg
    special_ids: dict[str, int | None] = {}
    base_generation: dict[str, Any] | None = None
    if tokenizer_dir is not None:
        tokenizer_dir = Path(tokenizer_dir)
        if not tokenizer_dir.is_dir():
            raise NotFoundError(f"tokenizer folder not found: {tokenizer_dir}")
        special_ids = _special_token_ids(tokenizer_dir)
        if (tokenizer_dir / GENERATION_CONFIG).is_file():  # an imported checkpoint's own
            base_generation = json.loads((tokenizer_dir / GENERATION_CONFIG).read_text())
        for name in TOKENIZER_FILES:
            src = tokenizer_dir / name
            if src.is_file():
                atomic_write_bytes(out_dir / name, src.read_bytes())
    _write_weights(to_hf_state_dict(model), out_dir, max_shard_size)
    atomic_write_text(out_dir / "config.json", json.dumps(hf_config(cfg, special_ids), indent=2))
    atomic_write_text(
        out_dir / GENERATION_CONFIG,
        json.dumps(generation_config(special_ids, base_generation), indent=2),
    )
    atomic_write_text(out_dir / FORGEML_CONFIG, cfg.model_dump_json(indent=2))
    return out_dir


def _write_weights(
    tensors: dict[str, torch.Tensor], out_dir: Path, max_shard_size: int | str | None
) -> None:
    """model.safetensors, or shards and their index (huggingface_hub's split, the one
    transformers uses); weight files of the other layout left from an earlier save go."""
    from huggingface_hub import split_torch_state_dict_into_shards

    split = split_torch_state_dict_into_shards(tensors, max_shard_size=max_shard_size or 2**62)
    stale = {p.name for p in out_dir.glob("model*.safetensors")} | {SAFETENSORS_INDEX}
    for filename, names in split.filename_to_tensors.items():
        atomic_write_bytes(
            out_dir / filename, save({n: tensors[n] for n in names}, {"format": "pt"})
        )
        stale.discard(filename)
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        atomic_write_text(out_dir / SAFETENSORS_INDEX, json.dumps(index, indent=2, sort_keys=True))
        stale.discard(SAFETENSORS_INDEX)
    for name in stale:
        (out_dir / name).unlink(missing_ok=True)


# Export for `transformers`: our saved format already is an HF checkpoint.
export_hf = save_model


def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    """ModelConfig for an HF Mistral/Llama/Qwen2/Mixtral config.json, refusing what we lack."""
    model_type = hf.get("model_type")
    if model_type not in HF_MODEL_TYPES:
        raise ConfigError(
            f"unsupported model_type '{model_type}' in config.json",
            hint=f"forgeml imports {', '.join(HF_MODEL_TYPES)} checkpoints",
        )
    return ModelConfig(**_dense_fields(hf), **HF_MODEL_TYPES[model_type](hf))


def _dense_fields(hf: dict[str, Any]) -> dict[str, Any]:
    """The ModelConfig fields shared by the Mistral family, with checks for what we lack."""
    model_type = hf.get("model_type")
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
    window = hf.get("sliding_window") if model_type in ("mistral", "mixtral") else None
    if hf.get("use_sliding_window") is False:
        window = None
    if model_type == "qwen2" and hf.get("use_sliding_window"):
        # Qwen2 slides only on layers >= max_window_layers; ours is one window for all.
        raise ConfigError("Qwen2 checkpoints with use_sliding_window are not supported")
    return dict(
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


def _mixtral_fields(hf: dict[str, Any]) -> dict[str, Any]:
    top_k = hf.get("num_experts_per_tok", 2)
    return {
        "arch": "moe",
        "n_experts": hf.get("num_local_experts", 8),
        "top_k": top_k,
        "moe_ffn_hidden": hf["intermediate_size"],
        "gating": "softmax",
        "aux_loss_coef": hf.get("router_aux_loss_coef", 0.001) * top_k,
    }


# config.json model_type -> the ModelConfig fields beyond the shared dense ones.
HF_MODEL_TYPES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "mistral": lambda hf: {},
    "llama": lambda hf: {},
    "qwen2": lambda hf: {"qkv_bias": True},  # Qwen2 attention: biased q/k/v, no o bias
    "mixtral": _mixtral_fields,
}


def _read_safetensors(model_dir: Path) -> dict[str, torch.Tensor]:
    single = model_dir / "model.safetensors"
    if single.is_file():
        return load_file(single)
    index = model_dir / SAFETENSORS_INDEX
    if index.is_file():
        tensors: dict[str, torch.Tensor] = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            tensors.update(load_file(model_dir / shard))
        return tensors
    raise NotFoundError(
        f"no model.safetensors in {model_dir}",
        hint="save the checkpoint with safetensors (save_pretrained does by default)",
    )


def read_model_config(model_dir: str | Path) -> ModelConfig:
    """The ModelConfig of a model folder: forgeml_model.json, else derived from config.json."""
    model_dir = Path(model_dir)
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise NotFoundError(f"no config.json in {model_dir}", hint="is this a model folder?")
    ours = model_dir / FORGEML_CONFIG
    if ours.is_file():
        return ModelConfig.model_validate_json(ours.read_text())
    return config_from_hf(json.loads(config_path.read_text()))


def load_model(model_dir: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Read a folder written by `save_model` (or a plain HF Mistral/Llama/Mixtral one) into
    the model class of its architecture; fp32 weights."""
    model_dir = Path(model_dir)
    cfg = read_model_config(model_dir)
    hf_tensors = _read_safetensors(model_dir)
    state = from_hf_state_dict(hf_tensors, cfg)
    with torch.device("meta"):
        model = model_class(cfg.arch)(cfg)
    model.to_empty(device=device)
    if cfg.tie_embeddings:
        model.output.weight = model.tok_embeddings.weight
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model
