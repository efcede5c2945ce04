"""LoRA adapters (Hu et al., arXiv:2106.09685) for our models, saved and loaded in PEFT format.

`apply_lora` wraps chosen linear layers (by our names: wqkv, wo, w13, w2) and freezes the base;
`save_adapter` writes `adapter_config.json` + `adapter_model.safetensors` with HF module names,
so `peft.PeftModel.from_pretrained` loads it onto our `transformers` export; `merge_lora` folds
the adapter into the base weights. A fused layer (wqkv, w13) holds one independent LoRA pair per
HF module it fuses (q/k/v, gate/up), exactly as PEFT holds them on the separate modules.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save
from torch import nn

from forgeml.core.errors import ConfigError, DataError, NotFoundError
from forgeml.core.io import atomic_write_bytes, atomic_write_text
from forgeml.models.hf_io import NAME_MAPS, _split_sizes, _template

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
FORGEML_ADAPTER = "forgeml_adapter.json"
PEFT_PREFIX = "base_model.model."
LORA_TARGETS = ("wqkv", "wo", "w13", "w2")


class LoRALinear(nn.Module):
    """y = base(x) + (alpha / r) * B A dropout(x), with base frozen; B starts at zero.

    A fused base (out rows = parts of `splits`) gets one rank-r pair per part: `lora_A` stacks
    the parts' A matrices [parts * r, in] (one matmul), `lora_B` [out, r] holds each part's B
    in that part's rows. Part p computes B[rows_p] @ A_p, which is PEFT's LoRA on HF module p.
    """

    def __init__(
        self, base: nn.Linear, splits: list[int], rank: int, alpha: float, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if sum(splits) != base.out_features:
            raise ValueError(f"splits {splits} do not add up to {base.out_features} rows")
        self.base_layer = base
        self.splits, self.rank, self.scaling = list(splits), rank, alpha / rank
        self.lora_A = nn.Parameter(torch.empty(len(splits) * rank, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))
        # PEFT's default init: Kaiming-uniform A, zero B, so the adapter starts as a no-op.
        for a in self.lora_A.split(rank):
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.linear(self.dropout(x), self.lora_A)
        if len(self.splits) == 1:
            delta = F.linear(a, self.lora_B)
        else:
            delta = torch.cat(
                [
                    F.linear(a_p, b_p)
                    for a_p, b_p in zip(
                        a.split(self.rank, dim=-1), self.lora_B.split(self.splits), strict=True
                    )
                ],
                dim=-1,
            )
        return self.base_layer(x) + delta * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """The dense update (alpha / r) * B A, [out, in], that merging adds to the base."""
        parts = zip(self.lora_B.split(self.splits), self.lora_A.split(self.rank), strict=True)
        return torch.cat([b @ a for b, a in parts]) * self.scaling


def _hf_modules(cfg: Any, name: str, n_rows: int) -> tuple[list[str], list[int]]:
    """Our linear `layers.3.attention.wqkv` -> its HF module names and their row counts."""
    key = f"{name}.weight"
    template, layer = _template(key)
    maps = NAME_MAPS[cfg.arch]
    if template in maps.weights:
        names = [maps.weights[template]]
    elif template in maps.fused:
        names = list(maps.fused[template])
    else:
        raise ConfigError(f"no HF name for {name}", hint=f"LoRA targets: {', '.join(LORA_TARGETS)}")
    sizes = _split_sizes(cfg, key, len(names), n_rows) if len(names) > 1 else [n_rows]
    return [n.format(i=layer).removesuffix(".weight") for n in names], sizes


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def apply_lora(
    model: nn.Module, targets: list[str], rank: int, alpha: float, dropout: float = 0.0
) -> list[str]:
    """Wrap every linear layer whose name ends in one of `targets` with LoRA and freeze all
    other parameters; return the wrapped names. A model that has LoRA layers already, or a
    target that names no linear layer of this model, is refused before anything changes."""
    unknown = sorted(set(targets) - set(LORA_TARGETS))
    if unknown or not targets:
        raise ConfigError(
            f"LoRA targets {unknown or targets} are not supported",
            hint=f"choose among {', '.join(LORA_TARGETS)} (attention: wqkv, wo; MLP: w13, w2)",
        )
    if rank <= 0:
        raise ConfigError(f"LoRA rank must be positive, got {rank}")
    if lora_modules(model):
        raise ConfigError("the model already has LoRA layers", hint="merge or reload it first")
    chosen = [
        (name, module)
        for name, module in model.named_modules()
        if name.rsplit(".", 1)[-1] in targets and isinstance(module, nn.Linear)
    ]
    missing = sorted(set(targets) - {name.rsplit(".", 1)[-1] for name, _ in chosen})
    if missing:
        raise ConfigError(
            f"LoRA target(s) {', '.join(missing)} name no linear layer of this "
            f"{model.cfg.arch} model",
            hint="MoE experts are stacked tensors, not linear layers: target wqkv and wo there",
        )
    for p in model.parameters():
        p.requires_grad_(False)
    for name, module in chosen:
        parent_name, leaf = name.rsplit(".", 1)
        _, splits = _hf_modules(model.cfg, name, module.out_features)
        lora = LoRALinear(module, splits, rank, alpha, dropout).to(module.weight.device)
        setattr(model.get_submodule(parent_name), leaf, lora)
    return [name for name, _ in chosen]


def peft_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter under PEFT's names (base_model.model.<HF module>.lora_{A,B}.weight)."""
    out: dict[str, torch.Tensor] = {}
    for name, lora in lora_modules(model).items():
        hf_names, _ = _hf_modules(model.cfg, name, lora.base_layer.out_features)
        a_parts = lora.lora_A.detach().float().cpu().split(lora.rank)
        b_parts = lora.lora_B.detach().float().cpu().split(lora.splits)
        for hf_name, a, b in zip(hf_names, a_parts, b_parts, strict=True):
            out[f"{PEFT_PREFIX}{hf_name}.lora_A.weight"] = a.contiguous()
            out[f"{PEFT_PREFIX}{hf_name}.lora_B.weight"] = b.contiguous()
    return out


