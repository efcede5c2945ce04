"""Sovereignty: forgeml works with no network at all, and switches telemetry off itself."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def test_offline_variables_are_set_on_import() -> None:
    code = (
        "import os, forgeml; "
        "print(os.environ['HF_HUB_OFFLINE'], os.environ['RAY_USAGE_STATS_ENABLED'], "
        "os.environ['HF_HUB_DISABLE_TELEMETRY'])"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "RAY_"))}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.split() == ["1", "0", "1"], out.stderr


def _can_unshare() -> bool:
    if not shutil.which("unshare"):
        return False
    for flags in (["-n"], ["-rn"]):
        if subprocess.run(["unshare", *flags, "true"], capture_output=True).returncode == 0:
            return True
    return False


@pytest.mark.slow
@pytest.mark.skipif(not _can_unshare(), reason="unshare -n not permitted here")
def test_reduced_pipeline_without_network(tmp_path: Path) -> None:
    """The reduced quickstart in a network namespace with no interfaces but loopback down."""
    flags = "-n" if subprocess.run(["unshare", "-n", "true"]).returncode == 0 else "-rn"
    corpus, ws = tmp_path / "acme", tmp_path / "ws"
    script = (
        "set -e\n"
        f"{sys.executable} examples/acme/generate.py --out {corpus} --seed 1 --scale 0.1\n"
        f"{sys.executable} -m forgeml.cli init {ws}\n"
        f"{sys.executable} -m forgeml.cli -q -w {ws} pipeline run recipes/quickstart.yaml "
        f"data.sources=[{corpus}] tokenizer.vocab_size=400 model.dim=64 model.n_heads=4 "
        "model.n_layers=1 model.ffn_hidden=128 train.max_steps=5 train.seq_len=64 "
        "train.micro_batch_size=4 eval.max_batches=2 generate.max_new_tokens=4 "
        "sft=null posttrain=null\n"
    )
    repo = Path(__file__).resolve().parents[1]
    res = subprocess.run(
        ["unshare", flags, "bash", "-c", script],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "held-out loss" in res.stdout
