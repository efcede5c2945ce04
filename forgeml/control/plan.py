"""Dry-run plans: what a job will do and cost before it is queued.

`plan_job` reads the job a command line asks for into its typed spec (forgeml.control.job_spec),
validating its recipe once, here; then it takes the stages it will run, estimates
each stage's time and the training memory (the preflight of forgeml.train.preflight), and
checks it against the submitter's budget. A plan with refusals is not queued.

Data clearance covers every dataset the job will read: registered datasets named on its
command line or anywhere in its recipe (and other YAML files it is given), and the datasets
ingested from, or stored in, the folders it reads; each carries its effective label, the most
sensitive on it or upstream of it in the lineage (forgeml.governance.labels).

Time is a rough model, stated so it can be checked: training costs ~6·N FLOPs per token
plus 12·L·d·T for attention (Kaplan et al., "Scaling Laws for Neural Language Models",
arXiv:2001.08361), evaluation 2·N per token, at an assumed sustained rate per device; data
stages scale with the bytes of their sources.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from forgeml.control.budgets import (
    Budget,
    Usage,
    clearance_allows,
    get_budget,
    usage,
)
from forgeml.control.job_spec import JOB_COMMANDS, JobSpec, job_command, parse_job_args
from forgeml.control.limits import InvalidRequest, check_job_args, check_running
from forgeml.control.roots import agent_roots, looks_like_path, outside_roots, resolve_user_path
from forgeml.core.config import Recipe, validate_recipe
from forgeml.core.errors import ForgeError
from forgeml.core.workspace import Workspace
from forgeml.governance.labels import label_origin
from forgeml.registry import Asset, Registry

# Sustained training/eval FLOP/s assumed per device kind. CPU: the quickstart's training speed
# on a small CPU (BENCHMARKS.md) converted to FLOP/s by the count below; a datacenter GPU is
# taken at bf16 with ~40% utilisation.
DEVICE_FLOPS = {"cpu": 5e10, "gpu": 1e14}
# Bytes per second of the data stages over their sources, plus a fixed start-up cost per
# stage (a Python process importing torch and opening the registry).
DATA_BYTES_PER_S = {"ingest": 20e6, "curate": 5e6, "tokenizer": 5e6, "pack": 5e6}
STAGE_OVERHEAD_S = 3.0
UNKNOWN_STAGE_S = 60.0  # a command this planner does not model

# Commands an agent may queue; the rest (keys, budgets, approvals, promote, export, serve,
# workers, ...) are the operator's, or go through the approval flow.
AGENT_COMMANDS = {
    "data", "tokenizer", "train", "eval", "pipeline", "generate", "hpo", "hpo-trial", "synth",
}  # fmt: skip
# Commands whose recipe the planner models (stages, time, memory); others count a default.
RECIPE_COMMANDS = {("pipeline", "run"), ("train", "pretrain"), ("train", "cpt"), ("hpo",)}
# Fields of YAML files other than recipes that label things rather than name what a job reads.
LABEL_FIELDS = {"name", "description"}
# The recipe fields (by the Recipe schema) that name data a job reads: a dataset asset, or a
# file or folder. Any other recipe string is a setting, whatever dataset it happens to spell.
RECIPE_DATA_FIELDS = (
    "data.sources", "sft.data", "sft.heldout", "cpt.replay_data", "posttrain.dpo.data",
    "posttrain.rl.prompts", "posttrain.rl.heldout",
)  # fmt: skip
# Recipe fields that name a model asset or a model folder (read from disk when a path).
RECIPE_MODEL_FIELDS = ("train.init_from", "cpt.from_model")


@dataclass
class StagePlan:
    name: str
    seconds: float
    note: str = ""


@dataclass
class JobPlan:
    """The dry run of one job: stages, estimates, the budget it is checked against, and the
    reasons it is refused (empty when it may run)."""

    args: list[str]
    principal: str
    command: str | None = None  # the job command (JobSpec.command) when it is one
    is_admin: bool = False
    clearance: str | None = None  # the key's; a budget's data_clearance takes precedence
    device: str = "cpu"
    stages: list[StagePlan] = field(default_factory=list)
    estimated_hours: float = 0.0
    peak_memory_bytes: int | None = None
    available_memory_bytes: int | None = None
    model_params: int | None = None
    datasets: list[dict[str, Any]] = field(default_factory=list)
    budget: dict[str, Any] | None = None
    used: dict[str, Any] | None = None
    refusals: list[str] = field(default_factory=list)
    spec: JobSpec | None = field(default=None, repr=False)  # what it runs, recipe resolved

    @property
    def ok(self) -> bool:
        return not self.refusals

    def to_dict(self) -> dict[str, Any]:
        fields = {k: v for k, v in asdict(self).items() if k != "spec"}
        return json.loads(json.dumps({**fields, "ok": self.ok}, default=str))

    def summary(self) -> str:
        lines = [f"plan for `forgeml {' '.join(self.args)}` by {self.principal} ({self.device})"]
        for s in self.stages:
            lines.append(f"  {s.name:<12} ~{s.seconds:,.0f} s" + (f"  {s.note}" if s.note else ""))
        lines.append(f"  total        ~{self.estimated_hours:.4f} {self.device}-hours")
        if self.peak_memory_bytes is not None:
            lines.append(f"  memory       ~{self.peak_memory_bytes / 2**30:.2f} GiB peak")
        if self.model_params is not None:
            lines.append(f"  model        {self.model_params:,} parameters")
        if self.budget is not None and self.used is not None:
            key = f"{self.device}_hours"
            lines.append(
                f"  budget       {self.used[key]:.4f} of {self.budget[key]} {self.device}-hours "
                f"used; {self.used['active_jobs']} of {self.budget['max_concurrent_jobs']} jobs"
            )
        lines += [f"  REFUSED: {r}" for r in self.refusals] or ["  ok: within budget"]
        return "\n".join(lines)


def _source_bytes(sources: list[str], cap: int = 100_000) -> int:
    total, seen = 0, 0
    for src in sources:
        path = Path(src)
        files = [path] if path.is_file() else path.rglob("*") if path.is_dir() else []
        for f in files:
            check_running()
            if seen >= cap:
                return total
            if f.is_file():
                total += f.stat().st_size
                seen += 1
    return total


def _recipe_stages(
    rec: Recipe, command: tuple[str, ...], trials: int, plan: JobPlan, trial_jobs: int = 0
) -> None:
    """Stages, time and memory of a recipe-driven command (`trials` trainings in this job,
    `trial_jobs` more queued as jobs of their own)."""
    from forgeml.core.runtime import pick_device
    from forgeml.train.preflight import available_memory, check_fits, estimate_memory

    device = pick_device(rec.train.device)
    plan.device = "gpu" if device.startswith("cuda") else "cpu"
    flops = DEVICE_FLOPS[plan.device]
    if command in {("pipeline", "run"), ("hpo",)}:
        nbytes = _source_bytes(rec.data.sources)
        names = ["ingest"] + (["curate"] if rec.data.curate else []) + ["tokenizer", "pack"]
        for name in names:
            plan.stages.append(
                StagePlan(
                    name,
                    STAGE_OVERHEAD_S + nbytes / DATA_BYTES_PER_S[name],
                    f"{nbytes / 1e6:.1f} MB of sources",
                )
            )
    model_cfg = rec.model.model_copy(
        update={"vocab_size": rec.model.vocab_size or rec.tokenizer.vocab_size}
    )
    est = estimate_memory(model_cfg, rec.train, device=device)
    plan.model_params = est.params
    plan.peak_memory_bytes = est.total
    plan.available_memory_bytes = available_memory(device)
    try:
        check_fits(est, plan.available_memory_bytes, model_cfg=model_cfg, train_cfg=rec.train)
    except ForgeError as exc:
        plan.refusals.append(f"memory: {exc}")
    t = rec.train
    tokens = t.max_steps * t.micro_batch_size * t.grad_accum_steps * t.seq_len
    per_token = 6 * est.params + 12 * model_cfg.n_layers * model_cfg.dim * t.seq_len
    evals = (t.max_steps // t.eval_every) if t.eval_every else 0
    eval_tokens = evals * t.eval_batches * t.micro_batch_size * t.seq_len
    train_s = (tokens * per_token + eval_tokens * 2 * est.params) / flops + STAGE_OVERHEAD_S
    name = "cpt" if command == ("train", "cpt") else "pretrain"
    note = f"{tokens:,} tokens, {est.params:,} params"
    if trials:
        plan.stages.append(
            StagePlan(name, train_s * trials, note + (f" × {trials} trials" if trials > 1 else ""))
        )
    if trial_jobs:
        plan.stages.append(
            StagePlan("trial jobs", 0.0, f"{trial_jobs} trials, each planned when it is queued")
        )
    if command == ("pipeline", "run"):
        e = rec.eval
        eval_s = e.max_batches * e.batch_size * (e.seq_len or t.seq_len) * 2 * est.params / flops
        plan.stages.append(StagePlan("eval", STAGE_OVERHEAD_S + eval_s, "held-out perplexity"))
        if any((Path(s) / "damaged" / "answers.json").is_file() for s in rec.data.sources):
            gen = e.infill_examples * 64 * 2 * est.params / flops
            plan.stages.append(StagePlan("infill-eval", STAGE_OVERHEAD_S + gen))
        if rec.generate.prompts:
            gen = len(rec.generate.prompts) * rec.generate.max_new_tokens * 2 * est.params / flops
            plan.stages.append(StagePlan("generate", STAGE_OVERHEAD_S + gen))


def _strings(node: Any, where: str) -> Iterator[tuple[str, str]]:
    """(field, value) of every string in a recipe or YAML tree, but for LABEL_FIELDS."""
    if isinstance(node, str):
        yield where, node
    elif isinstance(node, dict):
        for key, value in node.items():
            if key not in LABEL_FIELDS:
                yield from _strings(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _strings(value, f"{where}[{i}]")


def _recipe_fields(
    raw: dict[str, Any], where: str, fields: tuple[str, ...]
) -> Iterator[tuple[str, str]]:
    """(field, value) of every string in the given dotted fields of a recipe dict."""
    for dotted in fields:
        node: Any = raw
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        yield from _strings(node, f"{where}.{dotted}")


def _recipe_reads(
    raw: dict[str, Any], where: str
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(data fields, other fields that hold a path) of a recipe dict."""
    data = list(_recipe_fields(raw, where, RECIPE_DATA_FIELDS))
    models = _recipe_fields(raw, where, RECIPE_MODEL_FIELDS)
    other = [(w, t) for w, t in _strings(raw, where) if looks_like_path(t)]
    return data, [*models, *other]


