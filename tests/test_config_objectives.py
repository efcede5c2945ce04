"""Every post-training objective reads its own loop (`dpo.train`, `rl.train`, ...) whatever the
entry point: `forgeml train dpo` and the pipeline's DPO stage train the same run; `train.*` is
pre-training's; recipes written for the old layout fail with one line naming the new key."""

from __future__ import annotations

import pytest
import torch
import yaml
from preference_fixtures import make_base_model, write_pairs

from forgeml.core.config import (
    MOVED_KEYS,
    DPOConfig,
    RewardModelConfig,
    RLConfig,
    load_recipe,
    validate_recipe,
)
from forgeml.core.errors import ConfigError


@pytest.mark.parametrize("old", sorted(MOVED_KEYS))
def test_an_old_key_fails_with_one_line_naming_the_new_one(old: str) -> None:
    section, objective, loop = old.split(".")
    stage = {"data": "p.jsonl"} if objective == "dpo" else {"prompts": "p.jsonl"}
    raw = {section: {objective: {**stage, loop: {}}}}
    with pytest.raises(ConfigError) as err:
        validate_recipe(raw, "r.yaml")
    assert str(err.value) == f"r.yaml: {old} moved: write {objective}.{loop}"
    # also as an override, and when other keys are wrong too
    with pytest.raises(ConfigError, match=f"^overrides: {old} moved: write {objective}.{loop}$"):
        load_recipe(None, [f"{old}.max_steps=3", "model.dim=0"])


def test_a_post_training_command_refuses_pre_training_keys(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"^override train\.max_steps is pre-training's: "
                       r"write dpo\.train\.max_steps$"):  # fmt: skip
        load_recipe(None, ["train.max_steps=2"], objective="dpo")
    with pytest.raises(ConfigError, match=r"write rl\.optim\.lr"):
        load_recipe(None, ["rl.kl_coef=0", "optim.lr=1e-3"], objective="rl")
    # A recipe that pre-trains nothing but sets `train`: written for the old layout.
    old = tmp_path / "rm.yaml"
    old.write_text(yaml.safe_dump({"train": {"max_steps": 5}, "reward_model": {}}))
    with pytest.raises(ConfigError, match="pre-trains nothing: write reward_model.train$"):
        load_recipe(old, objective="reward_model")
    assert load_recipe(old).train.max_steps == 5  # the same file is a valid pre-training recipe
    # A whole-pipeline recipe's `train` is pre-training's: it stays, the objective has its own.
    full = tmp_path / "full.yaml"
    full.write_text(yaml.safe_dump({"data": {"sources": ["docs"]}, "train": {"max_steps": 7}}))
    recipe = load_recipe(full, ["dpo.train.max_steps=3"], objective="dpo")
    assert (recipe.train.max_steps, recipe.dpo.train.max_steps) == (7, 3)


def test_loop_defaults_are_the_pipeline_stages_old_defaults() -> None:
    """The pipeline trained DPO and RL with these when a recipe set no loop of its own."""
    dpo, rl, rm = DPOConfig(), RLConfig(), RewardModelConfig()
    assert (dpo.optim.lr, dpo.optim.warmup_steps, dpo.optim.weight_decay) == (5e-5, 5, 0.0)
    assert (dpo.train.max_steps, dpo.train.micro_batch_size, dpo.train.eval_every) == (40, 4, 0)
    assert (rl.optim.lr, rl.optim.schedule, rl.optim.weight_decay) == (1e-5, "constant", 0.0)
    assert (rl.train.max_steps, rl.train.checkpoint_every, rl.train.log_every) == (20, 10, 1)
    assert rm.train == dpo.train and rm.optim == dpo.optim


def test_train_dpo_and_the_pipeline_dpo_stage_read_the_same_dpo_train(workspace, tmp_path):
    """`forgeml train dpo R.yaml` trains with R's `dpo.train`, not its (pre-training) `train`;
    the pipeline's DPO stage on the same recipe, model and pairs is then the same run (a
    cache hit with the same model asset)."""
    from typer.testing import CliRunner

    from forgeml.cli import app
    from forgeml.pipeline.posttrain_stage import posttrain_stages
    from forgeml.registry import open_registry

    model_dir = make_base_model(tmp_path / "m")
    pairs = write_pairs(tmp_path / "pairs.jsonl", 16)
    base = open_registry(workspace).add_asset(
        "model", "tiny", model_dir, metadata={"arch": "dense"}
    )
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(yaml.safe_dump({
        "train": {"max_steps": 300, "micro_batch_size": 16},  # pre-training's: not read here
        "optim": {"lr": 1.0},
        "dpo": {"max_length": 64,
                "train": {"max_steps": 3, "micro_batch_size": 4, "log_every": 1,
                          "dtype": "fp32", "checkpoint_every": 0},
                "optim": {"lr": 5e-3, "warmup_steps": 1}},
        "posttrain": {"dpo": {"data": str(pairs)}},
    }))  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny kernels (see test_dpo._one_thread)
    try:
        res = CliRunner().invoke(app, [
            "-w", str(workspace.root), "-q", "train", "dpo", str(recipe_file),
            "--base", base.id, "--data", str(pairs),
        ])  # fmt: skip
        assert res.exit_code == 0, res.output
        stages, _ = posttrain_stages(
            workspace, load_recipe(recipe_file), base.id, None, progress=False
        )
    finally:
        torch.set_num_threads(threads)
    trained = open_registry(workspace).get_asset("recipe-sigmoid")
    assert trained.id in res.output and trained.metadata["steps"] == 3
    (dpo,) = stages
    assert dpo.stage == "dpo" and dpo.cached and dpo.output == trained.id
    # The old way of writing it is refused on the command line.
    old = ["-w", str(workspace.root), "-q", "train", "dpo", str(recipe_file), "train.max_steps=3",
           "--base", base.id, "--data", str(pairs)]  # fmt: skip
    res = CliRunner().invoke(app, old)
    assert isinstance(res.exception, ConfigError)  # the CLI prints it as one line
    assert (
        str(res.exception)
        == "override train.max_steps is pre-training's: write dpo.train.max_steps"
    )
