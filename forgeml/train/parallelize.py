"""Apply activation checkpointing, torch.compile and data parallelism (DDP or FSDP2) from outside.

The model code stays single-device and plain (torchtitan's `parallelize` habit); every training
loop calls `parallelize` once after building its model, and `full_model_state` for exports.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Literal

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.checkpoint import checkpoint

from forgeml.core.config import TrainConfig
from forgeml.core.errors import ConfigError
from forgeml.core.runtime import resolve_dtype

# single: one process, no wrapper; ddp: whole replicas, all-reduced gradients; fsdp: FSDP2,
# parameters, gradients and optimizer state sharded over the processes.
Strategy = Literal["single", "ddp", "fsdp"]


def transformer_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's transformer blocks: its `layers`, or its backbone's (a reward model)."""
    for name, module in model.named_modules():
        if name.rpartition(".")[2] == "layers" and isinstance(module, nn.ModuleList):
            return module
    raise ValueError(f"{type(model).__name__} has no `layers` of transformer blocks")


def apply_activation_checkpointing(model: nn.Module) -> nn.Module:
    """Recompute every transformer block's activations during backward instead of keeping
    them (Chen et al., "Training Deep Nets with Sublinear Memory Cost", arXiv:1604.06174).

    Autograd then keeps only each block's input; one block's working set is rebuilt at a time
    in the backward pass, for about one extra forward of compute. The gradients are the same.
    Each block's `forward` is wrapped on the instance, so parameter names and `state_dict`
    keys stay unchanged (checkpoints and exports do not see the wrapping). Non-reentrant
    checkpointing: it handles keyword arguments, non-tensor outputs (MoE router statistics)
    and runs unchanged under `torch.no_grad` (eval, generation).
    """
    for block in transformer_blocks(model):
        if getattr(block, "_activation_checkpointed", False):
            continue
        inner = block.forward

        def forward(*args, _inner=inner, **kwargs):
            return checkpoint(_inner, *args, use_reentrant=False, **kwargs)

        block.forward = forward
        block._activation_checkpointed = True
    return model


def fsdp_mixed_precision(dtype: str, device: str | torch.device) -> bool:
    """Whether FSDP should gather bf16 parameters (fp32 gradient reduction and master weights):
    only where `train.dtype` resolves to bf16, i.e. the hardware multiplies bf16 fast."""
    return resolve_dtype(dtype, str(device)) == "bf16"


