"""`forgeml serve --engine vllm`: registered models served by vLLM's OpenAI server, one or more
replicas as subprocesses on loopback ports, behind the governed gateway (keys, policies,
classification labels, audit) that balances requests over them (`upstream.ReplicaPool`).
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from forgeml.core.errors import ConfigError, DataError
from forgeml.registry.store import Asset, Registry
from forgeml.serve.loading import CurrentLabel, ServedModel, adapter_base
from forgeml.serve.requests import RequestLimits
from forgeml.serve.upstream import ReplicaPool, Upstream, UpstreamError

# Runs this command (shell words) instead of vLLM's server, with the same arguments: a stand-in
# OpenAI-compatible server in tests, or a site's own wrapper around vLLM.
VLLM_SERVER_ENV = "FORGEML_VLLM_SERVER"
VLLM_MODULE_COMMAND = ("-m", "vllm.entrypoints.openai.api_server")
# Seconds a replica may take to load its weights (and capture CUDA graphs) before /health is up.
HEALTH_TIMEOUT_S = 900.0
# Seconds replicas get to exit after SIGTERM before they are killed.
STOP_GRACE_S = 30.0
# prctl(2) option: the signal a process gets when the thread that started it ends (Linux).
PR_SET_PDEATHSIG = 1
# The LoRA ranks vLLM's kernels are built for (`--max-lora-rank` accepts these).
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
# Architectures in config.json that vLLM has no implementation of.
NOT_IN_VLLM = {"ForgemlMoeForCausalLM"}


@dataclass(frozen=True)
class VllmOptions:
    """How each replica runs: its share of its GPUs' memory, tensor parallelism (GPUs per
    replica), context length, weight dtype, and extra vLLM arguments passed as given."""

    replicas: int = 1
    gpu_memory_utilization: float = 0.9
    tensor_parallel_size: int = 1
    max_model_len: int | None = None
    dtype: str = "bfloat16"
    extra_args: tuple[str, ...] = ()
    health_timeout: float = HEALTH_TIMEOUT_S


@dataclass(frozen=True)
class VllmServed:
    """One served ref: its asset, the asset ids whose labels it carries, and the model name the
    vLLM server knows it by (the base's served name, or a LoRA module's)."""

    ref: str
    asset: Asset
    labelled: tuple[str, ...]
    upstream_name: str


@dataclass(frozen=True)
class VllmTarget:
    """What one vLLM server serves: a base model folder under `model_name`, LoRA adapters
    (served name -> PEFT folder) and the refs clients call them by."""

    model_dir: Path
    model_name: str
    adapters: dict[str, Path]
    max_lora_rank: int | None
    served: tuple[VllmServed, ...]


def vllm_installed() -> bool:
    """Whether `vllm` can be imported here (without importing it: that initialises CUDA)."""
    try:
        return importlib.util.find_spec("vllm") is not None
    except (ImportError, ValueError):
        return False


def vllm_command(command: Sequence[str] | None = None) -> list[str]:
    """The server command, before its arguments: `command`, else $FORGEML_VLLM_SERVER, else
    vLLM's OpenAI server module; a clear error when vLLM is not installed."""
    if command:
        return list(command)
    override = os.environ.get(VLLM_SERVER_ENV, "").strip()
    if override:
        return shlex.split(override)
    if not vllm_installed():
        raise ConfigError(
            "--engine vllm needs vLLM, which is not installed in this environment",
            hint="install forgeml[vllm] on a CUDA machine; on CPU use the built-in engine "
            "(leave out --engine vllm)",
        )
    return [sys.executable, *VLLM_MODULE_COMMAND]