def _yaml_reads(file: Path) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(strings that may name data, strings that may be paths) of a YAML file the job is given:
    a recipe's data fields (by its schema) and paths; every string of any other YAML (none if
    it is not YAML: its own command reports that)."""
    try:
        raw = yaml.safe_load(file.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return [], []
    try:
        validate_recipe(raw, file.name)
    except ForgeError:
        every = list(_strings(raw, file.name))
        return every, every
    return _recipe_reads(raw, file.name)


class _DatasetIndex:
    """Which dataset a string names (full id, alias, name, or a unique prefix of an id past
    `dataset-` or of a content hash), answered from one read of the registry per plan rather
    than queries per string."""

    def __init__(self, reg: Registry) -> None:
        self.datasets = reg.list_assets("dataset")  # newest first
        by_id = {a.id: a for a in self.datasets}
        self.by_key: dict[str, Asset] = {}
        for a in reversed(self.datasets):  # the newest of a name wins
            self.by_key[a.name] = a
        self.by_key.update({k: by_id[v] for k, v in reg.list_aliases().items() if v in by_id})
        self.by_key.update(by_id)

    def named(self, text: str) -> Asset | None:
        if not text or len(text) > 255 or "/" in text or "=" in text or text.startswith("-"):
            return None
        if text in self.by_key:
            return self.by_key[text]
        hexish = len(text) >= 6 and all(c in "0123456789abcdef" for c in text)
        matches = [
            a for a in self.datasets
            if (len(text) > len("dataset-") and a.id.startswith(text))
            or (hexish and a.sha256.startswith(text))
        ]  # fmt: skip
        return matches[0] if len(matches) == 1 else None


def _paths(text: str, bases: list[Path]) -> list[Path]:
    """The existing files or folders `text` names, absolute or relative to one of `bases`."""
    if not text or len(text) > 4096 or "\n" in text or "\0" in text:
        return []
    path = Path(text).expanduser()
    found = []
    for candidate in [path] if path.is_absolute() else [b / path for b in bases]:
        try:
            if candidate.exists():
                found.append(candidate.resolve())
        except OSError:
            continue
    return found


def _overlap(a: Path, b: Path) -> bool:
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


class _DatasetsRead:
    """The registered datasets a job reads, each with its effective classification."""

    def __init__(self, reg: Registry) -> None:
        self.reg = reg
        self.index = _DatasetIndex(reg)
        self.found: dict[str, dict[str, Any]] = {}
        self._ingests: list[tuple[list[Path], list[str]]] | None = None
        self._stored: list[Asset] | None = None
        self._seen: set[tuple[str, tuple[Path, ...]]] = set()

    def add(self, where: str, text: str, bases: list[Path]) -> None:
        """Take one string of the job: a dataset reference, or a path that reads datasets."""
        check_running()
        if (text, tuple(bases)) in self._seen:  # a repeated string reads nothing new
            return
        self._seen.add((text, tuple(bases)))
        named = self.index.named(text)
        if named is not None:
            self._record(named, where)
        for path in _paths(text, bases):
            for asset in self._at(path):
                self._record(asset, where)

    def _at(self, path: Path) -> Iterator[Asset]:
        """Datasets stored under `path` (or holding it), and datasets ingested from folders
        that overlap it: their classification applies to the raw files too."""
        if self._stored is None:
            self._stored = self.index.datasets
            self._ingests = [
                ([Path(s) for s in run.config.get("sources", [])], run.outputs)
                for run in self.reg.list_runs(stage="ingest", status="succeeded")
            ]
        yield from (a for a in self._stored if _overlap(Path(a.path).resolve(), path))
        for sources, outputs in self._ingests or []:
            if any(_overlap(path, s) for s in sources):
                for asset_id in outputs:
                    try:  # a deleted output still says how sensitive its sources are
                        asset = self.reg.get_asset(asset_id, deleted_ok=True)
                    except ForgeError:
                        continue
                    if asset.kind == "dataset":
                        yield asset

    def _record(self, asset: Asset, where: str) -> None:
        if asset.id in self.found:
            return
        label, source = label_origin(self.reg, asset)
        self.found[asset.id] = {
            "id": asset.id, "name": asset.name, "classification": label, "read_via": where,
            "labelled_by": source if label is not None and source != asset.id else None,
        }  # fmt: skip


Reads = list[tuple[str, str, list[Path]]]  # (where in the job, the string, bases of a path)


def _job_reads(
    ws: Workspace,
    tokens: list[str],
    overrides: list[str],
    rec: Recipe | None,
    recipe_file: str | None = None,
    *,
    contents: bool = True,
) -> tuple[Reads, Reads]:
    """(strings that may name a dataset, strings that may be a path the job reads): from its
    command line and overrides, its recipe's data fields (by the Recipe schema) and paths,
    and (with `contents`) the other YAML files it is given (a recipe file, suite, space);
    `rec` is the loaded `recipe_file`, overrides applied."""
    here = [ws.root, Path.cwd()]
    data: Reads = []
    paths: Reads = []
    if rec is not None:
        in_data, in_paths = _recipe_reads(rec.model_dump(mode="json"), "recipe")
        data += [(w, t, here) for w, t in in_data]
        paths += [(w, t, here) for w, t in in_data + in_paths]
    for tok in tokens:
        data.append(("command line", tok, here))
        paths.append(("command line", tok, here))
        if contents and tok.endswith((".yaml", ".yml")) and tok != recipe_file:
            for file in _paths(tok, here):
                in_data, in_paths = _yaml_reads(file)
                bases = [file.parent, *here]
                data += [(w, t, bases) for w, t in in_data]
                paths += [(w, t, bases) for w, t in in_data + in_paths]
    if rec is None:  # a recipe already holds its overrides
        for item in overrides:
            key, _, value = item.partition("=")
            data.append((key, value, here))
            paths.append((key, value, here))
    return data, paths


def _datasets_read(reg: Registry, data: Reads) -> list[dict[str, Any]]:
    """Every registered dataset a job reads: named, or stored in or ingested from a path."""
    reads = _DatasetsRead(reg)
    for where, text, bases in data:
        reads.add(where, text, bases)
    return list(reads.found.values())


def _outside_roots(ws: Workspace, paths: Reads) -> list[str]:
    """Why an agent's job may not run: each path it reads outside the agent roots."""
    roots, refusals, seen = agent_roots(ws), [], set()
    for where, text, bases in paths:
        check_running()
        found = _paths(text, bases)
        if not found and looks_like_path(text):
            found = [p for p in [resolve_user_path(text, bases[0])] if p is not None]
        for path in found:
            if path in seen:
                continue
            seen.add(path)
            why = outside_roots(path, roots, ws)
            if why is not None:
                refusals.append(f"reads {text[:200]!r} (via {where}): {why}")
    return refusals


