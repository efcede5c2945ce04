"""`forgeml serve`: the OpenAI-compatible server behind API keys, policies and the audit log,
on the built-in engine, on vLLM replicas (`--engine vllm`), or in front of an upstream."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from forgeml.cli.common import current_workspace, err
from forgeml.core.errors import ConfigError

ENGINES = ("builtin", "vllm")


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
    compile_step: Annotated[
        bool,
        typer.Option(
            help="Builtin engine, dense models on CPU: decode through compiled static-shape "
            "steps, each compiled in the background (tens of seconds of a core per shape) and "
            "used once probed within tolerance of eager and faster; off: outputs bitwise eager."
        ),
    ] = False,
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
    engine: Annotated[
        str, typer.Option(help="builtin (CPU and small models) or vllm (CUDA; forgeml[vllm]).")
    ] = "builtin",
    replicas: Annotated[int, typer.Option(help="vLLM replicas the gateway balances.")] = 1,
    gpu_memory_utilization: Annotated[
        float, typer.Option(help="Share of each GPU's memory a vLLM replica may use.")
    ] = 0.9,
    tensor_parallel_size: Annotated[int, typer.Option(help="GPUs per vLLM replica.")] = 1,
    max_model_len: Annotated[
        int | None, typer.Option(help="vLLM context length (default: the model's).")
    ] = None,
    dtype: Annotated[str, typer.Option(help="vLLM weight dtype.")] = "bfloat16",
    vllm_arg: Annotated[
        list[str] | None,
        typer.Option(help="Extra argument for every vLLM replica (repeat for several)."),
    ] = None,
) -> None:
    """OpenAI-compatible server (/v1/chat/completions, /v1/completions, /v1/models) behind
    API keys, policies and the audit log; with --engine vllm, the model runs on vLLM replicas
    behind the same gateway; with --upstream, the gateway fronts any OpenAI-compatible server."""
    from forgeml.serve.api import serve

    if engine not in ENGINES:
        raise ConfigError(f"--engine {engine} is not one of {', '.join(ENGINES)}")
    if engine != "vllm" and (replicas != 1 or vllm_arg):
        raise ConfigError("--replicas and --vllm-arg need --engine vllm")
    if engine == "vllm" and upstream is not None:
        raise ConfigError(
            "--engine vllm starts its own vLLM servers; --upstream fronts a running one",
            hint="give one of them",
        )
    if no_auth:
        err.print("[bold yellow]warning:[/] --no-auth: every request is accepted without a key")
    ws = current_workspace()
    if engine == "vllm":
        from forgeml.serve.vllm import VllmOptions, serve_vllm

        if replicas < 1 or tensor_parallel_size < 1:
            raise ConfigError("--replicas and --tensor-parallel-size must be at least 1")
        options = VllmOptions(
            replicas=replicas, gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size, max_model_len=max_model_len,
            dtype=dtype, extra_args=tuple(vllm_arg or ()),
        )  # fmt: skip
        serve_vllm(
            ws.root, refs or [alias or "champion"], options=options, host=host, port=port,
            policy_path=policy, no_auth=no_auth, log_bodies=log_bodies,
            ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile,
            upstream_timeout=upstream_timeout, alias=alias if refs else None,
        )  # fmt: skip
        return
    serve(
        ws.root, refs or (None if upstream else [alias or "champion"]), host=host, port=port,
        policy_path=policy, no_auth=no_auth, log_bodies=log_bodies, max_batch=max_batch,
        max_queue=max_queue, device=device, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile,
        upstream=upstream, upstream_key_env=upstream_key, upstream_timeout=upstream_timeout,
        alias=alias if refs else None, compile_step=compile_step,
    )  # fmt: skip
