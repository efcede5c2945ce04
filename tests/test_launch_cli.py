"""`forgeml launch`: the cluster preflight from the command line, and the mistakes a user can
make (a recipe that cannot fit, a typo in a recipe, a bad job name) stop before any job file
is written, with what to change."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from forgeml.cli import app
from forgeml.core.errors import ConfigError, ForgeError
from forgeml.launch.cluster import ClusterJob, job_name

ROOT = Path(__file__).resolve().parents[1]
SCALE = ROOT / "recipes" / "scale"


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def test_plan_prints_memory_fit_and_throughput() -> None:
    result = invoke("launch", "plan", str(SCALE / "mistral-7b.yaml"), "--nodes", "2")
    assert result.exit_code == 0, result.output
    assert "7.24B parameters (7.24B active), 16 GPUs of 80 GiB" in result.output
    assert "fits: ~" in result.output and "fsdp over 16 GPUs" in result.output
    assert "tokens/s (planner estimate)" in result.output


def test_a_recipe_that_cannot_fit_is_refused_unless_asked(tmp_path: Path) -> None:
    out = tmp_path / "moe.sbatch"
    args = ["launch", "slurm", str(SCALE / "mixtral-8x7b.yaml"), "--nodes", "1", "--out", str(out)]
    refused = invoke(*args)
    assert isinstance(refused.exception, ForgeError)
    message = str(refused.exception)
    assert "does not fit" in message and "--no-preflight" in message and "--nodes" in message
    assert not out.exists()
    forced = invoke(*args, "--no-preflight")
    assert forced.exit_code == 0, forced.output
    assert out.read_text().startswith("#!/bin/bash") and "--nodes=1" in out.read_text()


def test_a_recipe_typo_is_caught_before_writing(tmp_path: Path) -> None:
    out = tmp_path / "job.yaml"
    result = invoke(
        "launch", "k8s", str(SCALE / "mistral-125m.yaml"), "train.micro_batchsize=4",
        "--image", "forgeml:dev", "--out", str(out),
    )  # fmt: skip
    assert isinstance(result.exception, ConfigError)
    assert "unknown key 'train.micro_batchsize'" in str(result.exception)
    assert "micro_batch_size" in str(result.exception)
    assert not out.exists()


def test_slurm_writes_the_default_script_name_with_overrides(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = invoke(
        "launch", "slurm", str(SCALE / "mistral-125m.yaml"), "train.max_steps=10",
        "--gpus-per-node", "4", "--workspace", str(tmp_path / "ws"), "--time", "04:00:00",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    script = (tmp_path / "mistral-125m.sbatch").read_text()
    assert "#SBATCH --gpus-per-node=4" in script and "#SBATCH --time=04:00:00" in script
    assert f"{SCALE / 'mistral-125m.yaml'} train.max_steps=10 --nproc-per-node 4" in script
    assert f"export FORGEML_WORKSPACE={tmp_path / 'ws'}" in script


def test_job_names_and_shapes_are_checked() -> None:
    assert job_name("recipes/scale/Mistral_7B.v2.yaml") == "mistral-7b-v2"
    with pytest.raises(ConfigError, match="not a valid cluster name"):
        ClusterJob(name="Bad_Name", recipe="r.yaml", nodes=1, gpus_per_node=1, workspace="/w")
    with pytest.raises(ConfigError, match="at least 1"):
        ClusterJob(name="ok", recipe="r.yaml", nodes=0, gpus_per_node=8, workspace="/w")


def test_join_timeout_and_agent_env_reach_every_node(tmp_path: Path) -> None:
    """`--join-timeout` travels into each node's command, and a multi-node job's torchrun
    agents run with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1; a one-node job needs neither."""
    recipe = str(SCALE / "mistral-125m.yaml")
    two = tmp_path / "two.sbatch"
    result = invoke("launch", "slurm", recipe, "--nodes", "2", "--join-timeout", "7200",
                    "--out", str(two))  # fmt: skip
    assert result.exit_code == 0, result.output
    script = two.read_text()
    assert "--auto-resume --join-timeout 7200'" in script
    assert "\nexport TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1\n" in script
    one = tmp_path / "one.sbatch"
    assert invoke("launch", "slurm", recipe, "--out", str(one)).exit_code == 0
    assert "--join-timeout" not in one.read_text()
    assert "TORCH_DISABLE_SHARE_RDZV_TCP_STORE" not in one.read_text()
    manifests = tmp_path / "job.yaml"
    result = invoke("launch", "k8s", recipe, "--nodes", "3", "--image", "forgeml:dev",
                    "--join-timeout", "90", "--out", str(manifests))  # fmt: skip
    assert result.exit_code == 0, result.output
    text = manifests.read_text()
    assert text.count("--join-timeout 90") == 2  # the Master's and the Workers' template
    assert text.count("name: TORCH_DISABLE_SHARE_RDZV_TCP_STORE") == 2
    with pytest.raises(ConfigError, match="--join-timeout"):
        ClusterJob(name="j", recipe="r.yaml", nodes=2, gpus_per_node=1, workspace="/w",
                   join_timeout=0)  # fmt: skip
