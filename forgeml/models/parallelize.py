"""Apply activation checkpointing, torch.compile and DistributedDataParallel from outside.

The model code stays single-device and plain (torchtitan's `parallelize` habit); training
loops call `parallelize` once after building the model and keep the raw model for saving.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.checkpoint import checkpoint


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
    for block in model.layers:
        if getattr(block, "_activation_checkpointed", False):
            continue
        inner = block.forward

        def forward(*args, _inner=inner, **kwargs):
            return checkpoint(_inner, *args, use_reentrant=False, **kwargs)

        block.forward = forward
        block._activation_checkpointed = True
    return model


def parallelize(
    model: nn.Module,
    *,
    compile: bool,
    ddp: bool,
    device: str | torch.device,
    activation_checkpointing: bool = False,
) -> nn.Module:
    """Move `model` to `device`; checkpoint activations, compile it in place and wrap it in
    DDP, each if asked, in that order (as torchtitan applies them).

    `nn.Module.compile` compiles in place, so parameter names and `state_dict` keys stay
    unchanged (no `_orig_mod.` prefix). With DDP, the returned wrapper is for the training
    step only: save and evaluate through the original `model`, which shares its parameters.
    DDP needs `torch.distributed` initialised by the caller (e.g. under torchrun).
    """
    device = torch.device(device)
    model.to(device)
    if activation_checkpointing:
        apply_activation_checkpointing(model)
    if compile:
        model.compile()
    if not ddp:
        return model
    if not torch.distributed.is_initialized():
        raise RuntimeError("ddp=True needs torch.distributed.init_process_group() first")
    if device.type != "cuda":
        return DistributedDataParallel(model)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return DistributedDataParallel(model, device_ids=[index])
