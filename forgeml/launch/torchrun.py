"""torchrun for forgeml's training loops: command lines (one node or many, elastic restarts)
and registered multi-process pre-training runs.

The CLI's `--nproc-per-node/--nnodes/--rdzv-endpoint` and the cluster launchers (Slurm,
Kubernetes) all build their torchrun invocation here, so the flags are spelt in one place.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from forgeml.core.config import Recipe, save_resolved
from forgeml.core.errors import ConfigError, ForgeError
from forgeml.core.io import atomic_write_text

# How long a node other than node 0 waits for node 0's join file by default: node 0 first
# prepares the data (ingest, tokenizer, packing), which can take long on a big corpus.
JOIN_TIMEOUT_S = 3600.0


def torchrun_env(nnodes: int) -> dict[str, str]:
    """Environment for the torchrun agent of a job on `nnodes` nodes.

    Several nodes: each rendezvous round's workers meet in a fresh store hosted by their rank
    0 rather than in the agents' long-lived c10d store. After an elastic restart the agents of
    nodes that restarted for a failure and of those that restarted for the membership change
    count rounds differently, and in the shared store could read the last round's stale keys.
    """
    return {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"} if nnodes > 1 else {}


def torchrun_argv(
    module_args: list[str],
    *,
    nproc_per_node: int,
    nnodes: int = 1,
    node_rank: int | None = None,
    rdzv_endpoint: str | None = None,
    rdzv_id: str = "forgeml",
    max_restarts: int = 0,
) -> list[str]:
    """The argv that runs `module_args` (e.g. `["-m", "forgeml.train.pretrain", ...]`) under torchrun.

    One node without an endpoint uses `--standalone` (a private c10d store on a free port);
    otherwise the c10d rendezvous at `rdzv_endpoint` (HOST:PORT) joins the nodes, and `rdzv_id`
    keeps two jobs on the same endpoint apart. `max_restarts` restarts the whole group after a
    failure (the loop then resumes from its last checkpoint).
    """
    if nproc_per_node < 1:
        raise ConfigError(f"--nproc-per-node must be at least 1 (got {nproc_per_node})")
    if nnodes < 1:
        raise ConfigError(f"--nnodes must be at least 1 (got {nnodes})")
    if max_restarts < 0:
        raise ConfigError(f"--max-restarts must be 0 or more (got {max_restarts})")
    if nnodes > 1 and not rdzv_endpoint:
        raise ConfigError(
            f"--nnodes {nnodes} needs --rdzv-endpoint HOST:PORT",
            hint="every node must name the same rendezvous endpoint, e.g. the first node's address",
        )
    if node_rank is not None and not 0 <= node_rank < nnodes:
        raise ConfigError(f"--node-rank must be in [0, {nnodes}) (got {node_rank})")
    if not module_args:
        raise ConfigError("torchrun needs a program to run (e.g. ['-m', 'forgeml.train.pretrain'])")
    argv = [sys.executable, "-m", "torch.distributed.run"]
    argv += [f"--nnodes={nnodes}", f"--nproc-per-node={nproc_per_node}"]
    if rdzv_endpoint:
        argv += ["--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}", f"--rdzv-id={rdzv_id}"]
    else:
        argv += ["--standalone"]
    if node_rank is not None:
        argv += [f"--node-rank={node_rank}"]
    argv += [f"--max-restarts={max_restarts}"]
    return [*argv, *module_args]


@dataclass(frozen=True)
class TorchrunLaunch:
    """Where and how many training processes torchrun starts (the CLI's launch flags)."""

    nproc_per_node: int
    nnodes: int = 1
    node_rank: int | None = None
    rdzv_endpoint: str | None = None
    rdzv_id: str = "forgeml"
    max_restarts: int = 0

    def __post_init__(self) -> None:
        self.argv(["-m", "forgeml"])  # bad flags are a ConfigError now, not in torchrun

    def argv(self, module_args: list[str]) -> list[str]:
        return torchrun_argv(module_args, **asdict(self))

    def env(self) -> dict[str, str]:
        """The environment the torchrun agent runs in: this process's, plus `torchrun_env`."""
        return {**os.environ, **torchrun_env(self.nnodes)}

    @property
    def coordinates(self) -> bool:
        """This node prepares the data, registers the run and tells the other nodes where to
        train (node 0, or the only node)."""
        return not self.node_rank


def join_file(runs_dir: Path, rdzv_id: str) -> Path:
    """Where the coordinating node writes the training command the other nodes join."""
    return Path(runs_dir) / "torchrun" / f"{rdzv_id}.json"


def _run(argv: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(argv, env=env, check=False)
    if done.returncode != 0:
        raise ForgeError(
            f"torchrun training exited with status {done.returncode}",
            hint="see the processes' messages above (`error:` lines name the cause)",
        )


def pretrain_under_torchrun(
    launch: TorchrunLaunch, runs_dir: Path
) -> Callable[..., dict[str, Any]]:
    """A stand-in for `forgeml.train.pretrain.pretrain` that trains under torchrun: the recipe
    is written into the run folder, `launch.nproc_per_node` processes per node run
    `python -m forgeml.train.pretrain` into that folder (rank 0 writes the model, metrics and
    summary there), and the caller, a registered pipeline stage, registers the result once
    they have exited, exactly as for one process. With several nodes, the other nodes' CLIs
    wait for the join file this one writes (`join_pretrain`). With `max_restarts`, restarted
    processes continue the last checkpoint (`--auto-resume`)."""

    def pretrain(
        recipe: Recipe, *, train_shards: Path, out_dir: Path, eval_shards: Path | None = None,
        tokenizer_dir: Path | None = None, resume: bool = False, progress: bool = True,
    ) -> dict[str, Any]:  # fmt: skip
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        recipe_path = out_dir / "torchrun_recipe.yaml"
        save_resolved(recipe, recipe_path)
        args = ["-m", "forgeml.train.pretrain", "--recipe", str(recipe_path),
                "--train-shards", str(train_shards), "--out", str(out_dir)]  # fmt: skip
        if eval_shards is not None:
            args += ["--eval-shards", str(eval_shards)]
        if tokenizer_dir is not None:
            args += ["--tokenizer-dir", str(tokenizer_dir)]
        if resume:
            args += ["--resume"]
        elif launch.max_restarts:
            args += ["--auto-resume"]
        if not progress:
            args += ["--quiet"]
        join = join_file(runs_dir, launch.rdzv_id)
        if launch.nnodes > 1:
            atomic_write_text(join, json.dumps({"module_args": args}, indent=1))
        try:
            _run(launch.argv(args), launch.env())
        finally:
            join.unlink(missing_ok=True)
        return json.loads((out_dir / "summary.json").read_text())

    return pretrain


def join_pretrain(
    launch: TorchrunLaunch, runs_dir: Path, *, timeout_s: float = JOIN_TIMEOUT_S
) -> Path:
    """On a node other than node 0: wait up to `timeout_s` for node 0's join file (written once
    node 0 has prepared the data), then run this node's share of the processes of the same
    training command; return the run folder they trained in. The workspace must be on
    storage every node shares (as the cluster launchers set up)."""
    if timeout_s <= 0:
        raise ConfigError(f"--join-timeout must be more than 0 seconds (got {timeout_s:g})")
    join = join_file(runs_dir, launch.rdzv_id)
    deadline = time.monotonic() + timeout_s
    while not join.is_file():
        if time.monotonic() > deadline:
            raise ForgeError(
                f"node {launch.node_rank}: node 0 did not start run {launch.rdzv_id!r} within "
                f"{timeout_s:g} s: no rendezvous file {join}",
                hint="start node 0 with the same --rdzv-id on the same shared workspace; if it "
                "is still preparing the data (a large corpus), raise --join-timeout",
            )
        time.sleep(min(0.5, timeout_s / 10))
    args = json.loads(join.read_text())["module_args"]
    _run(launch.argv(args), launch.env())
    return Path(args[args.index("--out") + 1])