def resolve_vllm_target(registry: Registry, refs: Sequence[str]) -> VllmTarget:
    """The model and adapter assets named by `refs` as one vLLM server: one base model, its
    adapters as LoRA modules. Refs on different base models need separate servers."""
    if not refs:
        raise ConfigError("name a model (or adapter) to serve with --engine vllm")
    resolved: list[tuple[str, Asset, Asset]] = []
    for ref in refs:
        asset = registry.get_asset(ref)
        if asset.kind == "adapter":
            resolved.append((ref, asset, adapter_base(registry, asset)))
        elif asset.kind == "model":
            resolved.append((ref, asset, asset))
        else:
            raise DataError(
                f"{ref} is a {asset.kind}, not a model", "serve a model or adapter asset"
            )
    bases = {base.id: base for _, _, base in resolved}
    if len(bases) > 1:
        raise ConfigError(
            f"{', '.join(refs)} are built on {len(bases)} different base models; one vLLM "
            "server serves one base model and its LoRA adapters",
            hint="run one `forgeml serve --engine vllm` per base model, on its own port",
        )
    (base,) = bases.values()
    model_dir = Path(base.path)
    _check_servable(model_dir)
    model_name = next((ref for ref, asset, _ in resolved if asset.kind == "model"), base.id)
    served, adapters, ranks = [], {}, []
    for ref, asset, _ in resolved:
        if asset.kind == "adapter":
            adapters[ref] = Path(asset.path)
            ranks.append(_lora_rank(Path(asset.path)))
            served.append(VllmServed(ref, asset, (asset.id, base.id), ref))
        else:
            served.append(VllmServed(ref, asset, (asset.id,), model_name))
    max_rank = None
    if ranks:
        max_rank = next((r for r in VLLM_LORA_RANKS if r >= max(ranks)), None)
        if max_rank is None:
            raise ConfigError(
                f"LoRA rank {max(ranks)} is above the {VLLM_LORA_RANKS[-1]} vLLM supports",
                hint="merge the adapter (`forgeml adapters merge`) and serve the merged model",
            )
    return VllmTarget(model_dir, model_name, adapters, max_rank, tuple(served))


def _check_servable(model_dir: Path) -> None:
    """The model folder is one vLLM loads: HF config and tokenizer present, a known class."""
    config_path = model_dir / "config.json"
    if not config_path.is_file() or not (model_dir / "tokenizer.json").is_file():
        raise DataError(
            f"{model_dir} is not an HF model folder with its tokenizer (config.json, "
            "tokenizer.json)",
            "register the model through training or `forgeml import hf`",
        )
    archs = set(json.loads(config_path.read_text()).get("architectures") or [])
    if archs & NOT_IN_VLLM:
        raise ConfigError(
            f"vLLM cannot run this model ({', '.join(sorted(archs))}: a MoE variant without "
            "a transformers/vLLM implementation)",
            hint="serve it with the built-in engine, or train the MoE with softmax gating and "
            "no shared expert (Mixtral's layout)",
        )


def _lora_rank(adapter_dir: Path) -> int:
    path = adapter_dir / "adapter_config.json"
    try:
        return int(json.loads(path.read_text())["r"])
    except (OSError, ValueError, KeyError, TypeError):
        raise DataError(
            f"{path}: not a PEFT LoRA adapter config with a rank `r`",
            "register adapters through `forgeml train sft` (PEFT layout)",
        ) from None


def vllm_server_args(target: VllmTarget, options: VllmOptions, port: int) -> list[str]:
    """vLLM OpenAI-server arguments for one replica on 127.0.0.1:`port`. The chat template
    comes from the tokenizer's config in the model folder; `--generation-config` points at the
    folder so its eos ids (`<|end|>` and the eos token) stop generation."""
    args = [
        "--model", str(target.model_dir),
        "--served-model-name", target.model_name,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--dtype", options.dtype,
        "--gpu-memory-utilization", str(options.gpu_memory_utilization),
        "--tensor-parallel-size", str(options.tensor_parallel_size),
        "--generation-config", str(target.model_dir),
    ]  # fmt: skip
    if options.max_model_len is not None:
        args += ["--max-model-len", str(options.max_model_len)]
    if target.adapters:
        args += ["--enable-lora", "--max-lora-rank", str(target.max_lora_rank)]
        args += ["--max-loras", str(len(target.adapters)), "--lora-modules"]
        args += [f"{name}={path}" for name, path in target.adapters.items()]
    return args + list(options.extra_args)


def replica_devices(options: VllmOptions) -> list[str | None]:
    """CUDA_VISIBLE_DEVICES of each replica: `tensor_parallel_size` GPUs each, taken in order
    from the visible ones; None (inherit) when no GPU is visible here."""
    import torch

    visible_env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible_env is not None:
        visible = [d.strip() for d in visible_env.split(",") if d.strip()]
    else:
        visible = [str(i) for i in range(torch.cuda.device_count())]
    per, n = options.tensor_parallel_size, options.replicas
    if not visible:
        return [None] * n
    if len(visible) < per * n:
        raise ConfigError(
            f"{n} replica(s) x {per} GPU(s) each need {per * n} GPUs; {len(visible)} visible",
            hint="lower --replicas or --tensor-parallel-size, or set CUDA_VISIBLE_DEVICES",
        )
    return [",".join(visible[i * per : (i + 1) * per]) for i in range(n)]


