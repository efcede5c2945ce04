"""SFT as registered runs: chat JSONL -> dataset asset; base model + dataset -> fine-tuned model
(full) or PEFT adapter asset (LoRA) with lineage to both; adapter + base -> merged model asset.

`forgeml train sft`, `forgeml adapters merge` and `forgeml pipeline run` (recipes with an `sft`
section) call these; each is cached like every stage (same config and inputs: no re-run).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from forgeml.core.config import Recipe, SFTConfig
from forgeml.core.errors import ConfigError, DataError, ForgeError, NotFoundError
from forgeml.core.io import atomic_write_text
from forgeml.core.workspace import Workspace
from forgeml.pipeline.runtime import (
    Notify,
    Output,
    StageResult,
    resumable_work_dir,
    run_stage,
)
from forgeml.registry import open_registry

CHAT_FORMAT = "chat-jsonl"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def chat_dataset_stage(
    ws: Workspace,
    train: str | Path,
    heldout: str | Path | None = None,
    *,
    name: str | None = None,
    force: bool = False,
    notify: Notify | None = None,
) -> StageResult:
    """Register chat JSONL file(s) as a dataset asset (`train.jsonl`, `heldout.jsonl`)."""
    files = {"train.jsonl": Path(train).expanduser().resolve()}
    if heldout is not None:
        files["heldout.jsonl"] = Path(heldout).expanduser().resolve()
    for path in files.values():
        if not path.is_file():
            raise NotFoundError(f"chat data not found: {path}", hint="pass a .jsonl file")
    name = name or files["train.jsonl"].stem
    config = {"files": {k: _sha256(p) for k, p in files.items()}, "name": name}

    def body(work: Path) -> tuple[list[Output], dict[str, Any]]:
        out = work / "chat"
        out.mkdir(parents=True, exist_ok=True)
        counts = {}
        for target, src in files.items():
            shutil.copyfile(src, out / target)
            counts[target.removesuffix(".jsonl")] = sum(
                1 for line in src.read_text(encoding="utf-8").splitlines() if line.strip()
            )
        meta = {
            "format": CHAT_FORMAT,
            "records": counts,
            "sources": {k: str(p) for k, p in files.items()},
        }
        return [Output("dataset", name, out, meta)], {"records": counts}

    return run_stage(ws, "chat-data", config, [], body, force=force, notify=notify)


def _chat_dataset(ws: Workspace, data: str, heldout: str | None, notify: Notify | None):
    """A chat dataset asset from a JSONL path (registered on the fly) or an asset reference."""
    reg = open_registry(ws)
    if Path(data).expanduser().is_file():
        return reg.get_asset(chat_dataset_stage(ws, data, heldout, notify=notify).output)
    if heldout is not None:
        raise ConfigError("--heldout goes with a JSONL path for --data, not a dataset asset")
    asset = reg.get_asset(data)
    if asset.kind != "dataset" or asset.metadata.get("format") != CHAT_FORMAT:
        raise ForgeError(
            f"{asset.id} is not a chat dataset", hint="pass a .jsonl file of conversations"
        )
    return asset


def sft_stage(
    ws: Workspace,
    recipe: Recipe,
    base_model: str,
    data: str | None = None,
    heldout: str | None = None,
    *,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    notify: Notify | None = None,
) -> StageResult:
    """Fine-tune `base_model` (id, name or alias) on chat data (a JSONL path or chat dataset
    asset; default `recipe.sft.data`) → model asset (full) or adapter asset (LoRA)."""
    from forgeml.train.sft import sft

    cfg = recipe.sft or SFTConfig()
    data = data or cfg.data
    heldout = heldout or cfg.heldout
    if not data:
        raise ConfigError(
            "no SFT data", hint="pass --data FILE.jsonl or set sft.data in the recipe"
        )
    reg = open_registry(ws)
    base = reg.get_asset(base_model)
    if base.kind != "model":
        raise ForgeError(f"{base.id} is a {base.kind}, not a model", hint="pass a model asset")
    dataset = _chat_dataset(ws, data, heldout, notify)
    config = {"sft": cfg.model_dump(mode="json", exclude={"data", "heldout"})}
    inputs = [base.id, dataset.id]
    describe = "SFT run with this recipe, base model and data"
    work_dir = resumable_work_dir(ws, "sft", config, inputs, describe=describe) if resume else None
    held = Path(dataset.path) / "heldout.jsonl"

    def body(work: Path) -> tuple[list[Output], dict[str, Any]]:
        summary = sft(
            cfg, base_model_dir=Path(base.path), train_data=Path(dataset.path) / "train.jsonl",
            heldout_data=held if held.is_file() else None, out_dir=work, base_model_id=base.id,
            resume=resume, progress=progress,
        )  # fmt: skip
        metrics = {
            k: v for k, v in summary.items() if isinstance(v, int | float | str) or v is None
        }
        metrics["data_report"] = summary["data"]
        meta = {"base_model": base.id, "data": dataset.id, "method": cfg.method,
                **{k: v for k, v in metrics.items() if k != "data_report"}}  # fmt: skip
        if cfg.method == "lora":
            meta.update(format="peft-lora", rank=cfg.lora.rank, alpha=cfg.lora.alpha,
                        targets=list(cfg.lora.targets))  # fmt: skip
            out = Output("adapter", f"{base.name}-lora", Path(summary["adapter_dir"]), meta,
                         parents=[base.id, dataset.id])  # fmt: skip
        else:
            out = Output("model", f"{base.name}-sft", Path(summary["model_dir"]), meta,
                         parents=[base.id, dataset.id])  # fmt: skip
        return [out], metrics

    return run_stage(
        ws, "sft", config, inputs, body, force=force or resume, seed=cfg.train.seed,
        work_dir=work_dir, notify=notify,
    )  # fmt: skip


def merge_adapter_stage(
    ws: Workspace,
    adapter_ref: str,
    *,
    name: str | None = None,
    force: bool = False,
    notify: Notify | None = None,
) -> StageResult:
    """Fold a LoRA adapter asset into its base model → a new model asset (parents: both)."""
    from forgeml.models.hf_io import load_model, save_model
    from forgeml.models.lora import load_adapter, merge_lora

    reg = open_registry(ws)
    adapter = reg.get_asset(adapter_ref)
    if adapter.kind != "adapter":
        raise ForgeError(
            f"{adapter.id} is a {adapter.kind}, not an adapter", hint="pass an adapter asset"
        )
    base_id = adapter.metadata.get("base_model")
    if not base_id:
        raise DataError(f"adapter {adapter.id} does not record its base model")
    base = reg.get_asset(base_id)
    name = name or f"{adapter.name}-merged"
    config = {"name": name}

    def body(work: Path) -> tuple[list[Output], dict[str, Any]]:
        model = load_adapter(load_model(base.path), adapter.path)
        out = save_model(merge_lora(model), work / "model", tokenizer_dir=base.path)
        atomic_write_text(
            out / "merged_from.json", json.dumps({"adapter": adapter.id, "base": base.id})
        )
        meta = {
            "base_model": base.id,
            "adapter": adapter.id,
            "arch": model.cfg.arch,
            "params": model.num_params(),
            "tokenizer": base.metadata.get("tokenizer"),
        }
        return [Output("model", name, out, meta, parents=[base.id, adapter.id])], {
            "params": model.num_params()
        }

    return run_stage(
        ws, "merge-adapter", config, [adapter.id, base.id], body, force=force, notify=notify
    )