def plan_job(
    ws: Workspace,
    reg: Registry,
    job: list[str] | JobSpec,
    *,
    principal: str,
    is_admin: bool = False,
    clearance: str | None = None,
) -> JobPlan:
    """The dry run of a job (a `forgeml ARGS...` command line, read once into its JobSpec
    here, or a spec) for `principal`, refusals included: never raises for an over-budget job
    (the caller decides); raises for a command that cannot be read and for a recipe that is
    not valid, so a bad recipe is refused at submit. `plan.spec` is what the job will run."""
    spec = job if isinstance(job, JobSpec) else None
    args = spec.command_line() if spec is not None else list(job)
    check_job_args(args)
    plan = JobPlan(args=args, principal=principal, is_admin=is_admin, clearance=clearance)
    if not args:
        raise ForgeError("a job needs a command", hint="e.g. ['pipeline', 'run', 'recipe.yaml']")
    if not is_admin and args[0] not in AGENT_COMMANDS:
        plan.refusals.append(
            f"'{args[0]}' cannot be queued through the control plane "
            f"(allowed: {', '.join(sorted(AGENT_COMMANDS))})"
        )
        return plan
    if spec is None:
        if job_command(args) is None:
            plan.refusals.append(
                f"'{' '.join(args[:2])}' cannot be queued as a job "
                f"(job commands: {', '.join(JOB_COMMANDS)})"
            )
            return plan
        spec = parse_job_args(args)
    plan.command = spec.command
    command = tuple(spec.command.split())
    overrides = list(spec.overrides)
    # what an agent's job reads (its outputs are checked below): nothing, not even a recipe,
    # may be read outside the agent roots
    read = [value for _, value in spec.named()]
    if not is_admin:
        plan.refusals += _outside_roots(
            ws, _job_reads(ws, read, overrides, None, contents=False)[1]
        )
        if plan.refusals:
            return plan
    for opt, value in spec.outputs().items():
        out = resolve_user_path(value, ws.root)
        if out is None:
            raise InvalidRequest(f"{opt} {value[:80]!r} is not a usable path")
        if not is_admin and not out.is_relative_to(ws.root):
            plan.refusals.append(
                f"{opt} {value} writes outside the workspace; "
                "exports outside it need a human's approval (use the export action)"
            )
    spec, rec = spec.resolved()  # the recipe is validated here, once
    plan.spec = spec
    recipe = spec.recipe_file
    if not is_admin:  # the paths inside the recipe (overrides applied) and other YAML files
        plan.refusals += _outside_roots(ws, _job_reads(ws, read, overrides, rec, recipe)[1])
        if plan.refusals:
            return plan
    study_inputs: list[str] = []
    if rec is not None and command in RECIPE_COMMANDS:
        trials, trial_jobs = 1, 0
        if command == ("hpo",):
            from forgeml.hpo.space import load_space

            hpo = spec.params
            load_space(hpo.space)  # like the recipe, a bad search space is refused at submit
            trials = hpo.trials
            if hpo.parallel > 1 and hpo.executor != "ray":
                # the trials become jobs of their own, each planned and charged when queued
                trials, trial_jobs = int(hpo.baseline), trials
        _recipe_stages(rec, command, trials, plan, trial_jobs)
    elif command == ("hpo-trial",):
        from forgeml.hpo.study import study_context

        _, rec, _, shards, tokenizer = study_context(ws, spec.params.study)
        study_inputs = [shards, tokenizer]
        _recipe_stages(rec, command, 1, plan)
    else:
        plan.stages.append(StagePlan(" ".join(command), UNKNOWN_STAGE_S, "not modelled: default"))
    plan.estimated_hours = sum(s.seconds for s in plan.stages) / 3600
    reads = _job_reads(ws, read + study_inputs, overrides, rec, recipe)[0]
    plan.datasets = _datasets_read(reg, reads)

    budget = get_budget(reg, principal)
    if budget is None and not is_admin:
        plan.refusals.append(
            f"principal '{principal}' has no budget; an operator sets one with "
            f"`forgeml budgets set {principal} --cpu-hours H --max-jobs N`"
        )
        return plan
    if budget is not None:
        _check_budget(plan, budget, usage(reg, principal, budget.since), clearance)
    return plan


