"""`forgeml eval {run,gate,drift,report,lm-eval}`: evaluate a model into an eval asset
(perplexity, infill, KPI suites incl. media tasks, lm-evaluation-harness tasks), gate a
candidate, compare two evals for drift, write HTML reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from forgeml.cli.common import console, current_workspace, format_value, notify
from forgeml.core.errors import ForgeError

eval_app = typer.Typer(help="Evaluate models.", no_args_is_help=True)


@eval_app.command("run")
def eval_run(
    model: Annotated[
        str, typer.Argument(help="Model asset (id, prefix, name or alias) or model folder.")
    ],
    suite: Annotated[
        str, typer.Option(help="`perplexity` (held-out), `infill` (--data DIR) or a suite YAML.")
    ] = "perplexity",
    data: Annotated[
        str | None, typer.Option(help="perplexity: token-shards asset (default: model's held-out).")
    ] = None,
    data_root: Annotated[
        Path | None, typer.Option(help="Suite YAML: folder its data paths are relative to.")
    ] = None,
    batch_size: Annotated[int, typer.Option()] = 8,
    max_batches: Annotated[int, typer.Option(help="perplexity: windows to score.")] = 64,
    seq_len: Annotated[int, typer.Option(help="perplexity: window length.")] = 256,
    dtype: Annotated[str, typer.Option(help="auto, fp32 or bf16.")] = "auto",
    force: Annotated[bool, typer.Option(help="Re-run even if cached.")] = False,
) -> None:
    """Evaluate a model → eval asset linked to it: held-out perplexity, or a KPI suite."""
    from forgeml.pipeline.evaluate import evaluate_model

    ws = current_workspace()
    res = evaluate_model(
        ws, model, suite=suite, data=data, data_root=data_root, batch_size=batch_size,
        max_batches=max_batches, seq_len=seq_len, dtype=dtype, force=force, notify=notify,
    )  # fmt: skip
    if suite == "infill":
        m = res.metrics
        console.print(
            f"eval {res.output}: exact match {format_value(m['exact_match'])}, normalised "
            f"{format_value(m['normalized_match'])} over {m['n']} gaps"
        )
    elif suite != "perplexity":
        _print_suite_eval(ws, res.output)
    else:
        keys = ("loss", "perplexity", "bits_per_byte", "unigram_loss", "tokens", "bytes")
        table = Table(title=f"eval {res.output}")
        for key in keys:
            table.add_column(key)
        table.add_row(*(format_value(res.metrics.get(k)) for k in keys))
        console.print(table)


def _print_suite_eval(ws, eval_id: str) -> None:
    from forgeml.registry import open_registry

    path = open_registry(ws).get_asset(eval_id).path
    results = json.loads((path / "results.json").read_text())
    table = Table(title=f"eval {eval_id}")
    for col in ("task", "metric", "value"):
        table.add_column(col)
    for task, info in (results.get("tasks") or {}).items():
        for metric, value in (info.get("metrics") or {}).items():
            table.add_row(task, metric, format_value(value))
    console.print(table)
    console.print(f"report: {path / 'report.html'}", highlight=False)


@eval_app.command("gate")
def eval_gate(
    candidate: Annotated[str, typer.Argument(help="Candidate model.")],
    against: Annotated[str, typer.Option(help="Alias (or model) to compare with.")] = "champion",
    suite: Annotated[Path, typer.Option(help="KPI suite YAML.")] = Path("suite.yaml"),
    data_root: Annotated[Path | None, typer.Option(help="Folder of the suite's data.")] = None,
    confidence: Annotated[float, typer.Option(help="Bootstrap interval level.")] = 0.95,
    strict: Annotated[bool, typer.Option(help="Count warnings as failures.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Compare every KPI of CANDIDATE with the alias's model; exit 1 on a regression."""
    from forgeml.pipeline.eval_suite_stage import gate

    res = gate(
        current_workspace(), candidate, against, suite, data_root=data_root, confidence=confidence,
        strict=strict, notify=notify,
    )  # fmt: skip
    _print_report(res.report, json_out)
    if not res.report.passed:
        raise typer.Exit(1)


def _print_report(report, json_out: bool) -> None:
    """A gate or drift report as JSON, or as its plain-text table."""
    if json_out:
        console.print_json(json.dumps(report.to_dict(), default=str))
    else:
        console.print(report.table(), markup=False, highlight=False)


