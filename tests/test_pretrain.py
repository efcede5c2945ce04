"""The pre-training loop end to end on a tiny model: loss goes down, outputs are in place,
parameters change, and user mistakes (bad resume, too little data) are clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train_pieces import TINY, learnable_tokens, write_token_shards

from forgeml.core.config import OptimConfig, Recipe, TrainConfig
from forgeml.core.errors import ConfigError, DataError, NotFoundError
from forgeml.models.dense import Transformer
from forgeml.models.hf_io import load_model
from forgeml.train.metrics import read_metrics
from forgeml.train.pretrain import main, pretrain


def tiny_recipe(**train: object) -> Recipe:
    settings = dict(
        max_steps=30, micro_batch_size=4, grad_accum_steps=2, seq_len=32, dtype="fp32",
        device="cpu", eval_every=10, eval_batches=4, checkpoint_every=10, log_every=5, seed=11,
    )  # fmt: skip
    settings.update(train)
    return Recipe(
        model=TINY.model_copy(update={"vocab_size": None}),
        optim=OptimConfig(lr=3e-3, warmup_steps=3, schedule="cosine"),
        train=TrainConfig(**settings),
    )


def make_data(root: Path, n_train: int = 20_000) -> tuple[Path, Path]:
    train = write_token_shards(root / "train", learnable_tokens(n_train, seed=0), shard_tokens=7000)
    held = write_token_shards(root / "eval", learnable_tokens(3000, seed=1))
    return train, held


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "model" / "model.safetensors")


def test_pretrain_learns_and_writes_its_outputs(tmp_path):
    train, held = make_data(tmp_path)
    out = tmp_path / "run"
    summary = pretrain(
        tiny_recipe(), train_shards=train, out_dir=out, eval_shards=held, progress=False
    )

    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records] == [5, 10, 15, 20, 25, 30]
    assert records[-1]["loss"] < records[0]["loss"] - 0.5
    assert records[-1]["tokens"] == 30 * 8 * 32 and records[-1]["tok_per_s"] > 0
    evals = [r["eval_loss"] for r in records if r["eval_loss"] is not None]
    assert len(evals) == 3 and evals[-1] < evals[0]
    assert summary["steps"] == 30 and summary["tokens"] == 30 * 8 * 32
    assert summary["final_train_loss"] == records[-1]["loss"]
    assert summary["final_eval_loss"] == evals[-1]
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert checkpoints == ["step_00000020", "step_00000030"]
    meta = json.loads((out / "checkpoints" / "step_00000030" / "meta.json").read_text())
    assert meta["config_hash"] == summary["config_hash"] and meta["data"]["consumed"] == 240
    assert (out / "recipe.yaml").is_file() and (out / "summary.json").is_file()

    # The exported weights are the trained ones, and they differ from the initial ones.
    torch.manual_seed(11)
    initial = Transformer(TINY)
    trained = load_model(out / "model")
    assert trained.cfg.vocab_size == 256
    for (name, before), after in zip(
        initial.state_dict().items(), trained.state_dict().values(), strict=True
    ):
        assert not torch.equal(before, after), f"{name} did not change"


def test_resume_errors_are_clear(tmp_path):
    train, _ = make_data(tmp_path)
    out = tmp_path / "run"
    with pytest.raises(NotFoundError, match="no checkpoint"):
        pretrain(
            tiny_recipe(max_steps=4), train_shards=train, out_dir=out, resume=True, progress=False
        )
    pretrain(
        tiny_recipe(max_steps=4, checkpoint_every=2),
        train_shards=train,
        out_dir=out,
        progress=False,
    )
    changed = tiny_recipe(max_steps=4).model_copy(update={"optim": OptimConfig(lr=1e-3)})
    with pytest.raises(ConfigError, match=r"optim\.lr: 0\.003 -> 0\.001"):
        pretrain(changed, train_shards=train, out_dir=out, resume=True, progress=False)
    # Settings that do not change the weights may differ; a finished run resumes to itself.
    before = weights(out)
    summary = pretrain(
        tiny_recipe(max_steps=4, log_every=1, checkpoint_every=0),
        train_shards=train, out_dir=out, resume=True, progress=False,
    )  # fmt: skip
    assert summary["steps"] == 4
    after = weights(out)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_bad_inputs_are_clear_errors(tmp_path):
    small = write_token_shards(tmp_path / "small", learnable_tokens(30), doc_len=10)
    with pytest.raises(DataError, match="fewer than one window"):
        pretrain(tiny_recipe(), train_shards=small, out_dir=tmp_path / "a", progress=False)
    train, _ = make_data(tmp_path)
    with pytest.raises(ConfigError, match="max_seq_len"):
        pretrain(
            tiny_recipe(seq_len=128), train_shards=train, out_dir=tmp_path / "b", progress=False
        )
    with pytest.raises(NotFoundError):
        pretrain(
            tiny_recipe(), train_shards=tmp_path / "nope", out_dir=tmp_path / "c", progress=False
        )


def test_bf16_autocast_runs_and_learns(tmp_path):
    train, _ = make_data(tmp_path)
    summary = pretrain(
        tiny_recipe(max_steps=12, dtype="bf16", log_every=1),
        train_shards=train, out_dir=tmp_path / "run", progress=False,
    )  # fmt: skip
    losses = [r["loss"] for r in read_metrics(summary["metrics_path"])]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]


def test_command_line_reports_user_errors_in_one_line(tmp_path, capsys):
    train, _ = make_data(tmp_path, n_train=2000)
    args = ["--train-shards", str(train), "--out", str(tmp_path / "run"), "--quiet"]
    assert main([*args, "--resume", "train.device=cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --resume: no checkpoint in") and "\n" not in err
    assert main([*args, "train.max_stepz=3"]) == 2
    assert "did you mean 'train.max_steps'" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_pretrain_bf16_on_gpu(tmp_path):
    train, held = make_data(tmp_path)
    summary = pretrain(
        tiny_recipe(max_steps=20, dtype="bf16", device="cuda", log_every=1),
        train_shards=train, out_dir=tmp_path / "run", eval_shards=held, progress=False,
    )  # fmt: skip
    losses = [r["loss"] for r in read_metrics(summary["metrics_path"])]
    assert losses[-1] < losses[0] - 0.5 and summary["final_eval_loss"] < losses[0]
    assert all(torch.isfinite(t).all() for t in weights(tmp_path / "run").values())
