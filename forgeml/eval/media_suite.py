"""Media task kinds in KPI suites (image QA, captioning, speech and page transcription) and
the model side that answers them, beside the text kinds of forgeml.eval.tasks.

`load_eval_model` opens a model folder for a suite: a vision/audio LM (save_multimodal, or an
HF Llava/Voxtral folder) as a `MediaEvalModel`, any other as a text `EvalModel`;
`check_media_support` refuses, in one line, a suite whose media the model cannot read;
`eval_drift_report` compares two evals' outputs and scores with forgeml.eval.drift.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from forgeml.core.errors import DataError, ForgeError
from forgeml.core.runtime import autocast
from forgeml.eval.drift import DriftCheck, DriftReport, DriftThresholds, drift_report, ks_test
from forgeml.eval.gate import EvalRecord
from forgeml.eval.media_generate import MediaPrompt, generate_media_answers, score_media_answers
from forgeml.eval.suite import MEDIA_FIELDS, MEDIA_TASK_DEFAULTS, TaskSpec
from forgeml.eval.tasks import EvalModel, TaskResult, read_model_tokenizer, render
from forgeml.models.hf_multimodal_io import (
    MULTIMODAL_CONFIG,
    load_multimodal,
    read_multimodal_config,
)
from forgeml.models.multimodal import MultimodalConfig, MultimodalLM

# What each media kind reads when its records name no media at all.
KIND_MEDIA = {"image_qa": "image", "caption": "image", "page_transcription": "image",
              "transcription": "audio"}  # fmt: skip
ENCODER_OF = {"image": "vision", "audio": "audio"}


class MediaEvalModel(EvalModel):
    """A vision/audio LM on a suite's model side: media tasks get greedy answers
    (`generate_media`, through forgeml.eval.media_generate, one prompt at a time) and text
    tasks go to its LM as for any `EvalModel`, so one suite can hold both."""

    def __init__(self, model: MultimodalLM, tokenizer: Any, **options: Any) -> None:
        super().__init__(model.lm, tokenizer, **options)
        self.multimodal = model.eval()
        self.media = media_of(model.cfg)

    @classmethod
    def from_dir(cls, model_dir: str | Path, **options: Any) -> MediaEvalModel:
        """A save_multimodal (or HF Llava/Voxtral) folder with its tokenizer.json; `options`
        as for `EvalModel` (device, dtype, batch_size)."""
        tokenizer = read_model_tokenizer(model_dir)
        model = load_multimodal(model_dir, device=options.get("device", "cpu"))
        return cls(model, tokenizer, **options)

    def generate_media(self, items: Sequence[MediaPrompt], max_new_tokens: int) -> list[str]:
        """Greedy answer text for each media prompt (the `LanguageModel` of media tasks)."""
        with autocast(self.device, self.dtype):
            return generate_media_answers(
                self.multimodal, self.tok, items, max_new_tokens=max_new_tokens
            )


def is_multimodal_dir(model_dir: str | Path) -> bool:
    """True for a save_multimodal folder or an HF Llava/Voxtral one."""
    model_dir = Path(model_dir)
    if (model_dir / MULTIMODAL_CONFIG).is_file():
        return True
    config = model_dir / "config.json"
    if not config.is_file():
        return False
    return json.loads(config.read_text()).get("model_type") in ("llava", "voxtral")


def load_eval_model(
    model_dir: str | Path, *, device: str = "cpu", dtype: str = "auto", batch_size: int = 8
) -> EvalModel | MediaEvalModel:
    """The suite model side of a model folder: `MediaEvalModel` for a vision/audio LM,
    `EvalModel` otherwise."""
    cls = MediaEvalModel if is_multimodal_dir(model_dir) else EvalModel
    return cls.from_dir(model_dir, device=device, dtype=dtype, batch_size=batch_size)


def model_media(model_dir: str | Path) -> frozenset[str]:
    """The media a model folder reads ('image', 'audio'), without loading its weights."""
    if not is_multimodal_dir(model_dir):
        return frozenset()
    return media_of(read_multimodal_config(model_dir))


def media_of(cfg: MultimodalConfig) -> frozenset[str]:
    """'image' for a model with a vision encoder, 'audio' for one with an audio encoder."""
    return frozenset(kind for kind, enc in ENCODER_OF.items() if getattr(cfg, enc) is not None)


def task_media(task: TaskSpec, records: Sequence[dict[str, Any]]) -> set[str]:
    """The media a task's records give (its kind's medium when they name none)."""
    given = {f for f in MEDIA_FIELDS if any(r.get(f) for r in records)}
    return given or {KIND_MEDIA[task.kind]}


def check_media_support(
    tasks: Sequence[TaskSpec],
    records: dict[str, Sequence[dict[str, Any]]],
    media: frozenset[str],
    model: str,
) -> None:
    """Raise one clear line when a media task gives media `model` cannot read (`media`: what
    it reads; `records`: each task's examples by task name)."""
    for task in tasks:
        if task.kind not in MEDIA_TASK_DEFAULTS:
            continue
        missing = sorted(task_media(task, records[task.name]) - media)
        if missing:
            what = "is text-only" if not media else f"reads only {', '.join(sorted(media))}"
            raise ForgeError(
                f"task {task.name} ({task.kind}) gives {' and '.join(missing)} but model "
                f"{model} {what}",
                hint="evaluate a vision/audio LM (a save_multimodal folder), or drop the task",
            )


def lm_media(lm: Any) -> frozenset[str]:
    """What a suite model side reads: its `media` when it can `generate_media`, else none."""
    return frozenset(getattr(lm, "media", ())) if hasattr(lm, "generate_media") else frozenset()


def run_media_kind(lm: Any, task: TaskSpec, records: list[dict[str, Any]]) -> TaskResult:
    """A media task: `lm.generate_media` answers each record's rendered prompt about its
    images/audio (absolute paths, as forgeml.eval.suite.load_examples resolves them), then
    `score_media_answers` scores them (kind defaults: forgeml.eval.suite.MEDIA_TASK_DEFAULTS)."""
    check_media_support([task], {task.name: records}, lm_media(lm), type(lm).__name__)

    def paths(record: dict[str, Any], field: str) -> tuple[str, ...]:
        value = record.get(field) or []
        return tuple([value] if isinstance(value, str) else value)

    items = [
        MediaPrompt(render(task.prompt, r, task.name), paths(r, "image"), paths(r, "audio"))
        for r in records
    ]
    outputs = lm.generate_media(items, task.max_new_tokens)
    return score_media_answers(task, records, items, outputs)


def eval_traffic(record: EvalRecord, task: str) -> list[dict[str, Any]]:
    """A suite eval's examples of one task as drift records {"prompt", "completion"}."""
    if task not in record.examples:
        raise DataError(f"eval {record.path} has no task '{task}'")
    return [
        {"prompt": str(e.get("prompt", "")), "completion": e.get("output")}
        for e in record.examples[task]
    ]


def eval_drift_report(
    reference: EvalRecord,
    current: EvalRecord,
    task: str,
    thresholds: DriftThresholds | None = None,
) -> DriftReport:
    """Drift of one task between two evals (two models, or one model at two times):
    forgeml.eval.drift's prompt/answer checks on the examples, and a two-sample KS test on
    each KPI's per-example scores (e.g. the CER distribution), flagged below the report's
    family-wise level split over all its checks."""
    th = thresholds or DriftThresholds()
    report = drift_report(eval_traffic(reference, task), eval_traffic(current, task), thresholds=th)
    kpis = [k["metric"] for k in current.summary["tasks"][task]["kpis"]]
    alpha = th.p_value / (len(report.checks) + len(kpis))
    for metric in kpis:
        ref, cur = (
            [float(e["scores"][metric]) for e in rec.examples[task] if metric in e["scores"]]
            for rec in (reference, current)
        )
        d, p = ks_test(ref, cur)
        report.checks.append(
            DriftCheck(
                f"{task} {metric}",
                "ks_p_value",
                p,
                alpha,
                p < alpha,
                sum(ref) / len(ref),
                sum(cur) / len(cur),
                detail=f"D={d:.3f}",
            )
        )
    return report
