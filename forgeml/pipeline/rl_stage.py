"""The RL stage as a registered run: base model + prompts dataset + reward plugin specs in,
GRPO-trained model asset out (`forgeml train rl`). The loop itself is forgeml.train.rl.

A prompts JSONL given by path is registered as a dataset asset first, so the lineage of the
trained model names the exact prompts; a user reward function's source file is hashed into
the run's config, so editing the reward re-runs the stage instead of answering from cache.
"""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path
from typing import Any

from forgeml.core.config import Recipe, RewardConfig
from forgeml.core.errors import ConfigError, ForgeError, NotFoundError
from forgeml.core.plugins import plugin_module
from forgeml.core.workspace import Workspace
from forgeml.pipeline.runtime import (
    Notify,
    Output,
    StageResult,
    resumable_work_dir,
    run_stage,
)
from forgeml.registry import Registry, open_registry

PROMPTS_FORMAT = "rl-prompts-jsonl"


def _prompts_asset(reg: Registry, ref: str):
    """A prompts dataset asset: an existing one by id/name/alias, or a JSONL file registered."""
    path = Path(ref).expanduser()
    if path.is_file():
        return reg.add_asset(
            "dataset", path.stem, path, metadata={"format": PROMPTS_FORMAT, "source": str(path)}
        )
    try:
        return reg.get_asset(ref)
    except NotFoundError:
        raise NotFoundError(
            f"prompts '{ref}' is neither a file nor a dataset asset",
            hint="pass a JSONL file of {prompt: ...} records or a dataset id",
        ) from None


def _prompts_file(asset) -> Path:
    path = Path(asset.path)
    if path.is_dir():
        found = sorted(path.glob("*.jsonl"))
        if len(found) != 1:
            raise ForgeError(
                f"dataset {asset.id} holds {len(found)} JSONL files, not one prompts file",
                hint="register the prompts JSONL file itself",
            )
        path = found[0]
    if path.suffix != ".jsonl":
        raise ForgeError(f"dataset {asset.id} is not a prompts JSONL file ({path.name})")
    return path


def reward_fingerprints(specs: list[RewardConfig]) -> dict[str, str]:
    """sha256 of the source file of every user reward function, by plugin path."""
    out = {}
    for spec in specs:
        path = spec.function or (spec.kind if ":" in spec.kind else None)
        if not path:
            continue
        try:
            source = inspect.getsourcefile(plugin_module(path))
        except TypeError as exc:
            raise ConfigError(f"reward function '{path}': no source file: {exc}") from None
        if source:
            out[path] = hashlib.sha256(Path(source).read_bytes()).hexdigest()
    return out


def rl_stage(
    ws: Workspace,
    recipe: Recipe,
    base_model_ref: str,
    prompts_ref: str,
    *,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    notify: Notify | None = None,
) -> StageResult:
    """GRPO-train `base_model_ref` on the prompts with the recipe's reward plugins → model
    (`forgeml train rl` and the pipeline's RL stage; the loop is `rl.train`/`rl.optim`)."""
    from forgeml.train.rewards import build_rewards
    from forgeml.train.rl import train_rl

    reg = open_registry(ws)
    base = reg.get_asset(base_model_ref)
    if base.kind != "model":
        raise ForgeError(f"{base.id} is a {base.kind}, not a model", hint="pass a model asset")
    plugins = build_rewards(recipe.rl.rewards, ws)  # fail before registering anything
    prompts = _prompts_asset(reg, prompts_ref)
    prompts_file = _prompts_file(prompts)
    config: dict[str, Any] = {
        "rl": recipe.rl.model_dump(mode="json", exclude={"optim", "train"}),
        "optim": recipe.rl.optim.model_dump(mode="json"),
        "train": recipe.rl.train.model_dump(mode="json"),
        "reward_sources": reward_fingerprints(list(recipe.rl.rewards)),
    }
    inputs = [base.id, prompts.id]
    describe = "RL run with this recipe, model and prompts"
    work_dir = resumable_work_dir(ws, "rl", config, inputs, describe=describe) if resume else None

    def body(work: Path) -> tuple[list[Output], dict[str, Any]]:
        summary = train_rl(
            recipe, base_model=Path(base.path), prompts=prompts_file, out_dir=work,
            resume=resume, rewards=plugins, progress=progress,
        )  # fmt: skip
        metrics = {k: v for k, v in summary.items() if isinstance(v, int | float)}
        meta = {
            **metrics, "arch": base.metadata.get("arch", "dense"), "base_model": base.id,
            "prompts": prompts.id, "rewards": [r.model_dump(mode="json") for r in recipe.rl.rewards],
            "objective": "grpo",
        }  # fmt: skip
        name = f"{recipe.name}-rl"
        return [Output("model", name, Path(summary["model_dir"]), meta, parents=inputs)], metrics

    return run_stage(
        ws, "rl", config, inputs, body, force=force or resume, seed=recipe.rl.train.seed,
        work_dir=work_dir, notify=notify,
    )  # fmt: skip
