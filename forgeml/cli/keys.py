"""`forgeml keys {create,list,revoke}`: API keys for the serving API and the control plane
(secrets printed once; only salted hashes are stored)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from forgeml.cli.common import console, current_workspace, err

keys_app = typer.Typer(help="API keys for the serving API.", no_args_is_help=True)


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
    from forgeml.governance.keys import create_api_key

    scopes = {"roles": role or [], "models": model or [], "endpoints": endpoint or []}
    key, info = create_api_key(
        current_workspace().root, principal, requests_per_minute=rpm, tokens_per_minute=tpm,
        clearance=clearance, label=label, **{k: v for k, v in scopes.items() if v},
    )  # fmt: skip
    err.print(f"key {info.id} for {info.principal} (shown once, store it now):")
    console.print(key, highlight=False)


@keys_app.command("list")
def keys_list(
    all_keys: Annotated[bool, typer.Option("--all", help="Include revoked.")] = False,
) -> None:
    """List API keys (never their secrets)."""
    from forgeml.governance.keys import list_api_keys

    table = Table()
    for col in ("id", "principal", "roles", "models", "endpoints", "rpm", "tpm", "revoked"):
        table.add_column(col, overflow="fold")
    for k in list_api_keys(current_workspace().root, all_keys):
        table.add_row(
            k.id, k.principal, ",".join(k.roles), ",".join(k.models) or "*",
            ",".join(k.endpoints) or "*", str(k.requests_per_minute or "-"),
            str(k.tokens_per_minute or "-"), str(k.revoked_at or "")[:19],
        )  # fmt: skip
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="Key id from `keys list`.")]) -> None:
    """Revoke an API key at once."""
    from forgeml.governance.keys import revoke_api_key

    console.print(f"revoked {revoke_api_key(current_workspace().root, key_id).id}")
