"""`forgeml export`, `forgeml import hf` and `forgeml adapters merge`: models in and out in
Hugging Face / PEFT layout, and LoRA adapters folded into their base model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from forgeml.cli.common import console, current_workspace, notify
from forgeml.core.errors import ForgeError

import_app = typer.Typer(help="Bring models in from other tools.", no_args_is_help=True)
adapters_app = typer.Typer(help="LoRA adapters (PEFT format).", no_args_is_help=True)


@import_app.command("hf")
def import_hf(
    directory: Annotated[
        Path, typer.Argument(help="HF checkpoint folder (config.json + safetensors).")
    ],
    name: Annotated[str | None, typer.Option(help="Model asset name.")] = None,
    force: Annotated[bool, typer.Option(help="Re-run even if cached.")] = False,
) -> None:
    """Register a Mistral/Llama/Mixtral checkpoint on disk (and its tokenizer) as assets."""
    from forgeml.pipeline.interop import import_hf_stage

    res = import_hf_stage(current_workspace(), directory, name, force=force, notify=notify)
    console.print(f"model {res.output} (tokenizer {res.metrics.get('tokenizer')})")


def export_cmd(
    model: Annotated[
        str,
        typer.Argument(help="Model asset (id, name or alias), or a training checkpoint folder."),
    ],
    out: Annotated[Path, typer.Option("--out", help="Empty or new folder to write.")],
    fmt: Annotated[
        str, typer.Option("--format", help="hf (safetensors + config.json) or gguf (llama.cpp).")
    ] = "hf",
    quant: Annotated[
        str, typer.Option(help="gguf: f16, f32, q8_0; q4_k_m, q5_k_m, q6_k need llama.cpp.")
    ] = "f16",
    max_shard_size: Annotated[
        str,
        typer.Option(help="Split the weights into files of at most this size, with an index."),
    ] = "50GB",  # transformers' save_pretrained default
    tokenizer: Annotated[
        Path | None, typer.Option(help="Checkpoints: tokenizer folder to copy alongside.")
    ] = None,
    key_file: Annotated[
        Path | None,
        typer.Option(help="Your API key's file (default $FORGEML_API_KEY): its clearance."),
    ] = None,
) -> None:
    """Write a model in HF format (transformers, PEFT, vLLM read it) or as GGUF (llama.cpp,
    Ollama, LM Studio: a model with an Ollama Modelfile, or a LoRA adapter for `--lora`).
    A model labelled (or trained on data labelled) above `public` needs a key cleared for it.
    A checkpoint (a step_NNNNNNNN folder, or a run's checkpoints/ for its latest), sharded by
    any number of processes, is gathered into one folder."""
    from forgeml.control.approvals import caller_clearance
    from forgeml.governance.labels import require_clearance, require_run_clearance
    from forgeml.pipeline.gguf_export import export_checkpoint_gguf, export_gguf
    from forgeml.pipeline.interop import export_checkpoint, export_model, resolve_checkpoint
    from forgeml.registry import open_registry

    if fmt not in ("hf", "gguf"):
        raise ForgeError(f"unknown format '{fmt}'", hint="this release writes: hf, gguf")
    size = int(max_shard_size) if max_shard_size.isdigit() else max_shard_size
    if Path(model).is_dir():
        path = resolve_checkpoint(model)
        run_id = _workspace_run_of(path)
        if run_id is not None:  # a checkpoint of this workspace: cleared like its inputs
            reg = open_registry(current_workspace())
            require_run_clearance(reg, run_id, caller_clearance(reg, key_file), action="export")
        if fmt == "gguf":
            done = export_checkpoint_gguf(path, out, tokenizer, quant=quant)
        else:
            done = export_checkpoint(path, out, tokenizer_dir=tokenizer, max_shard_size=size)
        console.print(f"wrote {done} (from {path})", highlight=False)
        return
    ws = current_workspace()
    reg = open_registry(ws)
    require_clearance(reg, reg.get_asset(model), caller_clearance(reg, key_file), action="export")
    if fmt == "gguf":
        console.print(f"wrote {export_gguf(ws, model, out, quant=quant)}", highlight=False)
        return
    console.print(f"wrote {export_model(ws, model, out, max_shard_size=size)}", highlight=False)


def _workspace_run_of(path: Path) -> str | None:
    """The run id when `path` lies in the current workspace's runs/<stage>/<run id>/."""
    try:
        runs = current_workspace().runs_dir.resolve()
        parts = path.resolve().relative_to(runs).parts
    except (ForgeError, ValueError):
        return None
    return parts[1] if len(parts) > 2 else None


@adapters_app.command("merge")
def adapters_merge(
    adapter: Annotated[str, typer.Argument(help="Adapter asset (id, name or alias).")],
    name: Annotated[str | None, typer.Option(help="Name of the merged model asset.")] = None,
    force: Annotated[bool, typer.Option(help="Re-run even if cached.")] = False,
) -> None:
    """Fold a LoRA adapter into its base model → a new model asset (parents: base + adapter)."""
    from forgeml.pipeline.sft_stage import merge_adapter_stage

    res = merge_adapter_stage(current_workspace(), adapter, name=name, force=force, notify=notify)
    console.print(f"model {res.output}" + (" (cached)" if res.cached else ""), highlight=False)
