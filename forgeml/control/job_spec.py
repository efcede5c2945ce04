"""Typed job specs: what a queued job runs, as data rather than a command line.

A `JobSpec` names one of the control plane's job commands, the command's typed parameters and,
for recipe commands, the recipe resolved and validated when the job was planned. REST, MCP and
`forgeml jobs submit` still accept a command line (`parse_job_args` reads it once, at submit);
the worker runs the stored spec through Python functions (forgeml.control.run_job), so a
renamed CLI flag cannot break a queued job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    model_validator,
)

from forgeml.control.limits import InvalidRequest
from forgeml.core.config import Recipe, apply_overrides, load_recipe, validate_recipe
from forgeml.core.errors import ForgeError

JobCommand = Literal[
    "pipeline run", "train pretrain", "train cpt", "train sft", "train dpo", "train rm",
    "train rl", "train multimodal", "data ingest", "data curate", "tokenizer train", "eval run",
    "generate", "hpo", "hpo-trial", "synth rules", "synth teacher",
]  # fmt: skip
JOB_COMMANDS: tuple[str, ...] = get_args(JobCommand)


class JobParams(BaseModel):
    """The parameters of one job command. On a command line each field is `--field-name`
    (`flag` in its json_schema_extra when spelled otherwise; booleans also `--no-...`), but
    those named in POSITIONAL, which come in that order (a list field takes the rest)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    POSITIONAL: ClassVar[tuple[str, ...]] = ()
    OUTPUTS: ClassVar[tuple[str, ...]] = ()  # fields naming a file the job writes
    RECIPE: ClassVar[Literal["positional", "option", None]] = None  # how a recipe is named
    RECIPE_REQUIRED: ClassVar[bool] = True
    OBJECTIVE: ClassVar[str | None] = None  # the post-training section its recipe trains


class _RecipeParams(JobParams):
    RECIPE = "positional"
    force: bool = False


class PipelineRunParams(_RecipeParams):
    OUTPUTS = ("json_out",)
    resume: bool = False
    auto_resume: bool = False
    json_out: str | None = Field(None, json_schema_extra={"flag": "--json"})


class TrainPretrainParams(_RecipeParams):
    data: str | None = None
    tokenizer: str | None = None
    resume: bool = False
    auto_resume: bool = False


class TrainCptParams(_RecipeParams):
    from_model: str | None = Field(None, json_schema_extra={"flag": "--from"})
    data: str = Field(min_length=1)
    replay: str | None = None


class TrainSftParams(_RecipeParams):
    OBJECTIVE = "sft"
    base: str = Field(min_length=1)
    data: str | None = None
    heldout: str | None = None
    resume: bool = False


class TrainDpoParams(_RecipeParams):
    OBJECTIVE = "dpo"
    base: str = Field(min_length=1)
    data: str = Field(min_length=1)


class TrainRmParams(TrainDpoParams):
    OBJECTIVE = "reward_model"


class TrainRlParams(_RecipeParams):
    OBJECTIVE = "rl"
    base: str = Field(min_length=1)
    prompts: str = Field(min_length=1)
    resume: bool = False


class TrainMultimodalParams(_RecipeParams):
    base: str | None = None
    data: str | None = None
    resume: bool = False


class DataIngestParams(JobParams):
    POSITIONAL = ("paths",)
    paths: list[str] = Field(min_length=1)
    name: str = "corpus"
    include: list[str] | None = None
    exclude: list[str] | None = None
    max_file_bytes: int = Field(16 << 20, ge=1)
    text_fields: list[str] | None = Field(None, json_schema_extra={"flag": "--text-field"})
    force: bool = False


class DataCurateParams(JobParams):
    POSITIONAL = ("dataset",)
    RECIPE = "option"
    RECIPE_REQUIRED = False
    dataset: str
    name: str | None = None
    force: bool = False


class TokenizerTrainParams(JobParams):
    POSITIONAL = ("dataset",)
    dataset: str
    vocab_size: int = Field(4096, ge=1)
    min_frequency: int = Field(2, ge=1)
    heldout_fraction: float = Field(0.05, ge=0, lt=1)
    force: bool = False


