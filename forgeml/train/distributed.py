"""Process-group setup for multi-process training launched by `torchrun`.

Reads RANK / LOCAL_RANK / WORLD_SIZE from the environment torchrun sets; gloo on CPU,
nccl on CUDA. Without those variables everything is a no-op single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from forgeml.core.runtime import pick_device


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: str
    is_main: bool


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the torchrun process group if there is one; pick this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device)
    if world_size > 1:
        if device.startswith("cuda"):
            device = f"cuda:{local_rank}"
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return DistInfo(rank, local_rank, world_size, device, is_main=rank == 0)


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of `value` over all processes (returned as a new tensor; identity when alone)."""
    value = value.detach().clone()
    if dist.is_initialized():
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= dist.get_world_size()
    return value


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
