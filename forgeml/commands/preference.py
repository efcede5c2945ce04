"""CLI commands for preference optimisation and reward models: `forgeml train dpo` and
`forgeml train rm` (registered on the apps of forgeml.cli)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from forgeml.cli import _fmt, _notify, _ws, console, state, train_app
from forgeml.core.config import load_recipe

Overrides = Annotated[
    list[str] | None, typer.Argument(help="Dotted overrides, e.g. dpo.beta=0.2 train.max_steps=50")
]
Base = Annotated[str, typer.Option("--base", help="Policy / backbone model asset (id, alias).")]
Data = Annotated[str, typer.Option("--data", help="Preference JSONL file or its dataset asset.")]
Force = Annotated[bool, typer.Option(help="Re-run even if cached.")]


def _print(res, keys: list[str]) -> None:
    console.print(f"model {res.output}" + (" (cached)" if res.cached else ""))
    for key in keys:
        if res.metrics.get(key) is not None:
            console.print(f"  {key}: {_fmt(res.metrics[key])}")


@train_app.command("dpo")
def train_dpo_cmd(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML (its `dpo` section applies).")],
    overrides: Overrides = None,
    base: Base = ...,
    data: Data = ...,
    force: Force = False,
) -> None:
    """DPO / IPO on preference pairs, or online DPO (dpo.online=true) → model asset."""
    from forgeml.pipeline.preference_stage import dpo_stage

    rec = load_recipe(recipe, overrides or [])
    res = dpo_stage(_ws(), rec, base, data, force=force, progress=not state.quiet, notify=_notify)
    _print(res, [
        "final_train_loss", "heldout_loss_before", "heldout_loss",
        "heldout_rewards_margins", "heldout_rewards_accuracies", "reward_before", "reward_after",
    ])  # fmt: skip


@train_app.command("rm")
def train_rm_cmd(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML (its `reward_model` section).")],
    overrides: Overrides = None,
    base: Base = ...,
    data: Data = ...,
    force: Force = False,
) -> None:
    """Reward model (Bradley-Terry) on preference pairs → model asset with task=reward."""
    from forgeml.pipeline.preference_stage import reward_model_stage

    rec = load_recipe(recipe, overrides or [])
    res = reward_model_stage(
        _ws(), rec, base, data, force=force, progress=not state.quiet, notify=_notify
    )
    _print(
        res, ["final_train_loss", "heldout_accuracy_before", "heldout_accuracy", "heldout_margin"]
    )
