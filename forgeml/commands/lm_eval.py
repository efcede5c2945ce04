"""CLI for lm-evaluation-harness interop: `forgeml eval lm-eval MODEL --tasks T`
(registered on forgeml.cli's eval app; needs the `lm-eval` package)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from forgeml.cli import _fmt, _notify, _ws, console, eval_app
from forgeml.core.errors import ForgeError


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
    from forgeml.pipeline.stages import open_registry

    tasks = [t for spec in tasks for t in spec.split(",") if t]
    ws = _ws()
    res = lm_eval_stage(
        ws, model, tasks, include_path=include_path or [], builtin_tasks=builtin_tasks,
        num_fewshot=num_fewshot, limit=limit, seed=seed, batch_size=batch_size, dtype=dtype,
        force=force, notify=_notify,
    )  # fmt: skip
    table = Table(title=f"eval {res.output}" + (" (cached)" if res.cached else ""))
    for col in ("task/metric", "value"):
        table.add_column(col)
    for key, value in sorted(res.metrics.items()):
        table.add_row(key, _fmt(value))
    console.print(table)
    path = open_registry(ws).get_asset(res.output).path
    console.print(f"report: {path / 'report.html'}", highlight=False)
