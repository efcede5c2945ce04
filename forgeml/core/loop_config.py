"""A training loop's settings, shared by every objective's recipe section: `OptimConfig`
(AdamW and its schedule) and `TrainConfig` (steps, batches, dtype, checkpoints). Re-exported
by forgeml.core.config, where recipes are assembled.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OptimConfig(_Section):
    """AdamW and its lr schedule. The recipe's `optim` is pre-training's (and continued
    pre-training's); each post-training objective has its own (`sft.optim`, `dpo.optim`,
    `reward_model.optim`, `rl.optim`)."""

    lr: float = Field(3e-3, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    weight_decay: float = Field(0.1, ge=0)
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = Field(1.0, ge=0, description="0 disables clipping")
    warmup_steps: int = Field(20, ge=0)
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    decay_fraction: float = Field(0.2, gt=0, le=1, description="WSD: share of steps spent decaying")


class TrainConfig(_Section):
    """The loop: steps, batches, seed, dtype, checkpoints. The recipe's `train` is
    pre-training's (and continued pre-training's); each post-training objective has its own
    (`sft.train`, `dpo.train`, `reward_model.train`, `rl.train`)."""

    max_steps: int = Field(300, gt=0)
    micro_batch_size: int = Field(8, gt=0)
    grad_accum_steps: int = Field(1, gt=0)
    seq_len: int = Field(256, gt=1)
    seed: int = 1337
    eval_every: int = Field(100, ge=0, description="0 disables periodic eval")
    eval_batches: int = Field(8, gt=0)
    checkpoint_every: int = Field(100, ge=0, description="0: only at the end")
    keep_checkpoints: int = Field(2, gt=0)
    async_checkpoint: bool = Field(
        False, description="write checkpoints in the background while training goes on"
    )
    dtype: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="auto: bf16 autocast where the hardware makes it fast, else fp32"
    )
    compile: bool = False
    activation_checkpointing: bool = Field(
        False, description="recompute each block's activations in backward (less memory)"
    )
    strategy: Literal["auto", "ddp", "fsdp"] = Field(
        "auto",
        description="several processes: ddp (whole replicas) or fsdp (FSDP2, sharded weights, "
        "gradients and optimizer state); auto: ddp when it fits in memory, else fsdp",
    )
    cpu_offload: bool = Field(
        False, description="fsdp: keep the shards and the optimizer step in host memory (GPU)"
    )
    init_from: str | None = Field(
        None,
        description="start from these weights (model asset id/name/alias, or a model folder); "
        "the architecture is then the model's, not the `model` section",
    )
    device: str = "auto"
    log_every: int = Field(10, gt=0)
