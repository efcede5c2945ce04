"""The resume kit every training loop shares: a run's identity (the settings that decide its
weights, hashed into each checkpoint) and `resume_or_start`, which continues the latest
checkpoint only when that identity is unchanged. Used by all six loops in forgeml.train.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from torch import nn

from forgeml.core.config import OptimConfig, Recipe, TrainConfig, config_hash, save_resolved
from forgeml.core.errors import ConfigError, NotFoundError
from forgeml.core.io import atomic_write_text
from forgeml.train.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    read_checkpoint_meta,
    save_checkpoint,
)
from forgeml.train.distributed import barrier
from forgeml.train.metrics import MetricsLogger
from forgeml.train.optim import build_optimizer

# `train` settings that never change the trained weights: a resumed run may change them.
# (compile, activation checkpointing and the parallel strategy change only rounding: the
# order of sums, like the batch split; a run may resume under another strategy.)
RESULT_NEUTRAL_TRAIN_FIELDS = frozenset({
    "eval_every", "eval_batches", "checkpoint_every", "keep_checkpoints", "log_every",
    "compile", "device", "activation_checkpointing", "async_checkpoint", "strategy",
    "cpu_offload",
})  # fmt: skip
# How the global batch is split (micro-batch x accumulation x processes): neutral in the
# loops that record the global batch in the checkpoint and keep it on resume.
BATCH_SPLIT_FIELDS = frozenset({"micro_batch_size", "grad_accum_steps"})


@dataclass
class RunStart:
    """Where a loop starts: step 0 of a new run, or the latest checkpoint of a resumed one
    (`saved`: what the loop stored in it, e.g. losses; `data`: its data position)."""

    step: int = 0
    saved: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    resumed: bool = False


def identity_record(identity: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint stores about its run: the identity and its hash."""
    return {"config_hash": config_hash(identity), "results_config": identity}


def resume_or_start(
    ckpt_dir: Path, identity: dict[str, Any], *, model: nn.Module,
    optimizer: torch.optim.Optimizer, resume: bool | Literal["auto"],
) -> RunStart:  # fmt: skip
    """A new run (`resume` False), or the latest checkpoint in `ckpt_dir` restored into
    `model` and `optimizer` (with the RNG states) after checking it belongs to the same run:
    a checkpoint whose identity differs from `identity` is refused, naming what changed,
    before any tensor is read. The checkpoint may come from any number of processes (it is
    resharded on load); every process calls this. `resume="auto"` continues the latest
    checkpoint when there is one and starts otherwise (elastic restarts, requeued jobs)."""
    if not resume:
        return RunStart()
    path = latest_checkpoint(ckpt_dir)
    if path is None and resume == "auto":
        return RunStart()
    if path is None:
        raise NotFoundError(
            f"--resume: no checkpoint in {ckpt_dir}", hint="run without --resume to start"
        )
    check_same_run(read_checkpoint_meta(path)["extra"], identity, path)
    state = load_checkpoint(path, model=model, optimizer=optimizer)
    return RunStart(state["step"], state["extra"], state["data"], resumed=True)


class OpenedRun(NamedTuple):
    """A training loop's start: its optimizer, checkpoint folder, where it resumes, and its
    metrics log (continued after the resumed step, or started empty)."""

    optimizer: torch.optim.AdamW
    ckpt_dir: Path
    start: RunStart
    metrics: MetricsLogger


def open_run(
    out_dir: Path, identity: dict[str, Any], *, model: nn.Module, optim: OptimConfig,
    device: str, resume: bool | Literal["auto"], max_steps: int, progress: bool, is_main: bool,
) -> OpenedRun:  # fmt: skip
    """The optimizer for `model`, the run resumed from `out_dir/checkpoints` when asked
    (`resume_or_start`), and `out_dir/metrics.jsonl` opened to go on from there."""
    optimizer = build_optimizer(model, optim, device)
    ckpt_dir = out_dir / "checkpoints"
    start = resume_or_start(ckpt_dir, identity, model=model, optimizer=optimizer, resume=resume)
    metrics = MetricsLogger(
        out_dir / "metrics.jsonl", max_steps=max_steps, progress=progress,
        resume_step=start.step if start.resumed else None, is_main=is_main,
    )  # fmt: skip
    return OpenedRun(optimizer, ckpt_dir, start, metrics)


