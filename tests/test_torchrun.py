"""torchrun command lines: the flags forgeml passes for one node, many nodes and restarts."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from forgeml.core.errors import ConfigError
from forgeml.launch.torchrun import torchrun_argv


def test_one_node_is_standalone() -> None:
    argv = torchrun_argv(["-m", "forgeml.train.pretrain", "r.yaml"], nproc_per_node=2)
    assert argv[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--standalone" in argv and "--nproc-per-node=2" in argv and "--nnodes=1" in argv
    assert not any(a.startswith("--rdzv-endpoint") for a in argv)
    assert argv[-3:] == ["-m", "forgeml.train.pretrain", "r.yaml"]


def test_many_nodes_use_c10d_rendezvous() -> None:
    argv = torchrun_argv(
        ["-m", "forgeml.train.pretrain"],
        nproc_per_node=4,
        nnodes=2,
        node_rank=1,
        rdzv_endpoint="10.0.0.1:29500",
        rdzv_id="job7",
        max_restarts=3,
    )
    for flag in (
        "--nnodes=2",
        "--nproc-per-node=4",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=10.0.0.1:29500",
        "--rdzv-id=job7",
        "--node-rank=1",
        "--max-restarts=3",
    ):
        assert flag in argv
    assert "--standalone" not in argv
    # torchrun's own flags come before the program, the program's after
    assert argv.index("--max-restarts=3") < argv.index("forgeml.train.pretrain")


def test_torchrun_parses_the_flags() -> None:
    from torch.distributed.run import get_args_parser

    argv = torchrun_argv(
        ["-m", "forgeml.train.pretrain", "r.yaml"],
        nproc_per_node=2,
        nnodes=2,
        rdzv_endpoint="127.0.0.1:29511",
        max_restarts=1,
    )
    args = get_args_parser().parse_args(argv[3:])
    assert (args.nnodes, args.nproc_per_node, args.max_restarts) == ("2", "2", 1)
    assert args.rdzv_endpoint == "127.0.0.1:29511" and args.module
    assert args.training_script == "forgeml.train.pretrain" and args.training_script_args == [
        "r.yaml"
    ]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"nproc_per_node": 0},
        {"nproc_per_node": 1, "nnodes": 2},
        {"nproc_per_node": 1, "nnodes": 2, "rdzv_endpoint": "h:1", "node_rank": 2},
        {"nproc_per_node": 1, "max_restarts": -1},
    ],
)
def test_bad_launch_options_are_config_errors(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        torchrun_argv(["-m", "forgeml.train.pretrain"], **kwargs)


@pytest.mark.slow
def test_cli_pretrain_under_torchrun_registers_the_model(tmp_path, text_folder):
    """`forgeml train pretrain R.yaml --nproc-per-node 2`: the CLI prepares the shards, 2
    processes train under torchrun (FSDP) into the run folder, and the model is registered
    with its lineage and metrics as a one-process run's is."""
    import yaml
    from typer.testing import CliRunner

    from forgeml.cli import app
    from forgeml.core.workspace import init_workspace
    from forgeml.registry import open_registry

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "tiny", "data": {"name": "notes", "sources": [str(text_folder)]},
        "tokenizer": {"vocab_size": 300},
        "model": {"dim": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "ffn_hidden": 64,
                  "max_seq_len": 64},
        "train": {"max_steps": 3, "micro_batch_size": 2, "seq_len": 32, "dtype": "fp32",
                  "eval_every": 0, "checkpoint_every": 0, "log_every": 1, "strategy": "fsdp"},
        "eval": {"max_batches": 2},
    }))  # fmt: skip
    ws = init_workspace(tmp_path / "ws")
    res = CliRunner().invoke(
        app, ["-q", "-w", str(ws.root), "train", "pretrain", str(recipe), "--nproc-per-node", "2"]
    )
    assert res.exit_code == 0, res.output
    reg = open_registry(ws)
    (run,) = reg.list_runs(stage="pretrain")
    assert run.status == "succeeded" and run.metrics["world_size"] == 2
    (model,) = run.outputs
    asset = reg.get_asset(model)
    assert asset.kind == "model" and (Path(asset.path) / "model.safetensors").is_file()
    shards = reg.list_runs(stage="pack")[0].outputs[0]
    tokenizer = reg.list_runs(stage="tokenizer")[0].outputs[0]
    assert {shards, tokenizer} <= set(run.inputs)
    assert {shards, tokenizer} <= {n["id"] for n in reg.lineage(model, "up").nodes}
    # rank 0 wrote the metrics of every step into the registered run's folder
    metrics = (ws.runs_dir / "pretrain" / run.id / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 3
    # Cached like any run: the same command again trains nothing.
    again = CliRunner().invoke(
        app, ["-q", "-w", str(ws.root), "train", "pretrain", str(recipe), "--nproc-per-node", "2"]
    )
    assert again.exit_code == 0 and "(cached)" in again.output
    assert len(reg.list_runs(stage="pretrain")) == 1


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_cli_pretrain_on_two_loopback_nodes(tmp_path, text_folder):
    """Two `forgeml train pretrain --nnodes 2` commands, one per "node" on loopback with one
    process each: node 0 prepares and registers, node 1 joins its run through the shared
    workspace; the registered run trained with 2 processes."""
    import subprocess

    import yaml

    from forgeml.core.workspace import init_workspace
    from forgeml.registry import open_registry

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "tiny", "data": {"name": "notes", "sources": [str(text_folder)]},
        "tokenizer": {"vocab_size": 300},
        "model": {"dim": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "ffn_hidden": 64,
                  "max_seq_len": 64},
        "train": {"max_steps": 2, "micro_batch_size": 2, "seq_len": 32, "dtype": "fp32",
                  "eval_every": 0, "checkpoint_every": 0, "log_every": 1},
    }))  # fmt: skip
    ws = init_workspace(tmp_path / "ws")
    endpoint = f"127.0.0.1:{_free_port()}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def node(rank: int) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "forgeml.cli", "-q", "-w", str(ws.root), "train", "pretrain",
               str(recipe), "--nproc-per-node", "1", "--nnodes", "2", "--node-rank", str(rank),
               "--rdzv-endpoint", endpoint, "--rdzv-id", "loopback-test"]  # fmt: skip
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)  # fmt: skip

    nodes = [node(1), node(0)]  # the joining node may start first: it waits
    try:
        outs = [p.communicate(timeout=400)[0] for p in nodes]
    finally:
        for p in nodes:
            p.kill()
    assert [p.returncode for p in nodes] == [0, 0], outs
    reg = open_registry(ws)
    (run,) = reg.list_runs(stage="pretrain")
    assert run.status == "succeeded" and run.metrics["world_size"] == 2
    assert "node 1: trained in" in outs[0] and str(run.id) in outs[0]
    assert not list((ws.runs_dir / "torchrun").glob("*.json"))  # the join file is gone


