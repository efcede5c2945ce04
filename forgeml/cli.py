"""The `forgeml` command line: parse, call a forgeml function, print.

Every command is a thin wrapper over a Python function in forgeml.pipeline / registry /
core that agents, tests and notebooks call directly. Errors a user can cause print one
line (`error: ...`) and exit 2; `--debug` shows the traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from forgeml.core.config import EvalConfig, GenerateConfig, TokenizerConfig, load_recipe
from forgeml.core.errors import ForgeError
from forgeml.core.workspace import init_workspace, open_workspace

# Off a terminal (CI logs, pipes) rich would wrap tables at 80 columns; ids and paths are long.
console = Console(width=None if sys.stdout.isatty() else 120)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 120)


class State:
    workspace: str | None = None
    debug: bool = False
    quiet: bool = False


state = State()

app = typer.Typer(
    help="forgeml — an on-premises model factory: your data in, your model out, nothing leaves.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
data_app = typer.Typer(help="Read files into datasets.", no_args_is_help=True)
tok_app = typer.Typer(help="Train tokenizers.", no_args_is_help=True)
train_app = typer.Typer(help="Training runs.", no_args_is_help=True)
eval_app = typer.Typer(help="Evaluate models.", no_args_is_help=True)
assets_app = typer.Typer(help="Browse the registry and its lineage graph.", no_args_is_help=True)
pipeline_app = typer.Typer(help="Run whole recipes.", no_args_is_help=True)
runs_app = typer.Typer(help="Browse runs (every stage is a run).", no_args_is_help=True)
jobs_app = typer.Typer(help="Queue commands for `forgeml worker` processes.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(tok_app, name="tokenizer")
app.add_typer(train_app, name="train")
app.add_typer(eval_app, name="eval")
app.add_typer(assets_app, name="assets")
app.add_typer(pipeline_app, name="pipeline")
app.add_typer(runs_app, name="runs")
app.add_typer(jobs_app, name="jobs")


@app.callback()
def _global(
    workspace: Annotated[
        str | None,
        typer.Option(
            "--workspace", "-w", help="Workspace folder (default: $FORGEML_WORKSPACE or .)"
        ),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    state.workspace, state.debug, state.quiet = workspace, debug, quiet


def _ws():
    return open_workspace(state.workspace)


def _bars() -> bool:
    """Progress bars for the data stages: only on a terminal (they are noise in logs)."""
    return not state.quiet and sys.stderr.isatty()


def _notify(msg: str) -> None:
    if not state.quiet:
        err.print(f"[bold cyan]›[/] {escape(msg)}", highlight=False)


@app.command("init")
def init_cmd(
    directory: Annotated[Path, typer.Argument(help="Folder to make the workspace in.")] = Path("."),
    registry_url: Annotated[
        str | None, typer.Option(help="SQLAlchemy URL (default: SQLite in the workspace).")
    ] = None,
) -> None:
    """Make a workspace: forge.yaml, registry database, artifact store, runs folder."""
    ws = init_workspace(state.workspace or directory, registry_url)
    from forgeml.pipeline.stages import open_registry

    open_registry(ws)
    console.print(f"workspace ready at {ws.root}")


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
    force: Annotated[bool, typer.Option(help="Re-run even if cached.")] = False,
) -> None:
    """Read text, Markdown and source files into a raw Parquet dataset asset, with a report."""
    from forgeml.pipeline.stages import ingest_stage, open_registry

    ws = _ws()
    res = ingest_stage(
        ws,
        paths,
        name=name,
        include=include,
        exclude=exclude,
        max_file_bytes=max_file_bytes,
        force=force,
        progress=_bars(),
        notify=_notify,
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
    console.print(f"  report: {asset.path / 'report.json'}")


@tok_app.command("train")
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
    from forgeml.pipeline.stages import tokenizer_stage

    cfg = validate_recipe(
        {"tokenizer": {"vocab_size": vocab_size, "min_frequency": min_frequency}}, "options"
    ).tokenizer
    res = tokenizer_stage(
        _ws(),
        dataset,
        TokenizerConfig.model_validate(cfg.model_dump()),
        heldout_fraction=heldout_fraction,
        force=force,
        progress=_bars(),
        notify=_notify,
    )
    console.print(f"tokenizer {res.output} (vocab {res.metrics.get('vocab_size')})")


@train_app.command(
    "pretrain", context_settings={"allow_extra_args": False, "ignore_unknown_options": False}
)
def train_pretrain(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML.")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="Dotted overrides, e.g. train.max_steps=200")
    ] = None,
    data: Annotated[
        str | None, typer.Option(help="Dataset asset to train on (default: ingest recipe data).")
    ] = None,
    tokenizer: Annotated[
        str | None, typer.Option(help="Tokenizer asset (default: train one per the recipe).")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue the last interrupted run.")] = False,
    auto_resume: Annotated[
        bool, typer.Option(help="Continue an interrupted run if there is one, else start.")
    ] = False,
    force: Annotated[bool, typer.Option(help="Re-run even if cached.")] = False,
) -> None:
    """Pre-train a model from a recipe → model asset (packs the data first, cached)."""
    from forgeml.pipeline.stages import ingest_stage, pack_stage, pretrain_stage, tokenizer_stage

    ws = _ws()
    rec = load_recipe(recipe, overrides or [])
    quiet = state.quiet
    if data is None:
        data = ingest_stage(
            ws,
            rec.data.sources,
            name=rec.data.name,
            include=rec.data.include,
            exclude=rec.data.exclude,
            max_file_bytes=rec.data.max_file_bytes,
            progress=_bars(),
            notify=_notify,
        ).output
    frac = rec.data.heldout_fraction
    if tokenizer is None:
        tokenizer = tokenizer_stage(
            ws, data, rec.tokenizer, heldout_fraction=frac, progress=_bars(), notify=_notify
        ).output
    shards = pack_stage(
        ws, data, tokenizer, heldout_fraction=frac, progress=_bars(), notify=_notify
    ).output
    res = pretrain_stage(
        ws,
        rec,
        shards,
        tokenizer,
        resume=resume,
        auto_resume=auto_resume,
        force=force,
        progress=not quiet,
        notify=_notify,
    )
    m = res.metrics
    console.print(
        f"model {res.output}: train loss {m.get('final_train_loss')}, "
        f"eval loss {m.get('final_eval_loss')}" + (" (cached)" if res.cached else "")
    )


@app.command("generate")
def generate_cmd(
    model: Annotated[str, typer.Argument(help="Model asset (id, prefix, name or alias).")],
    prompt: Annotated[str, typer.Argument(help="Text to continue.")],
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
    from forgeml.pipeline.stages import generate_text

    cfg = GenerateConfig(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        stop=stop or [],
    )
    console.print(prompt + generate_text(_ws(), model, prompt, cfg), markup=False, highlight=False)


@eval_app.command("run")
def eval_run(
    model: Annotated[str, typer.Argument(help="Model asset (id, prefix, name or alias).")],
    suite: Annotated[
        str, typer.Option(help="Eval suite (this release: perplexity).")
    ] = "perplexity",
    data: Annotated[
        str | None, typer.Option(help="Token-shards asset (default: the model's own held-out).")
    ] = None,
    batch_size: Annotated[int, typer.Option()] = 8,
    max_batches: Annotated[int, typer.Option()] = 64,
    seq_len: Annotated[int, typer.Option(help="Window length.")] = 256,
    force: Annotated[bool, typer.Option(help="Re-run even if cached.")] = False,
) -> None:
    """Held-out loss, perplexity and bits-per-byte → eval asset linked to the model."""
    from forgeml.pipeline.stages import eval_stage

    if suite != "perplexity":
        raise ForgeError(f"unknown suite '{suite}'", hint="this release has: perplexity")
    res = eval_stage(
        _ws(),
        model,
        EvalConfig(batch_size=batch_size, max_batches=max_batches, seq_len=seq_len),
        shards_ref=data,
        force=force,
        notify=_notify,
    )
    m = res.metrics
    table = Table(title=f"eval {res.output}")
    for key in ("loss", "perplexity", "bits_per_byte", "unigram_loss", "tokens", "bytes"):
        table.add_column(key)
    table.add_row(
        *(
            _fmt(m.get(k))
            for k in ("loss", "perplexity", "bits_per_byte", "unigram_loss", "tokens", "bytes")
        )
    )
    console.print(table)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4f}"
    return "-" if value is None else str(value)


@assets_app.command("list")
def assets_list(
    kind: Annotated[str | None, typer.Option(help="Only this kind (dataset, model, ...).")] = None,
) -> None:
    """List registered assets, newest last."""
    from forgeml.pipeline.stages import open_registry

    assets = open_registry(_ws()).list_assets(kind)
    table = Table()
    for col in ("id", "kind", "name", "size", "created"):
        table.add_column(col)
    for a in assets:
        table.add_row(a.id, a.kind, a.name, _size(a.size_bytes), str(a.created_at)[:19])
    console.print(table)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@assets_app.command("show")
def assets_show(
    ref: Annotated[str, typer.Argument(help="Asset id, prefix, name or alias.")],
) -> None:
    """Show one asset: metadata, files, the run that made it."""
    from forgeml.pipeline.stages import open_registry

    reg = open_registry(_ws())
    a = reg.get_asset(ref)
    info = {
        "id": a.id,
        "kind": a.kind,
        "name": a.name,
        "sha256": a.sha256,
        "size_bytes": a.size_bytes,
        "files": a.n_files,
        "created_at": str(a.created_at),
        "path": str(a.path),
        "producer_run": a.producer_run,
        "metadata": a.metadata,
    }
    if a.producer_run:
        run = reg.get_run(a.producer_run)
        info["run"] = {
            "stage": run.stage,
            "status": run.status,
            "config_hash": run.config_hash,
            "inputs": run.inputs,
            "seed": run.seed,
            "code_version": run.code_version,
            "started_at": str(run.started_at),
            "ended_at": str(run.ended_at),
        }
    console.print_json(json.dumps(info, default=str))


@assets_app.command("lineage")
def assets_lineage(
    ref: Annotated[str, typer.Argument(help="Asset or run id.")],
    up: Annotated[bool, typer.Option("--up", help="Walk to what it was made from.")] = False,
    down: Annotated[bool, typer.Option("--down", help="Walk to what was made from it.")] = False,
    depth: Annotated[int | None, typer.Option(help="Stop after this many hops.")] = None,
) -> None:
    """Walk the lineage graph upstream (--up, default) or downstream (--down)."""
    from forgeml.pipeline.stages import open_registry

    if up and down:
        raise ForgeError("choose one of --up and --down")
    from forgeml.registry import format_lineage

    direction = "down" if down else "up"
    graph = open_registry(_ws()).lineage(ref, direction, max_depth=depth)
    console.print(format_lineage(graph), highlight=False, markup=False)


@runs_app.command("list")
def runs_list(
    stage: Annotated[
        str | None, typer.Option(help="Only this stage (ingest, pretrain, ...).")
    ] = None,
    status: Annotated[str | None, typer.Option(help="running, succeeded, failed.")] = None,
) -> None:
    """List runs, newest first."""
    from forgeml.pipeline.stages import open_registry

    table = Table()
    for col in ("id", "stage", "status", "config", "inputs", "outputs", "started"):
        table.add_column(col, overflow="fold")
    for r in open_registry(_ws()).list_runs(stage=stage, status=status):
        table.add_row(
            r.id,
            r.stage,
            r.status,
            r.config_hash[:12],
            " ".join(r.inputs),
            " ".join(r.outputs),
            str(r.started_at)[:19],
        )
    console.print(table)


@runs_app.command("show")
def runs_show(ref: Annotated[str, typer.Argument(help="Run id or unique prefix.")]) -> None:
    """Show one run: config, inputs, outputs, metrics, versions, timing."""
    import dataclasses

    from forgeml.pipeline.stages import open_registry

    run = open_registry(_ws()).get_run(ref)
    console.print_json(json.dumps(dataclasses.asdict(run), default=str))


@app.command("promote")
def promote_cmd(
    model: Annotated[str, typer.Argument(help="Asset id, prefix or name.")],
    alias: Annotated[str, typer.Option("--alias", "-a", help="Alias to move, e.g. champion.")],
    reason: Annotated[str, typer.Option(help="Why (kept in the alias history).")] = "",
) -> None:
    """Point an alias at an asset (history kept; `rollback` moves it back)."""
    from forgeml.pipeline.stages import open_registry

    target = open_registry(_ws()).set_alias(alias, model, reason=reason)
    console.print(f"{alias} -> {target}")


@app.command("rollback")
def rollback_cmd(
    alias: Annotated[str, typer.Argument(help="Alias to move back to its previous target.")],
    reason: Annotated[str, typer.Option(help="Why (kept in the alias history).")] = "",
) -> None:
    """Move an alias back to its previous target in one command."""
    from forgeml.pipeline.stages import open_registry

    target = open_registry(_ws()).rollback_alias(alias, reason=reason)
    console.print(f"{alias} -> {target}")


@pipeline_app.command("run")
def pipeline_run(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML.")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="Dotted overrides, e.g. train.max_steps=200")
    ] = None,
    force: Annotated[bool, typer.Option(help="Re-run every stage even if cached.")] = False,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted pre-training.")] = False,
    auto_resume: Annotated[
        bool, typer.Option(help="Continue an interrupted pre-training if there is one.")
    ] = False,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the summary as JSON here.")
    ] = None,
) -> None:
    """Run every stage of a recipe (ingest → tokenizer → pack → pretrain → eval → generate)."""
    from forgeml.pipeline.run import run_pipeline

    ws = _ws()
    rec = load_recipe(recipe, overrides or [])
    result = run_pipeline(
        ws,
        rec,
        force=force,
        resume=resume,
        auto_resume=auto_resume,
        progress=not state.quiet,
        notify=_notify,
    )
    print_pipeline_summary(ws, result)
    if json_out:
        from forgeml.core.io import atomic_write_text

        atomic_write_text(json_out, json.dumps(result.summary(), indent=1, default=str))


def print_pipeline_summary(ws, result) -> None:
    from forgeml.pipeline.run import asset_paths

    paths = asset_paths(ws, result)
    table = Table(title=f"forgeml pipeline — {result.seconds:.0f} s")
    for col in ("stage", "asset", "status", "where"):
        table.add_column(col, overflow="fold")
    for s in result.stages:
        for out in s.outputs:
            rel = Path(paths[out])
            try:
                rel = rel.relative_to(ws.root)
            except ValueError:
                pass
            table.add_row(s.stage, out, "cached" if s.cached else "made", str(rel))
    console.print(table)
    metrics = Table(title="numbers")
    metrics.add_column("metric")
    metrics.add_column("value", justify="right")
    stage_metrics = {s.stage: s.metrics for s in result.stages}
    rows = [
        ("documents kept / found", _pair(stage_metrics.get("ingest", {}), "kept", "found")),
        ("tokenizer vocab", stage_metrics.get("tokenizer", {}).get("vocab_size")),
        ("train tokens", stage_metrics.get("pack", {}).get("train_tokens")),
        ("held-out tokens", stage_metrics.get("pack", {}).get("heldout_tokens")),
        ("pretrain steps", stage_metrics.get("pretrain", {}).get("steps")),
        ("final train loss", stage_metrics.get("pretrain", {}).get("final_train_loss")),
        ("held-out loss", stage_metrics.get("eval", {}).get("loss")),
        ("unigram baseline loss", stage_metrics.get("eval", {}).get("unigram_loss")),
        ("held-out perplexity", stage_metrics.get("eval", {}).get("perplexity")),
        ("bits per byte", stage_metrics.get("eval", {}).get("bits_per_byte")),
        ("train tokens/s", stage_metrics.get("pretrain", {}).get("tokens_per_s")),
    ]
    for name, value in rows:
        if value is not None:
            metrics.add_row(name, _fmt(value))
    console.print(metrics)
    for prompt, completion in result.samples:
        console.print("[bold]sample[/]", highlight=False)
        console.print(f"{prompt}⟦{completion}⟧", markup=False, highlight=False)
    console.print(
        f"workspace: {ws.root}  (see `forgeml -w {ws.root} assets list`)", highlight=False
    )


def _pair(m: dict, a: str, b: str) -> str | None:
    return f"{m[a]} / {m[b]}" if a in m and b in m else None


@jobs_app.command(
    "submit", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)
def jobs_submit(
    args: Annotated[list[str], typer.Argument(help="The forgeml command to run, after `--`.")],
    max_attempts: Annotated[int, typer.Option(help="Attempts before a job is failed.")] = 3,
) -> None:
    """Queue a command, e.g. `forgeml jobs submit -- pipeline run r.yaml --auto-resume`."""
    from forgeml.control.jobs import submit_job
    from forgeml.pipeline.stages import open_registry

    # Workers may run in another folder: make paths that exist here absolute.
    args = [
        str(Path(a).resolve()) if not a.startswith("-") and Path(a).exists() else a for a in args
    ]
    job = submit_job(open_registry(_ws()), args, max_attempts=max_attempts)
    console.print(job.id)


@jobs_app.command("list")
def jobs_list(status: Annotated[str | None, typer.Option(help="Only this status.")] = None) -> None:
    """List jobs, newest first."""
    from forgeml.control.jobs import list_jobs
    from forgeml.pipeline.stages import open_registry

    table = Table()
    for col in ("id", "status", "attempts", "worker", "command", "created"):
        table.add_column(col, overflow="fold")
    for j in list_jobs(open_registry(_ws()), status):
        table.add_row(
            j.id,
            j.status,
            str(j.attempts),
            j.worker or "-",
            " ".join(j.args),
            str(j.created_at)[:19],
        )
    console.print(table)


@jobs_app.command("show")
def jobs_show(ref: Annotated[str, typer.Argument(help="Job id or unique prefix.")]) -> None:
    """Show one job."""
    import dataclasses

    from forgeml.control.jobs import get_job
    from forgeml.pipeline.stages import open_registry

    console.print_json(
        json.dumps(dataclasses.asdict(get_job(open_registry(_ws()), ref)), default=str)
    )


@jobs_app.command("logs")
def jobs_logs(ref: Annotated[str, typer.Argument(help="Job id or unique prefix.")]) -> None:
    """Print the log of a job's latest attempt."""
    from forgeml.control.jobs import get_job
    from forgeml.control.worker import job_log_path
    from forgeml.pipeline.stages import open_registry

    ws = _ws()
    job = get_job(open_registry(ws), ref)
    path = job_log_path(ws, job)
    if job.attempts == 0 or not path.is_file():
        raise ForgeError(f"job {job.id} has no log yet ({job.status})")
    sys.stdout.write(path.read_text(errors="replace"))