def save_adapter(model: nn.Module, out_dir: str | Path, *, base_model: str | None = None) -> Path:
    """Write the model's LoRA layers as a PEFT adapter folder (files written atomically)."""
    out_dir = Path(out_dir)
    loras = lora_modules(model)
    if not loras:
        raise ConfigError("the model has no LoRA layers to save")
    first = next(iter(loras.values()))
    targets = sorted({n.rsplit(".", 1)[-1] for n in loras})
    hf_targets = sorted(
        {h.rsplit(".", 1)[-1] for n, m in loras.items()
         for h in _hf_modules(model.cfg, n, m.base_layer.out_features)[0]}
    )  # fmt: skip
    dropout = first.dropout.p if isinstance(first.dropout, nn.Dropout) else 0.0
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
        "r": first.rank, "lora_alpha": first.scaling * first.rank, "lora_dropout": dropout,
        "target_modules": hf_targets, "bias": "none", "fan_in_fan_out": False,
        "inference_mode": True, "init_lora_weights": True, "use_rslora": False,
        "use_dora": False, "modules_to_save": None, "rank_pattern": {}, "alpha_pattern": {},
        "layers_to_transform": None, "layers_pattern": None,
    }  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / ADAPTER_WEIGHTS, save(peft_state_dict(model), {"format": "pt"}))
    atomic_write_text(out_dir / ADAPTER_CONFIG, json.dumps(config, indent=2) + "\n")
    ours = {
        "targets": targets,
        "model": model.cfg.model_dump(mode="json"),
        "base_model": base_model,
    }
    atomic_write_text(out_dir / FORGEML_ADAPTER, json.dumps(ours, indent=2) + "\n")
    return out_dir


def load_adapter(model: nn.Module, adapter_dir: str | Path) -> nn.Module:
    """Apply a PEFT LoRA adapter folder (ours or one trained with PEFT on the HF export) to
    `model` in place; return it."""
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / ADAPTER_CONFIG).is_file():
        raise NotFoundError(f"no {ADAPTER_CONFIG} in {adapter_dir}", hint="is it a PEFT adapter?")
    config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
    if config.get("peft_type") != "LORA" or config.get("use_dora") or config.get("use_rslora"):
        raise ConfigError(f"{adapter_dir}: only plain LoRA adapters are supported")
    if (
        config.get("rank_pattern")
        or config.get("alpha_pattern")
        or config.get("bias", "none") != "none"
    ):
        raise ConfigError(
            f"{adapter_dir}: per-module ranks/alphas and LoRA biases are not supported"
        )
    tensors = load_file(adapter_dir / ADAPTER_WEIGHTS)
    hf_to_ours = {"q_proj": "wqkv", "k_proj": "wqkv", "v_proj": "wqkv", "o_proj": "wo",
                  "gate_proj": "w13", "up_proj": "w13", "down_proj": "w2"}  # fmt: skip
    targets = sorted({hf_to_ours[t] for t in _module_leaves(tensors) if t in hf_to_ours})
    apply_lora(model, targets, config["r"], config["lora_alpha"], config.get("lora_dropout", 0.0))
    used = set()
    with torch.no_grad():
        for name, lora in lora_modules(model).items():
            hf_names, _ = _hf_modules(model.cfg, name, lora.base_layer.out_features)
            keys = [
                (f"{PEFT_PREFIX}{h}.lora_A.weight", f"{PEFT_PREFIX}{h}.lora_B.weight")
                for h in hf_names
            ]
            missing = [k for pair in keys for k in pair if k not in tensors]
            if missing:
                raise DataError(
                    f"{adapter_dir}: no tensor {missing[0]}",
                    hint="the adapter covers only some of q/k/v or gate/up",
                )
            lora.lora_A.copy_(torch.cat([tensors[a] for a, _ in keys]))
            lora.lora_B.copy_(torch.cat([tensors[b] for _, b in keys]))
            used.update(k for pair in keys for k in pair)
    extra = sorted(set(tensors) - used)
    if extra:
        raise DataError(f"{adapter_dir}: tensor {extra[0]} has no place in this model")
    return model


def _module_leaves(tensors: dict[str, torch.Tensor]) -> set[str]:
    return {k.split(".lora_")[0].rsplit(".", 1)[-1] for k in tensors}


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA layer into its base weight (W + (alpha/r) B A) and unwrap it, in place;
    the result is a plain model that `save_model` exports."""
    for name, lora in lora_modules(model).items():
        base = lora.base_layer
        base.weight += lora.delta_weight().to(base.weight.dtype)
        parent_name, leaf = name.rsplit(".", 1)
        setattr(model.get_submodule(parent_name), leaf, base)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
