"""KPI suite evals as registered runs, the regression gate, promotion and rollback.

`eval_suite_stage` evaluates a model asset on a suite through `run_stage` (cached by suite
hash, data fingerprints and model id) into an eval asset holding results.json, per-example
JSONL files and an HTML report. `gate` compares a candidate with an alias's model on the
same suite; `promote` moves the alias only when the gate passes, or when forced with a reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forgeml.core.errors import ForgeError
from forgeml.core.io import atomic_write_text
from forgeml.core.workspace import Workspace
from forgeml.eval.gate import (
    EXAMPLES_DIR,
    RESULTS_FILE,
    GateReport,
    compare_evals,
    load_eval_record,
)
from forgeml.eval.suite import Suite, load_suite
from forgeml.pipeline.runtime import Notify, Output, StageResult, run_stage
from forgeml.registry import open_registry


class GateFailed(ForgeError):
    """The candidate regressed on at least one KPI; `report` says which."""

    def __init__(self, report: GateReport) -> None:
        failed = [f"{c.task}/{c.metric}" for c in report.checks if c.status != "pass"]
        super().__init__(
            f"regression gate failed for {report.candidate} vs {report.baseline}: "
            f"{', '.join(failed)}",
            hint="fix the model, or pass --force with --reason to promote anyway",
        )
        self.report = report


def _as_suite(suite: Suite | str | Path, data_root: str | Path | None) -> Suite:
    return suite if isinstance(suite, Suite) else load_suite(suite, data_root=data_root)


def eval_suite_stage(
    ws: Workspace,
    model_ref: str,
    suite_path: Suite | str | Path,
    *,
    data_root: str | Path | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
    force: bool = False,
    notify: Notify | None = None,
    lm=None,
) -> StageResult:
    """Run every task of a suite on a model asset → eval asset (parents: model + datasets).

    `lm` replaces the model's own `EvalModel` (tests use scripted models)."""
    from forgeml.core.runtime import pick_device, seed_everything
    from forgeml.eval.media_suite import check_media_support, lm_media, load_eval_model, model_media
    from forgeml.eval.report import eval_report_html
    from forgeml.eval.tasks import kpis_of, run_task, task_data

    reg = open_registry(ws)
    model_asset = reg.get_asset(model_ref)
    if model_asset.kind != "model":
        raise ForgeError(f"{model_asset.id} is a {model_asset.kind}, not a model")
    suite = _as_suite(suite_path, data_root)
    loaded = {t.name: task_data(suite, t, reg) for t in suite.spec.tasks}
    media = lm_media(lm) if lm is not None else model_media(model_asset.path)
    records = {name: ex.records for name, (ex, _) in loaded.items()}
    check_media_support(suite.spec.tasks, records, media, f"{model_asset.name} ({model_asset.id})")
    datasets = sorted({ex.asset_id for ex, _ in loaded.values() if ex.asset_id})
    config = {
        "suite": suite.name,
        "suite_version": suite.version,
        "suite_hash": suite.digest,
        "data": {name: ex.fingerprint for name, (ex, _) in loaded.items()},
        "dtype": dtype,
        "scripted_model": type(lm).__name__ if lm is not None else None,
    }

    def body(work: Path) -> tuple[list[Output], dict[str, Any]]:
        seed_everything(suite.spec.seed)
        model = lm
        if model is None:
            dev = pick_device(device)
            model = load_eval_model(
                model_asset.path,
                device=dev,
                dtype=dtype,
                batch_size=batch_size or suite.spec.batch_size,
            )
        out = work / "eval"
        (out / EXAMPLES_DIR).mkdir(parents=True, exist_ok=True)
        tasks: dict[str, Any] = {}
        metrics: dict[str, float] = {}
        for task in suite.spec.tasks:
            if notify:
                notify(f"eval {suite.name}: {task.name} ({task.kind})")
            examples, pool = loaded[task.name]
            result = run_task(model, suite, task, examples, pool)
            lines = "".join(json.dumps(e, default=str) + "\n" for e in result.examples)
            atomic_write_text(out / EXAMPLES_DIR / f"{task.name}.jsonl", lines)
            tasks[task.name] = {
                "kind": task.kind,
                "primary": result.primary,
                "metrics": result.metrics,
                "kpis": kpis_of(task, result),
                "data": examples.fingerprint,
                "dataset": examples.asset_id,
            }
            metrics.update({f"{task.name}/{k}": v for k, v in result.metrics.items()})
        summary = {
            "suite": suite.name,
            "suite_version": suite.version,
            "suite_hash": suite.digest,
            "suite_path": str(suite.path) if suite.path else None,
            "model": model_asset.id,
            "model_name": model_asset.name,
            "tasks": tasks,
        }
        atomic_write_text(out / RESULTS_FILE, json.dumps(summary, indent=1))
        record = load_eval_record(out)
        atomic_write_text(out / "report.html", eval_report_html(record))
        meta = {k: v for k, v in summary.items() if k != "tasks"}
        meta["format"] = "eval-suite"
        meta["metrics"] = metrics
        name = f"{model_asset.name}-{suite.name}"
        parents = [model_asset.id, *datasets]
        return [Output("eval", name, out, meta, parents=parents)], metrics

    return run_stage(
        ws,
        "eval-suite",
        config,
        [model_asset.id, *datasets],
        body,
        force=force,
        seed=suite.spec.seed,
        notify=notify,
    )


