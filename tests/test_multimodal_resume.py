"""Multimodal training survives kill -9: `forgeml train multimodal` is SIGKILLed once its joint
phase has written a checkpoint, `--resume` continues it, and the final weights equal those of
an uninterrupted run bitwise (every tensor). Also the 2-process DDP and FSDP2 runs (gloo,
torchrun) of a phase: same losses as one process on the same global batch, and a checkpoint
they write loads back into one process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from test_multimodal_stage import make_media, make_tokenizer, mm_recipe, phase

from forgeml.core.config import validate_recipe
from forgeml.core.workspace import init_workspace
from forgeml.models.hf_multimodal_io import load_multimodal
from forgeml.registry import open_registry

ROOT = Path(__file__).resolve().parents[1]
FORGEML = [sys.executable, "-m", "forgeml.cli"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
JOINT_STEPS, CHECKPOINT_EVERY = 24, 4


def cli(ws: Path, recipe: Path, *extra: str) -> subprocess.Popen:
    init_workspace(ws)
    return subprocess.Popen(
        [*FORGEML, "-w", str(ws), "train", "multimodal", str(recipe), *extra],
        cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, (out + err)[-4000:]
    return out


def joint_model(ws: Path) -> dict[str, torch.Tensor]:
    reg = open_registry(init_workspace(ws))
    runs = [r for r in reg.list_runs(stage="mm-joint") if r.status == "succeeded"]
    assert len(runs) == 1
    return load_multimodal(reg.get_asset(runs[0].outputs[0]).path).state_dict()


@pytest.mark.slow
def test_kill_9_then_resume_gives_the_same_weights_bitwise(tmp_path):
    data = make_media(tmp_path / "data", n=24)
    tok = make_tokenizer(tmp_path / "tok")
    raw = mm_recipe(data, tok, align=2)
    raw["multimodal"]["joint"] = phase(JOINT_STEPS, checkpoint_every=CHECKPOINT_EVERY)
    recipe = tmp_path / "mm.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    validate_recipe(raw)

    finish(cli(tmp_path / "straight", recipe))
    straight = joint_model(tmp_path / "straight")

    ws = tmp_path / "cut"
    proc = cli(ws, recipe)
    deadline = time.monotonic() + 300
    first = None
    while first is None and proc.poll() is None and time.monotonic() < deadline:
        found = sorted((ws / "runs" / "mm-joint").glob("*/checkpoints/step_*"))
        first = found[0] if found else None
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert first is not None and proc.returncode == -signal.SIGKILL, "finished before the kill"
    killed_at = int(first.name.removeprefix("step_"))
    assert killed_at < JOINT_STEPS
    run_dir = first.parents[1]
    assert not (run_dir / "summary.json").exists()

    out = finish(cli(ws, recipe, "--resume"))
    assert "mm-align: model" in out and "(cached)" in out.split("mm-joint")[0]
    logged = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").open()]
    assert logged[-1] == JOINT_STEPS
    resumed = joint_model(ws)
    assert resumed.keys() == straight.keys()
    for key, value in straight.items():
        assert torch.equal(resumed[key], value), key


AUDIO = {"n_mels": 16, "window_frames": 32, "dim": 32, "n_layers": 1, "n_heads": 2,
         "ffn_hidden": 64, "stack": 4}  # fmt: skip


def mixed_media(root: Path) -> Path:
    """Colour squares and short tones in one file: a micro-batch may hold only one kind."""
    import numpy as np
    import soundfile

    images = make_media(root, n=12)
    rows = images.read_text().splitlines()
    for i in range(12):
        t = np.arange(800) / 16000
        soundfile.write(root / f"{i}.wav", np.sin(2 * np.pi * (300 + 200 * (i % 2)) * t), 16000)
        rows.insert(2 * i, json.dumps({"audio": f"{i}.wav", "prompt": "pitch?",
                                       "answer": "high" if i % 2 else "low"}))  # fmt: skip
    (root / "mixed.jsonl").write_text("\n".join(rows) + "\n")
    return root / "mixed.jsonl"


def torchrun(args: list[str], timeout: int = 300) -> None:
    from forgeml.launch.torchrun import torchrun_argv

    cmd = torchrun_argv(["-m", "forgeml.train.multimodal_sft", *args], nproc_per_node=2)
    done = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-4000:]


def losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").open()]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one_and_their_checkpoint_resumes_alone(tmp_path, strategy):
    from forgeml.pipeline.multimodal_stage import media_dataset_stage, multimodal_init_stage
    from forgeml.train.multimodal_sft import MultimodalSFTConfig, train_multimodal_sft

    data, tok = mixed_media(tmp_path / "data"), make_tokenizer(tmp_path / "tok")
    raw = mm_recipe(data, tok, audio=AUDIO)
    joint = phase(4, checkpoint_every=2)
    joint["train"].update(micro_batch_size=2, strategy=strategy)
    raw["multimodal"]["joint"] = {**joint, "train_encoders": True}
    recipe = validate_recipe(raw)
    ws = init_workspace(tmp_path / "ws")
    reg = open_registry(ws)
    model_dir = Path(reg.get_asset(multimodal_init_stage(ws, recipe).output).path)
    train_file = Path(reg.get_asset(media_dataset_stage(ws, data).output).path) / "train.jsonl"
    (tmp_path / "mm.yaml").write_text(yaml.safe_dump(raw))

    two = tmp_path / "two"
    torchrun(["--model", str(model_dir), "--data", str(train_file), "--out", str(two),
              "--phase", "joint", "--recipe", str(tmp_path / "mm.yaml"), "--quiet"])  # fmt: skip
    section = recipe.multimodal
    cfg = MultimodalSFTConfig.for_phase("joint", section.joint, section.heldout_fraction)
    one_cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"micro_batch_size": 4})})
    one = tmp_path / "one"
    train_multimodal_sft(load_multimodal(model_dir), model_dir, train_file, one, one_cfg)
    assert losses(two) == pytest.approx(losses(one), rel=1e-5)
    two_weights = load_multimodal(two / "model").state_dict()
    for key, value in load_multimodal(one / "model").state_dict().items():
        torch.testing.assert_close(two_weights[key], value, rtol=1e-4, atol=1e-5, msg=key)

    # the 2-process checkpoint of step 2 continues in one process to the same end
    import shutil

    shutil.rmtree(two / "checkpoints" / "step_00000004")
    summary = train_multimodal_sft(
        load_multimodal(model_dir), model_dir, train_file, two, one_cfg, resume=True
    )
    assert summary["world_size"] == 1 and losses(two)[-2:] == pytest.approx(
        losses(one)[-2:], rel=1e-5
    )
    for key, value in load_multimodal(one / "model").state_dict().items():
        torch.testing.assert_close(
            load_multimodal(two / "model").state_dict()[key], value, rtol=1e-4, atol=1e-5, msg=key
        )
