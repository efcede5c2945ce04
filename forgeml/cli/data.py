"""`forgeml data {ingest,curate,media-pairs,show,diff}`: read files into raw dataset assets,
curate them (filters, redaction, dedup), turn their media pairs into multimodal SFT data, and
inspect or compare dataset versions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from forgeml.cli.common import console, current_workspace, format_value, notify, show_progress
from forgeml.core.config import load_recipe
from forgeml.core.errors import ForgeError

data_app = typer.Typer(help="Read files into datasets.", no_args_is_help=True)


@data_app.command("ingest")
def data_ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders to read (recursively).")],
    name: Annotated[str, typer.Option("--name", "-n", help="Dataset name.")] = "corpus",
    include: Annotated[
        list[str] | None, typer.Option("--include", help="Glob of files to keep (repeatable).")
    ] = None,
    exclude: Annotated[
        list[str] | None, typer.Option("--exclude", help="Glob of files to drop (repeatable).")
    ] = None,
    max_file_bytes: Annotated[int, typer.Option(help="Skip files larger than this.")] = 16 << 20,
    text_field: Annotated[
        list[str] | None,
        typer.Option("--text-field", help="JSONL/CSV/Parquet: field(s) holding the text."),
    ] = None,
    media: Annotated[bool, typer.Option(help="Also store images, audio and PDF scans.")] = True,
    force: Annotated[bool, typer.Option(help="Re-run even if cached.")] = False,
) -> None:
    """Read text, Markdown, code, HTML, PDF, DOCX, records and archives into a raw Parquet
    dataset asset, with a report of every file; images and audio are stored beside it,
    metadata stripped, paired with their captions and transcripts, duplicates marked."""
    from forgeml.core.data_config import MediaConfig
    from forgeml.pipeline.ingest_stage import ingest_stage
    from forgeml.registry import open_registry

    ws = current_workspace()
    res = ingest_stage(
        ws,
        paths,
        name=name,
        include=include,
        exclude=exclude,
        max_file_bytes=max_file_bytes,
        text_fields=text_field,
        media=MediaConfig(enabled=media),
        force=force,
        progress=show_progress(),
        notify=notify,
    )
    asset = open_registry(ws).get_asset(res.output)
    meta = asset.metadata
    console.print(
        f"dataset {asset.id}: {meta.get('kept')} kept, {meta.get('skipped')} skipped, "
        f"{meta.get('failed')} failed of {meta.get('found')} files"
        + (" (cached)" if res.cached else "")
    )
    for reason, n in sorted((meta.get("skipped_by_reason") or {}).items()):
        console.print(f"  skipped {n}: {reason}")
    ocr = meta.get("ocr") or {}
    if ocr.get("pages"):
        console.print(
            f"  OCR: {ocr['pages']} pages, mean word confidence {ocr['mean_confidence']}, "
            f"{ocr['low_confidence_pages']} below {ocr['min_confidence']:g}"
        )
    if ocr.get("note"):
        console.print(f"  OCR: {ocr['note']}")
    _print_media(meta.get("media") or {})
    console.print(f"  report: {asset.path / 'report.json'}")


def _print_media(media: dict) -> None:
    """The report's media section in two lines: what was stored, and what was not."""
    if not media:
        return
    pairs = ", ".join(f"{n} {kind}" for kind, n in media["pairs"].items()) or "none"
    console.print(
        f"  media: {media['images']} images, {media['audio']} recordings "
        f"({media['audio_seconds']:g} s), {media['stored_bytes']} bytes stored, "
        f"{media['duplicates']} duplicates marked; pairs: {pairs}",
        highlight=False,
    )
    for reason, n in media["skipped_by_reason"].items():
        console.print(f"  media not stored {n}: {reason}", highlight=False)


@data_app.command("curate")
def data_curate(
    dataset: Annotated[str, typer.Argument(help="Raw dataset asset.")],
    recipe: Annotated[
        Path | None, typer.Option(help="Recipe whose `curate` section applies.")
    ] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Override, e.g. curate.dedup.threshold=0.7")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Name of the curated dataset.")] = None,
    force: Annotated[bool, typer.Option(help="Re-run even if cached.")] = False,
) -> None:
    """Filters, redaction (PII and secrets) and dedup → curated dataset + HTML/JSON report."""
    from forgeml.pipeline.curate_stage import curate_stage
    from forgeml.registry import open_registry

    ws = current_workspace()
    cfg = load_recipe(recipe, overrides or []).curate
    res = curate_stage(
        ws, dataset, cfg, name=name, force=force, progress=show_progress(), notify=notify
    )
    asset = open_registry(ws).get_asset(res.output)
    m = res.metrics
    console.print(
        f"dataset {asset.id}: "
        + ", ".join(f"{k} {v}" for k, v in m.items() if not isinstance(v, dict))
        + (" (cached)" if res.cached else "")
    )
    _print_drop_warnings(Path(asset.path) / "report.json")
    console.print(f"  report: {asset.path / 'report.html'}", highlight=False)


