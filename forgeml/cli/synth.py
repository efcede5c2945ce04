"""`forgeml synth {rules,teacher}`: synthetic chat datasets from the corpus by rules (QA, infill,
translation pairs) or from a teacher behind an OpenAI-compatible endpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from forgeml.cli.common import console, current_workspace, notify

synth_app = typer.Typer(
    help="Synthetic data: rule-based and teacher-generated.", no_args_is_help=True
)


def _print_synth(res) -> None:
    m = res.metrics
    filtered = ", ".join(f"{k} {v}" for k, v in m["filtered"].items()) or "none"
    console.print(
        f"dataset {res.output}: {m['kept']} of {m['generated']} records kept "
        f"(filtered: {escape(filtered)})" + (" (cached)" if res.cached else "")
    )


@synth_app.command("rules")
def synth_rules(
    dataset: Annotated[str, typer.Argument(help="Document dataset (from `data ingest`).")],
    rules: Annotated[
        list[str] | None, typer.Option("--rule", help="qa, infill, translation (default: all).")
    ] = None,
    pair: Annotated[
        list[str] | None, typer.Option(help="Paired files SRC:TGT by extension, e.g. acl:py.")
    ] = None,
    lang: Annotated[
        list[str] | None, typer.Option(help="Language name of an extension, e.g. acl=ACME-CL.")
    ] = None,
    exclude: Annotated[
        list[str] | None, typer.Option(help="Skip documents whose path matches this glob.")
    ] = None,
    infill_per_doc: Annotated[int, typer.Option(help="Infill tasks per document.")] = 2,
    seed: Annotated[int, typer.Option(help="Seed of the infill gaps.")] = 0,
    name: Annotated[str | None, typer.Option(help="Name of the new dataset.")] = None,
    force: Annotated[bool, typer.Option(help="Re-run even if cached.")] = False,
) -> None:
    """QA from headings/definitions, infill gaps, translation pairs → chat dataset."""
    from forgeml.core.errors import ConfigError
    from forgeml.synth.rules import synth_rules_stage

    languages = {}
    for item in lang or []:
        ext, sep, label = item.partition("=")
        if not sep or not ext or not label:
            raise ConfigError(f"--lang '{item}' is not EXT=NAME", hint="e.g. --lang acl=ACME-CL")
        languages[ext.lstrip(".")] = label
    res = synth_rules_stage(
        current_workspace(), dataset, rules=rules, pairs=pair, languages=languages, exclude=exclude,
        infill_per_doc=infill_per_doc, seed=seed, name=name, force=force, notify=notify,
    )  # fmt: skip
    _print_synth(res)


@synth_app.command("teacher")
def synth_teacher(
    endpoint: Annotated[str, typer.Option(help="OpenAI-compatible base URL, e.g. http://h/v1.")],
    model: Annotated[str, typer.Option(help="Model name at the endpoint.")],
    seeds: Annotated[Path, typer.Option(help="Seed tasks: JSONL {instruction} or one per line.")],
    n: Annotated[int, typer.Option(help="Instructions to generate.")] = 100,
    against: Annotated[
        list[str] | None, typer.Option(help="Dataset to deduplicate against (repeatable).")
    ] = None,
    reward: Annotated[
        str | None, typer.Option(help="'pkg.module:fn' (prompt, completion, metadata) -> float.")
    ] = None,
    reward_threshold: Annotated[
        float, typer.Option(help="Keep records scoring this or more.")
    ] = 0.5,
    teacher_asset: Annotated[
        str | None, typer.Option(help="The teacher's model asset here (for lineage).")
    ] = None,
    api_key_env: Annotated[
        str, typer.Option(help="Environment variable holding the endpoint's API key.")
    ] = "OPENAI_API_KEY",
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 0.7,
    max_tokens: Annotated[int, typer.Option(help="Tokens per teacher reply.")] = 128,
    min_words: Annotated[int, typer.Option(help="Shortest instruction kept, in words.")] = 3,
    seed: Annotated[int, typer.Option(help="Seed of example sampling and requests.")] = 0,
    name: Annotated[str | None, typer.Option(help="Name of the new dataset.")] = None,
    force: Annotated[bool, typer.Option(help="Re-run even if cached.")] = False,
) -> None:
    """Self-instruct generation through a teacher endpoint → chat dataset (deduped, filtered)."""
    from forgeml.synth.teacher import synth_teacher_stage

    res = synth_teacher_stage(
        current_workspace(), endpoint=endpoint, model=model, seeds=seeds, n=n, against=against,
        reward=reward, reward_threshold=reward_threshold, teacher_asset=teacher_asset,
        api_key_env=api_key_env,
        temperature=temperature, max_tokens=max_tokens, min_words=min_words, seed=seed,
        name=name, force=force, notify=notify,
    )  # fmt: skip
    _print_synth(res)
