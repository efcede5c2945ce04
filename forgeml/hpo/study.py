"""`forgeml hpo`: hyper-parameter search over recipe fields with Optuna (TPE + ASHA pruning).

Every trial is a registered pre-training run (lineage to its data and tokenizer, the study and
trial number in its config) that reports its held-out losses to Optuna as it trains, so a
trial that falls behind is stopped early. Trials run in this process, as jobs of the job
queue or as Ray tasks (optional extra); the study lives in the registry database, and the best
trial's recipe is written out.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import optuna
from optuna.trial import TrialState

from forgeml.core.config import Recipe, config_hash, save_resolved, validate_recipe
from forgeml.core.errors import ConfigError, DataError, ForgeError, NotFoundError
from forgeml.core.io import atomic_write_text
from forgeml.core.seeds import derive_seed
from forgeml.core.workspace import Workspace
from forgeml.hpo.space import SearchSpace, apply_params, check_space, parse_space
from forgeml.hpo.storage import study_storage
from forgeml.pipeline.prepare import prepare_shards
from forgeml.pipeline.pretrain_stage import pretrain_config
from forgeml.pipeline.runtime import Notify, Output, run_stage
from forgeml.registry import open_registry

optuna.logging.set_verbosity(optuna.logging.WARNING)
DONE_STATES = (TrialState.COMPLETE, TrialState.PRUNED)
# Runs `n` trials of the named study as queued jobs and waits for them (control/ makes one).
TrialJobs = Callable[[str, int], None]


@dataclass
class HpoResult:
    study: str
    run_id: str
    best_trial: int
    best_value: float
    best_params: dict[str, Any]
    best_run: str | None
    best_model: str | None
    baseline_value: float | None
    best_recipe: str
    n_complete: int
    n_pruned: int
    n_failed: int
    trials: list[dict[str, Any]] = field(default_factory=list)
    cached: bool = False


def trial_data(
    ws: Workspace,
    recipe: Recipe,
    *,
    data: str | None = None,
    tokenizer: str | None = None,
    progress: bool = False,
    notify: Notify | None = None,
) -> tuple[str, str]:
    """Token shards and tokenizer for the trials, prepared as `forgeml pipeline run` does
    (pipeline/prepare.py); the trials are scored on the shards' held-out split."""
    if recipe.data.heldout_fraction <= 0:
        raise ConfigError(
            "hyper-parameter search scores trials on held-out data, but data.heldout_fraction is 0",
            hint="set data.heldout_fraction (e.g. 0.1)",
        )
    prepared = prepare_shards(
        ws, recipe, data=data, tokenizer=tokenizer, progress=progress, notify=notify
    )
    if not (Path(open_registry(ws).get_asset(prepared.shards).path) / "heldout").is_dir():
        raise DataError(
            f"{prepared.shards} has no held-out split to score trials on",
            hint="use more documents or a larger data.heldout_fraction",
        )
    return prepared.shards, prepared.tokenizer


def train_trial(
    ws: Workspace,
    recipe: Recipe,
    shards: str,
    tokenizer: str,
    *,
    study: str,
    trial: optuna.Trial | None,
    label: int | str,
    progress: bool = False,
) -> dict[str, Any]:
    """One pre-training run of the study as a registered run; with `trial`, its held-out
    losses are reported as they come and a pruned trial stops (optuna.TrialPruned)."""
    from forgeml.train.pretrain import pretrain

    reg = open_registry(ws)
    shards_asset, tok = reg.get_asset(shards), reg.get_asset(tokenizer)
    config = {**pretrain_config(recipe), "hpo": {"study": study, "trial": label}}

    def report(step: int, eval_loss: float) -> None:
        trial.report(eval_loss, step)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step}: eval loss {eval_loss:.4f}")

    def body(work: Path) -> tuple[list[Output], dict[str, Any]]:
        if trial is not None:
            trial.set_user_attr("run_id", work.name)
        summary = pretrain(
            recipe,
            train_shards=Path(shards_asset.path) / "train",
            eval_shards=Path(shards_asset.path) / "heldout",
            out_dir=work,
            tokenizer_dir=Path(tok.path),
            progress=progress,
            on_eval=report if trial is not None else None,
        )
        metrics = {k: v for k, v in summary.items() if isinstance(v, int | float) or v is None}
        meta = {
            "tokenizer": tok.id, "shards": shards_asset.id, "arch": recipe.model.arch,
            "hpo_study": study, "hpo_trial": label, **metrics,
        }  # fmt: skip
        name = f"{recipe.name}-{recipe.model.arch}-{study}-{label}"
        return [Output("model", name, Path(summary["model_dir"]), meta, parents=[tok.id])], metrics

    res = run_stage(ws, "pretrain", config, [shards_asset.id, tok.id], body, seed=recipe.train.seed)
    if res.metrics.get("final_eval_loss") is None:
        raise DataError(f"trial {label} produced no held-out loss", hint="check the data split")
    return {"run_id": res.run_id, "model": res.output, "value": res.metrics["final_eval_loss"]}