def free_loopback_port() -> int:
    """A port free on 127.0.0.1 now (the OS's pick; the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ReplicaProcess:
    """One running server replica: its process (leader of its own process group), port, log."""

    index: int
    port: int
    process: subprocess.Popen
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` by which a replica gets SIGTERM when the gateway dies, even by SIGKILL
    (which runs no cleanup): Linux's parent-death signal, which survives the exec of the
    server. None elsewhere. libc's prctl is looked up here, before the fork, so the child only
    calls it."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    gateway, sigterm = os.getpid(), int(signal.SIGTERM)

    def set_parent_death_signal() -> None:
        prctl(PR_SET_PDEATHSIG, sigterm)
        if os.getppid() != gateway:  # the gateway died before prctl took effect
            os.kill(os.getpid(), sigterm)

    return set_parent_death_signal


def launch_replicas(
    target: VllmTarget,
    options: VllmOptions,
    *,
    log_dir: str | Path,
    api_key: str,
    command: Sequence[str] | None = None,
) -> list[ReplicaProcess]:
    """Start `options.replicas` servers, each in its own process group, on loopback ports;
    they accept only `api_key` (passed in the environment as VLLM_API_KEY, never in argv).
    On Linux each gets SIGTERM when the calling thread ends, so a gateway that is killed
    outright leaves no replica holding its GPUs: call this from the thread that outlives them
    (the main thread). Returns at once: `wait_until_ready` waits for them."""
    cmd = vllm_command(command)
    preexec = _die_with_parent()
    devices = replica_devices(options)
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    replicas: list[ReplicaProcess] = []
    try:
        for i, device in enumerate(devices):
            port = free_loopback_port()
            # vLLM logs each request's prompt at INFO: the gateway decides what is logged
            # (--log-bodies, in the audit log), so replica logs keep warnings and errors only.
            env = {"VLLM_LOGGING_LEVEL": "WARNING", **os.environ, "VLLM_API_KEY": api_key}
            if device is not None:
                env["CUDA_VISIBLE_DEVICES"] = device
            log_path = log_dir / f"replica-{i}.log"
            with log_path.open("ab") as log:  # the child keeps its own copy of the descriptor
                process = subprocess.Popen(
                    [*cmd, *vllm_server_args(target, options, port)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                    preexec_fn=preexec,
                )
            replicas.append(ReplicaProcess(i, port, process, log_path))
    except OSError as exc:
        stop_replicas(replicas)
        raise ConfigError(
            f"cannot start the vLLM server ({shlex.join(cmd)}): {exc.strerror or exc}",
            hint=f"check ${VLLM_SERVER_ENV} or the vLLM installation",
        ) from None
    return replicas


def wait_until_ready(replicas: list[ReplicaProcess], timeout: float = HEALTH_TIMEOUT_S) -> None:
    """Wait until every replica answers GET /health with 200; a clear error (with the end of
    its log) when one exits first or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    pending = list(replicas)
    with httpx.Client(timeout=2.0) as client:
        while pending:
            for replica in list(pending):
                code = replica.process.poll()
                if code is not None:
                    raise ConfigError(
                        f"vLLM replica {replica.index} exited (code {code}) before it was ready; "
                        f"the end of {replica.log_path}:\n{replica.log_tail()}",
                        hint="read the replica's log; --gpu-memory-utilization, "
                        "--max-model-len or --dtype often fix a failed start",
                    )
                try:
                    if client.get(f"{replica.url}/health").status_code == 200:
                        pending.remove(replica)
                except httpx.HTTPError:
                    pass
            if pending and time.monotonic() > deadline:
                raise ConfigError(
                    f"vLLM replica(s) {', '.join(str(r.index) for r in pending)} not ready after "
                    f"{timeout:.0f} s; the end of {pending[0].log_path}:\n{pending[0].log_tail()}",
                    hint="large models load slowly: raise the timeout, or read the log",
                )
            if pending:
                time.sleep(0.25)


