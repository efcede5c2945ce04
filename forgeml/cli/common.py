"""What every `forgeml` command shares: the global options (`-w`, `--debug`, `-q`), the
workspace they name, the consoles, progress notes and number formatting. Command modules
import from here, never from the package, so the CLI has no import cycle."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from forgeml.core.workspace import Workspace, open_workspace

# Off a terminal (CI logs, pipes) rich would wrap tables at 80 columns; ids and paths are long.
console = Console(width=None if sys.stdout.isatty() else 120)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 120)


class State:
    """The global options of this invocation (set before any command runs)."""

    workspace: str | None = None
    debug: bool = False
    quiet: bool = False


state = State()


def global_options(
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


def current_workspace() -> Workspace:
    """The workspace named by `-w`, $FORGEML_WORKSPACE or the current folder."""
    return open_workspace(state.workspace)


def show_progress() -> bool:
    """Progress bars for the data stages: only on a terminal (they are noise in logs)."""
    return not state.quiet and sys.stderr.isatty()


def notify(msg: str) -> None:
    """A one-line progress note on stderr (silenced by `--quiet`)."""
    if not state.quiet:
        err.print(f"[bold cyan]›[/] {escape(msg)}", highlight=False)


def format_value(value: object) -> str:
    """A metric for a table: large floats with thousands separators, small ones to 4 places."""
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4f}"
    return "-" if value is None else str(value)
