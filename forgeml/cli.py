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
keys_app = typer.Typer(help="API keys for the serving API.", no_args_is_help=True)
audit_app = typer.Typer(help="The tamper-evident audit log.", no_args_is_help=True)
jobs_app = typer.Typer(help="Queue commands for `forgeml worker` processes.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(tok_app, name="tokenizer")
app.add_typer(train_app, name="train")
app.add_typer(eval_app, name="eval")
app.add_typer(assets_app, name="assets")
app.add_typer(pipeline_app, name="pipeline")
app.add_typer(runs_app, name="runs")
app.add_typer(jobs_app, name="jobs")
app.add_typer(keys_app, name="keys")
app.add_typer(audit_app, name="audit")


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
    shared_group: Annotated[
        str | None, typer.Option(help="Group that may read the workspace (default: owner only).")
    ] = None,
) -> None:
    """Make a workspace: forge.yaml, registry database, artifact store, runs folder."""
    ws = init_workspace(state.workspace or directory, registry_url, shared_group=shared_group)
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
    text_field: Annotated[
        list[str] | None,
        typer.Option("--text-field", help="JSONL/CSV/Parquet: field(s) holding the text."),
    ] = None,
    force: Annotated[bool, typer.Option(help="Re-run even if cached.")] = False,
) -> None:
    """Read text, Markdown, code, HTML, PDF, DOCX, records and archives into a raw Parquet
    dataset asset, with a report of every file."""
    from forgeml.pipeline.stages import ingest_stage, open_registry

    ws = _ws()
    res = ingest_stage(
        ws,
        paths,
        name=name,
        include=include,
        exclude=exclude,
        max_file_bytes=max_file_bytes,
        text_fields=text_field,
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
            text_fields=rec.data.text_fields,
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


@train_app.command("cpt")
def train_cpt(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML (its `cpt` section applies).")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="Dotted overrides, e.g. cpt.replay_fraction=0.25")
    ] = None,
    from_model: Annotated[
        str | None, typer.Option("--from", help="Base model (default: cpt.from_model).")
    ] = None,
    data: Annotated[str, typer.Option(help="Domain dataset asset.")] = "",
    replay: Annotated[str | None, typer.Option(help="General dataset mixed in as replay.")] = None,
    force: Annotated[bool, typer.Option(help="Re-run even if cached.")] = False,
) -> None:
    """Continued pre-training from an existing model: new domain tokens (mean-initialised
    embeddings) and replay of a general corpus to limit forgetting."""
    from forgeml.pipeline.cpt import continue_pretrain_stage

    if not data:
        raise ForgeError("--data DATASET is required", hint="the domain dataset to continue on")
    rec = load_recipe(recipe, overrides or [])
    res = continue_pretrain_stage(
        _ws(), rec, from_model, data, replay_ref=replay, force=force, progress=not state.quiet,
        notify=_notify,
    )  # fmt: skip
    m = res.metrics
    console.print(f"model {res.output}" + (" (cached)" if res.cached else ""))
    for key, value in m.items():
        if "loss" in key:
            console.print(f"  {key}: {_fmt(value)}")


@train_app.command("preflight")
def train_preflight(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML.")],
    overrides: Annotated[list[str] | None, typer.Argument(help="Dotted overrides.")] = None,
    vocab_size: Annotated[int, typer.Option(help="When model.vocab_size is unset.")] = 4096,
    world_size: Annotated[int, typer.Option(help="Processes (DDP/FSDP).")] = 1,
    strategy: Annotated[str, typer.Option(help="ddp or fsdp.")] = "ddp",
    measure: Annotated[bool, typer.Option(help="Also measure the peak of 2 real steps.")] = False,
) -> None:
    """Estimate a run's memory (params, grads, AdamW, activations) and refuse one that won't
    fit, naming the setting to change."""
    from forgeml.core.runtime import pick_device
    from forgeml.train.preflight import (
        available_memory,
        check_fits,
        estimate_memory,
        measure_peak_memory,
    )

    rec = load_recipe(recipe, overrides or [])
    model_cfg = rec.model.model_copy(update={"vocab_size": rec.model.vocab_size or vocab_size})
    device = pick_device(rec.train.device)
    est = estimate_memory(
        model_cfg, rec.train, world_size=world_size, strategy=strategy, device=device
    )
    console.print(est.summary(), highlight=False)
    if measure:
        peak = measure_peak_memory(model_cfg, rec.train, device=device)
        console.print(f"measured peak: {peak / 2**20:,.0f} MiB", highlight=False)
    check_fits(est, available_memory(device), model_cfg=model_cfg, train_cfg=rec.train)
    console.print("fits")


