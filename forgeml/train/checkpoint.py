"""Atomic training checkpoints for exact resume: model, optimizer, step, data position,
RNG states and the run's config hash, one folder `step_NNNNNNNN` per save.

A save writes into a temp folder beside the final one, fsyncs it, then renames it, so a
crash at any point leaves either the previous checkpoints or a complete new one.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from forgeml.core.errors import NotFoundError
from forgeml.core.io import fsync_dir
from forgeml.train.distributed import barrier

_STEP_DIR = re.compile(r"^step_(\d{8})$")
_TMP_PREFIX = ".tmp-step_"
STATE_FILE = "state.pt"
META_FILE = "meta.json"


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


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


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


def save_checkpoint(
    ckpt_dir: str | Path,
    step: int,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data_state: dict[str, Any],
    extra: dict[str, Any] | None = None,
    keep: int = 2,
) -> Path:
    """Write `step_{step:08d}` atomically and keep only the newest `keep` checkpoints.

    `model` is the unwrapped module (no DDP/compile wrapper). Under DDP the replicas are
    identical, so rank 0 writes and every rank waits for it. `extra` (JSON-able: config
    hash, losses, ...) is also written to meta.json for humans and tools.
    """
    ckpt_dir = Path(ckpt_dir)
    final = ckpt_dir / f"step_{step:08d}"
    barrier()
    if _is_main():
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{step:08d}.", dir=ckpt_dir))
        state = {
            "step": step,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "data": data_state,
            "rng": _rng_state(),
            "extra": extra or {},
        }
        torch.save(state, tmp / STATE_FILE)
        meta = {"step": step, "data": data_state, **(extra or {})}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        for name in (STATE_FILE, META_FILE):
            _fsync_file(tmp / name)
        fsync_dir(tmp)
        if final.exists():  # re-saving a step (e.g. the final one): swap, then drop the old
            old = ckpt_dir / f"{_TMP_PREFIX}{step:08d}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        fsync_dir(ckpt_dir)
        _prune(ckpt_dir, keep)
    barrier()
    return final


def _prune(ckpt_dir: Path, keep: int) -> None:
    for old in list_checkpoints(ckpt_dir)[:-keep]:
        shutil.rmtree(old)
    # Temp folders left by a process killed mid-save: only ours (the writer) can be live,
    # and it has finished, so they are garbage.
    for leftover in ckpt_dir.glob(f"{_TMP_PREFIX}*"):
        shutil.rmtree(leftover, ignore_errors=True)


def load_checkpoint(
    path: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> dict[str, Any]:
    """Restore model (and optimizer) state and the RNG states; return the rest
    (`step`, `data`, `extra`)."""
    path = Path(path)
    if not (path / STATE_FILE).is_file():
        raise NotFoundError(f"no checkpoint at {path}", hint=f"expected {path / STATE_FILE}")
    state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    _set_rng_state(state["rng"])
    return {"step": state["step"], "data": state["data"], "extra": state["extra"]}