def checkpoint_if_due(
    ckpt_dir: Path, done: int, tcfg: TrainConfig, identity: dict[str, Any], *,
    model: nn.Module, optimizer: torch.optim.Optimizer,
    data_state: Callable[[], dict[str, Any]] | None = None,
    extra: dict[str, Any] | None = None, async_save: bool = False,
) -> None:  # fmt: skip
    """Checkpoint after step `done` when it is the run's last or `train.checkpoint_every`
    divides it. The checkpoint records the run's identity (only the same run resumes it),
    `data_state()` (default: the step) and `extra`; `async_save` never applies to the last."""
    final = done == tcfg.max_steps
    if not (final or (tcfg.checkpoint_every and done % tcfg.checkpoint_every == 0)):
        return
    save_checkpoint(
        ckpt_dir, done, model=model, optimizer=optimizer,
        data_state=data_state() if data_state else {"step": done}, keep=tcfg.keep_checkpoints,
        async_save=async_save and not final,
        extra={**identity_record(identity), **(extra or {})},
    )  # fmt: skip


def finish_run(
    out_dir: Path, summary: dict[str, Any], *, is_main: bool, recipe: Recipe | None = None
) -> None:
    """The main process writes `summary.json` (and the resolved `recipe.yaml`); every process
    returns only once they, and whatever it wrote before, are on disk."""
    if is_main:
        if recipe is not None:
            save_resolved(recipe, out_dir / "recipe.yaml")
        atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    barrier()


def check_same_run(saved: dict[str, Any], identity: dict[str, Any], path: Path) -> None:
    """Raise a ConfigError naming each setting of `identity` that differs from the one the
    checkpoint at `path` was saved with (`saved`: its `identity_record`)."""
    if saved.get("config_hash") == config_hash(identity):
        return
    if "results_config" in saved:
        old, new = _flatten(saved["results_config"]), _flatten(identity)
        changed = [
            f"{key}: {old.get(key)!r} -> {new.get(key)!r}"
            for key in [*new, *(k for k in old if k not in new)]
            if old.get(key) != new.get(key)
        ]
    else:
        changed = []  # a checkpoint that records no settings, only (maybe) a hash
    raise ConfigError(
        f"cannot resume {path}: the recipe changed in settings that change the trained "
        f"weights ({'; '.join(changed) or 'config hash differs'})",
        hint="resume with the recipe the run started with, or start a new run (other --out)",
    )


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 1}} -> {"optim.lr": 1}: a changed setting is named by its full key."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@contextlib.contextmanager
def deterministic(enabled: bool) -> Iterator[None]:
    """Bitwise-reproducible resume on CPU: nondeterministic kernels warn while it is on."""
    # The debug-mode API sets the same switch as use_deterministic_algorithms without
    # importing torch._inductor (seconds per process).
    before = torch.get_deterministic_debug_mode()
    if enabled and not before:
        torch.set_deterministic_debug_mode("warn")
    try:
        yield
    finally:
        torch.set_deterministic_debug_mode(before)


def global_batch_split(
    start: RunStart, tcfg: TrainConfig, world_size: int, *, unit: str, section: str,
    is_main: bool,
) -> tuple[int, int]:  # fmt: skip
    """The global batch and the gradient-accumulation steps a loop runs with: a resumed run
    keeps its checkpoint's global batch (the identity lets the split change, not the batch),
    split into `tcfg.micro_batch_size` per process; the run is refused when it cannot be."""
    global_batch = (
        start.data["global_batch_size"] if start.resumed
        else tcfg.micro_batch_size * tcfg.grad_accum_steps * world_size
    )  # fmt: skip
    grad_accum, rest = divmod(global_batch, tcfg.micro_batch_size * world_size)
    if rest or not grad_accum:
        raise ConfigError(
            f"global batch of {global_batch} {unit} cannot be split into micro-batches of "
            f"{tcfg.micro_batch_size} over {world_size} processes",
            hint=f"pick a {section}.micro_batch_size that divides it",
        )
    if grad_accum != tcfg.grad_accum_steps and is_main:
        print(
            f"keeping the checkpoint's global batch of {global_batch} {unit}: "
            f"grad_accum_steps {tcfg.grad_accum_steps} -> {grad_accum}",
            file=sys.stderr,
        )
    return global_batch, grad_accum


def eval_due(done: int, tcfg: TrainConfig) -> bool:
    """Whether a loop evaluates after step `done`: every `eval_every` steps and at the last."""
    return done == tcfg.max_steps or bool(tcfg.eval_every and done % tcfg.eval_every == 0)