class EvalRunParams(JobParams):
    POSITIONAL = ("model",)
    model: str
    suite: str = "perplexity"
    data: str | None = None
    data_root: str | None = None
    batch_size: int = Field(8, ge=1)
    max_batches: int = Field(64, ge=1)
    seq_len: int = Field(256, ge=1)
    dtype: Literal["auto", "fp32", "bf16"] = "auto"
    force: bool = False


class GenerateParams(JobParams):
    POSITIONAL = ("model", "prompt")
    model: str
    prompt: str
    infill: bool = False
    max_new_tokens: int = Field(64, ge=1)
    temperature: float | None = Field(None, ge=0, description="default: 0.8, infill: greedy")
    top_k: int | None = 50
    top_p: float | None = 0.95
    seed: int = 0
    stop: list[str] | None = None


class HpoParams(_RecipeParams):
    OUTPUTS = ("out",)
    space: str
    trials: int = Field(10, ge=1)
    parallel: int = Field(1, ge=1)
    external_workers: bool = False
    executor: Literal["local", "ray"] = "local"
    ray_address: str | None = None
    data: str | None = None
    tokenizer: str | None = None
    study: str | None = None
    baseline: bool = True
    out: str | None = None


class HpoTrialParams(JobParams):
    POSITIONAL = ("study",)
    study: str
    offset: int = Field(0, ge=0)


class SynthRulesParams(JobParams):
    POSITIONAL = ("dataset",)
    dataset: str
    rules: list[str] | None = Field(None, json_schema_extra={"flag": "--rule"})
    pair: list[str] | None = None
    lang: list[str] | None = None
    exclude: list[str] | None = None
    infill_per_doc: int = Field(2, ge=0)
    seed: int = 0
    name: str | None = None
    force: bool = False


class SynthTeacherParams(JobParams):
    endpoint: str
    model: str
    seeds: str
    n: int = Field(100, ge=1)
    against: list[str] | None = None
    reward: str | None = None
    reward_threshold: float = 0.5
    teacher_asset: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    temperature: float = Field(0.7, ge=0)
    max_tokens: int = Field(128, ge=1)
    min_words: int = Field(3, ge=0)
    seed: int = 0
    name: str | None = None
    force: bool = False


PARAMS: dict[str, type[JobParams]] = {
    "pipeline run": PipelineRunParams, "train pretrain": TrainPretrainParams,
    "train cpt": TrainCptParams, "train sft": TrainSftParams, "train dpo": TrainDpoParams,
    "train rm": TrainRmParams, "train rl": TrainRlParams,
    "train multimodal": TrainMultimodalParams,
    "data ingest": DataIngestParams, "data curate": DataCurateParams,
    "tokenizer train": TokenizerTrainParams, "eval run": EvalRunParams,
    "generate": GenerateParams, "hpo": HpoParams, "hpo-trial": HpoTrialParams,
    "synth rules": SynthRulesParams, "synth teacher": SynthTeacherParams,
}  # fmt: skip
assert set(PARAMS) == set(JOB_COMMANDS)


