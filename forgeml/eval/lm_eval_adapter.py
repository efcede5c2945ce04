"""lm-evaluation-harness interop: a `forgeml` model type for lm-eval, and its results as eval assets.

`ForgeLM` is an `lm_eval.api.model.LM` over a forgeml model folder (weights + tokenizer.json),
answering through the same batched `EvalModel` our own suites use. `run_lm_eval` evaluates
local lm-eval task YAMLs with it (no hub downloads), and `lm_eval_records` turns lm-eval's
output into our eval-asset layout (results.json + examples/<task>.jsonl), so `eval report`
and `eval gate` work on lm-eval results too.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Local tasks only: the hub must never be reached (a task that tries fails fast). Set before
# lm_eval imports `datasets`, which reads these once; `_offline` re-asserts them at run time.
for _var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
    os.environ[_var] = "1"

from lm_eval.api.model import LM  # noqa: E402
from lm_eval.api.registry import register_model  # noqa: E402

from forgeml.core.errors import ConfigError, DataError, NotFoundError  # noqa: E402
from forgeml.eval.tasks import EvalModel, GenerationRequest  # noqa: E402

DEFAULT_MAX_GEN_TOKS = 256


@register_model("forgeml")
class ForgeLM(LM):
    """lm-eval model type `forgeml`: `--model forgeml --model_args model_dir=PATH[,dtype=fp32]`.

    Requests go through `EvalModel`, so an lm-eval task and the same task in a forgeml suite
    see identical log-likelihoods (same tokenisation of context/continuation pairs, BOS
    prefix, right-padded batches)."""

    def __init__(
        self,
        model_dir: str | None = None,
        *,
        eval_model: EvalModel | None = None,
        device: str = "cpu",
        dtype: str = "auto",
        batch_size: int | str = 8,
        **_ignored: Any,  # lm-eval passes max_batch_size etc. to every model type
    ) -> None:
        super().__init__()
        if eval_model is None:
            if model_dir is None:
                raise ConfigError("model type forgeml needs model_args model_dir=PATH")
            size = int(batch_size) if str(batch_size).isdigit() else 8  # "auto" -> default
            eval_model = EvalModel.from_dir(model_dir, device=device, dtype=dtype, batch_size=size)
        self.lm = eval_model
        self._device = eval_model.device

    @property
    def tokenizer_name(self) -> str:
        return "forgeml-bpe"

    def loglikelihood(self, requests: Sequence[Any]) -> list[tuple[float, bool]]:
        pairs = [tuple(r.args) for r in requests]
        results = self.lm.loglikelihood(pairs)
        for pair, result in zip(pairs, results, strict=True):
            self.cache_hook.add_partial("loglikelihood", pair, result)
        return results

    def loglikelihood_rolling(self, requests: Sequence[Any]) -> list[float]:
        texts = [r.args[0] for r in requests]
        results = [-nll for nll, _ in self.lm.rolling_nll(texts)]
        for text, result in zip(texts, results, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), result)
        return results

    def generate_until(self, requests: Sequence[Any]) -> list[str]:
        batch = [_generation_request(*r.args) for r in requests]
        outputs = self.lm.generate(batch)
        for r, out in zip(requests, outputs, strict=True):
            self.cache_hook.add_partial("generate_until", r.args, out)
        return outputs


def _generation_request(context: str, gen_kwargs: dict[str, Any]) -> GenerationRequest:
    """lm-eval's generation kwargs (`until`, `max_gen_toks`, `do_sample`, `temperature`,
    `top_k`, `top_p`) as our request; greedy unless `do_sample` is true."""
    kw = dict(gen_kwargs or {})
    until = kw.pop("until", None) or []
    until = [until] if isinstance(until, str) else list(until)
    sample = bool(kw.pop("do_sample", False))
    temperature = float(kw.pop("temperature", 0.0) or 0.0)
    return GenerationRequest(
        prompt=context,
        max_new_tokens=int(kw.pop("max_gen_toks", DEFAULT_MAX_GEN_TOKS)),
        stop=tuple(until),
        temperature=temperature if sample else 0.0,
        top_k=kw.pop("top_k", None),
        top_p=kw.pop("top_p", None),
        seed=int(kw.pop("seed", 0) or 0),
    )


# ---------------------------------------------------------------------------------------
# Tasks: local YAMLs, loaded offline, fingerprinted for caching and lineage


@dataclass(frozen=True)
class LoadedTasks:
    """lm-eval Task objects by name, and per task the files that define it (its YAML and
    local data files) with a sha256 over their contents."""

    tasks: dict[str, Any]
    files: dict[str, list[Path]]
    fingerprints: dict[str, str]
    manager: Any = None  # the TaskManager (simple_evaluate would otherwise index ~14k YAMLs)


def _offline() -> None:
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        os.environ[var] = "1"
    import datasets
    import huggingface_hub.constants

    datasets.config.HF_HUB_OFFLINE = True  # read at call time; the env is read at import
    huggingface_hub.constants.HF_HUB_OFFLINE = True


def _data_files(task: Any) -> list[Path]:
    kwargs = task.config.dataset_kwargs or {}
    spec = kwargs.get("data_files")
    if spec is None:
        return []
    values = spec.values() if isinstance(spec, dict) else [spec]
    files: list[Path] = []
    for v in values:
        files += [Path(p) for p in ([v] if isinstance(v, str) else v)]
    return files


def load_tasks(
    tasks: Sequence[str], include_path: Sequence[str | Path] = (), *, builtin: bool = False
) -> LoadedTasks:
    """Load lm-eval tasks by name (found under `include_path`, or lm-eval's bundled index
    when `builtin`) or by YAML path, with the hub switched off."""
    _offline()
    from lm_eval.tasks import TaskManager

    paths = [str(Path(p).expanduser()) for p in include_path]
    for p in paths:
        if not Path(p).exists():
            raise NotFoundError(f"lm-eval include path not found: {p}")
    manager = TaskManager(include_path=paths or None, include_defaults=builtin)
    specs = [str(Path(t).expanduser()) if t.endswith((".yaml", ".yml")) else t for t in tasks]
    try:
        loaded = manager.load(specs)["tasks"]
    except KeyError as exc:
        raise NotFoundError(
            f"lm-eval task not found: {exc.args[0] if exc.args else exc}",
            hint="pass a task YAML path, or --include-path DIR holding the task's YAML",
        ) from None
    except (ConnectionError, OSError, ValueError) as exc:
        raise DataError(
            f"lm-eval could not load its data offline: {type(exc).__name__}: {exc}",
            hint="use a local dataset (dataset_path: json, dataset_kwargs.data_files: FILE)",
        ) from None
    from lm_eval.tasks._index import TaskIndex

    entries = dict(manager.task_index)
    for spec in specs:  # tasks given as YAML paths are not in the index
        entry = TaskIndex.entry_from_path(Path(spec))
        if entry is not None:
            entries[entry.name] = entry
    files: dict[str, list[Path]] = {}
    prints: dict[str, str] = {}
    for name, task in loaded.items():
        yaml_path = getattr(entries.get(name), "yaml_path", None)
        files[name] = ([Path(yaml_path)] if yaml_path else []) + _data_files(task)
        h = hashlib.sha256(json.dumps(task.dump_config(), sort_keys=True, default=str).encode())
        for f in files[name]:
            if f.is_file():
                h.update(f.name.encode() + b"\0" + f.read_bytes())
        prints[name] = h.hexdigest()
    return LoadedTasks(loaded, files, prints, manager)


# ---------------------------------------------------------------------------------------
# Results: lm-eval's output in our eval-asset layout

_LOWER_IS_BETTER = ("perplexity", "bits_per_byte", "byte_perplexity", "word_perplexity")


def _json_safe(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except TypeError:
        return str(value)


def _per_example(sample: dict[str, Any], metric: str) -> tuple[float, float] | None:
    """(score, weight) of one logged sample: plain numbers weigh 1; bits_per_byte is a
    (log-likelihood, bytes) pair whose byte-weighted mean is lm-eval's aggregate."""
    value = sample.get(metric)
    if isinstance(value, bool | int | float):
        return float(value), 1.0
    if metric == "bits_per_byte" and isinstance(value, list | tuple) and len(value) == 2:
        ll, n_bytes = float(value[0]), float(value[1])
        return (-ll / (math.log(2) * n_bytes), n_bytes) if n_bytes > 0 else None
    return None


