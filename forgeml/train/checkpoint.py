"""Training checkpoints through PyTorch Distributed Checkpoint (DCP): model, optimizer, step,
data position, per-rank RNG states and the run's identity in one atomic `step_NNNNNNNN` folder
(temp folder, fsync, rename by rank 0), resumable on any number of processes and strategies.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

from forgeml.core.errors import ConfigError, NotFoundError
from forgeml.core.io import fsync_dir
from forgeml.train.distributed import barrier

_STEP_DIR = re.compile(r"^step_(\d{8})$")
_TMP_PREFIX = ".tmp-step_"
STATE_FILE = "state.pt"  # the single-file format (before DCP): still read
META_FILE = "meta.json"
DCP_METADATA = ".metadata"  # written by DCP's coordinator once every rank's shards are in
RNG_DIR = "rng"
# The optimizer state keyed by parameter name (state.<fqn>.exp_avg), so it reshards like the
# model's tensors. Nested, not flattened: loading a flattened one fails on an empty parameter
# group (a LoRA run has no parameter without weight decay).
_OPTIONS = StateDictOptions(flatten_optimizer_state_dict=False)
# DCP warns on every save and load that it runs in one process (also from an async save's
# writer thread, so a scoped filter cannot catch it); here one process is intended.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable")


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _is_main() -> bool:
    return _rank() == 0


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        # Stored as plain lists/ints so the file loads with torch.load(weights_only=True).
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, key, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(key, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])


def _seed_new_rank(rank0: dict[str, Any], rank: int) -> None:
    """RNG states for a rank that did not exist when the checkpoint was saved (resuming on
    more processes): seeded from a number drawn from rank 0's saved torch generator and the
    rank, so every such rank gets its own reproducible streams."""
    gen = torch.Generator()
    gen.set_state(rank0["torch"])
    draw = int(torch.randint(0, 2**62, (1,), generator=gen))
    seed = int(np.random.SeedSequence([draw, rank]).generate_state(1, dtype=np.uint64)[0])
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def list_checkpoints(ckpt_dir: str | Path) -> list[Path]:
    """Complete checkpoints in `ckpt_dir`, oldest first (temp folders are ignored)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [p for p in ckpt_dir.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    found = list_checkpoints(ckpt_dir)
    return found[-1] if found else None


def _model_config(model: nn.Module) -> dict[str, Any] | None:
    cfg = getattr(model, "cfg", None)
    return cfg.model_dump(mode="json") if hasattr(cfg, "model_dump") else None


@dataclass
class _PendingSave:
    """An async save whose writes may still be running: renamed into place once done."""

    future: Any
    tmp: Path
    final: Path
    keep: int


_pending: _PendingSave | None = None
_async_group: Any = None  # (default group, gloo group for the background writes)


def _background_group() -> dist.ProcessGroup | None:
    """A gloo group of its own for async saves: the writer thread's collectives must not
    interleave with the training step's on the default group (torchtitan does the same)."""
    global _async_group
    if not dist.is_initialized():
        return None
    default = dist.group.WORLD
    if _async_group is None or _async_group[0] is not default:
        _async_group = (default, dist.new_group(backend="gloo"))
    return _async_group[1]


def save_checkpoint(
    ckpt_dir: str | Path,
    step: int,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data_state: dict[str, Any],
    extra: dict[str, Any] | None = None,
    keep: int = 2,
    async_save: bool = False,
) -> Path:
    """Write `step_{step:08d}` atomically and keep only the newest `keep` checkpoints; return
    its final path. Every process calls it (collective).

    `model` is the module the optimizer steps: plain, DDP-unwrapped or FSDP2-sharded; each
    rank writes its own shards (replicated tensors once) into the same folder, so on several
    nodes `ckpt_dir` must be on shared storage. `extra` (JSON-able: config hash,
    losses, ...) goes into meta.json for humans and tools. With `async_save` the state is
    copied to memory and written in the background: the folder appears only once the writes
    have completed, at the next save or at `wait_for_checkpoint()`, which the loop calls
    before it returns.
    """
    wait_for_checkpoint()
    ckpt_dir = Path(ckpt_dir)
    final = ckpt_dir / f"step_{step:08d}"
    tmp = ckpt_dir / f"{_TMP_PREFIX}{step:08d}.dcp"
    if _is_main():
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / RNG_DIR).mkdir(parents=True)
        world = dist.get_world_size() if dist.is_initialized() else 1
        meta = {
            "step": step, "data": data_state, **(extra or {}),
            "checkpoint": {
                "format": "dcp", "world_size": world, "model_config": _model_config(model),
                "extra_keys": sorted(extra or {}),
            },
        }  # fmt: skip
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        _fsync_file(tmp / META_FILE)
    barrier()
    rng_file = tmp / RNG_DIR / f"rank_{_rank():05d}.pt"
    torch.save(_rng_state(), rng_file)
    _fsync_file(rng_file)
    model_state, optim_state = get_state_dict(model, optimizer, options=_OPTIONS)
    state = {"model": model_state, "optimizer": optim_state}
    no_dist = not dist.is_initialized()
    if async_save:
        global _pending
        future = dcp.async_save(
            state, checkpoint_id=tmp, process_group=_background_group(), no_dist=no_dist
        )
        # A staging-and-upload response (async staging on GPUs) or the upload's future.
        _pending = _PendingSave(getattr(future, "upload_completion", future), tmp, final, keep)
    else:
        dcp.save(state, checkpoint_id=tmp, no_dist=no_dist)
        _publish(tmp, final, keep)
    return final


