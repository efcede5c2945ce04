"""DPO/IPO and online DPO on tiny models: preference data validation and masking, margins grow,
the reference log-probs are computed once and then read from the cache, exact resume, online
DPO raises a trivially learnable reward, and config mistakes fail clearly."""

from __future__ import annotations

import json

import pytest
import torch
from preference_fixtures import make_base_model, write_pairs

from forgeml.core.config import validate_recipe
from forgeml.core.errors import ConfigError, DataError
from forgeml.eval.win_rate import clustered_se
from forgeml.tokenizer.train import load_tokenizer
from forgeml.train import dpo as dpo_module
from forgeml.train.dpo import train_dpo
from forgeml.train.online_dpo import load_reward_function, rank_pairs, train_online_dpo
from forgeml.train.preference_data import (
    collate_pairs,
    load_preference_pairs,
    prompt_text,
    read_preference_records,
)


def _recipe(dpo=None, **train):
    return validate_recipe({
        "dpo": {"beta": 0.1, "heldout_fraction": 0.25, "max_length": 64, **(dpo or {}),
                "train": {"max_steps": 12, "micro_batch_size": 8, "log_every": 4,
                          "dtype": "fp32", "checkpoint_every": 0, **train},
                "optim": {"lr": 5e-3, "warmup_steps": 2, "schedule": "constant",
                          "weight_decay": 0.1}},
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
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("dpo")
    return make_base_model(root), write_pairs(root / "pairs.jsonl", 32), root


# ---- data ---------------------------------------------------------------------------------


def test_pairs_are_rendered_with_the_chat_template_and_prompt_masked(base, tmp_path) -> None:
    model_dir, _, _ = base
    tok = load_tokenizer(model_dir)
    path = tmp_path / "p.jsonl"
    rows = [
        {"prompt": "apple river", "chosen": "yes", "rejected": "no"},
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "stone"}],
         "chosen": [{"role": "assistant", "content": "yes stone"}],
         "rejected": {"role": "assistant", "content": "no"}, "margin": 1.5},
    ]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs, report = load_preference_pairs(path, tok, max_length=64)
    assert report.kept == 2 and report.records == 2 and pairs[1].record.margin == 1.5
    head = prompt_text(pairs[1].record.messages)
    assert head == "<|system|>\nbe brief<|end|>\n<|user|>\nstone<|end|>\n<|assistant|>\n"
    assert tok.decode(pairs[1].chosen_ids, skip_special_tokens=False) == "yes stone<|end|>\n"
    ids, mask = collate_pairs(pairs, pad_id=2)
    for row, pair in enumerate(pairs + pairs):
        completion = pair.chosen_ids if row < 2 else pair.rejected_ids
        n_prompt = len(pair.prompt_ids)
        assert mask[row, :n_prompt].sum() == 0  # prompt masked out
        assert mask[row].sum() == len(completion)
        assert ids[row, n_prompt : n_prompt + len(completion)].tolist() == completion


