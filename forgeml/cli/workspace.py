"""`forgeml init`: make a workspace (forge.yaml, registry database, artifact store, runs
folder). The first command of every session; the others open the workspace it made."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from forgeml.cli.common import console, state
from forgeml.core.workspace import init_workspace


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
    from forgeml.registry import open_registry

    open_registry(ws)
    console.print(f"workspace ready at {ws.root}")
