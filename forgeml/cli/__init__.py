"""The `forgeml` command line: parse, call a forgeml function, print.

This module builds the command tree from one module per command group (each thin over a
Python function that agents, tests and notebooks call directly). Errors a user can cause
print one line (`error: ...`) and exit 2; `--debug` shows the traceback."""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

from forgeml.cli import (
    aliases,
    assets,
    audit,
    control,
    data,
    drift,
    eval,
    generate,
    hpo,
    interop,
    jobs,
    keys,
    launch,
    pipeline,
    serve,
    synth,
    tokenizer,
    train,
    workspace,
)
from forgeml.cli.common import err, global_options
from forgeml.core.errors import ForgeError

app = typer.Typer(
    help="forgeml — an on-premises model factory: your data in, your model out, nothing leaves.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.callback()(global_options)

# Commands, in the order `forgeml --help` lists them.
app.command("init")(workspace.init_cmd)
app.command("generate")(generate.generate_cmd)
app.command("promote")(aliases.promote_cmd)
app.command("rollback")(aliases.rollback_cmd)
app.command("aliases")(aliases.aliases_cmd)
app.command("worker")(jobs.worker_cmd)
app.command("serve")(serve.serve_cmd)
app.command("export")(interop.export_cmd)
app.command("mcp")(control.mcp_cmd)
app.command("plan", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(
    control.plan_cmd
)
app.command("hpo")(hpo.hpo_cmd)
app.command("hpo-trial", hidden=True)(hpo.hpo_trial)

# Command groups.
app.add_typer(data.data_app, name="data")
app.add_typer(tokenizer.tokenizer_app, name="tokenizer")
app.add_typer(train.train_app, name="train")
app.add_typer(eval.eval_app, name="eval")
app.add_typer(assets.assets_app, name="assets")
app.add_typer(pipeline.pipeline_app, name="pipeline")
app.add_typer(assets.runs_app, name="runs")
app.add_typer(jobs.jobs_app, name="jobs")
app.add_typer(keys.keys_app, name="keys")
app.add_typer(audit.audit_app, name="audit")
app.add_typer(drift.drift_app, name="drift")
app.add_typer(interop.import_app, name="import")
app.add_typer(control.control_app, name="control")
app.add_typer(control.approvals_app, name="approvals")
app.add_typer(control.budgets_app, name="budgets")
app.add_typer(synth.synth_app, name="synth")
app.add_typer(interop.adapters_app, name="adapters")
app.add_typer(launch.launch_app, name="launch")


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
