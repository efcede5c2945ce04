"""Apply torch.compile and DistributedDataParallel to a model from outside it.

The model code stays single-device and plain (torchtitan's `parallelize` habit); training
loops call `parallelize` once after building the model and keep the raw model for saving.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def parallelize(
    model: nn.Module, *, compile: bool, ddp: bool, device: str | torch.device
) -> nn.Module:
    """Move `model` to `device`, compile it in place if asked, wrap it in DDP if asked.

    `nn.Module.compile` compiles in place, so parameter names and `state_dict` keys stay
    unchanged (no `_orig_mod.` prefix). With DDP, the returned wrapper is for the training
    step only: save and evaluate through the original `model`, which shares its parameters.
    DDP needs `torch.distributed` initialised by the caller (e.g. under torchrun).
    """
    device = torch.device(device)
    model.to(device)
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