@eval_app.command("report")
def eval_report(
    refs: Annotated[
        list[str], typer.Argument(help="Eval assets (one: report; several: comparison).")
    ],
    out: Annotated[Path, typer.Option(help="HTML file to write.")] = Path("report.html"),
) -> None:
    """Write an HTML report of one eval, or a comparison of several (with training curves)."""
    from forgeml.eval.gate import compare_evals, load_eval_record
    from forgeml.eval.report import (
        comparison_report_html,
        eval_report_html,
        read_training_curve,
        write_report,
    )
    from forgeml.registry import open_registry

    ws = current_workspace()
    reg = open_registry(ws)
    assets = [reg.get_asset(r) for r in refs]
    records = [load_eval_record(a.path) for a in assets]
    if len(records) == 1:
        html = eval_report_html(records[0])
    else:
        curves = {}
        for a in assets:
            model = reg.get_asset(a.metadata.get("model", "")) if a.metadata.get("model") else None
            metrics = (
                ws.runs_dir / "pretrain" / model.producer_run / "metrics.jsonl" if model else None
            )
            if metrics is not None and metrics.is_file():
                curves[a.name] = read_training_curve(metrics)
        html = comparison_report_html(
            records, labels=[a.name for a in assets], curves=curves,
            gate=compare_evals(records[1], records[0]),
        )  # fmt: skip
    console.print(f"report: {write_report(out, html)}", highlight=False)


@eval_app.command("drift")
def eval_drift(
    evals: Annotated[
        list[str], typer.Argument(help="Two suite eval assets: the reference, then the current.")
    ],
    task: Annotated[str, typer.Option(help="Task of the suite to compare.")],
    p_value: Annotated[float, typer.Option(help="Significance level.")] = 0.01,
    min_examples: Annotated[int, typer.Option(help="Examples needed in each eval.")] = 30,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Drift of one task between two evals: answer length and n-gram shift, and a KS test on
    each KPI's per-example scores (e.g. CER); exit 1 on drift."""
    from forgeml.eval.drift import DriftThresholds
    from forgeml.eval.gate import load_eval_record
    from forgeml.eval.media_suite import eval_drift_report
    from forgeml.registry import open_registry

    if len(evals) != 2:
        raise ForgeError(f"give two evals, the reference then the current (got {len(evals)})")
    reg = open_registry(current_workspace())
    ref, cur = (load_eval_record(reg.get_asset(r).path) for r in evals)
    thresholds = DriftThresholds(p_value=p_value, min_examples=min_examples)
    report = eval_drift_report(ref, cur, task, thresholds=thresholds)
    _print_report(report, json_out)
    if report.drifted:
        raise typer.Exit(1)


@eval_app.command("lm-eval")
def eval_lm_eval(
    model: Annotated[str, typer.Argument(help="Model asset (id, prefix, name or alias).")],
    tasks: Annotated[
        list[str], typer.Option("--tasks", help="lm-eval task name or task YAML path (repeat).")
    ],
    include_path: Annotated[
        list[Path] | None,
        typer.Option("--include-path", help="Folder of lm-eval task YAMLs (repeatable)."),
    ] = None,
    builtin_tasks: Annotated[
        bool, typer.Option(help="Also index lm-eval's bundled tasks (their data must be local).")
    ] = False,
    num_fewshot: Annotated[int | None, typer.Option(help="Shots (default: the task's).")] = None,
    limit: Annotated[int | None, typer.Option(help="Examples per task (for quick checks).")] = None,
    batch_size: Annotated[int, typer.Option()] = 8,
    dtype: Annotated[str, typer.Option(help="auto, fp32 or bf16.")] = "auto",
    seed: Annotated[int, typer.Option()] = 0,
    force: Annotated[bool, typer.Option(help="Re-run even if cached.")] = False,
) -> None:
    """Run local lm-evaluation-harness tasks on a model (offline) → eval asset with lineage."""
    try:
        import lm_eval  # noqa: F401
    except ImportError as exc:
        raise ForgeError(
            f"lm-evaluation-harness is not installed ({exc.name} missing)",
            hint="pip install lm-eval",
        ) from None
    from forgeml.pipeline.lm_eval_stage import lm_eval_stage
    from forgeml.registry import open_registry

    tasks = [t for spec in tasks for t in spec.split(",") if t]
    ws = current_workspace()
    res = lm_eval_stage(
        ws, model, tasks, include_path=include_path or [], builtin_tasks=builtin_tasks,
        num_fewshot=num_fewshot, limit=limit, seed=seed, batch_size=batch_size, dtype=dtype,
        force=force, notify=notify,
    )  # fmt: skip
    table = Table(title=f"eval {res.output}" + (" (cached)" if res.cached else ""))
    for col in ("task/metric", "value"):
        table.add_column(col)
    for key, value in sorted(res.metrics.items()):
        table.add_row(key, format_value(value))
    console.print(table)
    path = open_registry(ws).get_asset(res.output).path
    console.print(f"report: {path / 'report.html'}", highlight=False)
