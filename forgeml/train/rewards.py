"""Reward plugins for RL (forgeml.train.rl): each scores a batch of completions of prompts.

A recipe lists them under `rl.rewards`, by kind (`REWARD_KINDS`: a user function by import
path, a regex or exact-match checker, a reward model, an execution checker that runs the
completion in the sandbox of forgeml.eval.sandbox) or directly as 'pkg.module:function'.
Several plugins are summed with their weights; a plugin's bad output is a clear error.
"""

from __future__ import annotations

import math
import numbers
import os
import re
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from forgeml.core.config import RewardConfig
from forgeml.core.errors import ConfigError, DataError, ForgeError
from forgeml.core.plugins import load_plugin

Prompts = Sequence[str]
Completions = Sequence[str]
Metadatas = Sequence[dict[str, Any]]
BatchScorer = Callable[[Prompts, Completions, Metadatas], Sequence[Any]]
SampleScorer = Callable[[str, str, dict[str, Any]], Any]


class RewardError(ForgeError):
    """A reward plugin failed or returned something that is not a finite number."""


@dataclass(frozen=True)
class RewardPlugin:
    """A named, weighted batch scorer; calling it validates what the plugin returned."""

    name: str
    weight: float
    score_batch: BatchScorer

    def __call__(
        self, prompts: Prompts, completions: Completions, metadatas: Metadatas
    ) -> list[float]:
        try:
            values = list(self.score_batch(prompts, completions, metadatas))
        except RewardError:
            raise
        except Exception as exc:  # a user plugin's bug: name the plugin, keep the cause
            raise RewardError(
                f"reward plugin '{self.name}' raised {type(exc).__name__}: {exc}",
                hint="fix the plugin; rerun with --debug for the traceback",
            ) from exc
        if len(values) != len(completions):
            raise RewardError(
                f"reward plugin '{self.name}' returned {len(values)} rewards for "
                f"{len(completions)} completions",
                hint="return one float per completion",
            )
        return [_as_reward(self.name, i, v) for i, v in enumerate(values)]


def _as_reward(name: str, index: int, value: Any) -> float:
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()  # 0-d numpy / torch scalars
    if not isinstance(value, numbers.Real):
        raise RewardError(
            f"reward plugin '{name}' returned {type(value).__name__} {value!r:.80} for "
            f"completion {index}",
            hint="return a float (e.g. 1.0 for a pass, 0.0 for a fail)",
        )
    value = float(value)
    if not math.isfinite(value):
        raise RewardError(
            f"reward plugin '{name}' returned {value} for completion {index}",
            hint="return a finite float",
        )
    return value


def per_sample(name: str, fn: SampleScorer, workers: int = 1) -> BatchScorer:
    """Lift `(prompt, completion, metadata) -> float` to a batch scorer that names the failing
    sample in its error. With `workers` > 1 that many threads score samples at once (for
    functions that wait on child processes, as an execution check does); order is kept."""

    def one(i: int, p: str, c: str, m: dict[str, Any]) -> Any:
        try:
            return fn(p, c, m)
        except Exception as exc:
            raise RewardError(
                f"reward plugin '{name}' raised {type(exc).__name__} on completion {i} "
                f"(prompt {p[:60]!r}): {exc}",
                hint="fix the plugin; rerun with --debug for the traceback",
            ) from exc

    def score(prompts: Prompts, completions: Completions, metadatas: Metadatas) -> list[Any]:
        if len({len(prompts), len(completions), len(metadatas)}) != 1:
            raise ValueError("prompts, completions and metadatas differ in length")
        args = (range(len(completions)), prompts, completions, metadatas)
        if workers == 1 or len(completions) < 2:
            return list(map(one, *args))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(one, *args))

    return score


def _import_function(path: str, name: str) -> SampleScorer:
    fn = load_plugin(path)
    if not callable(fn):
        raise ConfigError(f"reward plugin '{name}': '{path}' is not callable")
    return fn  # type: ignore[return-value]


def _function(spec: RewardConfig, name: str, ws: Any) -> BatchScorer:
    path = spec.function or (spec.kind if ":" in spec.kind else None)
    if not path:
        raise ConfigError(
            f"reward plugin '{name}' (kind function) has no `function`",
            hint="set function: 'pkg.module:function' taking (prompt, completion, metadata)",
        )
    return per_sample(name, _import_function(path, name), spec.workers)


def _compile(spec: RewardConfig, name: str) -> re.Pattern[str]:
    if not spec.pattern:
        raise ConfigError(f"reward plugin '{name}' (kind {spec.kind}) needs `pattern`")
    try:
        return re.compile(spec.pattern)
    except re.error as exc:
        raise ConfigError(f"reward plugin '{name}': bad regex {spec.pattern!r}: {exc}") from None


def _regex(spec: RewardConfig, name: str, ws: Any) -> BatchScorer:
    """1.0 when `pattern` is found in the completion, else 0.0."""
    pattern = _compile(spec, name)
    return per_sample(name, lambda p, c, m: float(pattern.search(c) is not None))


