"""KPI eval suites: a YAML file of tasks (kind, data, prompt template, scorer, KPIs).

`load_suite` validates the YAML with frozen pydantic models and hashes its resolved form
(the suite version an eval asset records); `load_examples` turns a task's data spec
(a JSON/JSONL file, a folder of files, inline records or a registered dataset) into records.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.functional_serializers import model_serializer

from forgeml.core.config import config_hash
from forgeml.core.errors import ConfigError, DataError, NotFoundError
from forgeml.core.io import read_yaml

TaskKind = Literal[
    "multiple_choice", "generate", "perplexity", "infill", "code_exec", "custom",
    "image_qa", "caption", "transcription", "page_transcription",
]  # fmt: skip

# Media task kinds (run by forgeml.eval.media_suite) and what each defaults to when the task
# leaves it out: its scorers (the first is the primary metric), where the answer stops, how
# long it may be, and the record fields naming media files.
MEDIA_TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "image_qa": {"scorers": ["normalized_exact_match", "f1"], "max_new_tokens": 32},
    "caption": {"scorers": ["cider", "f1"], "max_new_tokens": 64},
    "transcription": {"scorers": ["wer", "cer"], "max_new_tokens": 128, "stop": []},
    "page_transcription": {"scorers": ["cer", "wer"], "max_new_tokens": 256, "stop": []},
}
MEDIA_FIELDS = ("image", "audio")


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DataSpec(_Spec):
    """Where a task's examples come from; exactly one of path, inline, asset."""

    path: str | None = Field(None, description="JSON/JSONL file or folder, relative to data_root")
    glob: str = Field("*", description="files taken from a folder `path`")
    key: str | None = Field(None, description="JSON file: the key holding the list of records")
    inline: list[dict[str, Any]] | None = None
    asset: str | None = Field(None, description="registered document dataset (id, name, alias)")
    read_files: list[str] = Field(
        default_factory=list,
        description="fields whose values are file paths (relative to data_root); their text "
        "is added as <field>_text",
    )
    media: list[str] = Field(
        default_factory=list,
        description="fields naming image/audio files (a path or a list), relative to the "
        "data file's folder (a `path` folder itself; data_root for inline data); media tasks "
        "default to image and audio",
    )
    limit: int | None = Field(None, gt=0)

    @model_serializer(mode="wrap")
    def _without_empty_media(self, handler: Any) -> dict[str, Any]:
        # a text task dumps (and so its suite hashes) as it did before `media` existed
        data = handler(self)
        if not data.get("media"):
            data.pop("media", None)
        return data

    @model_validator(mode="after")
    def _one_source(self) -> DataSpec:
        given = [n for n in ("path", "inline", "asset") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of path, inline, asset (got {given or 'none'})")
        return self


class FewShotSpec(_Spec):
    k: int = Field(0, ge=0, description="examples shown before each question")
    seed: int = 0
    separator: str = "\n\n"
    data: DataSpec | None = Field(None, description="pool of shots; default: the task's data")


class KPISpec(_Spec):
    """A number the gate watches: fails when the candidate is confidently worse by more than
    `tolerance` (absolute), or below `minimum`."""

    metric: str
    higher_is_better: bool = True
    tolerance: float = Field(0.0, ge=0)
    minimum: float | None = None


class TaskSpec(_Spec):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    kind: TaskKind
    data: DataSpec
    description: str = ""
    prompt: str = Field("{prompt}", description="str.format template over a record's fields")
    target: str = Field("{answer}", description="reference (generate, infill) template")
    # multiple choice
    choices: str = Field("choices", description="field holding the list of choice texts")
    answer: str = Field("answer", description="field holding the correct index or text")
    choice_prefix: str = Field(" ", description="put between the prompt and each choice")
    # generation
    scorers: list[str] = Field(default_factory=lambda: ["exact_match"])
    max_new_tokens: int = Field(32, gt=0)
    temperature: float = Field(0.0, ge=0)
    top_k: int | None = Field(None, gt=0)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: list[str] = Field(default_factory=lambda: ["\n"])
    # infill
    prefix: str = "{prefix}"
    suffix: str = "{suffix}"
    # perplexity
    text: str = "{text}"
    # code_exec
    checker: str = Field(
        "io_cases", description="key in CHECKERS, package.module:function or file.py:function"
    )
    source: str = Field("program_text", description="field of the program to translate")
    cases: str = Field("cases", description="field of the test cases")
    timeout_s: float = Field(10.0, gt=0)
    # custom
    function: str | None = Field(None, description="custom task: package.module:function")
    fewshot: FewShotSpec = FewShotSpec()
    kpis: list[KPISpec] = Field(default_factory=list, description="default: the primary metric")

    @model_validator(mode="before")
    @classmethod
    def _media_defaults(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and raw.get("kind") in MEDIA_TASK_DEFAULTS:
            raw = {**MEDIA_TASK_DEFAULTS[raw["kind"]], **raw}
            data = raw.get("data")
            if isinstance(data, dict):
                raw["data"] = {"media": list(MEDIA_FIELDS), **data}
            elif isinstance(data, DataSpec) and "media" not in data.model_fields_set:
                raw["data"] = data.model_copy(update={"media": list(MEDIA_FIELDS)})
        return raw

    @model_validator(mode="after")
    def _kind_fields(self) -> TaskSpec:
        if self.kind == "custom" and not self.function:
            raise ValueError("a custom task needs `function: package.module:function`")
        if (self.kind == "generate" or self.kind in MEDIA_TASK_DEFAULTS) and not self.scorers:
            raise ValueError(f"a {self.kind} task needs at least one scorer")
        if self.kind in MEDIA_TASK_DEFAULTS and (self.fewshot.k or self.temperature):
            raise ValueError(f"a {self.kind} task answers greedily, without few-shot examples")
        return self


class SuiteSpec(_Spec):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    version: str = "1"
    description: str = ""
    data_root: str | None = Field(None, description="base of relative data paths")
    batch_size: int = Field(8, gt=0)
    seed: int = 0
    tasks: list[TaskSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> SuiteSpec:
        names = [t.name for t in self.tasks]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"task names must be unique; repeated: {sorted(dup)}")
        return self


@dataclass(frozen=True)
class Suite:
    """A validated suite, where its relative data paths point, and its content hash."""

    spec: SuiteSpec
    path: Path | None
    data_root: Path
    digest: str

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def version(self) -> str:
        return self.spec.version

    def task(self, name: str) -> TaskSpec:
        for task in self.spec.tasks:
            if task.name == name:
                return task
        raise NotFoundError(f"suite {self.name} has no task '{name}'")


def _describe(exc: ValidationError, source: str) -> ConfigError:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "top level"
    more = f" (and {len(exc.errors()) - 1} more errors)" if len(exc.errors()) > 1 else ""
    return ConfigError(f"{source}: {where}: {err['msg']}{more}", hint="see examples/acme/suites")


def suite_from_dict(
    raw: dict[str, Any],
    *,
    source: str = "suite",
    base: Path | None = None,
    data_root: str | Path | None = None,
) -> Suite:
    """Validate a suite mapping. Relative data paths resolve against `data_root`, else the
    suite's own `data_root` (relative to `base`), else `base`."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a suite must be a YAML mapping, got {type(raw).__name__}")
    try:
        spec = SuiteSpec.model_validate(raw)
    except ValidationError as exc:
        raise _describe(exc, source) from None
    base = base or Path.cwd()
    if data_root is not None:
        root = Path(data_root).expanduser().resolve()
    elif spec.data_root is not None:
        root = (base / Path(spec.data_root).expanduser()).resolve()
    else:
        root = base.resolve()
    return Suite(spec=spec, path=None, data_root=root, digest=config_hash(spec.model_dump()))


def load_suite(path: str | Path, *, data_root: str | Path | None = None) -> Suite:
    """Read and validate a suite YAML file (see `SuiteSpec`)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise NotFoundError(f"suite not found: {path}", hint="check the path")
    raw = read_yaml(path)
    suite = suite_from_dict(raw, source=str(path), base=path.parent, data_root=data_root)
    return Suite(
        spec=suite.spec, path=path.resolve(), data_root=suite.data_root, digest=suite.digest
    )


@dataclass(frozen=True)
class Examples:
    """A task's records, a sha256 of exactly what was read, and any dataset asset used."""

    records: list[dict[str, Any]]
    fingerprint: str
    asset_id: str | None = None


def _read_json_records(path: Path, key: str | None) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
        return rows
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if key is not None:
        if not isinstance(data, dict) or key not in data:
            raise DataError(f"{path}: no key '{key}' at the top level")
        data = data[key]
    return data if isinstance(data, list) else [data]


def _resolve_media(rec: dict[str, Any], field: str, base: Path, h) -> str | list[str]:
    """A record's media file(s) as absolute paths; each file's bytes go into the fingerprint."""
    value = rec[field]
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DataError(f"record {rec['id']}: '{field}' must be a file path or a list of them")
    paths = []
    for name in names:
        file = base / Path(name).expanduser()
        if not file.is_file():
            raise DataError(
                f"record {rec['id']}: {field} file not found: {file}",
                hint="media paths are relative to the folder of the task's data file",
            )
        h.update(f"{field}\0{name}\0".encode() + hashlib.sha256(file.read_bytes()).digest())
        paths.append(str(file.resolve()))
    return paths[0] if isinstance(value, str) else paths


def load_examples(spec: DataSpec, data_root: Path, registry=None) -> Examples:
    """Records of a data spec, each with an `id` (kept if present, else file name or index)."""
    h = hashlib.sha256()
    asset_id = None
    media_base = data_root
    records: list[dict[str, Any]]
    if spec.inline is not None:
        records = [dict(r) for r in spec.inline]
        h.update(json.dumps(records, sort_keys=True).encode())
    elif spec.asset is not None:
        if registry is None:
            raise ConfigError(f"data asset '{spec.asset}' needs a workspace registry")
        import pyarrow.parquet as pq

        asset = registry.get_asset(spec.asset)
        parquet = Path(asset.path) / "data.parquet"
        if not parquet.is_file():
            raise DataError(f"asset {asset.id} is not a document dataset (no data.parquet)")
        table = pq.read_table(parquet, columns=["doc_id", "text", "path"]).to_pylist()
        records = [{"id": r["doc_id"], "text": r["text"], "path": r["path"]} for r in table]
        asset_id = asset.id
        h.update(asset.sha256.encode())
    else:
        path = data_root / Path(spec.path).expanduser()
        media_base = path if path.is_dir() else path.parent
        if path.is_dir():
            files = sorted(p for p in path.glob(spec.glob) if p.is_file())
            if not files:
                raise DataError(f"no files match {spec.glob} in {path}")
            records = []
            for f in files:
                h.update(f.relative_to(path).as_posix().encode() + b"\0" + f.read_bytes())
                if f.suffix in (".json", ".jsonl"):
                    for i, rec in enumerate(_read_json_records(f, spec.key)):
                        rec = dict(rec)
                        rec.setdefault("id", f.stem if i == 0 else f"{f.stem}:{i}")
                        records.append(rec)
                else:
                    records.append({"id": f.name, "path": str(f), "text": f.read_text("utf-8")})
        elif path.is_file():
            h.update(path.read_bytes())
            records = [dict(r) for r in _read_json_records(path, spec.key)]
        else:
            raise NotFoundError(f"eval data not found: {path}", hint="check data.path/data_root")
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise DataError(f"record {i} of {spec.path or 'inline data'} is not a mapping")
        rec.setdefault("id", str(i))
        rec["id"] = str(rec["id"])
        for field in spec.read_files:
            if field in rec:
                file = data_root / str(rec[field])
                if not file.is_file():
                    raise DataError(f"record {rec['id']}: {field} file not found: {file}")
                content = file.read_text("utf-8")
                h.update(content.encode())
                rec[f"{field}_text"] = content
        for field in spec.media:
            if rec.get(field):
                rec[field] = _resolve_media(rec, field, media_base, h)
    if spec.limit is not None:
        records = records[: spec.limit]
    ids = [r["id"] for r in records]
    if len(set(ids)) != len(ids):
        raise DataError("eval records have repeated ids", hint="give each record a unique id")
    h.update(f"limit={spec.limit}".encode())
    return Examples(records=records, fingerprint=h.hexdigest(), asset_id=asset_id)