@dataclass(frozen=True)
class GateResult:
    report: GateReport
    candidate_eval: str
    baseline_eval: str
    baseline_model: str


def gate(
    ws: Workspace,
    candidate_ref: str,
    against_alias: str,
    suite_path: Suite | str | Path,
    *,
    data_root: str | Path | None = None,
    confidence: float = 0.95,
    strict: bool = False,
    notify: Notify | None = None,
    lms: dict[str, Any] | None = None,
) -> GateResult:
    """Evaluate the candidate and the alias's model on the suite (cached when already done)
    and compare every KPI. `lms` maps model ids to scripted models (tests)."""
    reg = open_registry(ws)
    baseline_id = reg.resolve_alias(against_alias)
    if baseline_id is None:
        baseline_id = reg.get_asset(against_alias).id
    candidate_id = reg.get_asset(candidate_ref).id
    suite = _as_suite(suite_path, data_root)
    lms = lms or {}
    runs = {
        mid: eval_suite_stage(ws, mid, suite, notify=notify, lm=lms.get(mid))
        for mid in dict.fromkeys([candidate_id, baseline_id])
    }
    cand_eval = reg.get_asset(runs[candidate_id].output)
    base_eval = reg.get_asset(runs[baseline_id].output)
    report = compare_evals(
        load_eval_record(cand_eval.path),
        load_eval_record(base_eval.path),
        confidence=confidence,
        strict=strict,
    )
    report.baseline = f"{against_alias} ({baseline_id})"
    return GateResult(report, cand_eval.id, base_eval.id, baseline_id)


@dataclass(frozen=True)
class PromoteResult:
    alias: str
    asset_id: str
    previous: str | None
    forced: bool
    gate: GateResult | None


def promote(
    ws: Workspace,
    model_ref: str,
    alias: str,
    *,
    suite_path: Suite | str | Path | None = None,
    force: bool = False,
    reason: str = "",
    actor: str = "user",
    data_root: str | Path | None = None,
    notify: Notify | None = None,
    lms: dict[str, Any] | None = None,
) -> PromoteResult:
    """Point `alias` at the model if it passes the gate against the alias's current model.

    The first promotion of an alias needs no gate. `force` skips a failing gate but needs a
    reason; the gate verdict and the reason go into the alias history (the audit trail)."""
    reg = open_registry(ws)
    model_id = reg.get_asset(model_ref).id
    previous = reg.resolve_alias(alias)
    if force and not reason.strip():
        raise ForgeError("--force needs a --reason", hint="say why the gate is overridden")
    result = None
    note = reason
    if previous is not None and previous != model_id:
        if suite_path is None and not force:
            raise ForgeError(
                f"alias '{alias}' already points at {previous}; promotion needs a gate",
                hint="pass --suite SUITE.yaml, or --force --reason '...'",
            )
        if suite_path is not None:
            result = gate(
                ws, model_id, alias, suite_path, data_root=data_root, notify=notify, lms=lms
            )
            verdict = "passed" if result.report.passed else "failed"
            if not result.report.passed and not force:
                raise GateFailed(result.report)
            note = f"gate {verdict} (eval {result.candidate_eval} vs {result.baseline_eval})"
            note += f"; {reason}" if reason else ""
        if force:
            note = f"FORCED: {reason}" + (f" [{note}]" if result is not None else "")
    reg.set_alias(alias, model_id, reason=note or "initial promotion", actor=actor)
    return PromoteResult(alias, model_id, previous, force, result)


def rollback(ws: Workspace, alias: str, *, reason: str = "", actor: str = "user") -> str:
    """Move the alias back to its previous target; returns the model id it now points at."""
    return open_registry(ws).rollback_alias(alias, reason=reason or "rollback", actor=actor)
