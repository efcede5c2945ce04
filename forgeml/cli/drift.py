"""`forgeml drift report`: length, n-gram and output-proxy shifts between two windows of logged
serving traffic (plain records or the audit log); exits 1 on drift."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from forgeml.cli.common import console, current_workspace
from forgeml.core.errors import ForgeError

drift_app = typer.Typer(help="Drift on logged serving traffic.", no_args_is_help=True)


@drift_app.command("report")
def drift_report_cmd(
    reference: Annotated[
        Path | None, typer.Option(help="Reference traffic (JSONL file or folder).")
    ] = None,
    current: Annotated[Path | None, typer.Option(help="Current traffic to compare.")] = None,
    log: Annotated[
        Path | None,
        typer.Option(help="One log (e.g. the audit log), split in time instead."),
    ] = None,
    split: Annotated[float, typer.Option(help="With --log: share used as reference.")] = 0.5,
    model: Annotated[
        str | None, typer.Option(help="Also compare the model's own loss on prompts.")
    ] = None,
    reward_model: Annotated[
        str | None,
        typer.Option(help="Also compare reward-model scores of prompt + completion as served."),
    ] = None,
    psi: Annotated[float, typer.Option(help="PSI threshold.")] = 0.2,
    p_value: Annotated[float, typer.Option(help="Significance level.")] = 0.01,
    reward_effect: Annotated[
        float, typer.Option(help="Reward-score shift (Cohen's d) also needed.")
    ] = 0.2,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Drift report on logged traffic: length, n-gram and output-proxy shifts; exit 1 on drift.

    Reads plain traffic records or the serving audit log (`forgeml serve --log-bodies`)."""
    from collections import Counter

    from forgeml.eval.drift import DriftThresholds, drift_report, load_traffic, split_by_time

    if log is not None:
        logs = [load_traffic(log)]
        ref, cur = split_by_time(logs[0].records, split)
    elif reference is not None and current is not None:
        logs = [load_traffic(reference), load_traffic(current)]
        ref, cur = logs[0].records, logs[1].records
    else:
        raise ForgeError("give --reference and --current, or --log", hint="see --help")
    kwargs = {}
    if model:
        from forgeml.eval.tasks import EvalModel
        from forgeml.registry import open_registry

        lm = EvalModel.from_dir(open_registry(current_workspace()).get_asset(model).path)
        kwargs = {"tokenize": lm.encode, "prompt_nll": lm.rolling_nll}
    if reward_model:
        from forgeml.train.reward_model import RewardScorer

        # Logged prompts are what the model saw (chat ones already through the template).
        kwargs["reward"] = RewardScorer(current_workspace(), reward_model, prompt_format="raw")
    thresholds = DriftThresholds(psi=psi, p_value=p_value, reward_effect=reward_effect)
    skipped = sum((Counter(t.skipped) for t in logs), Counter())
    report = drift_report(ref, cur, thresholds=thresholds, skipped=dict(skipped), **kwargs)
    if json_out:
        console.print_json(json.dumps(report.to_dict(), default=str))
    else:
        console.print(report.table(), markup=False, highlight=False)
    if report.drifted:
        raise typer.Exit(1)
