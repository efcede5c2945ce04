"""Preference stages as registered runs: a JSONL file of preference pairs (or prompts) becomes
a dataset asset; DPO/IPO/online DPO and reward-model training turn a base model + that dataset
(+ a reward model for online DPO) into a model asset with lineage to all of them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from forgeml.core.config import Recipe
from forgeml.core.errors import ConfigError, DataError, ForgeError
from forgeml.core.io import atomic_write_text, sha256_file
from forgeml.core.workspace import Workspace
from forgeml.pipeline.runtime import Notify, Output, StageResult, run_stage
from forgeml.registry import open_registry

PREFERENCE_FORMAT = "preference-jsonl"
PAIRS_FILE = "pairs.jsonl"


def preference_dataset_stage(
    ws: Workspace,
    path: str | Path,
    *,
    name: str | None = None,
    force: bool = False,
    notify: Notify | None = None,
) -> StageResult:
    """Register a preference JSONL file as a dataset asset (validated; cached by content)."""
    from forgeml.train.preference_data import parse_prompt_record, read_preference_records

    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise DataError(f"preference file not found: {path}", hint="pass a .jsonl file")
    name = name or path.stem
    config = {"sha256": sha256_file(path), "name": name}

    def body(work: Path) -> tuple[list[Output], dict[str, Any]]:
        out = work / "dataset"
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, out / PAIRS_FILE)
        records = read_preference_records(out / PAIRS_FILE, parse_prompt_record)
        lines = [json.loads(line) for line in (out / PAIRS_FILE).open() if line.strip()]
        pairs = sum(1 for r in lines if "chosen" in r and "rejected" in r)
        metrics = {"records": len(records), "pairs": pairs}
        atomic_write_text(out / "report.json", json.dumps({"source": str(path), **metrics}))
        meta = {"format": PREFERENCE_FORMAT, "source": str(path), **metrics}
        return [Output("dataset", name, out, meta)], metrics

    return run_stage(ws, "preference-data", config, [], body, force=force, notify=notify)


def resolve_preference_data(ws: Workspace, ref: str, *, notify: Notify | None = None):
    """A preference dataset asset from a JSONL path (registered on the way) or an asset ref."""
    reg = open_registry(ws)
    if Path(ref).expanduser().is_file():
        ref = preference_dataset_stage(ws, ref, notify=notify).output
    asset = reg.get_asset(ref)
    if asset.kind != "dataset" or asset.metadata.get("format") != PREFERENCE_FORMAT:
        raise ForgeError(
            f"{asset.id} is not a preference dataset",
            hint="pass a JSONL file of {prompt, chosen, rejected} records or its dataset asset",
        )
    return asset


def _model_asset(reg, ref: str, what: str):
    asset = reg.get_asset(ref)
    if asset.kind != "model":
        raise ForgeError(f"{what} {asset.id} is a {asset.kind}, not a model")
    return asset


def _numbers(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if isinstance(v, int | float) or v is None}


def dpo_stage(
    ws: Workspace, recipe: Recipe, base_ref: str, data_ref: str, *, force: bool = False,
    progress: bool = True, notify: Notify | None = None,
) -> StageResult:  # fmt: skip
    """`forgeml train dpo` and the pipeline's DPO stage: offline DPO/IPO, or online DPO when
    `dpo.online` → model asset; the loop is `dpo.train`/`dpo.optim` either way."""
    from forgeml.train.dpo import train_dpo
    from forgeml.train.online_dpo import train_online_dpo

    reg = open_registry(ws)
    base = _model_asset(reg, base_ref, "base model")
    data = resolve_preference_data(ws, data_ref, notify=notify)
    dcfg = recipe.dpo
    inputs = [base.id, data.id]
    if dcfg.online and dcfg.reward_model:
        rm = _model_asset(reg, dcfg.reward_model, "reward model")
        if rm.metadata.get("task") != "reward":
            raise ConfigError(
                f"dpo.reward_model {rm.id} is not a reward model",
                hint="train one with `forgeml train rm`",
            )
        dcfg = dcfg.model_copy(update={"reward_model": rm.id})
        recipe = recipe.model_copy(update={"dpo": dcfg})
        inputs.append(rm.id)
    elif not dcfg.online and data.metadata.get("pairs", 0) == 0:
        raise DataError(
            f"{data.id} has prompts but no chosen/rejected pairs",
            hint="offline DPO needs pairs; set dpo.online=true to sample them",
        )
    config = {
        "dpo": dcfg.model_dump(mode="json", exclude={"optim", "train"}),
        "optim": dcfg.optim.model_dump(mode="json"),
        "train": dcfg.train.model_dump(mode="json"),
        "eval_batch_size": recipe.eval.batch_size,
    }
    objective = "online-dpo" if dcfg.online else dcfg.loss

    def body(work: Path) -> tuple[list[Output], dict[str, Any]]:
        pairs = Path(data.path) / PAIRS_FILE
        if dcfg.online:
            summary = train_online_dpo(
                recipe, base_model_dir=base.path, prompts_path=pairs, out_dir=work, ws=ws,
                progress=progress,
            )  # fmt: skip
        else:
            summary = train_dpo(
                recipe, base_model_dir=base.path, pairs_path=pairs, out_dir=work,
                cache_dir=ws.root / "cache" / "ref_logps", progress=progress,
            )  # fmt: skip
        metrics = _numbers(summary)
        meta = {
            "arch": base.metadata.get("arch", "dense"), "base_model": base.id,
            "objective": objective, "data": data.id, **metrics,
        }  # fmt: skip
        name = f"{recipe.name}-{objective}"
        return [Output("model", name, Path(summary["model_dir"]), meta, parents=inputs)], metrics

    return run_stage(
        ws, "dpo", config, inputs, body, force=force, seed=dcfg.train.seed, notify=notify
    )


def reward_model_stage(
    ws: Workspace, recipe: Recipe, base_ref: str, data_ref: str, *, force: bool = False,
    progress: bool = True, notify: Notify | None = None,
) -> StageResult:  # fmt: skip
    """`forgeml train rm`: a reward model (model asset with metadata task=reward); the loop is
    `reward_model.train`/`reward_model.optim`."""
    from forgeml.train.reward_model import train_reward_model

    reg = open_registry(ws)
    base = _model_asset(reg, base_ref, "base model")
    data = resolve_preference_data(ws, data_ref, notify=notify)
    if data.metadata.get("pairs", 0) == 0:
        raise DataError(f"{data.id} has no chosen/rejected pairs to train a reward model on")
    inputs = [base.id, data.id]
    rcfg = recipe.reward_model
    config = {
        "reward_model": rcfg.model_dump(mode="json", exclude={"optim", "train"}),
        "optim": rcfg.optim.model_dump(mode="json"),
        "train": rcfg.train.model_dump(mode="json"),
        "eval_batch_size": recipe.eval.batch_size,
    }

    def body(work: Path) -> tuple[list[Output], dict[str, Any]]:
        summary = train_reward_model(
            recipe, base_model_dir=base.path, pairs_path=Path(data.path) / PAIRS_FILE,
            out_dir=work, progress=progress,
        )  # fmt: skip
        metrics = _numbers(summary)
        meta = {
            "arch": base.metadata.get("arch", "dense"), "task": "reward",
            "base_model": base.id, "data": data.id, **metrics,
        }  # fmt: skip
        name = f"{recipe.name}-rm"
        return [Output("model", name, Path(summary["model_dir"]), meta, parents=inputs)], metrics

    return run_stage(
        ws, "reward-model", config, inputs, body, force=force, seed=rcfg.train.seed,
        notify=notify,
    )  # fmt: skip
