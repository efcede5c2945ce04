"""Data-parallel training: 2 processes under torchrun (gloo, CPU) match 1 process on the
same global batch, and a 2-process checkpoint resumes in 1 process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from test_pretrain import make_data, tiny_recipe, weights

from forgeml.train.metrics import read_metrics
from forgeml.train.pretrain import pretrain

ROOT = Path(__file__).resolve().parents[1]


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-5, msg=name)


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_and_resumes_in_one(tmp_path):
    train, held = make_data(tmp_path)
    # Global batch 8 both ways: 2 processes x 2 micro-batches of 2 vs 1 x 4 micro-batches.
    two = tiny_recipe(max_steps=6, micro_batch_size=2, grad_accum_steps=2, checkpoint_every=3,
                      keep_checkpoints=5, log_every=1, eval_every=3)  # fmt: skip
    one = two.model_copy(update={"train": two.train.model_copy(update={"grad_accum_steps": 4})})
    recipe = tmp_path / "two.yaml"
    recipe.write_text(yaml.safe_dump(two.model_dump(mode="json")))
    ddp_out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "forgeml.train.pretrain", "--recipe", str(recipe), "--train-shards", str(train),
           "--eval-shards", str(held), "--out", str(ddp_out), "--quiet"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    assert json.loads((ddp_out / "summary.json").read_text())["world_size"] == 2
    single = tmp_path / "single"
    pretrain(one, train_shards=train, out_dir=single, eval_shards=held, progress=False)
    _close(weights(ddp_out), weights(single))
    ddp_log, one_log = (
        read_metrics(ddp_out / "metrics.jsonl"),
        read_metrics(single / "metrics.jsonl"),
    )
    assert len(ddp_log) == len(one_log) == 6  # only rank 0 writes
    for a, b in zip(ddp_log, one_log, strict=True):
        assert a["tokens"] == b["tokens"]
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert (a["eval_loss"] is None) == (b["eval_loss"] is None)

    # The 2-process checkpoint at step 3, resumed by 1 process with the 2-process recipe:
    # the global batch recorded in the checkpoint is kept (grad_accum 2 -> 4).
    resumed = tmp_path / "resumed"
    shutil.copytree(
        ddp_out / "checkpoints" / "step_00000003", resumed / "checkpoints" / "step_00000003"
    )
    summary = pretrain(two, train_shards=train, out_dir=resumed, eval_shards=held, resume=True,
                       progress=False)  # fmt: skip
    assert summary["world_size"] == 1 and summary["tokens"] == 6 * 8 * 32
    _close(weights(resumed), weights(single))
