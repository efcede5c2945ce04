"""The pretrain stage: token shards and a tokenizer in, a model asset out (HF layout + tokenizer).

`train.init_from` (a registered model: id, name or alias) is resolved here, once, for every
entry point (`pipeline run`, `train pretrain`): to the model's folder and architecture, which
the loop (forgeml.train.pretrain) receives in the recipe and starts from; the run lists the
model among its inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from forgeml.core.config import Recipe
from forgeml.core.errors import ForgeError, NotFoundError
from forgeml.core.workspace import Workspace
from forgeml.pipeline.runtime import (
    Notify,
    Output,
    StageResult,
    resumable_work_dir,
    run_stage,
)
from forgeml.registry import Asset, Registry, open_registry


def pretrain_config(recipe: Recipe) -> dict[str, Any]:
    """The sections of a recipe a pre-training run's cache key is made of."""
    return {
        "model": recipe.model.model_dump(mode="json"),
        "optim": recipe.optim.model_dump(mode="json"),
        "train": recipe.train.model_dump(mode="json"),
    }


def resolve_init_from(reg: Registry, recipe: Recipe, tok: Asset) -> tuple[Recipe, Asset | None]:
    """`recipe` with `train.init_from` resolved to the registered model's folder and `model`
    to its architecture, and that model asset (None without `train.init_from`)."""
    if not recipe.train.init_from:
        return recipe, None
    from forgeml.models.hf_io import read_model_config

    init = reg.get_asset(recipe.train.init_from)
    if init.kind != "model":
        raise ForgeError(
            f"train.init_from names {init.id}, a {init.kind}, not a model",
            hint="pass a model asset id, name or alias (see `forgeml assets list`)",
        )
    init_vocab = Path(init.path) / "tokenizer.json"
    if init_vocab.is_file() and (
        init_vocab.read_bytes() != (Path(tok.path) / "tokenizer.json").read_bytes()
    ):
        # Same ids must mean the same tokens, or the weights would be trained on noise.
        raise ForgeError(
            f"train.init_from model {init.id} has another tokenizer than {tok.id}",
            hint="pack the data with the model's own tokenizer, or use `forgeml train "
            "cpt`, which extends the model's tokenizer with new tokens",
        )
    resolved = recipe.model_copy(
        update={
            "model": read_model_config(init.path),
            "train": recipe.train.model_copy(update={"init_from": str(init.path)}),
        }
    )
    return resolved, init


def pretrain_stage(
    ws: Workspace,
    recipe: Recipe,
    shards_ref: str,
    tokenizer_ref: str,
    *,
    resume: bool = False,
    auto_resume: bool = False,
    force: bool = False,
    progress: bool = True,
    notify: Notify | None = None,
    train_fn: Callable[..., dict[str, Any]] | None = None,
) -> StageResult:
    """Pre-train a model on packed shards → model asset (HF format + tokenizer files).
    `train_fn` stands in for `forgeml.train.pretrain.pretrain` (same arguments, e.g. the
    torchrun launcher's), so a multi-process run is registered like a one-process one."""
    from forgeml.train.pretrain import pretrain

    reg = open_registry(ws)
    shards, tok = reg.get_asset(shards_ref), reg.get_asset(tokenizer_ref)
    if shards.metadata.get("format") != "token-shards":
        raise ForgeError(
            f"asset {shards.id} is not a token-shards dataset",
            hint="pack the dataset first (forgeml train pretrain does it for you with --data)",
        )
    recipe, init = resolve_init_from(reg, recipe, tok)
    config = pretrain_config(recipe)
    inputs = [shards.id, tok.id] + ([init.id] if init is not None else [])
    describe = "pre-training run with this recipe and data"
    work_dir = None
    if auto_resume and not resume:
        # Resume when an interrupted run of this recipe left checkpoints, else start afresh
        # (what a retried job wants: it cannot know how far its last attempt got).
        try:
            work_dir = resumable_work_dir(ws, "pretrain", config, inputs, describe=describe)
            resume = True
        except NotFoundError:
            work_dir = None
    elif resume:
        work_dir = resumable_work_dir(ws, "pretrain", config, inputs, describe=describe)
    if resume:
        force = True
    heldout = Path(shards.path) / "heldout"

    def body(work: Path) -> tuple[list[Output], dict[str, Any]]:
        summary = (train_fn or pretrain)(
            recipe,
            train_shards=Path(shards.path) / "train",
            eval_shards=heldout if heldout.is_dir() else None,
            out_dir=work,
            tokenizer_dir=Path(tok.path),
            resume=resume,
            progress=progress,
        )
        metrics = {k: v for k, v in summary.items() if isinstance(v, int | float) or v is None}
        meta = {"tokenizer": tok.id, "shards": shards.id, "arch": recipe.model.arch, **metrics}
        name = f"{recipe.name}-{recipe.model.arch}"
        model_dir = Path(summary["model_dir"])
        parents = [tok.id] + ([init.id] if init is not None else [])
        return [Output("model", name, model_dir, meta, parents=parents)], metrics

    return run_stage(
        ws,
        "pretrain",
        config,
        inputs,
        body,
        force=force,
        seed=recipe.train.seed,
        work_dir=work_dir,
        notify=notify,
    )
