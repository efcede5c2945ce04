"""`forgeml pipeline run RECIPE`: ingest → (curate) → (mix) → tokenizer → pack → pretrain → eval →
(SFT → DPO → RL, each measured before/after) → (multimodal: align → joint) → generate.

Each stage is a cached run (see runtime.py), so running the same recipe twice repeats
nothing and changing one field re-runs only the stages downstream of it.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forgeml.core.config import Recipe
from forgeml.core.workspace import Workspace
from forgeml.pipeline.generate import generate_text
from forgeml.pipeline.perplexity_stage import perplexity_eval_stage
from forgeml.pipeline.posttrain_stage import Lift
from forgeml.pipeline.prepare import prepare_shards
from forgeml.pipeline.pretrain_stage import pretrain_stage
from forgeml.pipeline.runtime import Notify, StageResult
from forgeml.registry import open_registry


@dataclass
class PipelineResult:
    stages: list[StageResult] = field(default_factory=list)
    samples: list[tuple[str, str]] = field(default_factory=list)
    lifts: list[Lift] = field(default_factory=list)  # post-training before/after numbers
    seconds: float = 0.0

    def stage(self, name: str) -> StageResult:
        return next(s for s in self.stages if s.stage == name)

    def summary(self) -> dict[str, Any]:
        return {
            "stages": [
                {"stage": s.stage, "run": s.run_id, "outputs": s.outputs, "cached": s.cached}
                for s in self.stages
            ],
            "metrics": {s.stage: s.metrics for s in self.stages},
            "samples": [{"prompt": p, "completion": c} for p, c in self.samples],
            "lift": [lift.as_dict() for lift in self.lifts],
            "seconds": self.seconds,
        }


def run_pipeline(
    ws: Workspace,
    recipe: Recipe,
    *,
    force: bool = False,
    resume: bool = False,
    auto_resume: bool = False,
    progress: bool = True,
    notify: Notify | None = None,
) -> PipelineResult:
    """Run every stage of `recipe` in order, skipping those already done."""
    start = time.perf_counter()
    out = PipelineResult()
    # Training prints plain progress lines off a terminal; the data stages' bars would be noise.
    bars = progress and sys.stderr.isatty()
    data = recipe.data
    prepared = prepare_shards(ws, recipe, force=force, progress=bars, notify=notify)
    out.stages += prepared.stages
    model = pretrain_stage(
        ws,
        recipe,
        prepared.shards,
        prepared.tokenizer,
        resume=resume,
        auto_resume=auto_resume,
        force=force,
        progress=progress,
        notify=notify,
    )
    out.stages.append(model)
    if data.heldout_fraction > 0:
        ev = perplexity_eval_stage(
            ws,
            model.output,
            recipe.eval,
            shards_ref=prepared.shards,
            seq_len=recipe.train.seq_len,
            dtype=recipe.train.dtype,
            force=force,
            notify=notify,
        )
        out.stages.append(ev)
    for damaged in _damaged_dirs(data.sources):
        from forgeml.pipeline.infill_stage import infill_eval_stage

        out.stages.append(
            infill_eval_stage(
                ws,
                model.output,
                damaged,
                max_examples=recipe.eval.infill_examples,
                order="spm" if recipe.fim.spm_rate > 0.5 else "psm",  # as the model trained
                force=force,
                notify=notify,
            )  # fmt: skip
        )
    sft_model = None
    if recipe.sft is not None:  # chat fine-tuning of the pre-trained model (sft_stage.py)
        from forgeml.pipeline.sft_stage import merge_adapter_stage, sft_stage

        sft = sft_stage(ws, recipe, model.output, force=force, progress=progress, notify=notify)
        out.stages.append(sft)
        sft_model = sft.output
        if recipe.posttrain is not None and sft_model.startswith("adapter-"):
            merged = merge_adapter_stage(ws, sft_model, force=force, notify=notify)
            out.stages.append(merged)  # DPO, RL and the evals start from a whole model
            sft_model = merged.output
    if recipe.posttrain is not None:  # DPO and RL, each measured before/after
        from forgeml.pipeline.posttrain_stage import posttrain_stages

        stages, lifts = posttrain_stages(
            ws, recipe, model.output, sft_model, force=force, progress=progress, notify=notify
        )
        out.stages += stages
        out.lifts += lifts
    if recipe.multimodal is not None:  # a vision/audio LM (multimodal_stage.py)
        from forgeml.pipeline.multimodal_stage import multimodal_stages

        mm = recipe.multimodal
        base = None if (mm.init or mm.base_model or mm.tokenizer) else model.output
        out.stages += multimodal_stages(
            ws, recipe, base_model=base, resume=resume, force=force, progress=progress,
            notify=notify,
        )  # fmt: skip
    for prompt in recipe.generate.prompts:
        out.samples.append((prompt, generate_text(ws, model.output, prompt, recipe.generate)))
    out.seconds = time.perf_counter() - start
    return out


def _damaged_dirs(sources: list[str]) -> list[Path]:
    """Folders of damaged documents with an answer key (the ACME layout) under the sources:
    the pipeline then reports how well the model restores their gaps (FIM exact match)."""
    found = []
    for src in sources:
        candidate = Path(src) / "damaged"
        if (candidate / "answers.json").is_file():
            found.append(candidate)
    return found


def asset_paths(ws: Workspace, result: PipelineResult) -> dict[str, str]:
    """Where each output asset's files are, for the summary table."""
    reg = open_registry(ws)
    return {i: str(reg.get_asset(i).path) for s in result.stages for i in s.outputs}
