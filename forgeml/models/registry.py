"""Model builders by architecture: `build_model(cfg)` picks the class named by `cfg.arch`.

Training loops, HF import and eval build models only through here, so a new architecture is
one new file plus one entry in `MODEL_CLASSES`.
"""

from __future__ import annotations

from torch import nn

from forgeml.core.config import ModelConfig
from forgeml.core.errors import ConfigError
from forgeml.models.dense import Transformer
from forgeml.models.moe import MoETransformer

MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "dense": Transformer,
    "moe": MoETransformer,
}


def model_class(arch: str) -> type[nn.Module]:
    """The model class for `arch`, or a clear error naming the known ones."""
    if arch not in MODEL_CLASSES:
        raise ConfigError(
            f"unknown model.arch '{arch}'", hint=f"choose one of: {', '.join(MODEL_CLASSES)}"
        )
    return MODEL_CLASSES[arch]


def build_model(cfg: ModelConfig) -> nn.Module:
    """A freshly initialised model of architecture `cfg.arch` (on the default device)."""
    return model_class(cfg.arch)(cfg)
