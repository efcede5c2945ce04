"""Process-group setup for multi-process training launched by `torchrun`, and the checks and
reductions the loops share across processes.

Reads RANK / LOCAL_RANK / WORLD_SIZE from the environment torchrun sets; gloo on CPU,
nccl on CUDA. Without those variables everything is a no-op single process.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from pydantic import BaseModel

from forgeml.core.config import config_hash
from forgeml.core.errors import ConfigError
from forgeml.core.runtime import pick_device

T = TypeVar("T")


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


def check_ranks_agree(**fingerprints: str) -> None:
    """Refuse to start a run whose processes disagree: each process's fingerprints (the
    recipe's hash, the data's) are all-gathered and a `ConfigError` names, for each one, the
    ranks whose value differs from rank 0's. Every process raises it, so torchrun stops the
    whole job before any step (a silent mismatch would train on a mix of recipes or data)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    gathered: list[dict[str, str]] = [{} for _ in range(dist.get_world_size())]
    dist.all_gather_object(gathered, fingerprints)
    problems = []
    for name, ours in gathered[0].items():
        differ = [rank for rank, theirs in enumerate(gathered) if theirs.get(name) != ours]
        if differ:
            problems.append(
                f"{name} of rank(s) {', '.join(map(str, differ))} differs from rank 0's"
            )
    if problems:
        raise ConfigError(
            f"the processes of this run disagree: {'; '.join(problems)}",
            hint="start every process with the same recipe, overrides and data files",
        )


def check_inputs_agree(recipe: BaseModel, **inputs: str | os.PathLike[str] | None) -> None:
    """`check_ranks_agree` on the recipe's hash and each input's `file_fingerprint` (an input
    given as None counts as absent on that process)."""
    check_ranks_agree(
        recipe=config_hash(recipe.model_dump(mode="json")),
        **{name: "" if path is None else file_fingerprint(path) for name, path in inputs.items()},
    )


def file_fingerprint(path: str | os.PathLike[str], sample: int = 1 << 16) -> str:
    """A cheap content fingerprint of a file or folder for `check_ranks_agree`: each file's
    name, size, and first and last `sample` bytes (whole small files), hashed in name order."""
    from pathlib import Path

    root = Path(path)
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    digest = hashlib.sha256()
    for file in files:
        size = file.stat().st_size
        digest.update(f"{file.relative_to(root) if root.is_dir() else file.name}:{size}".encode())
        with open(file, "rb") as fh:
            digest.update(fh.read(sample))
            if size > sample:
                fh.seek(max(sample, size - sample))
                digest.update(fh.read(sample))
    return digest.hexdigest()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of `value` over all processes (returned as a new tensor; identity when alone)."""
    value = value.detach().clone()
    if dist.is_initialized():
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= dist.get_world_size()
    return value


def all_reduce_sum(values: dict[str, float]) -> dict[str, float]:
    """Each value summed over all processes (unchanged when alone); every process passes the
    same keys."""
    if not dist.is_initialized() or not values:
        return values
    keys = sorted(values)
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    total = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return dict(zip(keys, total.tolist(), strict=True))


def concat_over_ranks(local: dict[str, list]) -> dict[str, list]:
    """Each list concatenated over all processes in rank order (unchanged when alone); every
    process passes the same keys. For per-sample values a loop gathers (rewards, lengths)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return local
    shares: list[dict[str, list]] = [{} for _ in range(dist.get_world_size())]
    dist.all_gather_object(shares, local)
    return {key: [x for share in shares for x in share[key]] for key in local}


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rank_share(
    items: Sequence[T], *, rank: int, world_size: int, lockstep: bool
) -> list[tuple[T, bool]]:
    """This process's share of `items` (every `world_size`-th from `rank`), each paired with
    True. With `lockstep` (FSDP: every forward is a collective, so every process must run as
    many as the others) the share is padded to the largest one with `(items[0], False)`: run
    it, count nothing."""
    mine = [(item, True) for item in items[rank::world_size]]
    if not lockstep or not items:
        return mine
    rounds = -(-len(items) // world_size)
    return mine + [(items[0], False)] * (rounds - len(mine))
