"""Post-training under FSDP2 at 2 processes (gloo, CPU, fp32): SFT (full and LoRA) and DPO
follow the same losses and end at the same weights as 1 process on the same global batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from preference_fixtures import make_base_model, write_pairs
from safetensors.torch import load_file
from test_dpo import _recipe as dpo_recipe
from test_fsdp import run_loop_distributed
from test_sft import acme, config  # noqa: F401  (acme: the module fixture)

from forgeml.train.dpo import train_dpo
from forgeml.train.sft import sft


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def _close_files(a: Path, b: Path, atol: float) -> None:
    got, ref = load_file(a), load_file(b)
    assert got.keys() == ref.keys()
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-4, atol=atol, msg=name)


@pytest.fixture(scope="module")
def prefs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp_dpo")
    return make_base_model(root), write_pairs(root / "pairs.jsonl", 32)


@pytest.mark.slow
def test_dpo_fsdp_two_processes_match_one_process(prefs, tmp_path):
    """The reference log-probs are computed by the sharded reference (each process its share,
    in lockstep) and the policy trains sharded: 2 x 4 pairs == 1 x 2 micro-batches of 4."""
    model_dir, pairs = prefs
    two = dpo_recipe(max_steps=3, micro_batch_size=4, grad_accum_steps=1, log_every=1,
                     strategy="fsdp")  # fmt: skip
    one = dpo_recipe(max_steps=3, micro_batch_size=4, grad_accum_steps=2, log_every=1)
    kw = dict(base_model_dir=model_dir, pairs_path=pairs, progress=False)
    run_loop_distributed("forgeml.train.dpo:train_dpo", "recipe", two.model_dump(mode="json"),
                         out_dir=tmp_path / "fsdp", **kw)  # fmt: skip
    ref = train_dpo(one, out_dir=tmp_path / "one", **kw)
    got = _summary(tmp_path / "fsdp")
    assert got["world_size"] == 2 and got["strategy"] == "fsdp" and ref["world_size"] == 1
    for key in ("heldout_loss_before", "final_train_loss", "heldout_loss",
                "heldout_rewards_margins"):  # fmt: skip
        assert got[key] == pytest.approx(ref[key], rel=1e-4, abs=1e-6), key
    _close_files(tmp_path / "fsdp/model/model.safetensors",
                 tmp_path / "one/model/model.safetensors", atol=1e-5)  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("method", ["full", "lora"])
def test_sft_fsdp_two_processes_match_one_process(acme, tmp_path, method):  # noqa: F811
    """2 processes x 1 row == 1 process x 2 micro-batches of 1 (token-weighted loss); LoRA
    shards the frozen base weights with their block and saves only the gathered adapter."""
    cfg = config(max_steps=2, micro_batch_size=1, grad_accum_steps=1, strategy="fsdp")
    cfg = cfg.model_copy(update={"method": method,
                                 "optim": cfg.optim.model_copy(update={"eps": 1e-4})})  # fmt: skip
    kw = dict(base_model_dir=acme["base"], train_data=acme["train"], progress=False)
    run_loop_distributed("forgeml.train.sft:sft", "sft", cfg.model_dump(mode="json"),
                         out_dir=tmp_path / "fsdp", **kw)  # fmt: skip
    one_cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"grad_accum_steps": 2})})
    one = sft(one_cfg, out_dir=tmp_path / "one", **kw)
    got = _summary(tmp_path / "fsdp")
    assert got["world_size"] == 2 and got["strategy"] == "fsdp" and got["tokens"] == one["tokens"]
    assert got["final_train_loss"] == pytest.approx(one["final_train_loss"], rel=1e-5)
    name = "adapter/adapter_model.safetensors" if method == "lora" else "model/model.safetensors"
    _close_files(tmp_path / "fsdp" / name, tmp_path / "one" / name, atol=2e-6)


@pytest.mark.slow
def test_reward_model_fsdp_two_processes_match_one_process(prefs, tmp_path):
    """The reward model (backbone blocks sharded, then the root with the score head)."""
    from test_reward_model import _recipe as rm_recipe

    from forgeml.train.reward_model import train_reward_model

    model_dir, pairs = prefs
    two = rm_recipe(max_steps=3, micro_batch_size=4, grad_accum_steps=1, log_every=1,
                    strategy="fsdp")  # fmt: skip
    one = rm_recipe(max_steps=3, micro_batch_size=4, grad_accum_steps=2, log_every=1)
    kw = dict(base_model_dir=model_dir, pairs_path=pairs, progress=False)
    run_loop_distributed("forgeml.train.reward_model:train_reward_model", "recipe",
                         two.model_dump(mode="json"), out_dir=tmp_path / "fsdp", **kw)  # fmt: skip
    ref = train_reward_model(one, out_dir=tmp_path / "one", **kw)
    got = _summary(tmp_path / "fsdp")
    assert got["world_size"] == 2 and got["strategy"] == "fsdp"
    for key in ("heldout_margin_before", "final_train_loss", "heldout_margin"):
        assert got[key] == pytest.approx(ref[key], rel=1e-4, abs=1e-6), key
    _close_files(tmp_path / "fsdp/model/model.safetensors",
                 tmp_path / "one/model/model.safetensors", atol=1e-5)  # fmt: skip
