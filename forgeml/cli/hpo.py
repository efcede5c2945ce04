"""`forgeml hpo`: an Optuna search over dotted recipe fields (trials as registered runs, in this
process, as jobs or as Ray tasks), and the hidden `hpo-trial` a queued trial job runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from forgeml.cli.common import console, current_workspace, notify, state
from forgeml.core.config import load_recipe


def hpo_cmd(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML to search around.")],
    space: Annotated[
        Path, typer.Option(help="Search space YAML (params over dotted recipe fields).")
    ],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="Dotted overrides, e.g. train.max_steps=200")
    ] = None,
    trials: Annotated[int, typer.Option(help="Finished trials (complete or pruned) wanted.")] = 10,
    parallel: Annotated[int, typer.Option(help="Trials at once, as jobs on local workers.")] = 1,
    external_workers: Annotated[
        bool, typer.Option(help="With --parallel: only queue the trial jobs for `forgeml worker`s.")
    ] = False,
    executor: Annotated[
        str, typer.Option(help="local (this process or job workers) or ray (Ray tasks).")
    ] = "local",
    ray_address: Annotated[
        str | None, typer.Option(help="With --executor ray: cluster address; default: local.")
    ] = None,
    data: Annotated[str | None, typer.Option(help="Dataset asset (default: the recipe's).")] = None,
    tokenizer: Annotated[str | None, typer.Option(help="Tokenizer asset.")] = None,
    study: Annotated[
        str | None, typer.Option(help="Study name (default: from the inputs).")
    ] = None,
    baseline: Annotated[bool, typer.Option(help="Also train the recipe as given.")] = True,
    out: Annotated[Path | None, typer.Option(help="Write the best recipe here.")] = None,
    force: Annotated[bool, typer.Option(help="Re-run even if cached.")] = False,
) -> None:
    """Search hyper-parameters: `forgeml hpo RECIPE --space space.yaml --trials N`."""
    from forgeml.control.trial_jobs import trial_job_runner
    from forgeml.hpo.space import load_space
    from forgeml.hpo.study import run_hpo

    ws = current_workspace()
    jobs = trial_job_runner(
        ws, parallel=parallel, start_workers=not external_workers, notify=notify
    )
    result = run_hpo(
        ws, load_recipe(recipe, overrides or []), load_space(space), trials=trials,
        parallel=parallel, trial_jobs=jobs, executor=executor, ray_address=ray_address,
        data=data, tokenizer=tokenizer, study_name=study, baseline=baseline, out=out,
        force=force, notify=notify,
    )  # fmt: skip
    table = Table(title=f"study {result.study}" + (" (cached)" if result.cached else ""))
    for col in ("trial", "state", "eval loss", "params", "run"):
        table.add_column(col)
    for t in result.trials:
        value = f"{t['value']:.4f}" if t["value"] is not None else "-"
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in t["params"].items())  # fmt: skip
        table.add_row(str(t["number"]), t["state"], value, escape(params), t["run_id"] or "-")
    if not state.quiet:
        console.print(table)
    base = f" (baseline {result.baseline_value:.4f})" if result.baseline_value else ""
    console.print(
        f"best trial {result.best_trial}: eval loss {result.best_value:.4f}{base}; "
        f"{result.n_complete} complete, {result.n_pruned} pruned, {result.n_failed} failed; "
        f"best recipe {result.best_recipe}"
    )


def hpo_trial(
    study: Annotated[str, typer.Argument(help="Study name (from `forgeml hpo`).")],
    offset: Annotated[int, typer.Option(help="Sampler seed offset of this job.")] = 0,
) -> None:
    """Run one trial of a stored study (what a queued trial job runs)."""
    from forgeml.hpo.study import run_one_trial

    console.print(json.dumps(run_one_trial(current_workspace(), study, offset=offset), default=str))
