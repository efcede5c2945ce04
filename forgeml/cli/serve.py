"""`forgeml serve`: the OpenAI-compatible server behind API keys, policies and the audit log,
or the same gateway in front of an upstream OpenAI-compatible server."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from forgeml.cli.common import current_workspace, err


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
    ws = current_workspace()
    serve(
        ws.root, refs or (None if upstream else [alias or "champion"]), host=host, port=port,
        policy_path=policy, no_auth=no_auth, log_bodies=log_bodies, max_batch=max_batch,
        max_queue=max_queue, device=device, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile,
        upstream=upstream, upstream_key_env=upstream_key, upstream_timeout=upstream_timeout,
        alias=alias if refs else None,
    )  # fmt: skip
