"""Exact resume: a run stopped after any checkpoint and resumed ends with bitwise the same
weights as an uninterrupted run (CPU, fp32), both in-process and after a real SIGKILL."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from test_pretrain import make_data, tiny_recipe, weights

from forgeml.train.checkpoint import latest_checkpoint
from forgeml.train.metrics import read_metrics
from forgeml.train.pretrain import pretrain

ROOT = Path(__file__).resolve().parents[1]


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs"


def test_resume_from_a_middle_checkpoint_is_bitwise_exact(tmp_path):
    train, held = make_data(tmp_path)
    recipe = tiny_recipe(
        max_steps=8,
        checkpoint_every=3,
        keep_checkpoints=5,
        log_every=1,
        eval_every=2,
        eval_batches=2,
    )
    full = tmp_path / "full"
    pretrain(recipe, train_shards=train, out_dir=full, eval_shards=held, progress=False)

    # A run that died after step 5: only the step-3 checkpoint and the metrics up to step 5
    # survive; the resumed run drops the records after its checkpoint and writes them again.
    cut = tmp_path / "cut"
    shutil.copytree(full / "checkpoints" / "step_00000003", cut / "checkpoints" / "step_00000003")
    (cut / "metrics.jsonl").write_text(
        "".join(line + "\n" for line in (full / "metrics.jsonl").read_text().splitlines()[:5])
    )
    pretrain(recipe, train_shards=train, out_dir=cut, eval_shards=held, resume=True, progress=False)

    assert_bitwise_equal(weights(full), weights(cut))
    ref, got = read_metrics(full / "metrics.jsonl"), read_metrics(cut / "metrics.jsonl")
    assert [r["step"] for r in got] == list(range(1, 9))
    assert [(r["loss"], r["grad_norm"], r["eval_loss"]) for r in got] == [
        (r["loss"], r["grad_norm"], r["eval_loss"]) for r in ref
    ]


def _launch(recipe: Path, train: Path, out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "forgeml.train.pretrain", "--recipe", str(recipe)]
    cmd += ["--train-shards", str(train), "--out", str(out), "--quiet", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err


@pytest.mark.slow
def test_resume_after_sigkill_is_bitwise_exact(tmp_path):
    train, _ = make_data(tmp_path)
    recipe = tmp_path / "recipe.yaml"
    settings = tiny_recipe(max_steps=40, checkpoint_every=5, log_every=1, eval_every=0)
    recipe.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    full, killed = tmp_path / "full", tmp_path / "killed"
    reference = _launch(recipe, train, full)

    kill_at = random.randint(6, 22)  # any step after the first checkpoint (step 5)
    proc = _launch(recipe, train, killed)
    metrics, deadline = killed / "metrics.jsonl", time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        records = read_metrics(metrics) if metrics.exists() else []
        if records and records[-1]["step"] >= kill_at:
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _finish(reference)
    assert proc.returncode == -signal.SIGKILL, f"run ended before the kill at step {kill_at}"
    last_saved = latest_checkpoint(killed / "checkpoints")
    assert last_saved is not None and not (killed / "model").exists()

    _finish(_launch(recipe, train, killed, "--resume"))
    assert_bitwise_equal(weights(full), weights(killed))
    got = read_metrics(killed / "metrics.jsonl")
    assert [r["step"] for r in got] == list(range(1, 41))
    assert [r["loss"] for r in got] == [r["loss"] for r in read_metrics(full / "metrics.jsonl")]