def lm_eval_records(
    output: dict[str, Any], loaded: LoadedTasks
) -> tuple[dict[str, Any], dict[str, list[dict]]]:
    """(tasks summary, per-task example records) from `simple_evaluate`'s output.

    Metric keys `acc,none` become `acc` (filter `none`) or `acc@filter`; stderr keys are
    dropped. Each logged sample becomes an example with its per-document `scores` (and a
    `weight`), so the gate can bootstrap lm-eval KPIs like our own; the primary metric is
    the first one that has per-example scores."""
    tasks: dict[str, Any] = {}
    examples: dict[str, list[dict]] = {}
    for name, raw in output["results"].items():
        if name not in loaded.tasks:
            continue  # a group's aggregate row
        metrics: dict[str, float] = {}
        for key, value in raw.items():
            metric, _, filt = key.partition(",")
            if filt and "_stderr" not in metric and isinstance(value, int | float):
                metrics[metric if filt == "none" else f"{metric}@{filt}"] = float(value)
        if not metrics:
            raise DataError(f"lm-eval returned no metrics for task {name}")
        rows, per_doc = [], set()
        for sample in output.get("samples", {}).get(name, []):
            suffix = "" if sample.get("filter", "none") == "none" else f"@{sample['filter']}"
            scores, weight = {}, 1.0
            for metric in metrics:
                if metric.endswith(suffix) and (got := _per_example(sample, metric.split("@")[0])):
                    scores[metric], weight = got[0], got[1]
            per_doc |= set(scores)
            rows.append(
                {
                    "id": str(sample["doc_id"]),
                    "scores": scores,
                    "weight": weight,
                    "target": _json_safe(sample.get("target")),
                    "responses": _json_safe(sample.get("filtered_resps")),
                }
            )
        examples[name] = rows
        primary = next((m for m in metrics if m in per_doc), next(iter(metrics)))
        metrics["n"] = float(len(rows))
        tasks[name] = {
            "kind": f"lm-eval:{loaded.tasks[name].OUTPUT_TYPE}",
            "primary": primary,
            "metrics": metrics,
            "kpis": [
                {
                    "metric": primary,
                    "higher_is_better": primary not in _LOWER_IS_BETTER,
                    "tolerance": 0.0,
                    "minimum": None,
                }
            ],
            "data": loaded.fingerprints[name],
            "dataset": None,
        }
    return tasks, examples


def run_lm_eval(
    lm: LM,
    loaded: LoadedTasks,
    *,
    num_fewshot: int | None = None,
    limit: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """`lm_eval.simple_evaluate` on already-loaded tasks, with per-sample logs and without
    lm-eval's own bootstrap (our gate bootstraps over the stored examples)."""
    import lm_eval

    _offline()
    output = lm_eval.simple_evaluate(
        model=lm,
        tasks=list(loaded.tasks.values()),
        num_fewshot=num_fewshot,
        limit=limit,
        log_samples=True,
        bootstrap_iters=0,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
        task_manager=loaded.manager,
    )
    if output is None:
        raise DataError("lm-eval returned no results (non-zero rank?)")
    return output