def test_multi_node_agents_meet_in_a_fresh_store_each_round() -> None:
    """Several nodes: the torchrun agent runs with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 (no
    stale rendezvous keys after an elastic restart); one node leaves the environment alone."""
    from forgeml.launch.torchrun import TorchrunLaunch, torchrun_env

    assert torchrun_env(1) == {}
    assert torchrun_env(2) == {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    two = TorchrunLaunch(nproc_per_node=1, nnodes=2, node_rank=1, rdzv_endpoint="h:1").env()
    assert two["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1" and two["PATH"] == os.environ["PATH"]


def test_joining_node_runs_node_0s_command_with_the_agent_env(tmp_path, monkeypatch) -> None:
    import json
    import subprocess

    from forgeml.launch import torchrun

    launch = torchrun.TorchrunLaunch(
        nproc_per_node=1, nnodes=2, node_rank=1, rdzv_endpoint="h:1", rdzv_id="job9"
    )
    join = torchrun.join_file(tmp_path, "job9")
    join.parent.mkdir(parents=True)
    join.write_text(json.dumps({"module_args": ["-m", "x", "--out", str(tmp_path / "run")]}))
    calls = []

    def fake_run(argv, env, check):
        calls.append((argv, env))
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr(torchrun.subprocess, "run", fake_run)
    assert torchrun.join_pretrain(launch, tmp_path, timeout_s=5) == tmp_path / "run"
    ((argv, env),) = calls
    assert "--node-rank=1" in argv and argv[-4:] == ["-m", "x", "--out", str(tmp_path / "run")]
    assert env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1"


def test_join_timeout_is_a_clear_error(tmp_path) -> None:
    """`forgeml train pretrain --nnodes 2 --node-rank 1 --join-timeout 0.5` with no node 0: it
    stops after the timeout, naming the rendezvous file it waited for and what to do."""
    import time

    import yaml
    from typer.testing import CliRunner

    from forgeml.cli import app
    from forgeml.core.errors import ForgeError
    from forgeml.core.workspace import init_workspace

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "tiny", "data": {"sources": [str(tmp_path)]}}))
    ws = init_workspace(tmp_path / "ws")
    start = time.monotonic()
    res = CliRunner().invoke(app, [
        "-q", "-w", str(ws.root), "train", "pretrain", str(recipe), "--nproc-per-node", "1",
        "--nnodes", "2", "--node-rank", "1", "--rdzv-endpoint", "127.0.0.1:1",
        "--rdzv-id", "late-job", "--join-timeout", "0.5",
    ])  # fmt: skip
    assert 0.5 <= time.monotonic() - start < 30
    assert isinstance(res.exception, ForgeError), res.output
    message = str(res.exception)
    assert "within 0.5 s" in message and "late-job" in message
    assert str(ws.runs_dir / "torchrun" / "late-job.json") in message
    assert "--join-timeout" in message and "--rdzv-id" in message
    with pytest.raises(ConfigError, match="--join-timeout"):
        from forgeml.launch.torchrun import TorchrunLaunch, join_pretrain

        join_pretrain(TorchrunLaunch(nproc_per_node=1), tmp_path, timeout_s=0)