def apply_fsdp(
    model: nn.Module, *, device: torch.device, mixed_precision: bool, cpu_offload: bool
) -> nn.Module:
    """FSDP2 (`fully_shard`) on every transformer block, then on the root (embedding, final
    norm, output head), as torchtitan does: one all-gather / reduce-scatter per block.

    The root keeps its parameters gathered after forward (it runs first in backward anyway);
    blocks reshard after forward and gather again in backward. Mixed precision: bf16
    parameters in compute, fp32 gradient reduction; the sharded master weights, the
    gradients and the optimizer state stay fp32. CPU offload keeps the shards, their
    gradients and the optimizer step on the host (a GPU-memory saving; on CPU it is a no-op).
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    kwargs = {"mesh": mesh}
    if mixed_precision:
        kwargs["mp_policy"] = MixedPrecisionPolicy(
            param_dtype=torch.bfloat16, reduce_dtype=torch.float32
        )
    if cpu_offload and device.type != "cpu":
        kwargs["offload_policy"] = CPUOffloadPolicy()
    for block in transformer_blocks(model):
        fully_shard(block, **kwargs)
    fully_shard(model, reshard_after_forward=False, **kwargs)
    return model


def parallelize(
    model: nn.Module,
    *,
    device: str | torch.device,
    strategy: Strategy = "single",
    compile: bool = False,
    activation_checkpointing: bool = False,
    dtype: str = "fp32",
    cpu_offload: bool = False,
) -> nn.Module:
    """Move `model` to `device`; checkpoint activations, compile, and wrap it for `strategy`,
    in that order (torchtitan's), each if asked. Returns the module to train.

    - single / ddp: `nn.Module.compile` compiles the whole model in place (parameter names
      and `state_dict` keys unchanged). The DDP wrapper is for the training step only: save
      and evaluate through `model`, which shares its parameters.
    - fsdp: every block is compiled on its own (FSDP's hooks sit between them), then
      sharded by `apply_fsdp`. `model` itself becomes the FSDP module (returned): every
      process must run each forward, and `full_model_state` gathers its weights.
    DDP and FSDP need `torch.distributed` initialised by the caller (e.g. under torchrun).
    """
    device = torch.device(device)
    if strategy not in ("single", "ddp", "fsdp"):
        raise ConfigError(f"unknown parallel strategy {strategy!r}", hint="single, ddp or fsdp")
    if strategy != "single" and not dist.is_initialized():
        raise RuntimeError(f"strategy {strategy} needs torch.distributed.init_process_group()")
    model.to(device)
    if activation_checkpointing:
        apply_activation_checkpointing(model)
    if strategy == "fsdp":
        if compile:
            for block in transformer_blocks(model):
                block.compile()
        return apply_fsdp(
            model,
            device=device,
            mixed_precision=fsdp_mixed_precision(dtype, device),
            cpu_offload=cpu_offload,
        )
    if compile:
        model.compile()
    if strategy == "single":
        return model
    if device.type != "cuda":
        return DistributedDataParallel(model)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return DistributedDataParallel(model, device_ids=[index])


def parallelize_for_training(
    model: nn.Module, train_cfg: TrainConfig, *, device: str | torch.device, strategy: Strategy
) -> nn.Module:
    """`parallelize` with a run's own settings: compile, activation checkpointing, dtype and
    CPU offload as `train_cfg` asks."""
    return parallelize(
        model, device=device, strategy=strategy, compile=train_cfg.compile,
        activation_checkpointing=train_cfg.activation_checkpointing, dtype=train_cfg.dtype,
        cpu_offload=train_cfg.cpu_offload,
    )  # fmt: skip


def parallelize_for_sampling(
    policy: nn.Module, reference: nn.Module | None, train_cfg: TrainConfig, *,
    device: str | torch.device, strategy: Strategy,
) -> tuple[nn.Module, nn.Module | None]:  # fmt: skip
    """`parallelize` for the loops that sample from their policy (online DPO, GRPO): never
    compiled (sampling changes the input shapes every token). Under FSDP the frozen
    `reference` is sharded like the policy and runs without gradients in lockstep; returns
    the module to train and the reference to score with."""
    train_model = parallelize(
        policy, device=device, strategy=strategy, dtype=train_cfg.dtype,
        cpu_offload=train_cfg.cpu_offload, activation_checkpointing=train_cfg.activation_checkpointing,
    )  # fmt: skip
    if reference is not None and strategy == "fsdp":
        reference = parallelize(reference, device=device, strategy="fsdp", dtype=train_cfg.dtype)
    return train_model, reference


def is_fsdp(model: nn.Module) -> bool:
    """True when `model` was sharded by `apply_fsdp` (its parameters are DTensor shards)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


@contextlib.contextmanager
def gradient_sync(train_model: nn.Module, enabled: bool) -> Iterator[None]:
    """Reduce gradients over processes in this backward only when `enabled` (the last
    micro-batch of a step): DDP's `no_sync` on earlier micro-batches, which accumulate their
    gradients locally.

    FSDP reduce-scatters every micro-batch instead (torchtitan does the same): FSDP2's
    `set_requires_gradient_sync(False)` would keep the unsharded fp32 gradients of the whole
    model on every process until the last micro-batch (4 bytes a parameter, 28 GB for 7B),
    which is the memory sharding exists to save; the sharded fp32 gradients accumulate
    instead, the same sum.
    """
    if enabled or not isinstance(train_model, DistributedDataParallel):
        yield
        return
    with train_model.no_sync():
        yield


@contextlib.contextmanager
def full_weights(model: nn.Module) -> Iterator[None]:
    """Inside this block every process holds the whole model: under FSDP each sharded module is
    gathered once and stays gathered after its forwards, so processes may run different
    numbers of forwards without collectives, as sampling does (RL, online DPO: each process
    decodes its own prompts until they stop). Costs a full copy of the weights, in the
    compute dtype, per process while it lasts; the shards are restored on exit. A no-op for a
    plain or DDP module."""
    if not is_fsdp(model):
        yield
        return
    from torch.distributed.fsdp import FSDPModule

    sharded = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for module in sharded:
        module.unshard()
        module.set_reshard_after_forward(False)
    try:
        yield
    finally:
        for module in sharded:
            module.reshard()
            # as `apply_fsdp` set it: blocks reshard after forward, the root does not
            module.set_reshard_after_forward(module is not model)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's full (unsharded) state dict on CPU, for exports and final saves.

    Under FSDP every process must call it (the shards are all-gathered, one parameter at a
    time, into rank 0's host memory): rank 0 gets the whole state, the others an empty dict.
    A plain or DDP-shared module gives its own state dict, on every process.
    """
    if not is_fsdp(model):
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)


def gathered_model(model: nn.Module, build: Callable[[], nn.Module]) -> nn.Module | None:
    """A plain single-device module holding `model`'s full weights, for `save_model` and other
    exports; under FSDP every process must call it and only rank 0 gets the module (None
    elsewhere). `build()` makes an empty module of the same architecture: it is built on the
    meta device and takes the gathered tensors as they are, so no second copy is allocated."""
    if not is_fsdp(model):
        return model
    state = full_model_state(model)
    if dist.get_rank() != 0:
        return None
    with torch.device("meta"):
        plain = build()
    plain.load_state_dict(state, assign=True)
    return plain
