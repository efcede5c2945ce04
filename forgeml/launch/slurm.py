"""Slurm batch scripts for a multi-node training job (`forgeml launch slurm`).

The script asks for N nodes with one task each, takes the first host of the allocation as the
c10d rendezvous, and `srun`s the training command on every node. It is requeueable: Slurm
requeues a preempted job itself, and the script requeues the job when warned of its time limit
(SIGUSR1 before the end); every attempt resumes from the last checkpoint in the shared
workspace, so nothing but the steps since that checkpoint is lost.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

from forgeml.core.errors import ConfigError, ForgeError
from forgeml.launch.cluster import ClusterJob, node_command
from forgeml.launch.torchrun import torchrun_env

# Seconds between Slurm's time-limit warning and the kill: enough for a checkpoint in flight.
WARN_SECONDS = 300
_TIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")


def sbatch_script(
    job: ClusterJob,
    *,
    partition: str | None = None,
    time: str | None = None,
    account: str | None = None,
    setup: str | None = None,
) -> str:
    """The sbatch script (text) that runs `job`. `time` is Slurm's [D-]HH:MM:SS; `setup` is a
    shell line run first on every node (e.g. activating the environment forgeml is in)."""
    if time is not None and not _TIME.match(time):
        raise ConfigError(
            f"--time {time!r} is not a Slurm time", hint="write [D-]HH:MM:SS, e.g. 2-00:00:00"
        )
    q = shlex.quote
    headers = [
        f"--job-name={job.name}",
        f"--nodes={job.nodes}",
        "--ntasks-per-node=1",  # one torchrun agent per node; it starts the GPU processes
        f"--gpus-per-node={job.gpus_per_node}",
        "--exclusive",
        "--requeue",
        f"--signal=B:USR1@{WARN_SECONDS}",
        "--open-mode=append",  # a requeued attempt appends to the same log
        "--output=%x-%j.out",
    ]
    headers += [f"--partition={partition}"] if partition else []
    headers += [f"--time={time}"] if time else []
    headers += [f"--account={account}"] if account else []
    setup_line = f"{setup}\n" if setup else ""
    # torchrun's elastic restarts on several nodes: see forgeml.launch.torchrun.torchrun_env
    agent_env = "".join(
        f"# each rendezvous round meets in a fresh store (no stale keys after a restart)\n"
        f"export {k}={q(v)}\n"
        for k, v in torchrun_env(job.nodes).items()
    )
    command = node_command(
        job, rdzv_host="$HEAD_NODE", node_rank="$SLURM_NODEID", rdzv_id="$SLURM_JOB_ID"
    )
    return f"""#!/bin/bash
# forgeml training job {job.name}: {job.nodes} node(s) x {job.gpus_per_node} GPU(s).
# Written by `forgeml launch slurm`; submit with `sbatch`. Requeued after preemption or at the
# time limit, it resumes from the last checkpoint in the workspace.
{chr(10).join("#SBATCH " + h for h in headers)}

set -euo pipefail
{setup_line}export FORGEML_WORKSPACE={q(job.workspace)}
{agent_env}# srun gives a task one CPU unless told otherwise: the node's torchrun agent and its
# {job.gpus_per_node} training processes get all of the (exclusive) node's CPUs.
CPUS="${{SLURM_CPUS_ON_NODE:-{job.gpus_per_node}}}"
THREADS=$(( CPUS / {job.gpus_per_node} ))
export OMP_NUM_THREADS="${{OMP_NUM_THREADS:-$(( THREADS > 0 ? THREADS : 1 ))}}"

# Warned of the time limit (SIGUSR1): requeue; Slurm ends this attempt and starts the next,
# which resumes from the last checkpoint. Preemption (SIGTERM) is requeued by Slurm itself.
requeue() {{
    echo "forgeml: time limit near, requeueing job $SLURM_JOB_ID" >&2
    scontrol requeue "$SLURM_JOB_ID"
    kill -TERM "$step" 2>/dev/null || true
    wait "$step" || true
    exit 0
}}
trap requeue USR1
trap 'echo "forgeml: SIGTERM (preempted or cancelled)" >&2; wait "${{step:-}}" || true; exit 143' TERM

# The first host of the allocation hosts torchrun's c10d rendezvous store.
HEAD_NODE="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
export HEAD_NODE
echo "forgeml: job $SLURM_JOB_ID attempt ${{SLURM_RESTART_COUNT:-0}}, rendezvous $HEAD_NODE:{job.rdzv_port}" >&2

# srun in the background so the traps run while it works (bash defers them during a
# foreground command); one task per node, each a torchrun agent.
srun --nodes={job.nodes} --ntasks-per-node=1 --cpus-per-task="$CPUS" --kill-on-bad-exit=1 \\
    bash -c {q("exec " + command)} &
step=$!
wait "$step"
"""  # noqa: E501


def write_sbatch(path: Path, script: str) -> Path:
    """Write the script (executable) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(script)
    path.chmod(0o755)
    return path


def submit(path: Path) -> str:
    """`sbatch --parsable PATH`; the job id Slurm gives it."""
    try:
        done = subprocess.run(
            ["sbatch", "--parsable", str(path)], capture_output=True, text=True, check=False
        )
    except FileNotFoundError:
        raise ForgeError(
            "sbatch not found", hint="submit from a Slurm login node, or run the script there"
        ) from None
    if done.returncode != 0:
        raise ForgeError(f"sbatch failed: {done.stderr.strip() or done.stdout.strip()}")
    # --parsable prints "JOBID" or "JOBID;CLUSTER"
    return done.stdout.strip().splitlines()[-1].split(";")[0]
