"""`forgeml launch slurm`: the sbatch script matches its golden file, and — run for real with
stub `sbatch`/`srun`/`scontrol` on PATH, one CPU "node" on loopback — it trains a tiny recipe
to a registered model, and after a time-limit warning it requeues itself and the next attempt
resumes from the last checkpoint."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from test_launch_k8s import check_golden

from forgeml.core.errors import ConfigError
from forgeml.launch.cluster import ClusterJob
from forgeml.launch.slurm import sbatch_script

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MAX_STEPS, CHECKPOINT_EVERY = 120, 5

# Stand-ins for Slurm's commands: `sbatch` starts the script at once, in the background, as a
# one-node allocation of this machine (its wrapper's pid in $STUB_LOG/job.pid); `srun` runs
# its command once as node 0, in its own process group, which it signals as a whole (as
# slurmd does a step's cgroup); `scontrol` lists hosts and records requeues. Each appends its
# arguments to $STUB_LOG/calls.
STUBS = {
    "sbatch": """#!/bin/bash
echo "sbatch $*" >> "$STUB_LOG/calls"
script="${@: -1}"
export SLURM_JOB_ID=4242 SLURM_JOB_NODELIST=localhost SLURM_NNODES=1
setsid bash -c 'bash "$0" > "$STUB_LOG/job.out" 2>&1; echo $? > "$STUB_LOG/job.rc"' "$script" \
    < /dev/null > /dev/null 2>&1 &
echo $! > "$STUB_LOG/job.pid"
echo "4242;stubcluster"
""",
    "srun": """#!/bin/bash
echo "srun $*" >> "$STUB_LOG/calls"
while [[ "$1" == --* ]]; do shift; done
export SLURM_NODEID=0 SLURM_PROCID=0 SLURM_LOCALID=0 SLURM_STEP_ID=0
setsid "$@" &
child=$!
trap 'kill -TERM -- -$child 2>/dev/null; wait $child; exit 143' TERM INT
wait $child
""",
    "scontrol": """#!/bin/bash