@jobs_app.command("cancel")
def jobs_cancel(ref: Annotated[str, typer.Argument(help="Job id or unique prefix.")]) -> None:
    """Cancel a queued job, or stop a running one."""
    from forgeml.control.jobs import cancel_job
    from forgeml.pipeline.stages import open_registry

    job = cancel_job(open_registry(_ws()), ref)
    console.print(f"{job.id}: {'cancel requested' if job.status == 'running' else job.status}")


@jobs_app.command("retry")
def jobs_retry(ref: Annotated[str, typer.Argument(help="Job id or unique prefix.")]) -> None:
    """Queue a failed job again (cached stages are skipped; `--auto-resume` jobs resume)."""
    from forgeml.control.jobs import retry_job
    from forgeml.pipeline.stages import open_registry

    console.print(f"{retry_job(open_registry(_ws()), ref).id}: queued")


@app.command("worker")
def worker_cmd(
    max_jobs: Annotated[int | None, typer.Option(help="Exit after this many jobs.")] = None,
    idle_exit: Annotated[
        float | None, typer.Option(help="Exit after the queue stayed empty this many seconds.")
    ] = None,
    poll: Annotated[float, typer.Option(help="Seconds between queue polls.")] = 1.0,
    heartbeat: Annotated[float, typer.Option(help="Seconds between heartbeats.")] = 2.0,
    stale_after: Annotated[
        float, typer.Option(help="A running job without heartbeat this long is failed-retryable.")
    ] = 30.0,
) -> None:
    """Run queued jobs (start several workers for parallelism; each job runs once)."""
    from forgeml.control.worker import run_worker

    n = run_worker(
        _ws(),
        poll_s=poll,
        heartbeat_s=heartbeat,
        stale_after_s=stale_after,
        max_jobs=max_jobs,
        idle_exit_s=idle_exit,
        notify=_notify,
    )
    console.print(f"worker ran {n} job(s)")


def main() -> None:
    """Entry point: run the Typer app, turning ForgeErrors into one clear line."""
    debug = "--debug" in sys.argv
    try:
        app()
    except ForgeError as exc:
        if debug:
            raise
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