def study_context(
    ws: Workspace, study_name: str
) -> tuple[optuna.Study, Recipe, SearchSpace, str, str]:
    """A stored study with what its trials train: (study, recipe, space, shards, tokenizer)."""
    try:
        study = optuna.load_study(study_name=study_name, storage=study_storage(ws))
    except KeyError:
        raise NotFoundError(
            f"no study '{study_name}' in this workspace", hint="start it with `forgeml hpo`"
        ) from None
    attrs = study.user_attrs
    recipe = validate_recipe(attrs["recipe"], f"study {study.study_name}")
    return study, recipe, parse_space(attrs["space"]), attrs["shards"], attrs["tokenizer"]


def run_one_trial(
    ws: Workspace, study_name: str, *, offset: int = 0, progress: bool = False
) -> dict[str, Any]:
    """Ask the stored study for a trial, train it, tell the outcome (a job runs this)."""
    storage = study_storage(ws)
    stored, recipe, space, shards, tok = study_context(ws, study_name)
    # A fresh seeded sampler per trial: seed it by the trial count (and the job's offset), or
    # every trial's random start-up draw would be the same.
    n_before = len(stored.get_trials(deepcopy=False))
    study = optuna.load_study(
        study_name=study_name, storage=storage,
        sampler=space.sampler_for(derive_seed(n_before, "hpo.trial_sampler", offset)),
        pruner=space.pruner_for(recipe),
    )  # fmt: skip
    trial = study.ask()
    outcome: dict[str, Any] = {"trial": trial.number}
    try:
        params = space.suggest(trial)
        result = train_trial(
            ws, apply_params(recipe, params), shards, tok, study=study_name, trial=trial,
            label=trial.number, progress=progress,
        )  # fmt: skip
    except optuna.TrialPruned as exc:
        trial.set_user_attr("pruned", str(exc))
        study.tell(trial, state=TrialState.PRUNED)
        return {**outcome, "state": "pruned", "reason": str(exc)}
    except BaseException as exc:
        trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:500])
        study.tell(trial, state=TrialState.FAIL)
        if isinstance(exc, ForgeError):
            return {**outcome, "state": "failed", "reason": str(exc)}
        raise
    trial.set_user_attr("model", result["model"])
    study.tell(trial, result["value"])
    return {**outcome, "state": "complete", **result}


