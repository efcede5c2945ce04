"""Reward model: learns a toy preference (held-out accuracy above chance), saves as an HF
sequence classifier that transformers scores identically, and serves as a RewardScorer."""

from __future__ import annotations

import json

import pytest
import torch
from preference_fixtures import make_base_model, write_pairs

from forgeml.core.config import validate_recipe
from forgeml.models.hf_io import load_model
from forgeml.models.reward import RewardModel, load_reward_model, save_reward_model
from forgeml.train.reward_model import RewardScorer, train_reward_model


def _recipe(**train):
    return validate_recipe({
        "reward_model": {"heldout_fraction": 0.25, "max_length": 64,
                         "train": {"max_steps": 30, "micro_batch_size": 8, "log_every": 10,
                                   "dtype": "fp32", "checkpoint_every": 0, **train},
                         "optim": {"lr": 3e-3, "warmup_steps": 3, "weight_decay": 0.1}},
    })  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models are all small kernels: one thread avoids OpenMP spin-waits on a busy
    2-core machine (measured 16x slower with 2 threads under load); results are the same."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("rm")
    base = make_base_model(root)
    pairs = write_pairs(root / "pairs.jsonl", 64)
    summary = train_reward_model(
        _recipe(), base_model_dir=base, pairs_path=pairs, out_dir=root / "run", progress=False
    )
    return root, base, summary


def test_reward_model_learns_toy_preference(trained) -> None:
    _, _, summary = trained
    assert summary["heldout_pairs"] == 16 and summary["train_pairs"] == 48
    assert summary["data_report"]["records"] == 64 and summary["data_report"]["kept"] == 64
    # A random head may already rank 'yes' above 'no' (one token differs), so the test is
    # that training separates them: high accuracy and a margin far above the initial one.
    assert summary["heldout_accuracy"] >= 0.9
    assert summary["heldout_margin"] > 1.0 > 10 * abs(summary["heldout_margin_before"])


def test_scorer_ranks_preferred_completion_higher(trained) -> None:
    root, _, summary = trained
    scorer = RewardScorer(None, summary["model_dir"])
    prompts = ["apple river stone cloud", "north paper seven quiet"]
    rewards = scorer(prompts * 2, ["yes green", "yes table", "no green", "no table"])
    assert len(rewards) == 4 and all(isinstance(r, float) for r in rewards)
    assert rewards[0] > rewards[2] and rewards[1] > rewards[3]


def test_export_matches_transformers_sequence_classifier(tmp_path) -> None:
    from transformers import AutoModelForSequenceClassification

    base = make_base_model(tmp_path)
    rm = RewardModel.from_language_model(load_model(base)).eval()
    out = save_reward_model(rm, tmp_path / "rm", base)
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["MistralForSequenceClassification"]
    pad = config["pad_token_id"]
    ids = torch.randint(20, 200, (3, 10))
    lengths = torch.tensor([10, 7, 4])
    for row, n in enumerate(lengths.tolist()):
        ids[row, n:] = pad
    hf = AutoModelForSequenceClassification.from_pretrained(out).eval()
    with torch.no_grad():
        want = hf(input_ids=ids).logits[:, 0]
        got = rm(ids, lengths)
        again = load_reward_model(out)(ids, lengths)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again, got, atol=0, rtol=0)


def test_moe_backbone_trains_a_step(tmp_path) -> None:
    from forgeml.core.config import ModelConfig

    cfg = ModelConfig(arch="moe", dim=32, n_layers=1, n_heads=4, n_kv_heads=2, ffn_hidden=32,
                      n_experts=4, vocab_size=50, max_seq_len=16)  # fmt: skip
    rm = RewardModel(cfg)
    ids = torch.randint(0, 50, (2, 8))
    rewards = rm(ids, torch.tensor([8, 5]))
    rewards.sum().backward()
    assert rewards.shape == (2,) and rm.score.weight.grad is not None
    assert rm.backbone.layers[0].attention.wqkv.weight.grad is not None


def test_resume_equals_uninterrupted_run(tmp_path) -> None:
    base = make_base_model(tmp_path)
    pairs = write_pairs(tmp_path / "pairs.jsonl", 24)
    kw = dict(base_model_dir=base, pairs_path=pairs, progress=False)
    train_reward_model(_recipe(max_steps=4), out_dir=tmp_path / "full", **kw)
    train_reward_model(_recipe(max_steps=2), out_dir=tmp_path / "part", **kw)
    train_reward_model(_recipe(max_steps=4), out_dir=tmp_path / "part", resume=True, **kw)
    full = load_reward_model(tmp_path / "full" / "model").state_dict()
    part = load_reward_model(tmp_path / "part" / "model").state_dict()
    assert full.keys() == part.keys()
    for name in full:
        assert torch.equal(full[name], part[name]), name
