"""CLI commands for RL: `forgeml train rl` (GRPO against the recipe's reward plugins) and
`forgeml demo acme-rl` (the ACME-CL → Python translation prompts with test cases)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from forgeml.cli import _notify, _ws, app, console, state, train_app
from forgeml.core.config import load_recipe


@train_app.command("rl")
def train_rl_cmd(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML (its `rl` section applies).")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="Dotted overrides, e.g. rl.kl_coef=0")
    ] = None,
    base: Annotated[str, typer.Option(help="Model asset to start from (id, name or alias).")] = "",
    prompts: Annotated[
        str, typer.Option(help="Prompts JSONL ({prompt|messages, ...metadata}) or dataset asset.")
    ] = "",
    resume: Annotated[bool, typer.Option(help="Continue the interrupted run.")] = False,
    force: Annotated[bool, typer.Option(help="Re-run even if cached.")] = False,
) -> None:
    """GRPO: sample groups of completions, score them with the reward plugins (functions,
    regex/exact match, reward model, sandboxed execution), and update the model."""
    from forgeml.core.errors import ForgeError
    from forgeml.pipeline.rl_stage import rl_stage

    if not base or not prompts:
        raise ForgeError("--base MODEL and --prompts FILE are required", hint="see --help")
    rec = load_recipe(recipe, overrides or [])
    res = rl_stage(
        _ws(), rec, base, prompts, resume=resume, force=force, progress=not state.quiet,
        notify=_notify,
    )  # fmt: skip
    m = res.metrics
    console.print(f"model {res.output}" + (" (cached)" if res.cached else ""))
    for key in ("final_reward_mean", "final_kl", "steps"):
        if m.get(key) is not None:
            console.print(f"  {key}: {m[key]:.4g}")


try:  # the `demo` group lives with the ACME SFT data commands
    from forgeml.commands.sft import demo_app
except ImportError:
    demo_app = typer.Typer(help="The bundled ACME demo domain.", no_args_is_help=True)
    app.add_typer(demo_app, name="demo")


@demo_app.command("acme-rl")
def demo_acme_rl(
    out: Annotated[Path, typer.Option(help="Folder for train.jsonl and heldout.jsonl.")],
    corpus: Annotated[
        Path | None,
        typer.Argument(help="An ACME corpus folder (examples/acme/generate.py)."),
    ] = None,
    max_chars: Annotated[
        int | None, typer.Option(help="Leave out programs longer than this (small contexts).")
    ] = None,
    snippets: Annotated[
        bool,
        typer.Option(help="The SFT data's short programs (2-4 statements), not the corpus's."),
    ] = False,
    seed: Annotated[int, typer.Option(help="SFT data seed, with --snippets.")] = 0,
) -> None:
    """RL prompts for ACME-CL → Python translation: the program and its test inputs ride
    along as metadata for the execution reward (forgeml.demo.acme_rl:translation_reward);
    held-out programs are those the ACME SFT data holds out."""
    from forgeml.demo.acme_rl import write_rl_prompts

    counts = write_rl_prompts(corpus, out, max_chars=max_chars, snippets=snippets, seed=seed)
    console.print(f"{counts['train']} train and {counts['heldout']} held-out prompts in {out}")


@demo_app.command("acme-prefs")
def demo_acme_prefs(
    out: Annotated[Path, typer.Option(help="Preference JSONL file to write.")],
    count: Annotated[
        int | None,
        typer.Option(help="How many ACME programs to make pairs of (default: 80; all snippets)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Corpus seed (the same programs as the corpus).")] = 0,
    snippets: Annotated[
        bool,
        typer.Option(
            help="The SFT data's short programs (as acme-rl --snippets), not the corpus's."
        ),
    ] = False,
) -> None:
    """Preference pairs for DPO: an ACME-CL → Python translation request, the reference
    translation (chosen) and a mutation of it that fails a test case (rejected), both checked
    by running them; held-out programs are those the SFT and RL data hold out."""
    from forgeml.demo.acme_prefs import write_translation_preferences

    if count is None and not snippets:
        count = 80
    report = write_translation_preferences(out, seed=seed, count=count, snippets=snippets)
    console.print(
        f"{report['pairs']} pairs from {report['programs']} programs in {out} "
        f"(skipped: {report['skipped']})",
        highlight=False,
    )
