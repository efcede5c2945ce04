"""The `multimodal:` recipe section: a vision/audio LM built on a text LM and trained in two
phases (projector alignment, then joint SFT), each with its own loop settings. Re-exported by
forgeml.core.config.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from forgeml.core.loop_config import OptimConfig, TrainConfig, _Section


class MultimodalPhaseConfig(_Section):
    """One phase of multimodal training (`multimodal.align` or `multimodal.joint`), each with
    its own loop settings: align trains the projectors only, joint the LM too."""

    train_encoders: bool = Field(False, description="joint: train the vision/audio encoders too")
    optim: OptimConfig = OptimConfig(lr=1e-3, warmup_steps=5, weight_decay=0.0)
    train: TrainConfig = TrainConfig(
        max_steps=100, micro_batch_size=4, eval_every=0, checkpoint_every=50
    )


class MultimodalStageConfig(_Section):
    """`forgeml train multimodal` and `pipeline run`: a vision/audio LM (encoders joined to a
    text LM by projectors) trained on media JSONL, projector alignment then joint SFT."""

    data: str | None = Field(
        None, description="JSONL of {image|audio, prompt, answer} (media paths relative to "
        "it), or its dataset asset",
    )  # fmt: skip
    heldout_fraction: float = Field(0.1, ge=0, lt=1, description="records kept out for eval")
    init: str | None = Field(None, description="multimodal model asset to continue from")
    base_model: str | None = Field(
        None, description="text model asset whose LM and tokenizer start the model; None: "
        "the recipe's `model` from scratch (`pipeline run`: the pre-trained model)",
    )  # fmt: skip
    tokenizer: str | None = Field(None, description="with no base_model: tokenizer asset/folder")
    vision: dict[str, Any] | None = Field(
        None, description="image encoder (forgeml.models.vision.VisionConfig fields)"
    )
    audio: dict[str, Any] | None = Field(
        None, description="audio encoder (forgeml.models.audio.AudioConfig fields)"
    )
    vision_tower: str | None = Field(
        None, description="SigLIP folder whose vision tower is the image encoder (`vision`: "
        "overrides, e.g. n_layers, pixel_shuffle)",
    )  # fmt: skip
    audio_tower: str | None = Field(
        None, description="Whisper folder whose encoder is the audio encoder (`audio`: "
        "overrides, e.g. stack)",
    )  # fmt: skip
    seed: int = Field(0, description="seed of the new encoders' and projectors' weights")
    align: MultimodalPhaseConfig | None = MultimodalPhaseConfig()
    joint: MultimodalPhaseConfig | None = MultimodalPhaseConfig(
        optim=OptimConfig(lr=5e-4, warmup_steps=5, weight_decay=0.0)
    )