@app.command("generate")
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
    from forgeml.pipeline.stages import generate_text

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
        from forgeml.pipeline.stages import open_registry

        if temperature == 0.8:  # the sampling default: infill restores text, greedy fits
            cfg = cfg.model_copy(update={"temperature": 0.0})
        path = open_registry(_ws()).get_asset(model).path
        console.print(infill_text(path, prompt, cfg), markup=False, highlight=False)
        return
    console.print(prompt + generate_text(_ws(), model, prompt, cfg), markup=False, highlight=False)


@eval_app.command("run")
def eval_run(
    model: Annotated[str, typer.Argument(help="Model asset (id, prefix, name or alias).")],
    suite: Annotated[
        str, typer.Option(help="`perplexity` (held-out), `infill` (--data DIR) or a suite YAML.")
    ] = "perplexity",
    data: Annotated[
        str | None, typer.Option(help="perplexity: token-shards asset (default: model's held-out).")
    ] = None,
    data_root: Annotated[
        Path | None, typer.Option(help="Suite YAML: folder its data paths are relative to.")
    ] = None,
    batch_size: Annotated[int, typer.Option()] = 8,
    max_batches: Annotated[int, typer.Option(help="perplexity: windows to score.")] = 64,
    seq_len: Annotated[int, typer.Option(help="perplexity: window length.")] = 256,
    dtype: Annotated[str, typer.Option(help="auto, fp32 or bf16.")] = "auto",
    force: Annotated[bool, typer.Option(help="Re-run even if cached.")] = False,
) -> None:
    """Evaluate a model → eval asset linked to it: held-out perplexity, or a KPI suite."""
    ws = _ws()
    if suite == "infill":
        from forgeml.eval.infill import infill_eval_stage

        if data is None:
            raise ForgeError("--suite infill needs --data DAMAGED_DIR", hint="e.g. corpus/damaged")
        res = infill_eval_stage(
            ws, model, data, max_examples=max_batches * batch_size, force=force, notify=_notify
        )
        console.print(
            f"eval {res.output}: exact match {_fmt(res.metrics['exact_match'])}, normalised "
            f"{_fmt(res.metrics['normalized_match'])} over {res.metrics['n']} gaps"
        )
        return
    if suite != "perplexity":
        _eval_suite(ws, model, Path(suite), data_root, batch_size, dtype, force)
        return
    from forgeml.pipeline.stages import eval_stage

    res = eval_stage(
        ws,
        model,
        EvalConfig(batch_size=batch_size, max_batches=max_batches, seq_len=seq_len),
        shards_ref=data,
        dtype=dtype,
        force=force,
        notify=_notify,
    )
    keys = ("loss", "perplexity", "bits_per_byte", "unigram_loss", "tokens", "bytes")
    table = Table(title=f"eval {res.output}")
    for key in keys:
        table.add_column(key)
    table.add_row(*(_fmt(res.metrics.get(k)) for k in keys))
    console.print(table)


def _eval_suite(ws, model, suite: Path, data_root, batch_size, dtype, force) -> None:
    from forgeml.pipeline.eval_suite_stage import eval_suite_stage
    from forgeml.pipeline.stages import open_registry

    if not suite.is_file():
        raise ForgeError(f"suite not found: {suite}", hint="pass `perplexity` or a suite YAML")
    res = eval_suite_stage(
        ws, model, suite, data_root=data_root, batch_size=batch_size, dtype=dtype, force=force,
        notify=_notify,
    )  # fmt: skip
    path = open_registry(ws).get_asset(res.output).path
    results = json.loads((path / "results.json").read_text())
    table = Table(title=f"eval {res.output}")
    for col in ("task", "metric", "value"):
        table.add_column(col)
    for task, info in (results.get("tasks") or {}).items():
        for metric, value in (info.get("metrics") or {}).items():
            table.add_row(task, metric, _fmt(value))
    console.print(table)
    console.print(f"report: {path / 'report.html'}", highlight=False)


