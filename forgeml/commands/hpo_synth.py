"""CLI commands for hyper-parameter search (`forgeml hpo`) and synthetic data
(`forgeml synth rules|teacher`), registered on the apps of forgeml.cli."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from forgeml.cli import _notify, _ws, app, console, state
from forgeml.core.config import load_recipe


@app.command("hpo")
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
    from forgeml.hpo.space import load_space
    from forgeml.hpo.study import run_hpo

    result = run_hpo(
        _ws(), load_recipe(recipe, overrides or []), load_space(space), trials=trials,
        parallel=parallel, start_workers=not external_workers, executor=executor,
        ray_address=ray_address, data=data, tokenizer=tokenizer,
        study_name=study, baseline=baseline, out=out, force=force, notify=_notify,
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


@app.command("hpo-trial", hidden=True)
def hpo_trial(
    study: Annotated[str, typer.Argument(help="Study name (from `forgeml hpo`).")],
    offset: Annotated[int, typer.Option(help="Sampler seed offset of this job.")] = 0,
) -> None:
    """Run one trial of a stored study (what a queued trial job runs)."""
    from forgeml.hpo.study import run_one_trial

    console.print(json.dumps(run_one_trial(_ws(), study, offset=offset), default=str))


synth_app = typer.Typer(
    help="Synthetic data: rule-based and teacher-generated.", no_args_is_help=True
)
app.add_typer(synth_app, name="synth")


def _print_synth(res) -> None:
    m = res.metrics
    filtered = ", ".join(f"{k} {v}" for k, v in m["filtered"].items()) or "none"
    console.print(
        f"dataset {res.output}: {m['kept']} of {m['generated']} records kept "
        f"(filtered: {escape(filtered)})" + (" (cached)" if res.cached else "")
    )


@synth_app.command("rules")
def synth_rules(
    dataset: Annotated[str, typer.Argument(help="Document dataset (from `data ingest`).")],
    rules: Annotated[
        list[str] | None, typer.Option("--rule", help="qa, infill, translation (default: all).")
    ] = None,
    pair: Annotated[
        list[str] | None, typer.Option(help="Paired files SRC:TGT by extension, e.g. acl:py.")
    ] = None,
    lang: Annotated[
        list[str] | None, typer.Option(help="Language name of an extension, e.g. acl=ACME-CL.")
    ] = None,
    exclude: Annotated[
        list[str] | None, typer.Option(help="Skip documents whose path matches this glob.")
    ] = None,
    infill_per_doc: Annotated[int, typer.Option(help="Infill tasks per document.")] = 2,
    seed: Annotated[int, typer.Option(help="Seed of the infill gaps.")] = 0,
    name: Annotated[str | None, typer.Option(help="Name of the new dataset.")] = None,
    force: Annotated[bool, typer.Option(help="Re-run even if cached.")] = False,
) -> None:
    """QA from headings/definitions, infill gaps, translation pairs → chat dataset."""
    from forgeml.core.errors import ConfigError
    from forgeml.synth.rules import synth_rules_stage

    languages = {}
    for item in lang or []:
        ext, sep, label = item.partition("=")
        if not sep or not ext or not label:
            raise ConfigError(f"--lang '{item}' is not EXT=NAME", hint="e.g. --lang acl=ACME-CL")
        languages[ext.lstrip(".")] = label
    res = synth_rules_stage(
        _ws(), dataset, rules=rules, pairs=pair, languages=languages, exclude=exclude,
        infill_per_doc=infill_per_doc, seed=seed, name=name, force=force, notify=_notify,
    )  # fmt: skip
    _print_synth(res)


@synth_app.command("teacher")
def synth_teacher(
    endpoint: Annotated[str, typer.Option(help="OpenAI-compatible base URL, e.g. http://h/v1.")],
    model: Annotated[str, typer.Option(help="Model name at the endpoint.")],
    seeds: Annotated[Path, typer.Option(help="Seed tasks: JSONL {instruction} or one per line.")],
    n: Annotated[int, typer.Option(help="Instructions to generate.")] = 100,
    against: Annotated[
        list[str] | None, typer.Option(help="Dataset to deduplicate against (repeatable).")
    ] = None,
    reward: Annotated[
        str | None, typer.Option(help="'pkg.module:fn' (prompt, completion, metadata) -> float.")
    ] = None,
    reward_threshold: Annotated[
        float, typer.Option(help="Keep records scoring this or more.")
    ] = 0.5,
    teacher_asset: Annotated[
        str | None, typer.Option(help="The teacher's model asset here (for lineage).")
    ] = None,
    api_key_env: Annotated[
        str, typer.Option(help="Environment variable holding the endpoint's API key.")
    ] = "OPENAI_API_KEY",
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 0.7,
    max_tokens: Annotated[int, typer.Option(help="Tokens per teacher reply.")] = 128,
    min_words: Annotated[int, typer.Option(help="Shortest instruction kept, in words.")] = 3,
    seed: Annotated[int, typer.Option(help="Seed of example sampling and requests.")] = 0,
    name: Annotated[str | None, typer.Option(help="Name of the new dataset.")] = None,
    force: Annotated[bool, typer.Option(help="Re-run even if cached.")] = False,
) -> None:
    """Self-instruct generation through a teacher endpoint → chat dataset (deduped, filtered)."""
    from forgeml.synth.teacher import synth_teacher_stage

    res = synth_teacher_stage(
        _ws(), endpoint=endpoint, model=model, seeds=seeds, n=n, against=against, reward=reward,
        reward_threshold=reward_threshold, teacher_asset=teacher_asset, api_key_env=api_key_env,
        temperature=temperature, max_tokens=max_tokens, min_words=min_words, seed=seed,
        name=name, force=force, notify=_notify,
    )  # fmt: skip
    _print_synth(res)