def _check_budget(plan: JobPlan, budget: Budget, used: Usage, key_clearance: str | None) -> None:
    plan.budget, plan.used = budget.to_dict(), used.to_dict()
    limit = budget.gpu_hours if plan.device == "gpu" else budget.cpu_hours
    spent = used.gpu_hours if plan.device == "gpu" else used.cpu_hours
    if limit is not None and spent + plan.estimated_hours > limit:
        plan.refusals.append(
            f"needs ~{plan.estimated_hours:.4f} {plan.device}-hours but only "
            f"{max(0.0, limit - spent):.4f} of {limit} are left"
        )
    if budget.max_concurrent_jobs is not None and used.active_jobs >= budget.max_concurrent_jobs:
        plan.refusals.append(
            f"{used.active_jobs} jobs already queued or running "
            f"(at most {budget.max_concurrent_jobs} at once)"
        )
    if (
        budget.max_model_params is not None
        and plan.model_params is not None
        and plan.model_params > budget.max_model_params
    ):
        plan.refusals.append(
            f"model has {plan.model_params:,} parameters, over the limit of "
            f"{budget.max_model_params:,}"
        )
    clearance = budget.data_clearance or key_clearance
    for ds in plan.datasets:
        if not clearance_allows(clearance, ds["classification"]):
            label = ds["classification"] or "unlabelled (internal)"
            upstream = f", from upstream {ds['labelled_by']}" if ds["labelled_by"] else ""
            plan.refusals.append(
                f"dataset {ds['id']} (read via {ds['read_via']}) is {label}{upstream}; "
                f"clearance {clearance or 'none'} does not cover it"
            )
