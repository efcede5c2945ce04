"""`forgeml tokenizer train`: a byte-level BPE tokenizer asset from a dataset asset, with the
chat and FIM special tokens and the chat template."""

from __future__ import annotations

from typing import Annotated

import typer

from forgeml.cli.common import console, current_workspace, notify, show_progress
from forgeml.core.config import TokenizerConfig

tokenizer_app = typer.Typer(help="Train tokenizers.", no_args_is_help=True)


@tokenizer_app.command("train")
def tokenizer_train(
    dataset: Annotated[str, typer.Argument(help="Dataset asset (id, prefix or name).")],
    vocab_size: Annotated[int, typer.Option(help="Vocabulary size incl. special tokens.")] = 4096,
    min_frequency: Annotated[int, typer.Option(help="Minimum pair frequency to merge.")] = 2,
    heldout_fraction: Annotated[
        float, typer.Option(help="Documents kept out of training (must match pre-training).")
    ] = 0.05,
    force: Annotated[bool, typer.Option(help="Re-run even if cached.")] = False,
) -> None:
    """Train a byte-level BPE tokenizer (chat and FIM special tokens, chat template)."""
    from forgeml.core.config import validate_recipe
    from forgeml.pipeline.tokenizer_stage import tokenizer_stage

    cfg = validate_recipe(
        {"tokenizer": {"vocab_size": vocab_size, "min_frequency": min_frequency}}, "options"
    ).tokenizer
    res = tokenizer_stage(
        current_workspace(),
        dataset,
        TokenizerConfig.model_validate(cfg.model_dump()),
        heldout_fraction=heldout_fraction,
        force=force,
        progress=show_progress(),
        notify=notify,
    )
    console.print(f"tokenizer {res.output} (vocab {res.metrics.get('vocab_size')})")