@eval_app.command("gate")
def eval_gate(
    candidate: Annotated[str, typer.Argument(help="Candidate model.")],
    against: Annotated[str, typer.Option(help="Alias (or model) to compare with.")] = "champion",
    suite: Annotated[Path, typer.Option(help="KPI suite YAML.")] = Path("suite.yaml"),
    data_root: Annotated[Path | None, typer.Option(help="Folder of the suite's data.")] = None,
    confidence: Annotated[float, typer.Option(help="Bootstrap interval level.")] = 0.95,
    strict: Annotated[bool, typer.Option(help="Count warnings as failures.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Compare every KPI of CANDIDATE with the alias's model; exit 1 on a regression."""
    from forgeml.pipeline.eval_suite_stage import gate

    res = gate(
        _ws(), candidate, against, suite, data_root=data_root, confidence=confidence,
        strict=strict, notify=_notify,
    )  # fmt: skip
    if json_out:
        console.print_json(json.dumps(res.report.to_dict(), default=str))
    else:
        console.print(res.report.table(), markup=False, highlight=False)
    if not res.report.passed:
        raise typer.Exit(1)


@eval_app.command("report")
def eval_report(
    refs: Annotated[
        list[str], typer.Argument(help="Eval assets (one: report; several: comparison).")
    ],
    out: Annotated[Path, typer.Option(help="HTML file to write.")] = Path("report.html"),
) -> None:
    """Write an HTML report of one eval, or a comparison of several (with training curves)."""
    from forgeml.eval.gate import compare_evals, load_eval_record
    from forgeml.eval.report import (
        comparison_report_html,
        eval_report_html,
        read_training_curve,
        write_report,
    )
    from forgeml.pipeline.stages import open_registry

    ws = _ws()
    reg = open_registry(ws)
    assets = [reg.get_asset(r) for r in refs]
    records = [load_eval_record(a.path) for a in assets]
    if len(records) == 1:
        html = eval_report_html(records[0])
    else:
        curves = {}
        for a in assets:
            model = reg.get_asset(a.metadata.get("model", "")) if a.metadata.get("model") else None
            metrics = (
                ws.runs_dir / "pretrain" / model.producer_run / "metrics.jsonl" if model else None
            )
            if metrics is not None and metrics.is_file():
                curves[a.name] = read_training_curve(metrics)
        html = comparison_report_html(
            records, labels=[a.name for a in assets], curves=curves,
            gate=compare_evals(records[1], records[0]),
        )  # fmt: skip
    console.print(f"report: {write_report(out, html)}", highlight=False)


drift_app = typer.Typer(help="Drift on logged serving traffic.", no_args_is_help=True)
app.add_typer(drift_app, name="drift")


@drift_app.command("report")
def drift_report_cmd(
    reference: Annotated[
        Path | None, typer.Option(help="Reference traffic (JSONL file or folder).")
    ] = None,
    current: Annotated[Path | None, typer.Option(help="Current traffic to compare.")] = None,
    log: Annotated[
        Path | None,
        typer.Option(help="One log (e.g. the audit log), split in time instead."),
    ] = None,
    split: Annotated[float, typer.Option(help="With --log: share used as reference.")] = 0.5,
    model: Annotated[
        str | None, typer.Option(help="Also compare the model's own loss on prompts.")
    ] = None,
    reward_model: Annotated[
        str | None,
        typer.Option(help="Also compare reward-model scores of prompt + completion as served."),
    ] = None,
    psi: Annotated[float, typer.Option(help="PSI threshold.")] = 0.2,
    p_value: Annotated[float, typer.Option(help="Significance level.")] = 0.01,
    reward_effect: Annotated[
        float, typer.Option(help="Reward-score shift (Cohen's d) also needed.")
    ] = 0.2,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Drift report on logged traffic: length, n-gram and output-proxy shifts; exit 1 on drift.

    Reads plain traffic records or the serving audit log (`forgeml serve --log-bodies`)."""
    from collections import Counter

    from forgeml.eval.drift import DriftThresholds, drift_report, load_traffic, split_by_time

    if log is not None:
        logs = [load_traffic(log)]
        ref, cur = split_by_time(logs[0].records, split)
    elif reference is not None and current is not None:
        logs = [load_traffic(reference), load_traffic(current)]
        ref, cur = logs[0].records, logs[1].records
    else:
        raise ForgeError("give --reference and --current, or --log", hint="see --help")
    kwargs = {}
    if model:
        from forgeml.eval.tasks import EvalModel
        from forgeml.pipeline.stages import open_registry

        lm = EvalModel.from_dir(open_registry(_ws()).get_asset(model).path)
        kwargs = {"tokenize": lm.encode, "prompt_nll": lm.rolling_nll}
    if reward_model:
        from forgeml.train.reward_model import RewardScorer

        # Logged prompts are what the model saw (chat ones already through the template).
        kwargs["reward"] = RewardScorer(_ws(), reward_model, prompt_format="raw")
    thresholds = DriftThresholds(psi=psi, p_value=p_value, reward_effect=reward_effect)
    skipped = sum((Counter(t.skipped) for t in logs), Counter())
    report = drift_report(ref, cur, thresholds=thresholds, skipped=dict(skipped), **kwargs)
    if json_out:
        console.print_json(json.dumps(report.to_dict(), default=str))
    else:
        console.print(report.table(), markup=False, highlight=False)
    if report.drifted:
        raise typer.Exit(1)


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
    from forgeml.control.ops import asset_info
    from forgeml.pipeline.stages import open_registry

    console.print_json(json.dumps(asset_info(open_registry(_ws()), ref), default=str))


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
    model: Annotated[str, typer.Argument(help="Model asset (id, prefix or name).")],
    alias: Annotated[str, typer.Option("--alias", "-a", help="Alias to move, e.g. champion.")],
    suite: Annotated[
        Path | None, typer.Option(help="KPI suite: the move needs its gate to pass.")
    ] = None,
    data_root: Annotated[Path | None, typer.Option(help="Folder of the suite's data.")] = None,
    force: Annotated[
        bool, typer.Option(help="Move despite a failing gate (needs --reason).")
    ] = False,
    reason: Annotated[str, typer.Option(help="Why (kept in the alias history).")] = "",
) -> None:
    """Point an alias at a model if it passes the gate against the alias's current model.

    Every move is written to the audit log, a forced one with its reason."""
    from forgeml.control.ops import cli_principal
    from forgeml.governance.audit import AuditLog, audit_log_path
    from forgeml.pipeline.eval_suite_stage import GateFailed, promote

    ws, actor = _ws(), cli_principal()
    try:
        res = promote(
            ws, model, alias, suite_path=suite, data_root=data_root, force=force,
            reason=reason, actor=actor, notify=_notify,
        )  # fmt: skip
    except GateFailed as exc:
        console.print(exc.report.table(), markup=False, highlight=False)
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    # The event and fields the control plane writes for the same move (ControlPlane.promote).
    AuditLog(audit_log_path(ws.root)).append(
        "alias_promoted", principal=actor, alias=res.alias, asset_id=res.asset_id,
        previous=res.previous, forced=res.forced, reason=reason,
        gate=None if res.gate is None else ("passed" if res.gate.report.passed else "failed"),
    )  # fmt: skip
    if res.gate is not None:
        console.print(res.gate.report.table(), markup=False, highlight=False)
    console.print(f"{alias} -> {res.asset_id}" + (" (forced)" if res.forced else ""))


@app.command("rollback")
def rollback_cmd(
    alias: Annotated[str, typer.Argument(help="Alias to move back to its previous target.")],
    reason: Annotated[str, typer.Option(help="Why (kept in the alias history).")] = "",
) -> None:
    """Move an alias back to its previous target in one command (audited)."""
    from forgeml.control.ops import cli_principal
    from forgeml.governance.audit import AuditLog, audit_log_path
    from forgeml.pipeline.eval_suite_stage import rollback

    ws, actor = _ws(), cli_principal()
    target = rollback(ws, alias, reason=reason, actor=actor)
    AuditLog(audit_log_path(ws.root)).append(
        "alias_rolled_back", principal=actor, alias=alias, asset_id=target, reason=reason
    )
    console.print(f"{alias} -> {target}")


@app.command("aliases")
def aliases_cmd(
    name: Annotated[str | None, typer.Argument(help="Show this alias's history.")] = None,
) -> None:
    """List aliases, or one alias's full history."""
    from forgeml.pipeline.stages import open_registry

    reg = open_registry(_ws())
    table = Table()
    if name is None:
        for col in ("alias", "target"):
            table.add_column(col)
        for alias, target in sorted(reg.list_aliases().items()):
            table.add_row(alias, target)
    else:
        events = reg.alias_history(name)
        cols = ("at", "action", "asset_id", "previous_asset_id", "actor", "reason")
        for col in cols:
            table.add_column(col, overflow="fold")
        for e in events:
            table.add_row(
                *(str(e.get(c) or "")[:19] if c == "at" else str(e.get(c) or "") for c in cols)
            )
    console.print(table)


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
    stage_metrics: dict[str, dict] = {}
    for s in result.stages:  # both evals (perplexity, infill) are "eval" runs; keys differ
        if s.stage == "sft":  # post-training has its own before/after table below
            break
        stage_metrics.setdefault(s.stage, {}).update(s.metrics)
    rows = [
        ("documents kept / found", _pair(stage_metrics.get("ingest", {}), "kept", "found")),
        ("curated kept / read", _pair(stage_metrics.get("curate", {}), "kept", "input")),
        ("duplicates removed", stage_metrics.get("curate", {}).get("duplicates_removed")),
        ("PII values redacted", stage_metrics.get("curate", {}).get("pii_redacted")),
        ("secrets redacted", stage_metrics.get("curate", {}).get("secrets_redacted")),
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
        ("infill exact match", stage_metrics.get("eval", {}).get("exact_match")),
        ("infill normalised match", stage_metrics.get("eval", {}).get("normalized_match")),
        ("infill gaps scored", stage_metrics.get("eval", {}).get("n")),
    ]
    for name, value in rows:
        if value is not None:
            metrics.add_row(name, _fmt(value))
    console.print(metrics)
    if result.lifts:
        lift = Table(title="post-training, measured on held-out data")
        for col, justify in (("stage", "left"), ("metric", "left"), ("before", "right"),
                             ("after", "right"), ("n", "right")):  # fmt: skip
            lift.add_column(col, justify=justify)
        for row in result.lifts:
            after = _fmt(row.after) + (f" ± {row.se:.3f}" if row.se is not None else "")
            lift.add_row(row.stage, row.metric, _fmt(row.before), after, str(row.n))
        console.print(lift)
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
    """Queue a command, e.g. `forgeml jobs submit -- pipeline run r.yaml --auto-resume`. Its
    dry-run plan is printed and stored with it; your budget (`forgeml budgets set
    cli:USER ...`), if you have one, can refuse it."""
    from forgeml.control.ops import (
        BudgetExceeded,
        Submitter,
        absolute_job_args,
        admit_job,
        cli_principal,
    )
    from forgeml.governance.audit import AuditLog, audit_log_path
    from forgeml.pipeline.stages import open_registry

    ws = _ws()
    # Workers may run in another folder: make paths that exist here absolute.
    args = absolute_job_args(args)
    who = Submitter(cli_principal(), is_admin=True)
    try:
        job, plan = admit_job(
            ws, open_registry(ws), AuditLog(audit_log_path(ws.root)), args, who,
            max_attempts=max_attempts,
        )  # fmt: skip
    except BudgetExceeded as exc:
        err.print(exc.plan.summary(), markup=False, highlight=False)
        raise
    if not state.quiet:
        err.print(plan.summary(), markup=False, highlight=False)
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
    from forgeml.control.ops import read_job_log
    from forgeml.pipeline.stages import open_registry

    ws = _ws()
    sys.stdout.write(read_job_log(ws, open_registry(ws), ref))


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
    retry_backoff: Annotated[
        float, typer.Option(help="Seconds before a failed job's 2nd attempt (doubled each time).")
    ] = 30.0,
) -> None:
    """Run queued jobs (start several workers for parallelism; each job runs once, failed ones
    again after a backoff, up to their max attempts)."""
    from forgeml.control.worker import run_worker

    n = run_worker(
        _ws(),
        poll_s=poll,
        heartbeat_s=heartbeat,
        stale_after_s=stale_after,
        max_jobs=max_jobs,
        idle_exit_s=idle_exit,
        retry_base_s=retry_backoff,
        notify=_notify,
    )
    console.print(f"worker ran {n} job(s)")


@app.command("serve")
def serve_cmd(
    refs: Annotated[
        list[str] | None, typer.Argument(help="Models to serve (ids/names/aliases).")
    ] = None,
    alias: Annotated[
        str | None,
        typer.Option(
            help="Name to serve the model under (with no model named: this registry "
            "alias is served; default champion)."
        ),
    ] = None,
    host: Annotated[
        str, typer.Option(help="Bind address (loopback unless you say so).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8000,
    policy: Annotated[Path | None, typer.Option(help="Policy YAML (input/output rules).")] = None,
    no_auth: Annotated[bool, typer.Option(help="Accept requests without API keys.")] = False,
    log_bodies: Annotated[
        bool, typer.Option(help="Keep prompts/completions in the audit log.")
    ] = False,
    max_batch: Annotated[int, typer.Option(help="Concurrent sequences per model.")] = 8,
    max_queue: Annotated[int, typer.Option(help="Waiting requests before 429.")] = 64,
    device: Annotated[str, typer.Option()] = "cpu",
    ssl_certfile: Annotated[str | None, typer.Option(help="TLS certificate (PEM).")] = None,
    ssl_keyfile: Annotated[str | None, typer.Option(help="TLS private key (PEM).")] = None,
    upstream: Annotated[
        str | None,
        typer.Option(help="Gateway mode: OpenAI base URL to forward to (e.g. vLLM's .../v1)."),
    ] = None,
    upstream_key: Annotated[
        str | None, typer.Option(help="Name of the env variable holding the upstream's key.")
    ] = None,
    upstream_timeout: Annotated[float, typer.Option(help="Seconds to wait on the upstream.")] = 120,
) -> None:
    """OpenAI-compatible server (/v1/chat/completions, /v1/completions, /v1/models) behind
    API keys, policies and the audit log; with --upstream, the same gateway in front of any
    OpenAI-compatible server."""
    from forgeml.serve.api import serve

    if no_auth:
        err.print("[bold yellow]warning:[/] --no-auth: every request is accepted without a key")
    ws = _ws()
    serve(
        ws.root, refs or (None if upstream else [alias or "champion"]), host=host, port=port,
        policy_path=policy, no_auth=no_auth, log_bodies=log_bodies, max_batch=max_batch,
        max_queue=max_queue, device=device, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile,
        upstream=upstream, upstream_key_env=upstream_key, upstream_timeout=upstream_timeout,
        alias=alias if refs else None,
    )  # fmt: skip


@keys_app.command("create")
def keys_create(
    principal: Annotated[str, typer.Option(help="Who the key is for.")],
    role: Annotated[list[str] | None, typer.Option("--role", help="Role (repeatable).")] = None,
    model: Annotated[
        list[str] | None,
        typer.Option("--model", help="Allowed model/alias (repeatable; none: all)."),
    ] = None,
    endpoint: Annotated[
        list[str] | None,
        typer.Option("--endpoint", help="chat, completions, models, metrics (repeatable)."),
    ] = None,
    rpm: Annotated[int | None, typer.Option(help="Requests per minute.")] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute.")] = None,
    clearance: Annotated[str | None, typer.Option(help="Data-classification clearance.")] = None,
    label: Annotated[str, typer.Option(help="A note for `keys list`.")] = "",
) -> None:
    """Create an API key (printed once; only its salted hash is stored)."""
    from forgeml.serve.keys import create_api_key

    scopes = {"roles": role or [], "models": model or [], "endpoints": endpoint or []}
    key, info = create_api_key(
        _ws().root, principal, requests_per_minute=rpm, tokens_per_minute=tpm,
        clearance=clearance, label=label, **{k: v for k, v in scopes.items() if v},
    )  # fmt: skip
    err.print(f"key {info.id} for {info.principal} (shown once, store it now):")
    console.print(key, highlight=False)


@keys_app.command("list")
def keys_list(
    all_keys: Annotated[bool, typer.Option("--all", help="Include revoked.")] = False,
) -> None:
    """List API keys (never their secrets)."""
    from forgeml.serve.keys import list_api_keys

    table = Table()
    for col in ("id", "principal", "roles", "models", "endpoints", "rpm", "tpm", "revoked"):
        table.add_column(col, overflow="fold")
    for k in list_api_keys(_ws().root, all_keys):
        table.add_row(
            k.id, k.principal, ",".join(k.roles), ",".join(k.models) or "*",
            ",".join(k.endpoints) or "*", str(k.requests_per_minute or "-"),
            str(k.tokens_per_minute or "-"), str(k.revoked_at or "")[:19],
        )  # fmt: skip
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="Key id from `keys list`.")]) -> None:
    """Revoke an API key at once."""
    from forgeml.serve.keys import revoke_api_key

    console.print(f"revoked {revoke_api_key(_ws().root, key_id).id}")


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
    from forgeml.pipeline.stages import open_registry

    ws = _ws()
    cfg = load_recipe(recipe, overrides or []).curate
    res = curate_stage(ws, dataset, cfg, name=name, force=force, progress=_bars(), notify=_notify)
    asset = open_registry(ws).get_asset(res.output)
    m = res.metrics
    console.print(
        f"dataset {asset.id}: "
        + ", ".join(f"{k} {v}" for k, v in m.items() if not isinstance(v, dict))
        + (" (cached)" if res.cached else "")
    )
    console.print(f"  report: {asset.path / 'report.html'}", highlight=False)


@data_app.command("show")
def data_show(
    dataset: Annotated[str, typer.Argument(help="Dataset asset.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Statistics of a document dataset: counts, sizes, types, languages."""
    from forgeml.data.report import dataset_stats
    from forgeml.pipeline.stages import open_registry

    asset = open_registry(_ws()).get_asset(dataset)
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
    from forgeml.pipeline.stages import open_registry

    reg = open_registry(_ws())
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
            json.dumps(value, default=str) if isinstance(value, dict | list) else _fmt(value),
        )
    console.print(table)


import_app = typer.Typer(help="Bring models in from other tools.", no_args_is_help=True)
app.add_typer(import_app, name="import")


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

    res = import_hf_stage(_ws(), directory, name, force=force, notify=_notify)
    console.print(f"model {res.output} (tokenizer {res.metrics.get('tokenizer')})")


@app.command("export")
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
    from forgeml.pipeline.stages import open_registry

    if fmt != "hf":
        raise ForgeError(f"unknown format '{fmt}'", hint="this release writes: hf")
    ws = _ws()
    reg = open_registry(ws)
    require_clearance(reg, reg.get_asset(model), caller_clearance(reg, key_file), action="export")
    console.print(f"wrote {export_model(ws, model, out)}", highlight=False)


# Command groups kept in their own modules register themselves on the apps above.
from forgeml.commands import (  # noqa: E402,F401
    audit,
    control,
    hpo_synth,
    lm_eval,
    preference,
    rl,
    serving,
    sft,
)


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
    # `python -m forgeml.cli` (how workers run jobs) executes this file as `__main__`, but the
    # command modules register on the apps of the module `forgeml.cli`: run that one's.
    from forgeml.cli import main as _main

    _main()
