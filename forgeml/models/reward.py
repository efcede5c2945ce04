"""Reward model: our dense or MoE backbone with a scalar head read at the last real token.

Saved as an HF folder whose config.json names `MistralForSequenceClassification` (or the
Mixtral one), so `transformers` loads it; `forgeml_model.json` and `reward_model.json` say
it is a forgeml reward model. Trained by forgeml.train.reward_model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save
from torch import nn

from forgeml.core.config import ModelConfig
from forgeml.core.errors import ForgeError
from forgeml.core.io import atomic_write_bytes, atomic_write_text
from forgeml.models.hf_io import from_hf_state_dict, read_model_config, save_model, to_hf_state_dict
from forgeml.models.registry import build_model

REWARD_META = "reward_model.json"


class RewardModel(nn.Module):
    """backbone(input_ids) -> final-norm hidden states; reward = score(hidden at last token).

    The backbone is the language model with its LM head replaced by an identity, so the
    architecture's own forward (dense or MoE) produces the hidden states.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = build_model(cfg)
        self.backbone.output = nn.Identity()
        self.score = nn.Linear(cfg.dim, 1, bias=False)
        nn.init.normal_(self.score.weight, std=cfg.init_std)

    @classmethod
    def from_language_model(cls, lm: nn.Module) -> RewardModel:
        """A reward model whose backbone starts from `lm`'s weights (the LM head is dropped)."""
        model = cls(lm.cfg)
        state = {k: v for k, v in lm.state_dict().items() if not k.startswith("output.")}
        model.backbone.load_state_dict(state, strict=True)
        return model

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """input_ids [B, T] right-padded, lengths [B] real tokens per row -> rewards [B] (fp32)."""
        hidden = self.backbone(input_ids)
        last = hidden[torch.arange(input_ids.shape[0], device=input_ids.device), lengths - 1]
        return self.score(last).squeeze(-1).float()


def save_reward_model(
    model: RewardModel,
    out_dir: str | Path,
    tokenizer_dir: str | Path | None = None,
    *,
    pad_id: int | None = None,
) -> Path:
    """Write an HF sequence-classification folder (num_labels 1) plus our own metadata."""
    out_dir = Path(out_dir)
    save_model(model.backbone, out_dir, tokenizer_dir)  # backbone, tokenizer, forgeml config
    tensors = to_hf_state_dict(model.backbone)
    tensors["score.weight"] = model.score.weight.detach().cpu().contiguous()
    atomic_write_bytes(out_dir / "model.safetensors", save(tensors, {"format": "pt"}))
    config = json.loads((out_dir / "config.json").read_text())
    config["architectures"] = [a.replace("ForCausalLM", "ForSequenceClassification") for a in config["architectures"]]  # fmt: skip
    config.update(num_labels=1, id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0})
    if config.get("pad_token_id") is None:
        config["pad_token_id"] = pad_id
    atomic_write_text(out_dir / "config.json", json.dumps(config, indent=2))
    atomic_write_text(out_dir / REWARD_META, json.dumps({"task": "reward", "head": "score"}))
    return out_dir


def is_reward_model_dir(path: str | Path) -> bool:
    return (Path(path) / REWARD_META).is_file()


def load_reward_model(model_dir: str | Path, device: str | torch.device = "cpu") -> RewardModel:
    """Read a folder written by `save_reward_model` (fp32 weights)."""
    model_dir = Path(model_dir)
    if not is_reward_model_dir(model_dir):
        raise ForgeError(
            f"{model_dir} is not a reward model (no {REWARD_META})",
            hint="train one with `forgeml train rm`",
        )
    cfg = read_model_config(model_dir)
    hf = load_file(model_dir / "model.safetensors")
    # The backbone has no LM head: map it as if tied, then drop the head again.
    state = from_hf_state_dict(hf, cfg.model_copy(update={"tie_embeddings": True}))
    state.pop("output.weight")
    model = RewardModel(cfg)
    model.backbone.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    model.score.weight.data.copy_(hf["score.weight"].float())
    return model.to(device)
