"""Bring Hugging Face checkpoints into the registry, and take registered models out.

`import_hf_stage` registers an HF folder on disk (Mistral/Llama dense or Mixtral MoE, with its
tokenizer) as tokenizer + model assets through `run_stage`, so eval, generate and continued
pre-training use it like a trained model; `export_model` writes any model asset as an HF folder,
`export_checkpoint` a (sharded) training checkpoint's weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from forgeml.core.config import ModelConfig
from forgeml.core.errors import ConfigError, DataError, ForgeError, NotFoundError
from forgeml.core.io import fsync_dir
from forgeml.core.workspace import Workspace
from forgeml.models.hf_io import (
    from_hf_state_dict,
    load_model,
    mixtral_compatible,
    read_model_config,
    save_model,
)
from forgeml.models.registry import build_model
from forgeml.pipeline.runtime import Notify, Output, StageResult, run_stage
from forgeml.registry import open_registry
from forgeml.tokenizer.train import TOKENIZER_FILES
from forgeml.train.checkpoint import (
    checkpoint_model_keys,
    consolidated_model_state,
    is_checkpoint,
    latest_checkpoint,
    read_checkpoint_meta,
)

# What an HF model folder needs besides the weights; READMEs, .git and the like stay behind.
MODEL_SIDE_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json")


def _fingerprint(files: list[Path]) -> str:
    """Cheap change detector for the import cache: path, size and mtime of each file."""
    h = hashlib.sha256()
    for path in files:
        st = path.stat()
        h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode(errors="surrogateescape"))
    return h.hexdigest()


def _stage_files(files: list[Path], dest: Path) -> Path:
    """Hard-link (or copy, across file systems) `files` into `dest` for registration."""
    dest.mkdir(parents=True, exist_ok=True)
    for src in files:
        try:
            os.link(src, dest / src.name)
        except OSError:
            shutil.copy2(src, dest / src.name)
    return dest


def _tokenizer_vocab_size(tokenizer_file: Path) -> int:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tokenizer_file)).get_vocab_size()


def import_hf_stage(
    ws: Workspace,
    hf_dir: str | Path,
    name: str | None = None,
    *,
    force: bool = False,
    notify: Notify | None = None,
) -> StageResult:
    """Register an HF checkpoint folder as a model asset (and its tokenizer as a tokenizer
    asset, the model's parent). The result's `output` is the model id; its metrics name the
    tokenizer (None when the folder has no tokenizer.json)."""
    hf_dir = Path(hf_dir).expanduser().resolve()
    if not hf_dir.is_dir():
        raise NotFoundError(f"model folder not found: {hf_dir}", hint="pass an HF checkpoint dir")
    cfg = read_model_config(hf_dir)
    weights = sorted(hf_dir.glob("*.safetensors"))
    if not weights:
        raise NotFoundError(
            f"no *.safetensors in {hf_dir}",
            hint="save the checkpoint with safetensors (save_pretrained does by default)",
        )
    n_params = _check_weights(hf_dir, weights, cfg)
    name = name or hf_dir.name
    model_files = weights + [hf_dir / f for f in MODEL_SIDE_FILES if (hf_dir / f).is_file()]
    ours = hf_dir / "forgeml_model.json"
    if ours.is_file():
        model_files.append(ours)
    tok_files = [hf_dir / f for f in TOKENIZER_FILES if (hf_dir / f).is_file()]

    tok_id = None
    if (hf_dir / "tokenizer.json").is_file():
        vocab = _tokenizer_vocab_size(hf_dir / "tokenizer.json")
        if vocab > cfg.vocab_size:
            raise DataError(
                f"{hf_dir}: tokenizer has {vocab} tokens but the model only {cfg.vocab_size}",
                hint="the tokenizer files do not belong to this checkpoint",
            )

        def tokenizer_body(work: Path) -> tuple[list[Output], dict[str, Any]]:
            out = _stage_files(tok_files, work / "tokenizer")
            meta = {"vocab_size": vocab, "source": str(hf_dir), "format": "hf-tokenizer"}
            return [Output("tokenizer", f"{name}-tokenizer", out, meta)], {"vocab_size": vocab}

        tok_config = {"source": str(hf_dir), "fingerprint": _fingerprint(tok_files)}
        tok_run = run_stage(
            ws, "import-tokenizer", tok_config, [], tokenizer_body, force=force, notify=notify
        )
        tok_id = tok_run.output

    config = {"source": str(hf_dir), "name": name, "fingerprint": _fingerprint(model_files)}

    def model_body(work: Path) -> tuple[list[Output], dict[str, Any]]:
        # The model asset keeps the tokenizer files too, as a trained model's folder does, so
        # generate and export find them next to the weights.
        out = _stage_files(model_files + tok_files, work / "model")
        metrics = {"params": n_params, "arch": cfg.arch, "tokenizer": tok_id}
        hf_type = json.loads((hf_dir / "config.json").read_text()).get("model_type")
        meta = {"source": str(hf_dir), "hf_model_type": hf_type, "format": "hf", **metrics}
        return [Output("model", name, out, meta, parents=[tok_id] if tok_id else [])], metrics

    inputs = [tok_id] if tok_id else []
    return run_stage(ws, "import-hf", config, inputs, model_body, force=force, notify=notify)


def _check_weights(hf_dir: Path, weights: list[Path], cfg: ModelConfig) -> int:
    """Fail at import, not at first use, when the tensors do not fit the config: every name
    and shape is checked on the meta device, without reading the weights. Returns the
    number of parameters."""
    tensors: dict[str, torch.Tensor] = {}
    for path in weights:
        with safe_open(path, framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (a safetensors handle is not a dict)
                tensors[key] = torch.empty(f.get_slice(key).get_shape(), device="meta")
    with torch.device("meta"):
        model = build_model(cfg)
    n_params = model.num_params()  # before loading: `assign` unties tied embeddings
    try:
        model.load_state_dict(from_hf_state_dict(tensors, cfg), strict=True, assign=True)
    except ConfigError as exc:
        raise ConfigError(f"{hf_dir}: {exc.message}", hint=exc.hint) from None
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1].strip()
        raise ConfigError(
            f"{hf_dir}: the weights do not match config.json ({first})",
            hint="is config.json from the same checkpoint as the safetensors files?",
        ) from None
    return n_params


def export_model(
    ws: Workspace, model_ref: str, out_dir: str | Path, *, max_shard_size: int | str | None = None
) -> Path:
    """Write model asset `model_ref` (id, prefix, name or alias) as an HF folder at `out_dir`
    (config.json, model.safetensors or shards with their index, tokenizer files), refusing a
    non-empty `out_dir`. The folder appears complete or not at all."""
    reg = open_registry(ws)
    asset = reg.get_asset(model_ref)
    if asset.kind != "model":
        raise ForgeError(f"{asset.id} is a {asset.kind}, not a model", hint="pass a model id")
    cfg = read_model_config(asset.path)
    _check_exportable(cfg, f"model {asset.id}")
    return _write_export(load_model(asset.path), out_dir, asset.path, max_shard_size)


def export_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    tokenizer_dir: str | Path | None = None,
    max_shard_size: int | str | None = None,
) -> Path:
    """Write the model weights of a training checkpoint as an HF folder at `out_dir`.

    `checkpoint`: a `step_NNNNNNNN` folder, a checkpoints folder or a run folder (its latest
    checkpoint). A sharded (DCP) checkpoint saved by any number of processes is gathered in
    this one process; the architecture comes from the checkpoint's meta.json.
    """
    path = resolve_checkpoint(checkpoint)
    _empty_target(out_dir)  # before reading any weights
    model = load_checkpoint_model(path, _check_exportable)
    return _write_export(model, out_dir, tokenizer_dir, max_shard_size)


def load_checkpoint_model(
    path: Path, check_exportable: Callable[[ModelConfig, str], None]
) -> torch.nn.Module:
    """The model of checkpoint folder `path` (gathered from any number of shards), its
    architecture first passed to `check_exportable(cfg, what)`."""
    meta = read_checkpoint_meta(path)
    saved_cfg = meta["model_config"] or meta["extra"].get("results_config", {}).get("model")
    if not saved_cfg:
        raise DataError(
            f"{path} does not record its model architecture",
            hint="export the run's model/ folder (forgeml export MODEL) instead",
        )
    cfg = ModelConfig.model_validate(saved_cfg)
    check_exportable(cfg, f"checkpoint {path}")
    model = build_model(cfg)
    extra = sorted(set(checkpoint_model_keys(path)) - set(model.state_dict()))
    if extra:
        raise DataError(
            f"{path} holds weights the {cfg.arch} architecture has not ({extra[0]}, ...): "
            "a LoRA or reward-model run",
            hint="export the run's model/ folder (its adapter or merged model) instead",
        )
    consolidated_model_state(path, model)
    return model


def resolve_checkpoint(checkpoint: str | Path) -> Path:
    """The checkpoint folder meant by `checkpoint`: itself, or the latest one in it or in
    its `checkpoints/` subfolder."""
    path = Path(checkpoint).expanduser().resolve()
    if is_checkpoint(path):
        return path
    for folder in (path, path / "checkpoints"):
        latest = latest_checkpoint(folder)
        if latest is not None:
            return latest
    raise NotFoundError(
        f"no checkpoint at {path}", hint="pass a step_NNNNNNNN folder or a run's checkpoints/"
    )


def _check_exportable(cfg: ModelConfig, what: str) -> None:
    if cfg.arch == "moe" and not mixtral_compatible(cfg):
        raise ConfigError(
            f"{what} uses {cfg.gating} gating"
            f"{' and a shared expert' if cfg.shared_expert else ''}, which transformers' "
            "Mixtral cannot express",
            hint="only softmax-gated MoE without a shared expert exports to HF format",
        )


def _empty_target(out_dir: str | Path) -> Path:
    out_dir = Path(out_dir).expanduser().resolve()
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ForgeError(
            f"{out_dir} exists and is not empty", hint="export into a new or empty folder"
        )
    return out_dir


def _write_export(
    model: torch.nn.Module,
    out_dir: str | Path,
    tokenizer_dir: str | Path | None,
    max_shard_size: int | str | None,
) -> Path:
    """`save_model` into a staging folder beside `out_dir`, renamed into place when done."""
    return staged_export(
        out_dir,
        lambda staging: save_model(
            model, staging, tokenizer_dir=tokenizer_dir, max_shard_size=max_shard_size
        ),
    )


def staged_export(out_dir: str | Path, write: Callable[[Path], Any]) -> Path:
    """`write(staging)` fills a staging folder beside `out_dir` (which must be new or empty),
    renamed into place when done: the export appears complete or not at all."""
    out_dir = _empty_target(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        write(staging)
        if out_dir.exists():
            out_dir.rmdir()
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_dir(out_dir.parent)
    return out_dir
