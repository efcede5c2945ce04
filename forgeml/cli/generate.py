"""`forgeml generate`: sample a continuation (or fill a gap) from any model asset, id or alias."""

from __future__ import annotations

from typing import Annotated

import typer

from forgeml.cli.common import console, current_workspace
from forgeml.core.config import GenerateConfig


def generate_cmd(
    model: Annotated[str, typer.Argument(help="Model asset (id, prefix, name or alias).")],
    prompt: Annotated[
        str, typer.Argument(help="Text to continue; with --infill: 'prefix<FILL>suffix'.")
    ],
    infill: Annotated[
        bool, typer.Option(help="Fill the <FILL> gap (fill-in-the-middle), greedy by default.")
    ] = False,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate at most.")] = 64,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.8,
    top_k: Annotated[int | None, typer.Option(help="Sample from the k likeliest tokens.")] = 50,
    top_p: Annotated[float | None, typer.Option(help="Nucleus sampling mass.")] = 0.95,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    stop: Annotated[
        list[str] | None, typer.Option("--stop", help="Stop at this string (repeatable).")
    ] = None,
) -> None:
    """Sample a continuation from a model (KV-cached decoding)."""
    from forgeml.pipeline.generate import generate_text

    cfg = GenerateConfig(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        stop=stop or [],
    )
    if infill:
        from forgeml.eval.infill import infill_text
        from forgeml.registry import open_registry

        if temperature == 0.8:  # the sampling default: infill restores text, greedy fits
            cfg = cfg.model_copy(update={"temperature": 0.0})
        path = open_registry(current_workspace()).get_asset(model).path
        console.print(infill_text(path, prompt, cfg), markup=False, highlight=False)
        return
    console.print(
        prompt + generate_text(current_workspace(), model, prompt, cfg),
        markup=False,
        highlight=False,
    )