def run_hpo(
    ws: Workspace,
    recipe: Recipe,
    space: SearchSpace,
    *,
    trials: int,
    parallel: int = 1,
    data: str | None = None,
    tokenizer: str | None = None,
    study_name: str | None = None,
    baseline: bool = True,
    first_trials: list[dict[str, Any]] | None = None,
    trial_jobs: TrialJobs | None = None,
    executor: Literal["local", "ray"] = "local",
    ray_address: str | None = None,
    out: Path | None = None,
    force: bool = False,
    progress: bool = False,
    notify: Notify | None = None,
) -> HpoResult:
    """Search `space` around `recipe` until the study holds `trials` finished (complete or
    pruned) trials; each missing one is tried once (a failed trial is recorded, not retried).

    The study is named after the recipe, space and data, so running the same search again
    continues it. `parallel` > 1 runs the trials through `trial_jobs(study, n)`, which queues
    them as jobs and waits for them (the control plane's `trial_job_runner`).
    `executor="ray"` runs `parallel` trials at a time as Ray tasks instead, on the cluster at
    `ray_address` (its nodes share this workspace's folder and registry database) or on a
    local cluster on 127.0.0.1; they share the study through the registry database as jobs do.
    `first_trials` are parameter sets evaluated before the sampler's own (warm start).
    """
    if trials < 1 or parallel < 1:
        raise ConfigError("--trials and --parallel must be at least 1")
    if executor not in ("local", "ray"):
        raise ConfigError(f"unknown executor '{executor}'", hint="use 'local' or 'ray'")
    check_space(space, recipe)
    shards, tok = trial_data(ws, recipe, data=data, tokenizer=tokenizer, notify=notify)
    space_raw = space.model_dump(mode="json")
    recipe_raw = recipe.model_dump(mode="json")
    name = study_name or (f"{recipe.name}-{config_hash([recipe_raw, space_raw, shards, tok])[:10]}")
    config = {"study": name, "recipe": recipe_raw, "space": space_raw, "trials": trials,
              "baseline": baseline, "first_trials": first_trials or []}  # fmt: skip

    def body(work: Path) -> tuple[list[Output], dict[str, Any]]:
        study = optuna.create_study(
            study_name=name, storage=study_storage(ws), direction=space.direction,
            sampler=space.sampler_for(), pruner=space.pruner_for(recipe), load_if_exists=True,
        )  # fmt: skip
        context = {"recipe": recipe_raw, "space": space_raw, "shards": shards, "tokenizer": tok}
        if changed := [k for k, v in context.items() if study.user_attrs.get(k, v) != v]:
            raise ConfigError(
                f"study '{name}' was started with another {' and '.join(changed)}",
                hint="continue it with the same inputs, or pick a new --study name",
            )
        for key, value in context.items():
            study.set_user_attr(key, value)
        done = len(study.get_trials(deepcopy=False, states=DONE_STATES))
        if done == 0:
            for params in first_trials or []:
                study.enqueue_trial(params)
        baseline_value = None
        if baseline:
            if notify:
                notify(f"hpo {name}: baseline (the recipe as given)")
            base = train_trial(
                ws, recipe, shards, tok, study=name, trial=None, label="baseline",
                progress=progress,
            )  # fmt: skip
            baseline_value = base["value"]
        todo = max(0, trials - done)
        if executor == "ray" and todo:
            _run_on_ray(ws, name, todo, parallel, ray_address, notify)
        elif parallel == 1:
            for _ in range(todo):
                outcome = run_one_trial(ws, name, progress=progress)
                if notify:
                    notify(f"hpo {name}: trial {outcome['trial']} {_describe(outcome)}")
        elif todo:
            if trial_jobs is None:
                raise ConfigError(
                    f"--parallel {parallel} runs the trials as jobs, but no job queue was given",
                    hint="run it through `forgeml hpo`, or use --executor ray",
                )
            trial_jobs(name, todo)
        return _finish(ws, optuna.load_study(study_name=name, storage=study_storage(ws)),
                       recipe, space, work, baseline_value)  # fmt: skip

    res = run_stage(ws, "hpo", config, [shards, tok], body, force=force, notify=notify)
    summary = json.loads(Path(open_registry(ws).get_asset(res.output).path, "study.json")
                         .read_text())  # fmt: skip
    best_recipe = Path(open_registry(ws).get_asset(res.output).path, "best_recipe.yaml")
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, best_recipe.read_text())
        best_recipe = out
    return HpoResult(
        run_id=res.run_id, best_recipe=str(best_recipe), cached=res.cached,
        **{k: summary[k] for k in HpoResult.__dataclass_fields__
           if k not in {"run_id", "best_recipe", "cached"}},
    )  # fmt: skip