def wait_for_checkpoint() -> Path | None:
    """Finish the pending async save, if any: wait for its writes on every rank, then put
    the folder in place. Returns its path (None when nothing was pending)."""
    global _pending
    pending, _pending = _pending, None
    if pending is None:
        return None
    pending.future.result()
    _publish(pending.tmp, pending.final, pending.keep)
    return pending.final


def _publish(tmp: Path, final: Path, keep: int) -> None:
    """All ranks have written into `tmp` (DCP fsyncs its files): rank 0 renames it to
    `final` and prunes; every rank returns once the checkpoint is in place."""
    barrier()
    if _is_main():
        for folder in (tmp / RNG_DIR, tmp):
            fsync_dir(folder)
        ckpt_dir = final.parent
        if final.exists():  # re-saving a step (e.g. the final one): swap, then drop the old
            old = ckpt_dir / f"{_TMP_PREFIX}{final.name[5:]}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        fsync_dir(ckpt_dir)
        _prune(ckpt_dir, keep)
    barrier()


def _prune(ckpt_dir: Path, keep: int) -> None:
    for old in list_checkpoints(ckpt_dir)[:-keep]:
        shutil.rmtree(old)
    # Temp folders left by a process killed mid-save: the only save that can be live is the
    # one just published, so they are garbage.
    for leftover in ckpt_dir.glob(f"{_TMP_PREFIX}*"):
        shutil.rmtree(leftover, ignore_errors=True)


def is_sharded(path: str | Path) -> bool:
    """Whether `path` is a DCP checkpoint folder (else the older single-file format)."""
    return (Path(path) / DCP_METADATA).is_file()


def is_checkpoint(path: str | Path) -> bool:
    """Whether `path` is a checkpoint folder, sharded or single-file."""
    return is_sharded(path) or (Path(path) / STATE_FILE).is_file()


def checkpoint_model_keys(path: str | Path) -> list[str]:
    """The model state-dict keys stored in checkpoint `path`, read from its metadata."""
    path = Path(path)
    if not is_sharded(path):
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
        return list(state["model"])
    stored = dcp.FileSystemReader(path).read_metadata().state_dict_metadata
    return [key.removeprefix("model.") for key in stored if key.startswith("model.")]


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """`step`, `data`, `extra`, `world_size` and `model_config` of the checkpoint at `path`
    without reading any tensor (None for what an older checkpoint did not record)."""
    path = Path(path)
    if not is_sharded(path):
        if not (path / STATE_FILE).is_file():
            raise NotFoundError(
                f"no checkpoint at {path}", hint=f"expected {path / DCP_METADATA} or {STATE_FILE}"
            )
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
        return {
            "step": state["step"], "data": state["data"], "extra": state["extra"],
            "world_size": None, "model_config": None,
        }  # fmt: skip
    meta = json.loads((path / META_FILE).read_text())
    info = meta["checkpoint"]
    return {
        "step": meta["step"], "data": meta["data"],
        "extra": {key: meta[key] for key in info["extra_keys"]},
        "world_size": info["world_size"], "model_config": info["model_config"],
    }  # fmt: skip


def load_checkpoint(
    path: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> dict[str, Any]:
    """Restore model (and optimizer) state and this rank's RNG states; return the rest
    (`step`, `data`, `extra`, `world_size`). Every process calls it (collective).

    The checkpoint may have been saved by any number of processes under any strategy; each
    rank reads the pieces its (sharded or whole) tensors need. RNG states are per rank: a
    rank beyond the saving world size gets streams derived from rank 0's (`_seed_new_rank`).
    """
    path = Path(path)
    meta = read_checkpoint_meta(path)
    if not is_sharded(path):
        _load_single_file(path, model, optimizer)
        return meta
    no_dist = not dist.is_initialized()
    if optimizer is None:
        state = {"model": get_model_state_dict(model, options=_OPTIONS)}
        dcp.load(state, checkpoint_id=path, no_dist=no_dist)
        set_model_state_dict(model, state["model"], options=_OPTIONS)
    else:
        model_state, optim_state = get_state_dict(model, optimizer, options=_OPTIONS)
        state = {"model": model_state, "optimizer": optim_state}
        dcp.load(state, checkpoint_id=path, no_dist=no_dist)
        set_state_dict(
            model, optimizer, model_state_dict=state["model"],
            optim_state_dict=state["optimizer"], options=_OPTIONS,
        )  # fmt: skip
    own = path / RNG_DIR / f"rank_{_rank():05d}.pt"
    if own.is_file():
        _set_rng_state(torch.load(own, weights_only=True))
    else:
        rank0 = torch.load(path / RNG_DIR / "rank_00000.pt", weights_only=True)
        _seed_new_rank(rank0, _rank())
    return meta


def _load_single_file(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None):
    """The format before DCP: rank 0 wrote one `state.pt` of whole tensors."""
    if any(hasattr(p, "device_mesh") for p in model.parameters()):
        raise ConfigError(
            f"{path} is a single-file checkpoint, which a sharded (FSDP) model cannot load",
            hint="resume it once with train.strategy=ddp; its next checkpoints are sharded",
        )
    state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    _set_rng_state(state["rng"])


def consolidated_model_state(path: str | Path, model: nn.Module) -> dict[str, torch.Tensor]:
    """Read the whole model tensors of checkpoint `path` into `model` (a plain, unsharded
    module of the same architecture, e.g. built on CPU) in one process; return its state
    dict. For export: no process group is needed, whatever world size saved it."""
    path = Path(path)
    if not is_sharded(path):
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        return model.state_dict()
    state = {"model": model.state_dict()}
    dcp.load(state, checkpoint_id=path, no_dist=True)
    model.load_state_dict(state["model"])
    return model.state_dict()
