"""Run one job spec through the Python functions the CLI commands call (not the CLI).

`python -m forgeml.control.run_job WORKSPACE SPEC_JSON` is the child process a worker starts
for each job (its own process group, so a cancel or timeout stops all of it); its output is
the job's log. `execute_job` runs a spec in this process: tests and notebooks call it too.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from forgeml.control.job_spec import JobSpec
from forgeml.core.config import GenerateConfig, TokenizerConfig, validate_recipe
from forgeml.core.errors import ConfigError, ForgeError
from forgeml.core.workspace import Workspace, open_workspace
from forgeml.pipeline.runtime import Notify, StageResult


def _say(line: str) -> None:
    print(line, flush=True)


def _notify(msg: str) -> None:
    print(f"› {msg}", file=sys.stderr, flush=True)


def _made(kind: str, res: StageResult, keys: tuple[str, ...] = ()) -> None:
    _say(f"{kind} {res.output}" + (" (cached)" if res.cached else ""))
    for key in keys:
        if res.metrics.get(key) is not None:
            _say(f"  {key}: {res.metrics[key]}")


def _pipeline_run(ws: Workspace, spec: JobSpec, notify: Notify) -> None:
    from forgeml.core.io import atomic_write_text
    from forgeml.pipeline.run import run_pipeline

    p = spec.params
    result = run_pipeline(
        ws, spec.load_recipe(), force=p.force, resume=p.resume, auto_resume=p.auto_resume,
        notify=notify,
    )  # fmt: skip
    for stage in result.stages:
        cached = " (cached)" if stage.cached else ""
        _say(f"{stage.stage}: {', '.join(stage.outputs) or '-'}{cached}")
    if p.json_out:
        atomic_write_text(Path(p.json_out), json.dumps(result.summary(), indent=1, default=str))


def _train_pretrain(ws: Workspace, spec: JobSpec, notify: Notify) -> None:
    from forgeml.pipeline.prepare import prepare_shards
    from forgeml.pipeline.pretrain_stage import pretrain_stage

    p, rec = spec.params, spec.load_recipe()
    prepared = prepare_shards(
        ws, rec, data=p.data, tokenizer=p.tokenizer, progress=False, notify=notify
    )
    res = pretrain_stage(
        ws, rec, prepared.shards, prepared.tokenizer, resume=p.resume,
        auto_resume=p.auto_resume, force=p.force, notify=notify,
    )  # fmt: skip
    _made("model", res, ("final_train_loss", "final_eval_loss"))


def _train_cpt(ws: Workspace, spec: JobSpec, notify: Notify) -> None:
    from forgeml.pipeline.cpt import continue_pretrain_stage

    p = spec.params
    res = continue_pretrain_stage(
        ws, spec.load_recipe(), p.from_model, p.data, replay_ref=p.replay, force=p.force,
        notify=notify,
    )  # fmt: skip
    _made("model", res, tuple(k for k in res.metrics if "loss" in k))


def _train_sft(ws: Workspace, spec: JobSpec, notify: Notify) -> None:
    from forgeml.pipeline.sft_stage import sft_stage

    p = spec.params
    res = sft_stage(
        ws, spec.load_recipe(), p.base, p.data, p.heldout, resume=p.resume, force=p.force,
        notify=notify,
    )  # fmt: skip
    kind = "adapter" if res.output.startswith("adapter-") else "model"
    _made(kind, res, ("final_train_loss", "final_eval_loss", "trainable_params"))


def _train_multimodal(ws: Workspace, spec: JobSpec, notify: Notify) -> None:
    from forgeml.pipeline.multimodal_stage import multimodal_stages

    p = spec.params
    for res in multimodal_stages(
        ws, spec.load_recipe(), base_model=p.base, data=p.data, resume=p.resume, force=p.force,
        notify=notify,
    ):  # fmt: skip
        _made("model", res, ("final_train_loss", "heldout_loss"))


def _train_dpo(ws: Workspace, spec: JobSpec, notify: Notify) -> None:
    from forgeml.pipeline.preference_stage import dpo_stage

    p = spec.params
    res = dpo_stage(ws, spec.load_recipe(), p.base, p.data, force=p.force, notify=notify)
    _made("model", res, ("final_train_loss", "heldout_loss", "heldout_rewards_accuracies"))


def _train_rm(ws: Workspace, spec: JobSpec, notify: Notify) -> None:
    from forgeml.pipeline.preference_stage import reward_model_stage

    p = spec.params
    res = reward_model_stage(ws, spec.load_recipe(), p.base, p.data, force=p.force, notify=notify)
    _made("model", res, ("final_train_loss", "heldout_accuracy", "heldout_margin"))


def _train_rl(ws: Workspace, spec: JobSpec, notify: Notify) -> None:
    from forgeml.pipeline.rl_stage import rl_stage

    p = spec.params
    res = rl_stage(
        ws, spec.load_recipe(), p.base, p.prompts, resume=p.resume, force=p.force, notify=notify
    )
    _made("model", res, ("final_reward_mean", "final_kl", "steps"))


def _data_ingest(ws: Workspace, spec: JobSpec, notify: Notify) -> None:
    from forgeml.pipeline.ingest_stage import ingest_stage

    p = spec.params
    res = ingest_stage(
        ws, [Path(x) for x in p.paths], name=p.name, include=p.include, exclude=p.exclude,
        max_file_bytes=p.max_file_bytes, text_fields=p.text_fields, force=p.force,
        progress=False, notify=notify,
    )  # fmt: skip
    _made("dataset", res, ("kept", "skipped", "failed", "found"))


def _data_curate(ws: Workspace, spec: JobSpec, notify: Notify) -> None:
    from forgeml.pipeline.curate_stage import curate_stage

    p = spec.params
    res = curate_stage(
        ws, p.dataset, spec.load_recipe().curate, name=p.name, force=p.force, progress=False,
        notify=notify,
    )  # fmt: skip
    _made("dataset", res, ("kept", "input", "duplicates_removed"))


def _tokenizer_train(ws: Workspace, spec: JobSpec, notify: Notify) -> None:
    from forgeml.pipeline.tokenizer_stage import tokenizer_stage

    p = spec.params
    raw = {"tokenizer": {"vocab_size": p.vocab_size, "min_frequency": p.min_frequency}}
    cfg = TokenizerConfig.model_validate(validate_recipe(raw, "job").tokenizer.model_dump())
    res = tokenizer_stage(
        ws, p.dataset, cfg, heldout_fraction=p.heldout_fraction, force=p.force, progress=False,
        notify=notify,
    )  # fmt: skip
    _made("tokenizer", res, ("vocab_size",))


def _eval_run(ws: Workspace, spec: JobSpec, notify: Notify) -> None:
    from forgeml.pipeline.evaluate import evaluate_model

    res = evaluate_model(ws, **spec.params.model_dump(), notify=notify)
    _made("eval", res, ("loss", "perplexity", "exact_match", "normalized_match", "n"))


def _generate(ws: Workspace, spec: JobSpec, notify: Notify) -> None:
    p = spec.params
    # the sampling default is 0.8; an infill restores text, so greedy fits it
    temperature = p.temperature if p.temperature is not None else 0.0 if p.infill else 0.8
    cfg = GenerateConfig(
        max_new_tokens=p.max_new_tokens, temperature=temperature, top_k=p.top_k, top_p=p.top_p,
        seed=p.seed, stop=p.stop or [],
    )  # fmt: skip
    if p.infill:
        from forgeml.eval.infill import infill_text
        from forgeml.registry import open_registry

        _say(infill_text(open_registry(ws).get_asset(p.model).path, p.prompt, cfg))
        return
    from forgeml.pipeline.generate import generate_text

    _say(p.prompt + generate_text(ws, p.model, p.prompt, cfg))


def _hpo(ws: Workspace, spec: JobSpec, notify: Notify) -> None:
    from forgeml.control.trial_jobs import trial_job_runner
    from forgeml.hpo.space import load_space
    from forgeml.hpo.study import run_hpo

    p = spec.params
    jobs = trial_job_runner(
        ws, parallel=p.parallel, start_workers=not p.external_workers, notify=notify
    )
    result = run_hpo(
        ws, spec.load_recipe(), load_space(p.space), trials=p.trials, parallel=p.parallel,
        trial_jobs=jobs, executor=p.executor, ray_address=p.ray_address, data=p.data,
        tokenizer=p.tokenizer, study_name=p.study, baseline=p.baseline,
        out=Path(p.out) if p.out else None, force=p.force, notify=notify,
    )  # fmt: skip
    _say(
        f"study {result.study}: best trial {result.best_trial}, eval loss {result.best_value}; "
        f"{result.n_complete} complete, {result.n_pruned} pruned, {result.n_failed} failed; "
        f"best recipe {result.best_recipe}"
    )


def _hpo_trial(ws: Workspace, spec: JobSpec, notify: Notify) -> None:
    from forgeml.hpo.study import run_one_trial

    p = spec.params
    _say(json.dumps(run_one_trial(ws, p.study, offset=p.offset), default=str))


def _synth_made(res: StageResult) -> None:
    m = res.metrics
    filtered = ", ".join(f"{k} {v}" for k, v in m["filtered"].items()) or "none"
    _say(
        f"dataset {res.output}: {m['kept']} of {m['generated']} records kept "
        f"(filtered: {filtered})" + (" (cached)" if res.cached else "")
    )


def _synth_rules(ws: Workspace, spec: JobSpec, notify: Notify) -> None:
    from forgeml.synth.rules import synth_rules_stage

    p = spec.params
    languages = {}
    for item in p.lang or []:
        ext, sep, label = item.partition("=")
        if not sep or not ext or not label:
            raise ConfigError(f"lang '{item}' is not EXT=NAME", hint="e.g. acl=ACME-CL")
        languages[ext.lstrip(".")] = label
    res = synth_rules_stage(
        ws, p.dataset, rules=p.rules, pairs=p.pair, languages=languages, exclude=p.exclude,
        infill_per_doc=p.infill_per_doc, seed=p.seed, name=p.name, force=p.force, notify=notify,
    )  # fmt: skip
    _synth_made(res)


def _synth_teacher(ws: Workspace, spec: JobSpec, notify: Notify) -> None:
    from forgeml.synth.teacher import synth_teacher_stage

    p = spec.params
    res = synth_teacher_stage(
        ws, endpoint=p.endpoint, model=p.model, seeds=Path(p.seeds), n=p.n, against=p.against,
        reward=p.reward, reward_threshold=p.reward_threshold, teacher_asset=p.teacher_asset,
        api_key_env=p.api_key_env, temperature=p.temperature, max_tokens=p.max_tokens,
        min_words=p.min_words, seed=p.seed, name=p.name, force=p.force, notify=notify,
    )  # fmt: skip
    _synth_made(res)


EXECUTORS: dict[str, Callable[[Workspace, JobSpec, Notify], None]] = {
    "pipeline run": _pipeline_run, "train pretrain": _train_pretrain, "train cpt": _train_cpt,
    "train sft": _train_sft, "train dpo": _train_dpo, "train rm": _train_rm,
    "train rl": _train_rl, "train multimodal": _train_multimodal, "data ingest": _data_ingest,
    "data curate": _data_curate,
    "tokenizer train": _tokenizer_train, "eval run": _eval_run, "generate": _generate,
    "hpo": _hpo, "hpo-trial": _hpo_trial, "synth rules": _synth_rules,
    "synth teacher": _synth_teacher,
}  # fmt: skip


def execute_job(ws: Workspace, spec: JobSpec, notify: Notify | None = None) -> None:
    """Run `spec` in this process, printing what it made."""
    EXECUTORS[spec.command](ws, spec, notify or _notify)


def main(argv: list[str] | None = None) -> int:
    """`python -m forgeml.control.run_job WORKSPACE SPEC_JSON`: exit 0, or 2 with one line
    `error: ...` for an error a user can fix (as the CLI does), 1 for any other."""
    workspace, spec_path = argv if argv is not None else sys.argv[1:]
    try:
        raw: dict[str, Any] = json.loads(Path(spec_path).read_text())
        execute_job(open_workspace(workspace), JobSpec.model_validate(raw))
    except ForgeError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
