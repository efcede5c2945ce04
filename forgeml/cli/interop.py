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
    model: Annotated[str, typer.Argument(help="Model asset (id, name or alias).")],
    out: Annotated[Path, typer.Option("--out", help="Empty or new folder to write.")],
    fmt: Annotated[str, typer.Option("--format", help="hf (safetensors + config.json).")] = "hf",
    key_file: Annotated[
        Path | None,
        typer.Option(help="Your API key's file (default $FORGEML_API_KEY): its clearance."),
    ] = None,
) -> None:
    """Write a model in HF format (transformers, PEFT, vLLM and llama.cpp converters read it).
    A model labelled (or trained on data labelled) above `public` needs a key cleared for it."""
    from forgeml.control.approvals import caller_clearance
    from forgeml.governance.labels import require_clearance
    from forgeml.pipeline.interop import export_model
    from forgeml.registry import open_registry

    if fmt != "hf":
        raise ForgeError(f"unknown format '{fmt}'", hint="this release writes: hf")
    ws = current_workspace()
    reg = open_registry(ws)
    require_clearance(reg, reg.get_asset(model), caller_clearance(reg, key_file), action="export")
    console.print(f"wrote {export_model(ws, model, out)}", highlight=False)


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
