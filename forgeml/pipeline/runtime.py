"""The stage runtime: every stage is a registered run, config hash + input assets in, assets out.

`run_stage` is the one place that talks to the registry for a stage: it answers from the
cache when a finished run has the same config hash and inputs (like a build system),
records start/end/status/metrics otherwise, and registers the outputs with lineage. The
stage modules beside this one are plain calls into forgeml.data / tokenizer / train / eval.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forgeml.core.config import config_hash
from forgeml.core.errors import ForgeError, NotFoundError
from forgeml.core.io import atomic_write_text
from forgeml.core.workspace import Workspace
from forgeml.governance.labels import stamp_effective_label
from forgeml.registry import Asset, open_registry


@dataclass
class Output:
    """An asset a stage body produced, to be registered by `run_stage`."""

    kind: str
    name: str
    path: Path
    metadata: dict[str, Any] = field(default_factory=dict)
    parents: list[str] = field(default_factory=list)


@dataclass
class StageResult:
    """A stage's run and its registered outputs (the first is the stage's `output`)."""

    stage: str
    run_id: str
    outputs: list[str]
    metrics: dict[str, Any]
    cached: bool

    @property
    def output(self) -> str:
        return self.outputs[0]


Notify = Callable[[str], None]
StageBody = Callable[[Path], tuple[list[Output], dict[str, Any]]]


def run_stage(
    ws: Workspace,
    stage: str,
    config: dict[str, Any],
    inputs: list[str],
    body: StageBody,
    *,
    force: bool = False,
    seed: int | None = None,
    work_dir: Path | None = None,
    notify: Notify | None = None,
) -> StageResult:
    """Run `body(work_dir)` as a registered run, or return the cached run's outputs.

    The cache key is the canonical hash of `config` together with the `inputs` asset ids.
    """
    reg = open_registry(ws)
    digest = config_hash(config)
    if not force:
        hit = reg.find_cached_run(stage, digest, inputs)
        if hit is not None:
            if notify:
                notify(f"{stage}: cached ({', '.join(hit.outputs)})")
            return StageResult(stage, hit.id, list(hit.outputs), dict(hit.metrics), cached=True)
    run = reg.start_run(stage, config, inputs=inputs, seed=seed)
    work_dir = work_dir or ws.runs_dir / stage / run.id
    work_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        work_dir / "run.json",
        json.dumps(
            {"run_id": run.id, "stage": stage, "config_sha256": digest, "config": config},
            indent=1,
            default=str,
        ),
    )
    try:
        outputs, metrics = body(work_dir)
        ids = []
        for out in outputs:
            asset = reg.add_asset(
                out.kind,
                out.name,
                out.path,
                metadata=out.metadata,
                run_id=run.id,
                parents=out.parents,
            )
            stamp_effective_label(reg, asset.id)  # the most sensitive label upstream
            ids.append(asset.id)
    except BaseException as exc:
        reg.finish_run(run.id, status="failed", error=f"{type(exc).__name__}: {exc}"[:2000])
        raise
    reg.finish_run(run.id, status="succeeded", outputs=ids, metrics=metrics)
    if notify:
        notify(f"{stage}: done ({', '.join(ids)})")
    return StageResult(stage, run.id, ids, metrics, cached=False)


def resumable_work_dir(
    ws: Workspace, stage: str, config: dict[str, Any], inputs: list[str], *, describe: str
) -> Path:
    """The work folder of the latest unfinished `stage` run with this config and inputs that
    left checkpoints (what `--resume` continues); `describe` names such a run in the error."""
    digest = config_hash(config)
    runs = open_registry(ws).list_runs(stage=stage)
    for run in sorted(runs, key=lambda r: r.started_at, reverse=True):
        if run.config_hash == digest and sorted(run.inputs) == sorted(inputs):
            path = ws.runs_dir / stage / run.id
            if run.status != "succeeded" and (path / "checkpoints").is_dir():
                return path
    raise NotFoundError(
        f"no interrupted {describe} to resume", hint="run without --resume to start one"
    )


def model_asset(ws: Workspace, model_ref: str) -> Asset:
    """The model asset `model_ref` names (id, prefix, name or alias)."""
    asset = open_registry(ws).get_asset(model_ref)
    if asset.kind != "model":
        raise ForgeError(f"{asset.id} is a {asset.kind}, not a model")
    return asset