echo "scontrol $*" >> "$STUB_LOG/calls"
if [[ "$1 $2" == "show hostnames" ]]; then tr ',' '\\n' <<< "$3"; fi
""",
}


def golden_job() -> ClusterJob:
    return ClusterJob(
        name="scale-7b", recipe="/shared/recipes/mistral-7b.yaml", nodes=2, gpus_per_node=8,
        workspace="/shared/forge ws", overrides=["train.max_steps=1000"], data="corpus-v1",
        tokenizer="tok-32k",
    )  # fmt: skip


def test_sbatch_script_matches_golden_and_is_valid_bash(tmp_path: Path) -> None:
    script = sbatch_script(
        golden_job(), partition="gpu", time="2-00:00:00", account="ml-team",
        setup="source /opt/forgeml/bin/activate",
    )  # fmt: skip
    check_golden("slurm-2x8.sbatch", script)
    path = tmp_path / "job.sbatch"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    headers = [line for line in script.splitlines() if line.startswith("#SBATCH ")]
    for want in ("--nodes=2", "--gpus-per-node=8", "--ntasks-per-node=1", "--requeue",
                 "--partition=gpu", "--time=2-00:00:00", "--account=ml-team"):  # fmt: skip
        assert f"#SBATCH {want}" in headers
    # the workspace path with a space stays one word
    assert "export FORGEML_WORKSPACE='/shared/forge ws'" in script


def test_bad_time_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="not a Slurm time"):
        sbatch_script(golden_job(), time="two days")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tiny_recipe(root: Path, text_folder: Path, max_steps: int) -> Path:
    recipe = {
        "name": "slurm-tiny",
        "data": {"sources": [str(text_folder)], "heldout_fraction": 0.1},
        "tokenizer": {"vocab_size": 300},
        "model": {
            "dim": 32,
            "n_layers": 2,
            "n_heads": 2,
            "n_kv_heads": 1,
            "ffn_hidden": 64,
            "max_seq_len": 32,
        },  # fmt: skip
        "optim": {"lr": 3e-3, "warmup_steps": 2},
        "train": {
            "max_steps": max_steps,
            "micro_batch_size": 2,
            "seq_len": 32,
            "device": "cpu",
            "dtype": "fp32",
            "eval_every": 0,
            "checkpoint_every": 5,
            "log_every": 1,
        },  # fmt: skip
    }
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _env(tmp_path: Path) -> dict[str, str]:
    stubs, log = tmp_path / "stubs", tmp_path / "stub-log"
    stubs.mkdir()
    log.mkdir()
    for name, body in STUBS.items():
        (stubs / name).write_text(body)
        (stubs / name).chmod(0o755)
    return {
        **os.environ, "PATH": f"{stubs}:{BIN}:{os.environ['PATH']}", "STUB_LOG": str(log),
        "OMP_NUM_THREADS": "1",
    }  # fmt: skip


def _launch(tmp_path: Path, text_folder: Path, max_steps: int, *extra: str):
    from forgeml.core.workspace import init_workspace

    ws = init_workspace(tmp_path / "ws")
    recipe = _tiny_recipe(tmp_path, text_folder, max_steps)
    env = _env(tmp_path)
    script = tmp_path / "job.sbatch"
    cmd = [str(BIN / "forgeml"), "launch", "slurm", str(recipe), "--nodes", "1",
           "--gpus-per-node", "1", "--workspace", str(ws.root), "--rdzv-port", str(_free_port()),
           "--max-restarts", "0", "--out", str(script), *extra]  # fmt: skip
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return ws, script, env, done


def _models(ws) -> list:
    from forgeml.registry import open_registry

    return [a for a in open_registry(ws).list_assets() if a.kind == "model"]


def _steps(log: str) -> list[int]:
    return [int(m) for m in re.findall(r"step (\d+)/", log)]


@pytest.mark.slow
def test_submitted_job_requeues_at_its_time_limit_and_resumes(
    tmp_path: Path, text_folder: Path
) -> None:
    ws, script, env, done = _launch(tmp_path, text_folder, MAX_STEPS, "--submit")
    log = tmp_path / "stub-log"
    assert "submitted batch job 4242" in done.stdout
    calls = (log / "calls").read_text().splitlines()
    assert calls[0] == f"sbatch --parsable {script}"
    job = psutil.Process(int((log / "job.pid").read_text()))
    try:
        # Attempt 0 runs; once it has a checkpoint, Slurm warns it of its time limit.
        deadline = time.monotonic() + 240
        while not list((ws.root / "runs").glob("**/checkpoints/step_*/meta.json")):
            assert job.is_running(), (log / "job.out").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.1)
        (batch,) = job.children()  # the batch script's shell, which Slurm signals (B:USR1)
        batch.send_signal(signal.SIGUSR1)
        job.wait(timeout=60)
    finally:
        if job.is_running():
            os.killpg(job.pid, signal.SIGKILL)
    first = (log / "job.out").read_text()
    assert (log / "job.rc").read_text().strip() == "0", first[-3000:]
    calls = (log / "calls").read_text().splitlines()
    assert "scontrol show hostnames localhost" in calls and "scontrol requeue 4242" in calls
    assert any(c.startswith("srun --nodes=1 --ntasks-per-node=1") for c in calls)
    assert "requeueing job 4242" in first and _models(ws) == []  # stopped before the end
    saved = max(
        int(p.parent.name.split("_")[1])
        for p in (ws.root / "runs").glob("**/checkpoints/step_*/meta.json")
    )
    assert 0 < saved < MAX_STEPS

    # Attempt 1, as Slurm starts it after the requeue: it continues the checkpoint.
    second = subprocess.run(
        ["bash", str(script)], capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env={**env, "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "localhost",
             "SLURM_RESTART_COUNT": "1"},
    )  # fmt: skip
    assert second.returncode == 0, second.stderr[-3000:]
    assert "attempt 1" in second.stderr
    steps = _steps(second.stderr)
    assert steps[0] > saved and (steps[0] - 1) % CHECKPOINT_EVERY == 0, steps[:3]
    assert steps == list(range(steps[0], MAX_STEPS + 1))
    assert _steps(first)[0] == 1
    (model,) = _models(ws)
    assert model.metadata["steps"] == MAX_STEPS
