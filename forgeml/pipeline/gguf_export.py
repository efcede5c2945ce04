"""`forgeml export --format gguf`: model assets (with an Ollama Modelfile), LoRA adapters and
training checkpoints as GGUF, through the HF export's asset lookup, checkpoint gathering and
staged folder (`pipeline.interop`) and the writer in `models.gguf_io`."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from forgeml.core.config import ModelConfig
from forgeml.core.errors import DataError, ForgeError
from forgeml.core.io import atomic_write_text
from forgeml.core.workspace import Workspace
from forgeml.models.gguf_io import (
    check_gguf_exportable,
    check_quant,
    ollama_modelfile,
    write_gguf,
    write_gguf_lora,
)
from forgeml.models.hf_io import _special_token_ids, load_model, read_model_config
from forgeml.pipeline.interop import (
    _empty_target,
    load_checkpoint_model,
    resolve_checkpoint,
    staged_export,
)
from forgeml.registry import open_registry

MODELFILE = "Modelfile"


def gguf_file_name(quant: str, kind: str = "model") -> str:
    """The file an export writes into its folder: `model-f16.gguf`, `adapter-f32.gguf`."""
    return f"{kind}-{quant}.gguf"


def export_gguf(ws: Workspace, ref: str, out_dir: str | Path, *, quant: str = "f16") -> Path:
    """Write asset `ref` (id, prefix, name or alias) as GGUF into the new folder `out_dir`:
    a model as `model-<quant>.gguf` plus an Ollama `Modelfile`, a LoRA adapter as
    `adapter-<quant>.gguf` (llama.cpp `--lora`, on the base model's GGUF). Returns the file."""
    check_quant(quant)
    asset = open_registry(ws).get_asset(ref)
    if asset.kind == "adapter":
        _empty_target(out_dir)
        name = gguf_file_name(quant, "adapter")
        staged_export(out_dir, lambda d: write_gguf_lora(asset.path, d / name, quant=quant))
        return Path(out_dir).resolve() / name
    if asset.kind != "model":
        raise ForgeError(
            f"{asset.id} is a {asset.kind}, not a model", hint="pass a model or adapter id"
        )
    check_gguf_exportable(read_model_config(asset.path))
    _empty_target(out_dir)  # before reading any weights
    model = load_model(asset.path)
    return export_model_gguf(model, out_dir, asset.path, quant=quant, name=asset.name)


def export_checkpoint_gguf(
    checkpoint: str | Path, out_dir: str | Path, tokenizer_dir: str | Path, *, quant: str = "f16"
) -> Path:
    """A training checkpoint's model (`step_NNNNNNNN`, a checkpoints folder or a run folder,
    sharded by any number of processes) as GGUF; GGUF carries the tokenizer, so
    `tokenizer_dir` is required."""
    check_quant(quant)
    if tokenizer_dir is None:
        raise DataError(
            "a GGUF file carries its tokenizer", hint="pass --tokenizer with the tokenizer folder"
        )
    path = resolve_checkpoint(checkpoint)
    _empty_target(out_dir)
    model = load_checkpoint_model(path, _check)
    return export_model_gguf(model, out_dir, tokenizer_dir, quant=quant, name=path.parent.name)


def _check(cfg: ModelConfig, what: str) -> None:
    try:
        check_gguf_exportable(cfg)
    except ForgeError as exc:
        raise type(exc)(f"{what}: {exc.message}", hint=exc.hint) from None


def export_model_gguf(
    model: nn.Module, out_dir: str | Path, tokenizer_dir: str | Path, *, quant: str = "f16",
    name: str | None = None,
) -> Path:  # fmt: skip
    """`model` (fp32, dense or MoE) and the tokenizer in `tokenizer_dir` as
    `out_dir/model-<quant>.gguf` with its Ollama Modelfile; returns the GGUF file. The
    serving benchmark calls this to give llama.cpp the same weights."""
    file_name = gguf_file_name(quant)
    stop_ids = {k: v for k, v in _special_token_ids(Path(tokenizer_dir)).items() if v is not None}

    def write(staging: Path) -> None:
        write_gguf(model, staging / file_name, tokenizer_dir, quant=quant, name=name)
        modelfile = ollama_modelfile(file_name, model.cfg, stop_ids)
        atomic_write_text(staging / MODELFILE, modelfile)

    return staged_export(out_dir, write) / file_name
