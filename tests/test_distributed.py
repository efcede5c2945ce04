"""Multi-process agreement and restarts: processes started with different recipes or data refuse
to start naming the ranks that differ; `--auto-resume` starts a new run or continues the last
checkpoint (what torchrun's elastic restarts and requeued jobs rely on)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_pretrain import make_data, tiny_recipe

from forgeml.launch.torchrun import torchrun_argv
from forgeml.train.distributed import file_fingerprint, rank_share
from forgeml.train.metrics import read_metrics
from forgeml.train.pretrain import main

ROOT = Path(__file__).resolve().parents[1]

# Every process runs the pretrain command line; rank 1 adds its own extra arguments.
PER_RANK = """
import json, os, sys
from forgeml.train.pretrain import main
args, rank1_extra = json.loads(sys.argv[1])
sys.exit(main(args + (rank1_extra if os.environ["RANK"] == "1" else [])))
"""


def _two_processes(args: list[str], rank1_extra: list[str]) -> subprocess.CompletedProcess:
    import json

    cmd = torchrun_argv(
        ["--no-python", sys.executable, "-c", PER_RANK, json.dumps([args, rank1_extra])],
        nproc_per_node=2,
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("what", ["recipe", "data"])
def test_ranks_that_disagree_refuse_to_start(tmp_path, what):
    train, held = make_data(tmp_path, n_train=4000)
    other = make_data(tmp_path / "other", n_train=4100)[0]
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(max_steps=2).model_dump(mode="json")))
    args = ["--recipe", str(recipe), "--train-shards", str(train), "--eval-shards", str(held),
            "--out", str(tmp_path / "run"), "--quiet"]  # fmt: skip
    # The last --train-shards wins: rank 1 trains on other data, or with another lr.
    rank1 = ["optim.lr=1e-3"] if what == "recipe" else ["--train-shards", str(other)]
    done = _two_processes(args, rank1)
    assert done.returncode != 0
    assert f"the processes of this run disagree: {what} of rank(s) 1 differs from rank 0's" in (
        done.stderr
    )
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # refused before any step


def test_auto_resume_starts_then_continues(tmp_path, capsys):
    train, _ = make_data(tmp_path, n_train=4000)
    recipe = tmp_path / "r.yaml"
    run = tmp_path / "run"
    recipe.write_text(yaml.safe_dump(
        tiny_recipe(max_steps=2, checkpoint_every=1, log_every=1).model_dump(mode="json")
    ))  # fmt: skip
    args = ["--recipe", str(recipe), "--train-shards", str(train), "--out", str(run), "--quiet",
            "--auto-resume"]  # fmt: skip
    assert main(args) == 0  # nothing to resume: a new run
    # Make it look interrupted after step 1: --auto-resume continues there (only step 2 is
    # logged anew), and refuses a changed recipe as --resume does.
    shutil.rmtree(run / "checkpoints" / "step_00000002")
    (run / "metrics.jsonl").unlink()
    assert main([*args, "optim.lr=1e-2"]) == 2
    assert "cannot resume" in capsys.readouterr().err
    assert main(args) == 0
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [2]


def test_rank_share_pads_in_lockstep():
    items = list(range(5))
    assert rank_share(items, rank=1, world_size=2, lockstep=False) == [(1, True), (3, True)]
    assert rank_share(items, rank=1, world_size=2, lockstep=True) == [(1, True), (3, True),
                                                                     (0, False)]  # fmt: skip
    assert rank_share(items, rank=0, world_size=2, lockstep=True) == [(0, True), (2, True),
                                                                     (4, True)]  # fmt: skip


def test_file_fingerprint_follows_content(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.bin").write_bytes(b"\0" * 300_000)
    first = file_fingerprint(tmp_path / "a")
    (tmp_path / "a" / "x.bin").write_bytes(b"\0" * 299_999 + b"\1")  # last byte changed
    assert file_fingerprint(tmp_path / "a") != first