def test_report_accounts_for_every_record(base, tmp_path) -> None:
    model_dir, _, _ = base
    tok = load_tokenizer(model_dir)
    path = tmp_path / "p.jsonl"
    long = " ".join(["seven"] * 80)
    rows = [
        {"prompt": "a", "chosen": "yes", "rejected": "no"},
        {"prompt": "b", "chosen": "same", "rejected": "same"},
        {"prompt": "c", "chosen": long, "rejected": "no"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs, report = load_preference_pairs(path, tok, max_length=32)
    assert report.kept == 1 and report.dropped == {"identical_completions": 1, "over_length": 1}
    pairs, report = load_preference_pairs(path, tok, max_length=32, over_length="truncate")
    assert report.kept == 2 and report.truncated == 1
    assert max(len(p.prompt_ids) + len(p.chosen_ids) for p in pairs) <= 32


def test_heldout_split_follows_record_metadata_when_given(base, tmp_path) -> None:
    from forgeml.train.preference_data import split_heldout

    model_dir, _, _ = base
    tok = load_tokenizer(model_dir)
    path = tmp_path / "p.jsonl"
    splits = ["train", "heldout", "train", "train"]
    path.write_text("".join(
        json.dumps({"prompt": f"q{i}", "chosen": "yes", "rejected": "no", "metadata": {"split": s}})
        + "\n" for i, s in enumerate(splits)
    ))  # fmt: skip
    pairs, _ = load_preference_pairs(path, tok, max_length=64)
    train, held = split_heldout(pairs, 0.5)
    assert [p.record.prompt for p in held] == ["q1"] and len(train) == 3
    with pytest.raises(DataError, match="nothing to train on"):
        split_heldout(held, 0.5)


def test_invalid_records_name_line_and_field(tmp_path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"prompt": "x", "chosen": "a", "rejected": "b"}\n'
        '{"prompt": "x", "chosen": "a"}\n'
        "not json\n"
        '{"messages": [{"role": "robot", "content": "hi"}], "chosen": "a", "rejected": "b"}\n'
        '{"prompt": "x", "chosen": "", "rejected": "b"}\n'
    )
    with pytest.raises(DataError) as info:
        read_preference_records(path)
    text = str(info.value)
    assert "4 invalid" in text and "bad.jsonl:2: missing 'rejected'" in text
    assert "bad.jsonl:3: not valid JSON" in text and "bad.jsonl:4: 'messages'[0]" in text
    assert "bad.jsonl:5: 'chosen'" in text


# ---- offline DPO / IPO ----------------------------------------------------------------------


def test_dpo_grows_the_margin_and_reuses_the_reference_cache(base, tmp_path, monkeypatch) -> None:
    model_dir, pairs, _ = base
    cache = tmp_path / "cache"
    first = train_dpo(
        _recipe(), base_model_dir=model_dir, pairs_path=pairs, out_dir=tmp_path / "a",
        cache_dir=cache, progress=False,
    )  # fmt: skip
    assert first["reference_cache_hit"] is False
    assert first["heldout_rewards_margins_before"] == pytest.approx(0.0, abs=1e-5)
    assert first["heldout_rewards_margins"] > 0.5
    assert first["heldout_rewards_accuracies"] >= 0.9
    assert first["heldout_loss"] < first["heldout_loss_before"] - 0.2

    def no_reference(*args, **kwargs):
        raise AssertionError("the reference forward ran although its log-probs are cached")

    monkeypatch.setattr(dpo_module, "_reference_forward", no_reference)
    again = train_dpo(
        _recipe(), base_model_dir=model_dir, pairs_path=pairs, out_dir=tmp_path / "b",
        cache_dir=cache, progress=False,
    )  # fmt: skip
    assert again["reference_cache_hit"] is True
    assert again["heldout_rewards_margins"] == pytest.approx(first["heldout_rewards_margins"])


def test_ipo_trains(base, tmp_path) -> None:
    model_dir, pairs, _ = base
    out = train_dpo(
        _recipe({"loss": "ipo", "beta": 0.5}), base_model_dir=model_dir, pairs_path=pairs,
        out_dir=tmp_path / "ipo", progress=False,
    )  # fmt: skip
    assert out["heldout_loss"] < out["heldout_loss_before"]
    assert out["heldout_rewards_margins"] > 0


def test_resume_equals_uninterrupted_run(base, tmp_path) -> None:
    from forgeml.models.hf_io import load_model

    model_dir, pairs, _ = base
    kw = dict(base_model_dir=model_dir, pairs_path=pairs, cache_dir=tmp_path / "c", progress=False)
    train_dpo(_recipe(max_steps=4), out_dir=tmp_path / "full", **kw)
    train_dpo(_recipe(max_steps=2), out_dir=tmp_path / "part", **kw)
    train_dpo(_recipe(max_steps=4), out_dir=tmp_path / "part", resume=True, **kw)
    full, part = load_model(tmp_path / "full" / "model"), load_model(tmp_path / "part" / "model")
    for (name, a), (_, b) in zip(full.state_dict().items(), part.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


# ---- online DPO -----------------------------------------------------------------------------


def test_online_dpo_raises_a_learnable_reward(base, tmp_path) -> None:
    model_dir, pairs, _ = base
    recipe = _recipe(
        {"online": True, "reward_function": "preference_fixtures:count_e",
         "samples_per_prompt": 4, "max_new_tokens": 8},
        max_steps=15, micro_batch_size=4, log_every=5,
    )  # fmt: skip
    optim = recipe.dpo.optim.model_copy(update={"lr": 1e-2})
    recipe = recipe.model_copy(update={"dpo": recipe.dpo.model_copy(update={"optim": optim})})
    out = train_online_dpo(
        recipe, base_model_dir=model_dir, prompts_path=pairs, out_dir=tmp_path / "on",
        progress=False,
    )  # fmt: skip
    assert out["reward_after"] > out["reward_before"] + 0.5
    # The trained policy beats its starting point head to head on the same seeds.
    from forgeml.models.hf_io import load_model
    from forgeml.train.online_dpo import build_ranker, sampled_win_rate
    from forgeml.train.preference_data import parse_prompt_record

    tok = load_tokenizer(model_dir)
    recs = read_preference_records(pairs, parse_prompt_record)[:6]
    prompts = [(r, tok.encode(prompt_text(r.messages)).ids) for r in recs]
    result = sampled_win_rate(
        load_model(tmp_path / "on" / "model"), load_model(model_dir), prompts,
        build_ranker(recipe.dpo), lambda ids: tok.decode(ids), recipe.dpo,
        stop_id=tok.token_to_id("<|end|>"), seed=123,
    )  # fmt: skip
    assert result["win_rate"] > 0.6 and result["reward"] > result["baseline_reward"]
    assert 0 < result["win_rate_se"] < 0.25
    logged = [json.loads(line) for line in (tmp_path / "on" / "metrics.jsonl").open()]
    assert [r["step"] for r in logged] == [5, 10, 15] and all(r["pairs"] > 0 for r in logged)


def test_rank_pairs_takes_disjoint_best_worst_pairs_until_a_tie() -> None:
    scores = [0.5, 1.0, 0.0, 1.0, 0.0, 0.5, 0.5, 0.0]
    assert rank_pairs(scores, 1) == [(1, 7)]  # the first best with the last worst
    assert rank_pairs(scores, 4) == [(1, 7), (3, 4), (0, 2)]  # then 0.5 vs 0.5: a tie, stop
    assert rank_pairs([0.3] * 4, 2) == []


def test_online_dpo_trains_on_several_pairs_a_prompt(base, tmp_path) -> None:
    model_dir, pairs, _ = base
    recipe = _recipe(
        {"online": True, "reward_function": "preference_fixtures:count_e",
         "samples_per_prompt": 4, "pairs_per_prompt": 2, "max_new_tokens": 8},
        max_steps=2, micro_batch_size=4, log_every=1,
    )  # fmt: skip
    train_online_dpo(
        recipe, base_model_dir=model_dir, prompts_path=pairs, out_dir=tmp_path / "on",
        progress=False,
    )  # fmt: skip
    logged = [json.loads(line) for line in (tmp_path / "on" / "metrics.jsonl").open()]
    # 4 prompts a step: more pairs than prompts means a prompt gave two
    assert any(r["pairs"] > 4 - r["ties"] for r in logged), logged


def test_clustered_se_is_the_spread_of_the_prompt_means() -> None:
    # two prompts of two samples: means 1.0 and 0.0, sd 0.707, se 0.5
    assert clustered_se([1.0, 1.0, 0.0, 0.0], 2) == pytest.approx(0.5)
    assert clustered_se([1.0, 0.0, 1.0, 0.0], 2) == 0.0  # same mean: no spread over prompts
    assert clustered_se([1.0, 0.0], 2) == 0.0  # one prompt


# ---- config errors --------------------------------------------------------------------------


def test_config_errors_are_clear() -> None:
    with pytest.raises(ConfigError, match="exactly one ranker"):
        validate_recipe({"dpo": {"online": True}})
    with pytest.raises(ConfigError, match="exactly one ranker"):
        validate_recipe({"dpo": {"online": True, "reward_function": "a:b", "reward_model": "m"}})
    with pytest.raises(ConfigError, match="'dpo.loss'"):
        validate_recipe({"dpo": {"loss": "hinge"}})
    with pytest.raises(ConfigError, match="did you mean 'dpo.beta'"):
        validate_recipe({"dpo": {"betta": 0.1}})
    with pytest.raises(ConfigError, match="pairs_per_prompt 2 needs at least 4"):
        validate_recipe({"dpo": {"samples_per_prompt": 3, "pairs_per_prompt": 2}})
    with pytest.raises(ConfigError, match="not an import path"):
        load_reward_function("no_colon")
    with pytest.raises(ConfigError, match="cannot import reward function"):
        load_reward_function("forgeml.nowhere:fn")


# ---- stages + CLI -------------------------------------------------------------------------


def test_cli_rm_then_online_dpo_with_the_reward_model_records_lineage(
    base, workspace, tmp_path
) -> None:
    """`forgeml train rm` then `forgeml train dpo` ranking samples with that reward model."""
    from typer.testing import CliRunner

    from forgeml.cli import app
    from forgeml.registry import open_registry

    model_dir, pairs, _ = base
    reg = open_registry(workspace)
    base_id = reg.add_asset("model", "tiny", model_dir, metadata={"arch": "dense"}).id
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "reward_model:\n"
        "  max_length: 64\n"
        "  train: &train {max_steps: 6, micro_batch_size: 4, log_every: 3, dtype: fp32,\n"
        "                 checkpoint_every: 0}\n"
        "  optim: &optim {lr: 0.003, warmup_steps: 1, weight_decay: 0.1}\n"
        "dpo: {max_length: 64, samples_per_prompt: 2, max_new_tokens: 4, train: *train,\n"
        "      optim: *optim}\n"
    )
    cli = ["-w", str(workspace.root), "-q", "train"]
    runner = CliRunner()
    res = runner.invoke(app, [*cli, "rm", str(recipe), "--base", base_id, "--data", str(pairs)])
    assert res.exit_code == 0, res.output
    rm = next(a for a in reg.list_assets("model") if a.metadata.get("task") == "reward")
    assert rm.id in res.output and rm.metadata["heldout_accuracy"] is not None
    again = runner.invoke(app, [*cli, "rm", str(recipe), "--base", base_id, "--data", str(pairs)])
    assert "(cached)" in again.output

    res = runner.invoke(app, [
        *cli, "dpo", str(recipe), "--base", "tiny", "--data", str(pairs), "dpo.online=true",
        f"dpo.reward_model={rm.id}", "dpo.train.max_steps=2",
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    policy = reg.get_asset("recipe-online-dpo")
    assert policy.metadata["objective"] == "online-dpo" and "reward_after" in policy.metadata
    up = {n["id"] for n in reg.lineage(policy.id).nodes}
    data = reg.get_asset("pairs")
    assert {base_id, rm.id, data.id} <= up and data.metadata["pairs"] == 32


# ---- ACME preference data -----------------------------------------------------------------


@pytest.mark.parametrize("snippets", [False, True], ids=["corpus", "snippets"])
def test_acme_translation_pairs_are_execution_verified(tmp_path, snippets: bool) -> None:
    from acme_prefs import write_translation_preferences
    from acme_rl import translation_reward

    path = tmp_path / "acme_prefs.jsonl"
    report = write_translation_preferences(path, seed=0, count=6, snippets=snippets)
    assert report["programs"] == 6 and report["pairs"] + sum(report["skipped"].values()) == 6
    records = read_preference_records(path)
    assert len(records) == report["pairs"] >= 5
    for rec in records:
        assert rec.chosen != rec.rejected and "```acme-cl" in rec.messages[-1]["content"]
        assert translation_reward(rec.prompt, rec.chosen, rec.metadata) == 1.0
        assert translation_reward(rec.prompt, rec.rejected, rec.metadata) < 1.0
    assert {r.metadata["split"] for r in records} <= {"train", "heldout"}