def _exact_match(spec: RewardConfig, name: str, ws: Any) -> BatchScorer:
    """1.0 when the answer (group 1 of `pattern`, else the whole completion), stripped, equals
    the metadata's `answer_field`, stripped."""
    pattern = _compile(spec, name) if spec.pattern else None
    field = spec.answer_field

    def score(prompt: str, completion: str, meta: dict[str, Any]) -> float:
        if field not in meta:
            raise DataError(
                f"prompt has no '{field}' field for exact_match",
                hint=f"add it to every prompt record or set answer_field (keys: {sorted(meta)})",
            )
        answer = completion
        if pattern is not None:
            found = pattern.search(completion)
            if found is None:
                return 0.0
            answer = found.group(1) if pattern.groups else found.group(0)
        return float(answer.strip() == str(meta[field]).strip())

    return per_sample(name, score)


_FENCE = re.compile(r"```[ \t]*(?:python|py)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)


def extract_code(completion: str) -> str:
    """The first fenced ``` block of a completion (closing fence optional), else all of it."""
    found = _FENCE.search(completion)
    return found.group(1) if found else completion


def compiles(code: str) -> bool:
    """True when `code` is valid Python syntax (compiled in-process, never run)."""
    with warnings.catch_warnings():  # a sample's SyntaxWarnings are not the user's business
        warnings.simplefilter("ignore")
        try:
            compile(code, "<completion>", "exec")
        except (SyntaxError, ValueError):
            return False
    return True


def _execution(spec: RewardConfig, name: str, ws: Any) -> BatchScorer:
    """Share of the prompt's test cases `[{inputs, expected}]` the completion passes when run
    as a Python program in the sandbox (own process, time/memory limits, no network)."""
    from forgeml.eval.sandbox import SandboxLimits, score_io_cases

    limits = SandboxLimits(timeout_s=spec.timeout_s, memory_mb=spec.memory_mb)
    field = spec.cases_field

    def one(completion: str, meta: dict[str, Any]) -> float:
        cases = meta.get(field)
        if not isinstance(cases, list) or not cases:
            raise DataError(
                f"reward plugin '{name}': prompt has no test cases in '{field}'",
                hint="give each prompt a list of {inputs: [...], expected: [lines]} or set cases_field",
            )
        code = extract_code(completion) if spec.extract_code else completion
        if not compiles(code):
            return 0.0  # fails every case: no process needed
        return score_io_cases(code, cases, limits=limits, stop_after_timeout=True)[0]

    def score(prompts: Prompts, completions: Completions, metadatas: Metadatas) -> list[float]:
        # The work is in child processes: threads only wait on them.
        with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
            return list(pool.map(one, completions, metadatas))

    return score


def _reward_model(spec: RewardConfig, name: str, ws: Any) -> BatchScorer:
    """A trained reward model (forgeml.train.reward_model.RewardScorer) scores each reply in
    its conversation (metadata `messages`, else the prompt as one user turn): higher is better.
    `model` is a model asset of `ws`, or with no workspace a reward-model folder."""
    if not spec.model:
        raise ConfigError(
            f"reward plugin '{name}' (kind reward_model) needs `model`",
            hint="set model: a reward-model asset id, name or alias",
        )
    try:
        from forgeml.train.reward_model import RewardScorer
    except ImportError as exc:
        raise ConfigError(
            f"reward plugin '{name}': reward models are not available in this build ({exc})",
            hint="use a function, regex, exact_match or execution reward",
        ) from None
    scorer = RewardScorer(ws, spec.model)

    def score(prompts: Prompts, completions: Completions, metadatas: Metadatas) -> list[float]:
        conversations = [m.get("messages") or p for p, m in zip(prompts, metadatas, strict=True)]
        return scorer(conversations, list(completions))

    return score


REWARD_KINDS: dict[str, Callable[[RewardConfig, str, Any], BatchScorer]] = {
    "function": _function,
    "regex": _regex,
    "exact_match": _exact_match,
    "execution": _execution,
    "reward_model": _reward_model,
}


def build_reward(spec: RewardConfig, ws: Any = None) -> RewardPlugin:
    """The plugin a recipe entry names: a kind of `REWARD_KINDS` or a 'module:function' path."""
    kind = "function" if ":" in spec.kind else spec.kind
    name = spec.name or (spec.function if kind == "function" and spec.function else spec.kind)
    if kind not in REWARD_KINDS:
        raise ConfigError(
            f"unknown reward kind '{spec.kind}'",
            hint=f"use one of {', '.join(REWARD_KINDS)} or an import path pkg.module:function",
        )
    return RewardPlugin(name, spec.weight, REWARD_KINDS[kind](spec, name, ws))


def build_rewards(specs: Sequence[RewardConfig], ws: Any = None) -> list[RewardPlugin]:
    if not specs:
        raise ConfigError(
            "rl.rewards is empty: nothing to reward",
            hint="add e.g. rl.rewards: [{kind: 'pkg.module:function'}] to the recipe",
        )
    plugins = [build_reward(spec, ws) for spec in specs]
    names = [p.name for p in plugins]
    if len(set(names)) != len(names):
        raise ConfigError(f"reward plugin names repeat: {names}", hint="give each a `name`")
    return plugins


def score_completions(
    plugins: Sequence[RewardPlugin],
    prompts: Prompts,
    completions: Completions,
    metadatas: Metadatas,
) -> tuple[list[float], dict[str, list[float]]]:
    """Weighted sum of every plugin's rewards, and each plugin's own rewards by name."""
    each = {p.name: p(prompts, completions, metadatas) for p in plugins}
    total = [sum(p.weight * each[p.name][i] for p in plugins) for i in range(len(completions))]
    return total, each
