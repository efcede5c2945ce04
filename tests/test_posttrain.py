"""Post-training in `pipeline run`: SFT → DPO → RL with before/after evals on held-out data,
each a registered, cached run with lineage; and the scorers those evals use."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from acme_sft import build_sft_records
from tokenizers import Tokenizer

from forgeml.core.config import validate_recipe
from forgeml.eval import chat_answers
from forgeml.eval.chat_answers import evaluate_chat_answers, load_answer_records
from forgeml.pipeline.posttrain_stage import evaluate_greedy_rewards, evaluate_sampled_rewards
from forgeml.tokenizer.train import load_tokenizer, train_bpe_tokenizer
from forgeml.train.rewards import build_rewards
from forgeml.train.rl_data import load_prompts


class _Ctx:  # what the evals read of a model: its context length
    class cfg:  # noqa: N801
        max_seq_len = 4096


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Tokenizer:
    texts = ["the answer is 42 and the policy says seven days", "print(1)", "yes no maybe"] * 50
    out = tmp_path_factory.mktemp("tok")
    return load_tokenizer(train_bpe_tokenizer(texts, vocab_size=300, out_dir=out))


def _jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _oracle(monkeypatch, tok: Tokenizer, replies: list[str]) -> None:
    """`generate` answers each call with the next reply (a model that says exactly that)."""
    it = iter(replies)
    monkeypatch.setattr(
        "forgeml.models.sampling.generate",
        lambda *a, **k: tok.encode(next(it), add_special_tokens=False).ids,
    )


def test_chat_answers_score_the_reference_turn(tmp_path, tok, monkeypatch) -> None:
    records = [r for r in build_sft_records(seed=0, scale=0.05) if "answer" in r["metadata"]]
    records = load_answer_records(_jsonl(tmp_path / "h.jsonl", records), limit=6)
    targets = [r["messages"][-1]["content"] for r in records]
    _oracle(monkeypatch, tok, targets)
    right = evaluate_chat_answers(_Ctx(), tok, records)
    assert right["n"] == 6 and right["exact_match"] == 1.0 and right["answer_found"] == 1.0
    _oracle(monkeypatch, tok, [t.upper() + "  " for t in targets[:3]] + ["no"] * 3)
    half = evaluate_chat_answers(_Ctx(), tok, records)
    assert half["normalised_match"] == 0.5
    assert half["exact_match"] == sum(t == t.upper() for t in targets[:3]) / 6
    # Records without an answer or a final assistant turn are not scored; none at all: error.
    with pytest.raises(Exception, match="no records with metadata.answer"):
        load_answer_records(_jsonl(tmp_path / "x.jsonl", [{"messages": []}]))
    assert chat_answers._normalise(" A  b\n") == "a b"


def test_greedy_rewards_mean_and_solved(tmp_path, tok, monkeypatch) -> None:
    prompts = load_prompts(_jsonl(tmp_path / "p.jsonl", [{"prompt": f"q{i}"} for i in range(4)]))
    plugins = build_rewards(
        validate_recipe(
            {
                "rl": {
                    "rewards": [
                        {"kind": "regex", "pattern": "yes", "name": "says_yes"},
                        {"kind": "regex", "pattern": "maybe", "name": "hedges", "weight": 0.5},
                    ]
                }
            }
        ).rl.rewards  # fmt: skip
    )
    _oracle(monkeypatch, tok, ["yes", "yes maybe", "no", "maybe"])
    got = evaluate_greedy_rewards(_Ctx(), tok, prompts, plugins, max_new_tokens=8)
    assert got["n"] == 4 and got["solved"] == 0.5
    assert got["mean_says_yes"] == 0.5 and got["mean_hedges"] == 0.5
    assert got["mean_reward"] == pytest.approx((1 + 1.5 + 0 + 0.5) / 4)


def _regex_plugins(*specs: dict) -> list:
    return build_rewards(validate_recipe({"rl": {"rewards": list(specs)}}).rl.rewards)


def test_sampled_rewards_pass_at_1_and_pass_at_n(tmp_path, tok, monkeypatch) -> None:
    prompts = load_prompts(_jsonl(tmp_path / "p.jsonl", [{"prompt": f"q{i}"} for i in range(3)]))
    plugins = _regex_plugins({"kind": "regex", "pattern": "yes", "name": "says_yes"})
    rl = validate_recipe({"rl": {"temperature": 0.7, "max_new_tokens": 8}}).rl
    groups = iter([["yes", "no", "yes", "no"], ["no"] * 4, ["no", "no", "no", "yes"]])
    seen = []

    def fake_group(model, ids, n, **kw):
        seen.append((n, kw["temperature"], kw["max_new_tokens"], kw["generator"].initial_seed()))
        return [tok.encode(t, add_special_tokens=False).ids for t in next(groups)]

    monkeypatch.setattr("forgeml.models.sampling.sample_group", fake_group)
    got = evaluate_sampled_rewards(_Ctx(), tok, prompts, plugins, rl, samples=4, seed=0)
    assert got["sampled_solved"] == 3 / 12 and got["pass_at_n"] == 2 / 3
    assert got["sampled_mean_reward"] == 3 / 12 and got["samples_per_prompt"] == 4
    # GRPO's sampling settings, and one seed per prompt (so a prompt's samples do not depend
    # on which prompts come before it)
    assert [s[:3] for s in seen] == [(4, 0.7, 8)] * 3 and len({s[3] for s in seen}) == 3


def test_sampled_rewards_on_a_real_model_are_seeded_and_near_greedy_when_cold(
    tmp_path, tok
) -> None:
    import torch

    from forgeml.core.config import ModelConfig
    from forgeml.models.dense import Transformer

    torch.manual_seed(0)
    cfg = ModelConfig(dim=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_hidden=64,
                      vocab_size=tok.get_vocab_size(), max_seq_len=64)  # fmt: skip
    model = Transformer(cfg).eval()
    prompts = load_prompts(_jsonl(tmp_path / "p.jsonl", [{"prompt": f"the {w}"} for w in "abcdef"]))
    plugins = _regex_plugins({"kind": "regex", "pattern": "e", "name": "has_e"})
    hot = validate_recipe({"rl": {"temperature": 1.0, "max_new_tokens": 6}}).rl
    a = evaluate_sampled_rewards(model, tok, prompts, plugins, hot, samples=3)
    b = evaluate_sampled_rewards(model, tok, prompts, plugins, hot, samples=3)
    assert a == b  # seeded
    cold = hot.model_copy(update={"temperature": 1e-6})
    sampled = evaluate_sampled_rewards(model, tok, prompts, plugins, cold, samples=2)
    greedy = evaluate_greedy_rewards(model, tok, prompts, plugins, max_new_tokens=6)
    # At a vanishing temperature every sample is the greedy reply.
    assert sampled["sampled_solved"] == greedy["solved"] == sampled["pass_at_n"]


def test_pipeline_sft_dpo_rl_with_before_after(workspace, text_folder, tmp_path) -> None:
    from forgeml.pipeline.run import run_pipeline
    from forgeml.registry import open_registry

    qa = [r for r in build_sft_records(seed=0, scale=0.05) if r["metadata"]["task"] == "policy_qa"]
    chat = _jsonl(tmp_path / "qa.jsonl", qa)
    pairs = _jsonl(tmp_path / "pairs.jsonl", [
        {"prompt": f"Is {w} ok?", "chosen": "yes", "rejected": "no",
         "metadata": {"split": "heldout" if i % 4 == 0 else "train"}}
        for i, w in enumerate("the quick brown fox jumps over lazy dog".split())
    ])  # fmt: skip
    prompts = _jsonl(tmp_path / "rl.jsonl", [{"prompt": f"Note {i}:"} for i in range(6)])
    tiny_train = {"micro_batch_size": 2, "checkpoint_every": 0, "eval_every": 0, "dtype": "fp32"}
    recipe = validate_recipe({
        "data": {"sources": [str(text_folder)], "heldout_fraction": 0.1},
        "tokenizer": {"vocab_size": 400},
        "model": {"dim": 32, "n_layers": 1, "n_heads": 2, "n_kv_heads": 1, "ffn_hidden": 64,
                  "max_seq_len": 160},
        "train": {"max_steps": 5, "micro_batch_size": 4, "seq_len": 64, "eval_every": 0,
                  "checkpoint_every": 0, "dtype": "fp32"},
        "eval": {"max_batches": 1},
        "sft": {"data": str(chat), "heldout": str(chat),
                "train": {**tiny_train, "max_steps": 3, "seq_len": 128}},
        "dpo": {"samples_per_prompt": 2, "max_new_tokens": 4, "optim": {"lr": 0.01},
                "train": {**tiny_train, "max_steps": 4}},
        "rl": {"rewards": [{"kind": "regex", "pattern": "e"}], "max_new_tokens": 6,
               "prompts_per_step": 3, "group_size": 4, "optim": {"lr": 0.05},
               "train": {**tiny_train, "max_steps": 2}},
        "posttrain": {
            "eval_limit": 4,
            "dpo": {"data": str(pairs), "judge": "examples/acme/acme_rl.py:python_compiles",
                    "eval_samples": 3},
            "rl": {"prompts": str(prompts), "heldout": str(prompts), "eval_samples": 2},
        },
    })  # fmt: skip
    result = run_pipeline(workspace, recipe, progress=False)
    stages = [s.stage for s in result.stages]
    assert stages[stages.index("sft") :] == [
        "sft",
        "eval",
        "eval",
        "dpo",
        "eval",
        "eval",
        "rl",
        "eval",
    ]
    reg = open_registry(workspace)
    sft, dpo, rl = (result.stage(name).output for name in ("sft", "dpo", "rl"))
    assert reg.get_asset(dpo).metadata["base_model"] == sft
    assert reg.get_asset(rl).metadata["base_model"] == dpo and len({sft, dpo, rl}) == 3
    lifts = {(lift.stage, lift.metric): lift for lift in result.lifts}
    assert [k[0] for k in lifts] == ["sft"] + ["dpo"] * 4 + ["rl"] * 4
    judged = lifts[("dpo", "held-out judge score, sampled (mean)")]
    won = lifts[("dpo", "held-out win-rate vs its start (0.5 = tie)")]
    assert judged.n == won.n and won.n % 3 == 0  # posttrain.dpo.eval_samples a prompt
    assert won.se is not None and 0.0 <= won.se <= 0.5
    assert lifts[("rl", "held-out solved, sampled pass@1 (n=2)")].n == 8  # 4 prompts x 2
    for lift in result.lifts:
        assert lift.n > 0 and math.isfinite(lift.before) and math.isfinite(lift.after)
        if "margin (" not in lift.metric:
            assert 0.0 <= lift.before <= 1.5 and 0.0 <= lift.after <= 1.5
    margin = lifts[("dpo", "held-out reward margin (chosen - rejected)")]
    assert margin.after > margin.before  # DPO pushed chosen above rejected on unseen pairs
    assert lifts[("sft", "held-out answer exact match")].n == 4
    summary = result.summary()
    assert [row["stage"] for row in summary["lift"]] == ["sft"] + ["dpo"] * 4 + ["rl"] * 4
    again = run_pipeline(workspace, recipe, progress=False)
    assert all(s.cached for s in again.stages)
    assert [lift.as_dict() for lift in again.lifts] == summary["lift"]