class JobSpec(BaseModel):
    """One queued job: its command, typed parameters, and (recipe commands) the recipe file
    and overrides it was given and the recipe they resolve to, validated at plan time."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    command: JobCommand
    params: SerializeAsAny[JobParams]
    recipe_file: str | None = None
    overrides: tuple[str, ...] = ()
    recipe: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _typed_params(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("command") in PARAMS:
            params = data.get("params") or {}
            if isinstance(params, dict):
                data = {**data, "params": PARAMS[data["command"]].model_validate(params)}
        return data

    @model_validator(mode="after")
    def _matching_params(self) -> JobSpec:
        model = PARAMS[self.command]
        if type(self.params) is not model:
            raise ValueError(f"`{self.command}` takes {model.__name__}")
        if model.RECIPE is None and (self.recipe_file or self.overrides or self.recipe):
            raise ValueError(f"`{self.command}` takes no recipe")
        if model.RECIPE_REQUIRED and model.RECIPE and not self.recipe_file and not self.recipe:
            raise ValueError(f"`{self.command}` needs a recipe")
        return self

    @property
    def takes_recipe(self) -> bool:
        return PARAMS[self.command].RECIPE is not None

    def resolved(self) -> tuple[JobSpec, Recipe | None]:
        """This spec with its recipe loaded and validated (ConfigError, NotFoundError if it is
        not valid), and the Recipe; a spec without a recipe comes back as it is."""
        if not self.takes_recipe:
            return self, None
        if self.recipe is not None and not self.recipe_file:
            raw = apply_overrides(self.recipe, list(self.overrides))
            rec = validate_recipe(raw, f"the recipe of `{self.command}`")
        else:
            objective = PARAMS[self.command].OBJECTIVE
            rec = load_recipe(self.recipe_file, list(self.overrides), objective=objective)
        return self.model_copy(update={"recipe": rec.model_dump(mode="json")}), rec

    def load_recipe(self) -> Recipe:
        """The recipe this spec was planned with (a job runs exactly it)."""
        if self.recipe is None:
            raise ForgeError(
                f"this `{self.command}` job holds no resolved recipe",
                hint="jobs are planned before they are queued: submit it through admit_job",
            )
        return validate_recipe(self.recipe, f"the recipe of job `{self.command}`")

    def named(self) -> list[tuple[str, str]]:
        """(field, value) of every string the job names but its outputs: what it reads."""
        out = [("recipe", self.recipe_file)] if self.recipe_file else []
        params = self.params
        for name in type(params).model_fields:
            if name in params.OUTPUTS:
                continue
            value = getattr(params, name)
            values = value if isinstance(value, list) else [value]
            out += [(name, v) for v in values if isinstance(v, str)]
        return out

    def outputs(self) -> dict[str, str]:
        """{flag: path} of the files the job writes."""
        params = self.params
        return {
            _flag(type(params), name): getattr(params, name)
            for name in params.OUTPUTS
            if getattr(params, name)
        }

    def command_line(self) -> list[str]:
        """The job as a forgeml command line, for people reading a job list or a log."""
        params = self.params
        model = type(params)
        words = self.command.split()
        if self.recipe_file and model.RECIPE == "positional":
            words.append(self.recipe_file)
        for name in model.POSITIONAL:
            value = getattr(params, name)
            words += value if isinstance(value, list) else [str(value)]
        if model.RECIPE == "positional":
            words += self.overrides
        elif self.recipe_file or self.overrides:
            words += (["--recipe", self.recipe_file] if self.recipe_file else []) + [
                w for o in self.overrides for w in ("--set", o)
            ]
        for name, info in model.model_fields.items():
            value = getattr(params, name)
            if name in model.POSITIONAL or value == info.default:
                continue
            flag = _flag(model, name)
            if isinstance(value, bool):
                words.append(flag if value else "--no-" + flag[2:])
            elif isinstance(value, list):
                words += [w for v in value for w in (flag, str(v))]
            elif value is not None:
                words += [flag, str(value)]
        return words


def _flag(model: type[JobParams], name: str) -> str:
    extra = model.model_fields[name].json_schema_extra
    return (extra or {}).get("flag") or "--" + name.replace("_", "-")  # type: ignore[union-attr]


def job_command(args: list[str]) -> str | None:
    """The job command a command line starts with ('train sft'), or None."""
    for n in (2, 1):
        if len(args) >= n and " ".join(args[:n]) in PARAMS:
            return " ".join(args[:n])
    return None


def parse_job_args(args: list[str]) -> JobSpec:
    """The spec of `forgeml ARGS...` (a job command), its recipe not loaded yet; raises
    InvalidRequest naming the option or argument that is wrong."""
    command = job_command(args)
    if command is None:
        raise InvalidRequest(
            f"'{' '.join(args[:2])[:80]}' is not a job command",
            hint=f"job commands: {', '.join(JOB_COMMANDS)}",
        )
    model = PARAMS[command]
    fields = model.model_fields
    flags = {_flag(model, f): f for f in fields if f not in model.POSITIONAL}
    positional: list[str] = []
    overrides: list[str] = []
    values: dict[str, Any] = {}
    recipe_file: str | None = None
    rest = args[len(command.split()) :]
    i = 0
    while i < len(rest):
        tok = rest[i]
        i += 1
        if not tok.startswith("--") or tok == "--":
            if model.RECIPE == "positional" and "=" in tok and not tok.startswith("-"):
                overrides.append(tok)
            else:
                positional.append(tok)
            continue
        name, eq, value = tok.partition("=")
        negated = name.startswith("--no-") and flags.get("--" + name[5:]) is not None
        field = flags.get("--" + name[5:]) if negated else flags.get(name)
        recipe_option = model.RECIPE == "option" and name in {"--recipe", "--set"}
        if field is None and not recipe_option:
            known = sorted(flags) + (["--recipe", "--set"] if model.RECIPE == "option" else [])
            raise InvalidRequest(
                f"`{command}` has no option {name[:80]}", hint=f"its options: {', '.join(known)}"
            )
        takes_value = field is None or fields[field].annotation is not bool
        if takes_value and not eq:
            if i >= len(rest):
                raise InvalidRequest(f"{name} needs a value", hint=f"`{command} {name} VALUE`")
            value, i = rest[i], i + 1
        if field is None:
            if name == "--recipe":
                recipe_file = value
            else:
                overrides.append(value)
        elif not takes_value:
            values[field] = (value.lower() not in {"false", "0", "no"}) if eq else not negated
        elif _is_list(model, field):
            values.setdefault(field, []).append(value)
        else:
            values[field] = value
    if model.RECIPE == "positional":
        if not positional:
            raise InvalidRequest(f"`{command}` needs a recipe", hint="pass a recipe YAML")
        recipe_file = positional.pop(0)
    for name in model.POSITIONAL:
        if _is_list(model, name):
            values[name], positional = positional, []
        elif positional:
            values[name] = positional.pop(0)
    if positional:
        raise InvalidRequest(
            f"`{command}` got unexpected argument(s): {' '.join(positional)[:120]}",
            hint=f"`{command}` takes: {', '.join(model.POSITIONAL) or 'options only'}",
        )
    try:
        params = model.model_validate(values)
    except ValidationError as exc:
        raise InvalidRequest(
            _describe(model, exc, values), hint=f"see `forgeml {command} --help`"
        ) from None
    return JobSpec(
        command=command, params=params, recipe_file=recipe_file, overrides=tuple(overrides)
    )


def _is_list(model: type[JobParams], name: str) -> bool:
    """Whether a field takes a list (`list[str]` or `list[str] | None`): a repeatable option."""
    annotation = model.model_fields[name].annotation
    return get_origin(annotation) is list or list in map(get_origin, get_args(annotation))


def _describe(model: type[JobParams], exc: ValidationError, values: dict[str, Any]) -> str:
    """A command-line reading of the first validation error (a value given wrong before a
    value missing): the flag, what it needs."""
    error = sorted(exc.errors(), key=lambda e: e["type"] == "missing")[0]
    name = str(error["loc"][0]) if error["loc"] else ""
    if name not in model.model_fields:
        return error["msg"]
    what = name if name in model.POSITIONAL else _flag(model, name)
    got = str(values.get(name, ""))[:40]
    if error["type"] == "missing":
        return f"{what} is required"
    if error["type"] == "too_short":
        return f"{what}: give at least one"
    if error["type"] == "int_parsing":
        return f"{what} must be an integer, got '{got}'"
    if error["type"] == "float_parsing":
        return f"{what} must be a number, got '{got}'"
    return f"{what}: {error['msg']} (got '{got}')"


def spec_from_request(body: dict[str, Any]) -> JobSpec:
    """A spec sent as JSON (REST, MCP): command, params, recipe_file/overrides (or recipe)."""
    where = ""
    try:
        params = body.get("params")
        if body.get("command") in PARAMS and isinstance(params, dict):
            where = "params."
            PARAMS[body["command"]].model_validate(params)
            where = ""
        return JobSpec.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where += ".".join(str(p) for p in first["loc"])
        raise InvalidRequest(f"job spec {where}: {first['msg']}") from None


def absolute_spec_paths(spec: JobSpec, base: Path) -> JobSpec:
    """Make the recipe file a spec names absolute (workers may run in another folder)."""
    if spec.recipe_file and not Path(spec.recipe_file).is_absolute():
        path = (base / spec.recipe_file).resolve()
        if path.is_file():
            return spec.model_copy(update={"recipe_file": str(path)})
    return spec
