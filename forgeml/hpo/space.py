"""Search-space files for `forgeml hpo`: which dotted recipe fields to search and how.

```yaml
params:
  optim.lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}
  train.micro_batch_size: {type: int, low: 2, high: 8, step: 2}
  model.n_layers: {type: categorical, choices: [1, 2]}
sampler: {seed: 0, n_startup_trials: 3}
pruner: {kind: asha, min_resource: 10, reduction_factor: 3, n_startup_trials: 2}
```
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import optuna
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from forgeml.core.config import Recipe, validate_recipe
from forgeml.core.errors import ConfigError, NotFoundError
from forgeml.core.io import read_yaml


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FloatParam(_Spec):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = None

    @model_validator(mode="after")
    def _range(self) -> FloatParam:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and (self.low <= 0 or self.step is not None):
            raise ValueError("log scale needs low > 0 and no step")
        return self


class IntParam(_Spec):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = 1

    @model_validator(mode="after")
    def _range(self) -> IntParam:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        return self


class CategoricalParam(_Spec):
    type: Literal["categorical"]
    choices: list[Any] = Field(min_length=1)


Param = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]


class SamplerSpec(_Spec):
    seed: int = 0
    n_startup_trials: int = Field(3, ge=0, description="random trials before TPE models")


class PrunerSpec(_Spec):
    kind: Literal["asha", "hyperband", "none"] = "asha"
    min_resource: int | None = Field(
        None, ge=1, description="steps before the first rung (default: train.eval_every)"
    )
    reduction_factor: int = Field(3, ge=2)
    n_startup_trials: int = Field(
        2, ge=0, description="asha: first trials never pruned (they set the rungs' values)"
    )


class SearchSpace(_Spec):
    params: dict[str, Param] = Field(min_length=1)
    direction: Literal["minimize"] = "minimize"  # the objective is the held-out loss
    sampler: SamplerSpec = SamplerSpec()
    pruner: PrunerSpec = PrunerSpec()

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Ask `trial` for one value per parameter: {dotted field: value}."""
        values: dict[str, Any] = {}
        for name, p in self.params.items():
            if isinstance(p, FloatParam):
                values[name] = trial.suggest_float(name, p.low, p.high, log=p.log, step=p.step)
            elif isinstance(p, IntParam):
                values[name] = trial.suggest_int(name, p.low, p.high, log=p.log, step=p.step)
            else:
                values[name] = trial.suggest_categorical(name, p.choices)
        return values

    def sampler_for(self, offset: int = 0) -> optuna.samplers.TPESampler:
        """Seeded TPE (Bergstra et al. 2011); `offset` decorrelates parallel processes."""
        return optuna.samplers.TPESampler(
            seed=self.sampler.seed + offset, n_startup_trials=self.sampler.n_startup_trials
        )

    def pruner_for(self, recipe: Recipe) -> optuna.pruners.BasePruner:
        """ASHA (Li et al., arXiv:1810.05934) or Hyperband (arXiv:1603.06560) on the
        intermediate held-out losses, with training steps as the resource."""
        p = self.pruner
        if p.kind == "none":
            return optuna.pruners.NopPruner()
        min_resource = p.min_resource or recipe.train.eval_every or 1
        if p.kind == "hyperband":
            # not wrapped: Optuna's samplers see Hyperband's brackets only through its type
            return optuna.pruners.HyperbandPruner(
                min_resource=min_resource,
                max_resource=recipe.train.max_steps,
                reduction_factor=p.reduction_factor,
            )
        asha = optuna.pruners.SuccessiveHalvingPruner(
            min_resource=min_resource, reduction_factor=p.reduction_factor
        )
        return StartupGuard(asha, p.n_startup_trials) if p.n_startup_trials else asha


class StartupGuard(optuna.pruners.BasePruner):
    """Never prune the first `n_startup_trials` trials, but let the inner pruner record their
    rung values: with few trials, successive halving alone would stop every trial that is not
    the best so far at its first rung."""

    def __init__(self, inner: optuna.pruners.BasePruner, n_startup_trials: int) -> None:
        self.inner, self.n_startup_trials = inner, n_startup_trials

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        verdict = self.inner.prune(study, trial)
        return verdict and trial.number >= self.n_startup_trials


def parse_space(raw: Any, source: str = "space") -> SearchSpace:
    """Validate a search space (a mapping as in this module's docstring)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a search space must be a YAML mapping with 'params'")
    try:
        return SearchSpace.model_validate(raw)
    except ValidationError as exc:
        e = exc.errors()[0]
        where = ".".join(str(p) for p in e["loc"]) or "space"
        raise ConfigError(
            f"{source}: '{where}': {e['msg']}",
            hint="each param is {type: float|int|categorical, low/high or choices}",
        ) from None


def load_space(path: str | Path) -> SearchSpace:
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"search space not found: {path}", hint="check the --space path")
    return parse_space(read_yaml(path), str(path))


def apply_params(recipe: Recipe, values: dict[str, Any], source: str = "trial") -> Recipe:
    """`recipe` with the searched fields set (validated like any recipe override)."""
    raw = recipe.model_dump(mode="json")
    for key, value in values.items():
        *parents, last = key.split(".")
        node: Any = raw
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or last not in node:
            raise ConfigError(
                f"{source}: '{key}' is not a recipe field",
                hint="search over dotted recipe keys such as optim.lr or train.max_steps",
            )
        node[last] = value
    return validate_recipe(raw, source)


def check_space(space: SearchSpace, recipe: Recipe) -> None:
    """Fail before any trial when a parameter names no recipe field or its range is invalid
    for it (checked at both ends of every range and every choice)."""
    for key, p in space.params.items():
        values = p.choices if isinstance(p, CategoricalParam) else [p.low, p.high]
        for v in values:
            apply_params(recipe, {key: v}, source=f"search space '{key}'={v!r}")