def stop_replicas(replicas: list[ReplicaProcess], grace: float = STOP_GRACE_S) -> None:
    """SIGTERM each replica's process group (vLLM's workers with it), then SIGKILL what is
    still running after `grace` seconds."""
    for replica in replicas:
        _signal_group(replica.process, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for replica in replicas:
        try:
            replica.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(replica.process, signal.SIGKILL)
            replica.process.wait()


def _signal_group(process: subprocess.Popen, sig: signal.Signals) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


def replica_pool(
    replicas: list[ReplicaProcess], api_key: str, timeout: float = 120.0
) -> ReplicaPool:
    """The gateway's pool over running replicas (their OpenAI base URLs, their key)."""
    return ReplicaPool([Upstream(f"{r.url}/v1", api_key, timeout) for r in replicas])


def vllm_served_models(
    registry: Registry, target: VllmTarget, pool: ReplicaPool
) -> dict[str, ServedModel]:
    """The gateway's models for `target`: each ref under its ref, id and name, labelled from
    the registry (an adapter's label includes its base's), generated by `pool`."""
    try:
        available = set(pool.list_models())
    except UpstreamError as exc:
        raise ConfigError(f"the vLLM replicas do not list their models: {exc.message}") from None
    missing = sorted({s.upstream_name for s in target.served} - available)
    if missing:
        raise ConfigError(
            f"the vLLM server does not serve {', '.join(missing)} (it lists "
            f"{', '.join(sorted(available)) or 'nothing'})",
            hint="read the replica logs under the workspace's runs/vllm/",
        )
    models = {}
    for s in target.served:
        label = CurrentLabel(registry, list(s.labelled))
        models[s.ref] = ServedModel(
            name=s.ref,
            asset_id=s.asset.id,
            names={s.ref, s.asset.id, s.asset.name},
            engine=None,
            tokenizer=None,
            special_ids={},
            label=label.latest,
            current_label=label,
            upstream=pool,
            upstream_model=s.upstream_name,
        )
    return models


@contextmanager
def _sigterm_as_exit():
    """SIGTERM raises SystemExit (exit status 143) in the main thread, so it unwinds."""

    def exit_now(_signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signal.SIGTERM)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, exit_now)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def serve_vllm(
    workspace_root: str | Path,
    refs: list[str],
    *,
    options: VllmOptions | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    policy_path: str | Path | None = None,
    no_auth: bool = False,
    log_bodies: bool = False,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
    upstream_timeout: float = 120.0,
    alias: str | None = None,
    limits: RequestLimits | None = None,
    command: Sequence[str] | None = None,
) -> None:
    """Run `refs` on vLLM replicas behind the governed gateway until interrupted; the replicas
    are stopped when the gateway stops. Replica logs go to the workspace's runs/vllm/<time>/."""
    from forgeml.core.workspace import open_workspace
    from forgeml.governance.audit import AuditLog, audit_log_path
    from forgeml.governance.keys import KeyStore
    from forgeml.governance.policy import load_policy
    from forgeml.serve.api import ServerOptions, run_server
    from forgeml.serve.loading import served_under_alias

    options = options or VllmOptions()
    ws = open_workspace(workspace_root)
    policy = load_policy(policy_path)
    vllm_command(command)  # a missing vLLM is reported before anything starts
    registry = Registry(ws.registry_url, ws.artifacts_dir)
    replicas: list[ReplicaProcess] = []
    audit: AuditLog | None = None
    # uvicorn re-raises the SIGTERM that stopped it once it has shut down: here it unwinds
    # through `finally` (stopping the replicas) instead of ending the process where it is.
    with _sigterm_as_exit():
        try:
            target = resolve_vllm_target(registry, refs)
            api_key = secrets.token_urlsafe(32)
            log_dir = ws.run_dir("vllm", time.strftime("%Y%m%d-%H%M%S"))
            replicas = launch_replicas(
                target, options, log_dir=log_dir, api_key=api_key, command=command
            )
            wait_until_ready(replicas, options.health_timeout)
            pool = replica_pool(replicas, api_key, upstream_timeout)
            models = vllm_served_models(registry, target, pool)
            if alias is not None and alias not in models:
                models = served_under_alias(models, alias)
            audit = AuditLog(audit_log_path(ws.root))
            run_server(
                models,
                None if no_auth else KeyStore(registry.engine),
                audit,
                ServerOptions(host, port, policy, log_bodies, limits, ssl_certfile, ssl_keyfile),
                engine="vllm",
                replicas=[r.url for r in replicas],
            )
        finally:
            stop_replicas(replicas)
            if audit is not None:
                audit.append("server_stopped")
            registry.close()