def _describe(outcome: dict[str, Any]) -> str:
    if outcome["state"] == "complete":
        return f"eval loss {outcome['value']:.4f} ({outcome['run_id']})"
    return f"{outcome['state']}: {outcome.get('reason', '')}"


def _run_on_ray(
    ws: Workspace, name: str, todo: int, parallel: int, address: str | None,
    notify: Notify | None,
) -> None:  # fmt: skip
    """Run the trials as Ray tasks, `parallel` at a time; each asks the stored study for its
    trial (seeded by its offset, as a queued job is) and tells the outcome to it."""
    from forgeml.core.ray_cluster import ray_cluster

    with ray_cluster(address, num_cpus=parallel) as ray:
        # no retries: a retried task would ask the study for another trial
        task = ray.remote(num_cpus=1, max_retries=0)(run_one_trial)
        offsets, in_flight = list(range(1, todo + 1)), []
        while offsets or in_flight:
            while offsets and len(in_flight) < parallel:
                in_flight.append(task.remote(ws, name, offset=offsets.pop(0)))
            finished, in_flight = ray.wait(in_flight, num_returns=1)
            outcome = ray.get(finished[0])
            if notify:
                notify(f"hpo {name}: trial {outcome['trial']} {_describe(outcome)} (ray)")


def _trial_record(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
    return {
        "number": t.number, "state": t.state.name.lower(), "value": t.value,
        "params": t.params, "run_id": t.user_attrs.get("run_id"),
        "model": t.user_attrs.get("model"),
        "reason": t.user_attrs.get("pruned") or t.user_attrs.get("error"),
        "intermediate": {str(k): v for k, v in sorted(t.intermediate_values.items())},
    }  # fmt: skip


def _finish(
    ws: Workspace, study: optuna.Study, recipe: Recipe, space: SearchSpace, work: Path,
    baseline_value: float | None,
) -> tuple[list[Output], dict[str, Any]]:  # fmt: skip
    """Write study.json and the best trial's recipe as the hpo run's output asset."""
    all_trials = study.get_trials(deepcopy=False)
    complete = [t for t in all_trials if t.state == TrialState.COMPLETE]
    if not complete:
        reasons = {t.user_attrs.get("error") for t in all_trials} - {None}
        raise ForgeError(
            f"study {study.study_name}: no trial completed"
            + (f" ({'; '.join(sorted(reasons))[:500]})" if reasons else ""),
            hint="widen the search space or lower the pruner's aggressiveness",
        )
    best = study.best_trial
    best_recipe = apply_params(recipe, best.params, source=f"best trial {best.number}")
    out = work / "hpo"
    out.mkdir(parents=True, exist_ok=True)
    save_resolved(best_recipe, out / "best_recipe.yaml")
    counts = {s: sum(t.state == s for t in all_trials) for s in TrialState}
    summary = {
        "study": study.study_name, "best_trial": best.number, "best_value": best.value,
        "best_params": best.params, "best_run": best.user_attrs.get("run_id"),
        "best_model": best.user_attrs.get("model"), "baseline_value": baseline_value,
        "n_complete": counts[TrialState.COMPLETE], "n_pruned": counts[TrialState.PRUNED],
        "n_failed": counts[TrialState.FAIL], "space": space.model_dump(mode="json"),
        "trials": [_trial_record(t) for t in all_trials],
    }  # fmt: skip
    atomic_write_text(out / "study.json", json.dumps(summary, indent=1, default=str))
    metrics = {k: summary[k] for k in ("best_trial", "best_value", "baseline_value",
                                        "n_complete", "n_pruned", "n_failed")}  # fmt: skip
    metrics.update(study=study.study_name, best_model=summary["best_model"])
    parents = [summary["best_model"]] if summary["best_model"] else []
    meta = {"format": "hpo-study", **metrics, "best_params": best.params}
    return [Output("run-output", f"{study.study_name}-hpo", out, meta, parents=parents)], metrics


__all__ = [
    "HpoResult", "TrialJobs", "run_hpo", "run_one_trial", "study_context", "train_trial",
    "trial_data",
]  # fmt: skip
