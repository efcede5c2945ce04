"""CLI commands for supervised fine-tuning and adapters (registered on the apps of forgeml.cli):
`forgeml train sft`, `forgeml adapters merge`, and `forgeml demo acme-sft` (the ACME chat data).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from forgeml.cli import _fmt, _notify, _ws, app, console, state, train_app
from forgeml.core.config import load_recipe
from forgeml.core.errors import ForgeError

adapters_app = typer.Typer(help="LoRA adapters (PEFT format).", no_args_is_help=True)
app.add_typer(adapters_app, name="adapters")
demo_app = typer.Typer(help="The bundled ACME demo domain.", no_args_is_help=True)
app.add_typer(demo_app, name="demo")


@train_app.command("sft")
def train_sft(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML (its `sft` section applies).")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="Dotted overrides, e.g. sft.method=lora")
    ] = None,
    base: Annotated[str, typer.Option("--base", help="Base model asset (id, name, alias).")] = "",
    data: Annotated[
        str | None, typer.Option(help="Chat JSONL file or chat dataset asset (default: sft.data).")
    ] = None,
    heldout: Annotated[
        str | None, typer.Option(help="Held-out chat JSONL for eval loss (default: sft.heldout).")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue the last interrupted run.")] = False,
    force: Annotated[bool, typer.Option(help="Re-run even if cached.")] = False,
) -> None:
    """Supervised fine-tuning on chat data (loss on assistant turns) → model asset (full) or
    adapter asset (sft.method=lora, PEFT format), with lineage to the base model and data."""
    from forgeml.pipeline.sft_stage import sft_stage

    if not base:
        raise ForgeError("--base MODEL is required", hint="the model to fine-tune (id or alias)")
    rec = load_recipe(recipe, overrides or [])
    res = sft_stage(
        _ws(), rec, base, data, heldout, resume=resume, force=force, progress=not state.quiet,
        notify=_notify,
    )  # fmt: skip
    kind = "adapter" if res.output.startswith("adapter-") else "model"
    console.print(f"{kind} {res.output}" + (" (cached)" if res.cached else ""), highlight=False)
    m = res.metrics
    for key in ("final_train_loss", "final_eval_loss", "trainable_params", "tokens_per_s"):
        if key in m:
            console.print(f"  {key}: {_fmt(m[key])}", highlight=False)
    report = m.get("data_report") or {}
    if report:
        console.print(
            f"  data: {report['total']} records, {report['kept']} kept, {report['truncated']} "
            f"truncated, {report['n_dropped']} dropped, {report['n_failed']} failed",
            highlight=False,
        )


@adapters_app.command("merge")
def adapters_merge(
    adapter: Annotated[str, typer.Argument(help="Adapter asset (id, name or alias).")],
    name: Annotated[str | None, typer.Option(help="Name of the merged model asset.")] = None,
    force: Annotated[bool, typer.Option(help="Re-run even if cached.")] = False,
) -> None:
    """Fold a LoRA adapter into its base model → a new model asset (parents: base + adapter)."""
    from forgeml.pipeline.sft_stage import merge_adapter_stage

    res = merge_adapter_stage(_ws(), adapter, name=name, force=force, notify=_notify)
    console.print(f"model {res.output}" + (" (cached)" if res.cached else ""), highlight=False)


@demo_app.command("acme-sft")
def demo_acme_sft(
    out: Annotated[Path, typer.Option(help="Folder to write (train.jsonl, heldout.jsonl, ...).")],
    seed: Annotated[int, typer.Option(help="Random seed (the corpus seed).")] = 0,
    scale: Annotated[float, typer.Option(help="Size factor, as for the corpus.")] = 1.0,
) -> None:
    """Write the ACME chat SFT data: policy Q&A, ACME-CL → Python translation requests and
    tool-use traces for ACME's internal tools (OpenAI format, deterministic)."""
    from forgeml.demo.acme import generate_sft_data

    manifest = generate_sft_data(out, seed=seed, scale=scale)
    console.print(f"wrote {out}: {json.dumps(manifest['records'])}", highlight=False)
