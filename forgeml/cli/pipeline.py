"""`forgeml pipeline run`: every stage of a recipe, cached ones skipped, and the summary tables
(assets made, the numbers, post-training lift, samples)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from forgeml.cli.common import console, current_workspace, format_value, notify, state
from forgeml.core.config import load_recipe

if TYPE_CHECKING:
    from forgeml.core.workspace import Workspace
    from forgeml.pipeline.run import PipelineResult

pipeline_app = typer.Typer(help="Run whole recipes.", no_args_is_help=True)


@pipeline_app.command("run")
def pipeline_run(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML.")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="Dotted overrides, e.g. train.max_steps=200")
    ] = None,
    force: Annotated[bool, typer.Option(help="Re-run every stage even if cached.")] = False,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted pre-training.")] = False,
    auto_resume: Annotated[
        bool, typer.Option(help="Continue an interrupted pre-training if there is one.")
    ] = False,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the summary as JSON here.")
    ] = None,
) -> None:
    """Run every stage of a recipe (ingest → tokenizer → pack → pretrain → eval → generate)."""
    from forgeml.pipeline.run import run_pipeline

    ws = current_workspace()
    rec = load_recipe(recipe, overrides or [])
    result = run_pipeline(
        ws,
        rec,
        force=force,
        resume=resume,
        auto_resume=auto_resume,
        progress=not state.quiet,
        notify=notify,
    )
    print_pipeline_summary(ws, result)
    if json_out:
        from forgeml.core.io import atomic_write_text

        atomic_write_text(json_out, json.dumps(result.summary(), indent=1, default=str))


def print_pipeline_summary(ws: Workspace, result: PipelineResult) -> None:
    """The tables `pipeline run` prints: assets made or cached, the numbers, post-training lift."""
    from forgeml.pipeline.run import asset_paths

    paths = asset_paths(ws, result)
    table = Table(title=f"forgeml pipeline — {result.seconds:.0f} s")
    for col in ("stage", "asset", "status", "where"):
        table.add_column(col, overflow="fold")
    for s in result.stages:
        for out in s.outputs:
            rel = Path(paths[out])
            try:
                rel = rel.relative_to(ws.root)
            except ValueError:
                pass
            table.add_row(s.stage, out, "cached" if s.cached else "made", str(rel))
    console.print(table)
    metrics = Table(title="numbers")
    metrics.add_column("metric")
    metrics.add_column("value", justify="right")
    stage_metrics: dict[str, dict] = {}
    for s in result.stages:  # both evals (perplexity, infill) are "eval" runs; keys differ
        if s.stage == "sft":  # post-training has its own before/after table below
            break
        stage_metrics.setdefault(s.stage, {}).update(s.metrics)
    rows = [
        ("documents kept / found", _pair(stage_metrics.get("ingest", {}), "kept", "found")),
        ("curated kept / read", _pair(stage_metrics.get("curate", {}), "kept", "input")),
        ("duplicates removed", stage_metrics.get("curate", {}).get("duplicates_removed")),
        ("PII values redacted", stage_metrics.get("curate", {}).get("pii_redacted")),
        ("secrets redacted", stage_metrics.get("curate", {}).get("secrets_redacted")),
        ("tokenizer vocab", stage_metrics.get("tokenizer", {}).get("vocab_size")),
        ("train tokens", stage_metrics.get("pack", {}).get("train_tokens")),
        ("held-out tokens", stage_metrics.get("pack", {}).get("heldout_tokens")),
        ("pretrain steps", stage_metrics.get("pretrain", {}).get("steps")),
        ("final train loss", stage_metrics.get("pretrain", {}).get("final_train_loss")),
        ("held-out loss", stage_metrics.get("eval", {}).get("loss")),
        ("unigram baseline loss", stage_metrics.get("eval", {}).get("unigram_loss")),
        ("held-out perplexity", stage_metrics.get("eval", {}).get("perplexity")),
        ("bits per byte", stage_metrics.get("eval", {}).get("bits_per_byte")),
        ("train tokens/s", stage_metrics.get("pretrain", {}).get("tokens_per_s")),
        ("infill exact match", stage_metrics.get("eval", {}).get("exact_match")),
        ("infill normalised match", stage_metrics.get("eval", {}).get("normalized_match")),
        ("infill gaps scored", stage_metrics.get("eval", {}).get("n")),
    ]
    for name, value in rows:
        if value is not None:
            metrics.add_row(name, format_value(value))
    console.print(metrics)
    if result.lifts:
        lift = Table(title="post-training, measured on held-out data")
        for col, justify in (("stage", "left"), ("metric", "left"), ("before", "right"),
                             ("after", "right"), ("n", "right")):  # fmt: skip
            lift.add_column(col, justify=justify)
        for row in result.lifts:
            after = format_value(row.after) + (f" ± {row.se:.3f}" if row.se is not None else "")
            lift.add_row(row.stage, row.metric, format_value(row.before), after, str(row.n))
        console.print(lift)
    for prompt, completion in result.samples:
        console.print("[bold]sample[/]", highlight=False)
        console.print(f"{prompt}⟦{completion}⟧", markup=False, highlight=False)
    console.print(
        f"workspace: {ws.root}  (see `forgeml -w {ws.root} assets list`)", highlight=False
    )


def _pair(m: dict, a: str, b: str) -> str | None:
    return f"{m[a]} / {m[b]}" if a in m and b in m else None