def _print_drop_warnings(report_json: Path) -> None:
    """The report's drop warnings: a filter that dropped more than curate.warn_drop_share of
    a document type (a rule made for other documents, or a corpus worth a look)."""
    from rich.markup import escape

    from forgeml.data.curate_report import warning_line

    warnings = json.loads(report_json.read_text()).get("warnings", [])
    for w in warnings:
        console.print(f"  [yellow]warning[/yellow]: {escape(warning_line(w))}", highlight=False)
    if warnings:
        console.print("  (curate.warn_drop_share sets the share; curate.profile the rules)")


@data_app.command("media-pairs")
def data_media_pairs(
    dataset: Annotated[str, typer.Argument(help="Dataset asset with media (curated or raw).")],
    heldout: Annotated[float, typer.Option(help="Share of media items held out.")] = 0.1,
    out: Annotated[
        Path | None, typer.Option(help="Write the JSONL and media here, not as an asset.")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Name of the media dataset asset.")] = None,
    force: Annotated[bool, typer.Option(help="Re-run even if cached.")] = False,
) -> None:
    """Captions, page transcriptions and transcripts → multimodal SFT JSONL (train/heldout)."""
    from forgeml.data.media_pairs import export_media_pairs
    from forgeml.pipeline.curate_stage import media_pairs_stage
    from forgeml.registry import open_registry

    ws = current_workspace()
    reg = open_registry(ws)
    if out is not None:
        summary = export_media_pairs(reg.get_asset(dataset).path, out, heldout=heldout)
        where = f"{out}: "
    else:
        res = media_pairs_stage(ws, dataset, heldout=heldout, name=name, force=force)
        asset = reg.get_asset(res.output)
        summary = json.loads((Path(asset.path) / "pairs.json").read_text())
        where = f"dataset {asset.id}{' (cached)' if res.cached else ''}: "
    records, skipped = summary["records"], summary["skipped_by_reason"]
    lines = [f"{where}{records['train']} train, {records['heldout']} held-out records"]
    lines[0] += f" from {summary['pairs']} pairs"
    lines += [f"  pairs skipped {n}: {reason}" for reason, n in skipped.items()]
    console.print("\n".join(lines), highlight=False)


@data_app.command("show")
def data_show(
    dataset: Annotated[str, typer.Argument(help="Dataset asset.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Statistics of a document dataset: counts, sizes, types, languages."""
    from forgeml.data.report import dataset_stats
    from forgeml.registry import open_registry

    asset = open_registry(current_workspace()).get_asset(dataset)
    stats = dataset_stats(_parquet_of(asset))
    console.print_json(json.dumps(stats, default=str)) if json_out else _print_dict(stats, asset.id)


@data_app.command("diff")
def data_diff(
    a: Annotated[str, typer.Argument(help="Older dataset asset.")],
    b: Annotated[str, typer.Argument(help="Newer dataset asset.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """What changed between two dataset versions (documents added, removed, changed)."""
    from forgeml.data.report import diff_datasets
    from forgeml.registry import open_registry

    reg = open_registry(current_workspace())
    diff = diff_datasets(_parquet_of(reg.get_asset(a)), _parquet_of(reg.get_asset(b)))
    console.print_json(json.dumps(diff, default=str)) if json_out else _print_dict(
        diff, f"{a} → {b}"
    )


def _parquet_of(asset) -> Path:
    path = Path(asset.path) / "data.parquet"
    if not path.is_file():
        raise ForgeError(f"{asset.id} is not a document dataset", hint="see `forgeml assets list`")
    return path


def _print_dict(data: dict, title: str) -> None:
    table = Table(title=title)
    table.add_column("field")
    table.add_column("value", overflow="fold")
    for key, value in data.items():
        table.add_row(
            str(key),
            json.dumps(value, default=str)
            if isinstance(value, dict | list)
            else format_value(value),
        )
    console.print(table)
