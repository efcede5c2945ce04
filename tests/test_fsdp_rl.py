"""GRPO and online DPO under torchrun at 2 processes (gloo, CPU, fp32).

Each process samples its own share of a step's prompts from its own generator, so 2 processes
draw other completions than 1. What must be equal is the update on the same completions: the
parity tests give every group its own generator (seeded by the prompt and the step, whichever
process draws it), through the real kv-cache sampler on the gathered FSDP weights; then
2 processes and 1 process must log the same losses and end at the same weights.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_rl import FAST, tiny  # noqa: F401  (tiny: the module fixture)

import forgeml.train.rl as rl
from forgeml.core.config import load_recipe
from forgeml.core.seeds import derive_seed
from forgeml.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent

# Runs `module:function(recipe, **kwargs)` on every process; the recipe comes from dotted
# overrides (rank 1 adds `rank1_overrides`); `per_prompt` swaps in `per_prompt_sampler`.
RUNNER = """
import importlib, json, os, sys
spec = json.loads(sys.argv[1])
sys.path.insert(0, spec["tests"])
from forgeml.core.config import load_recipe
from forgeml.train.distributed import cleanup
module, name = spec["target"].split(":")
module = importlib.import_module(module)
if spec["per_prompt"]:
    from test_fsdp_rl import per_prompt_sampler
    module.sample_groups = per_prompt_sampler(module.sample_groups)
extra = spec["rank1_overrides"] if os.environ["RANK"] == "1" else []
try:
    getattr(module, name)(load_recipe(None, spec["overrides"] + extra), **spec["kwargs"])
finally:
    cleanup()
"""


def per_prompt_sampler(sample_groups):
    """`sample_groups` with one generator per prompt, seeded by the prompt's token ids and the
    step's seed (the process's generator seed less its `sample.rank` offset): a group's samples
    no longer depend on which process draws it or which prompts share its batch. (Held-out
    batches keep their seed as long as rank 0 samples them all: at most 16 prompts.)"""
    offset = derive_seed(0, "sample.rank", int(os.environ.get("RANK", "0")))

    def sample(model, prompts, n, *, generator, **kwargs):
        out = []
        for ids in prompts:
            seed = generator.initial_seed() - offset + zlib.crc32(json.dumps(ids).encode())
            gen = torch.Generator(device=generator.device).manual_seed(seed)
            out += sample_groups(model, [ids], n, generator=gen, **kwargs)
        return out

    return sample


def run_distributed(
    target: str, overrides: list[str], *, per_prompt: bool = False,
    rank1_overrides: list[str] | None = None, nproc: int = 2, **kwargs: object,
) -> subprocess.CompletedProcess:  # fmt: skip
    from forgeml.launch.torchrun import torchrun_argv

    spec = {
        "target": target, "overrides": overrides, "per_prompt": per_prompt,
        "rank1_overrides": rank1_overrides or [], "tests": str(TESTS),
        "kwargs": {k: str(v) if isinstance(v, Path) else v for k, v in kwargs.items()},
    }  # fmt: skip
    cmd = torchrun_argv(
        ["--no-python", sys.executable, "-c", RUNNER, json.dumps(spec)], nproc_per_node=nproc
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


REWARD = """
def share_of_e(prompt, completion, metadata):
    return completion.count("e") / max(len(completion), 1)
"""


@pytest.fixture(scope="module")
def reward_file(tmp_path_factory) -> str:
    """The reward plugin override, one file for the module (one module name per process)."""
    path = tmp_path_factory.mktemp("reward") / "fsdp_rl_reward_e.py"
    path.write_text(REWARD)
    return f"rl.rewards=[{{kind: '{path}:share_of_e'}}]"


def _close_weights(a: Path, b: Path) -> None:
    got, ref = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert got.keys() == ref.keys()
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("strategy", ["fsdp", pytest.param("ddp", marks=pytest.mark.slow)])
def test_grpo_two_processes_match_one_process_on_the_same_samples(
    tiny, reward_file, tmp_path, monkeypatch, strategy  # noqa: F811
):  # fmt: skip
    """2 prompts a step, one group each process: the batch-scaled advantages see both
    processes' rewards, the KL reference is sharded too (FSDP), and two inner steps take
    their old log-probs from the sharded policy."""
    base, prompts = tiny
    overrides = [
        *FAST, reward_file, "rl.train.max_steps=3", "rl.kl_coef=0.05", "rl.inner_steps=2",
        "rl.micro_batch_size=4", "rl.scale_rewards=batch", "rl.optim.eps=1e-4",
    ]  # fmt: skip
    kw = dict(base_model=base, prompts=prompts, progress=False)
    done = run_distributed(
        "forgeml.train.rl:train_rl", [*overrides, f"rl.train.strategy={strategy}"],
        per_prompt=True, out_dir=tmp_path / "two", **kw,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    monkeypatch.setattr(rl, "sample_groups", per_prompt_sampler(rl.sample_groups))
    one = rl.train_rl(load_recipe(None, overrides), out_dir=tmp_path / "one", **kw)
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert two["world_size"] == 2 and two["strategy"] == strategy and one["world_size"] == 1
    got, ref = read_metrics(tmp_path / "two/metrics.jsonl"), read_metrics(tmp_path / "one/metrics.jsonl")  # fmt: skip
    assert [r["step"] for r in got] == [r["step"] for r in ref] == [1, 2, 3]  # rank 0 logs
    for a, b in zip(got, ref, strict=True):
        assert a["reward_mean"] == pytest.approx(b["reward_mean"], rel=1e-6)  # same samples
        assert a["completion_len"] == b["completion_len"]
        for key in ("loss", "grad_norm", "kl", "clip_fraction", "reward_std"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-7), (a["step"], key)
    assert ref[-1]["kl"] > 0
    _close_weights(tmp_path / "two" / "model", tmp_path / "one" / "model")


@pytest.mark.slow
def test_grpo_two_processes_sample_their_own_share(tiny, reward_file, tmp_path):  # noqa: F811
    """The real sampler at 2 processes with dynamic sampling: it trains and registers one
    model; each process swaps groups from its own spares."""
    base, prompts = tiny
    done = run_distributed(
        "forgeml.train.rl:train_rl",
        [*FAST, reward_file, "rl.train.max_steps=2", "rl.kl_coef=0.05", "rl.prompts_per_step=4",
         "rl.dynamic_sampling=2", "rl.train.strategy=fsdp"],
        base_model=base, prompts=prompts, out_dir=tmp_path / "two", progress=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    logged = read_metrics(tmp_path / "two" / "metrics.jsonl")
    assert [r["step"] for r in logged] == [1, 2]
    assert all(0 <= r["groups_resampled"] <= 2 and r["loss"] == r["loss"] for r in logged)
    assert (tmp_path / "two" / "model" / "model.safetensors").is_file()


@pytest.mark.slow
def test_grpo_processes_that_disagree_refuse_to_start(tiny, reward_file, tmp_path):  # noqa: F811
    base, prompts = tiny
    common = [*FAST, reward_file, "rl.train.max_steps=1", "rl.kl_coef=0"]
    kw = dict(base_model=base, prompts=prompts, out_dir=tmp_path / "run", progress=False)
    done = run_distributed("forgeml.train.rl:train_rl", common,
                           rank1_overrides=["rl.clip_eps=0.3"], **kw)  # fmt: skip
    assert done.returncode != 0
    assert "recipe of rank(s) 1 differs from rank 0's" in done.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    odd = run_distributed("forgeml.train.rl:train_rl", [*common, "rl.prompts_per_step=3"], **kw)
    assert odd.returncode != 0
    assert "rl.prompts_per_step 3 does not split over 2 processes" in odd.stderr


@pytest.mark.parametrize("strategy", ["fsdp", pytest.param("ddp", marks=pytest.mark.slow)])
def test_online_dpo_two_processes_match_one_process_on_the_same_samples(
    tmp_path, monkeypatch, strategy
):  # fmt: skip
    """8 prompts a step: 2 processes x 4 == 1 x 2 micro-batches of 4; up to 2 pairs a prompt,
    so the processes hold different numbers of pairs and of micro-batches (the loss is
    weighted over both processes' pairs, the shorter one pads in lockstep). The reference is
    sharded too (FSDP); the before/after reward is sampled with the same seeds at any N."""
    from preference_fixtures import make_base_model, write_pairs

    import forgeml.train.online_dpo as online_dpo

    model_dir = make_base_model(tmp_path)
    pairs = write_pairs(tmp_path / "pairs.jsonl", 32)
    overrides = [
        "dpo.online=true", "dpo.reward_function=preference_fixtures:count_e",
        "dpo.samples_per_prompt=4", "dpo.pairs_per_prompt=2", "dpo.max_new_tokens=8",
        "dpo.heldout_fraction=0.25", "dpo.max_length=64", "dpo.train.max_steps=3",
        "dpo.train.micro_batch_size=4", "dpo.train.log_every=1", "dpo.train.dtype=fp32",
        "dpo.train.checkpoint_every=0", "dpo.optim.lr=5e-3", "dpo.optim.warmup_steps=2",
        "dpo.optim.schedule=constant", "dpo.optim.eps=1e-4",
    ]  # fmt: skip
    kw = dict(base_model_dir=model_dir, prompts_path=pairs, progress=False)
    done = run_distributed(
        "forgeml.train.online_dpo:train_online_dpo",
        [*overrides, f"dpo.train.strategy={strategy}"], per_prompt=True,
        out_dir=tmp_path / "two", **kw,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    monkeypatch.syspath_prepend(str(TESTS))
    monkeypatch.setattr(online_dpo, "sample_groups", per_prompt_sampler(online_dpo.sample_groups))
    one_recipe = load_recipe(None, [*overrides, "dpo.train.grad_accum_steps=2"])
    one = online_dpo.train_online_dpo(one_recipe, out_dir=tmp_path / "one", **kw)
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert two["world_size"] == 2 and two["strategy"] == strategy and one["world_size"] == 1
    assert two["reward_before"] == pytest.approx(one["reward_before"], rel=1e-9)
    assert two["reward_after"] == pytest.approx(one["reward_after"], rel=1e-9)
    got, ref = read_metrics(tmp_path / "two/metrics.jsonl"), read_metrics(tmp_path / "one/metrics.jsonl")  # fmt: skip
    assert [r["step"] for r in got] == [r["step"] for r in ref] == [1, 2, 3]
    assert any(r["pairs"] % 4 for r in ref)  # a micro-batch short of pairs somewhere
    for a, b in zip(got, ref, strict=True):
        assert (a["pairs"], a["ties"]) == (b["pairs"], b["ties"])
        assert a["reward_mean"] == pytest.approx(b["reward_mean"], rel=1e-9)
        for key in ("loss", "grad_norm", "rewards/margins", "rewards/accuracies"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-7), (a["step"], key)
    _close_weights(tmp_path / "two" / "model", tmp_path / "one" / "model")


@pytest.mark.slow
def test_grpo_two_processes_resume_equals_uninterrupted_run(tiny, reward_file, tmp_path):  # noqa: F811
    """Each process's samples are a function of the step and its rank, so a 2-process run
    resumed from its sharded step-2 checkpoint continues as if never stopped."""
    import shutil

    base, prompts = tiny
    overrides = [
        *FAST, reward_file, "rl.train.max_steps=4", "rl.train.checkpoint_every=2",
        "rl.train.keep_checkpoints=3", "rl.kl_coef=0.05", "rl.train.strategy=fsdp",
    ]  # fmt: skip
    kw = dict(base_model=base, prompts=prompts, progress=False)
    full, split = tmp_path / "full", tmp_path / "split"
    done = run_distributed("forgeml.train.rl:train_rl", overrides, out_dir=full, **kw)
    assert done.returncode == 0, done.stderr[-4000:]
    shutil.copytree(full / "checkpoints" / "step_00000002", split / "checkpoints" / "step_00000002")
    shutil.copy(full / "metrics.jsonl", split / "metrics.jsonl")
    done = run_distributed("forgeml.train.rl:train_rl", overrides, out_dir=split, resume=True, **kw)
    assert done.returncode == 0, done.stderr[-4000:]
    a, b = read_metrics(full / "metrics.jsonl"), read_metrics(split / "metrics.jsonl")
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    assert [r["reward_mean"] for r in a] == [r["reward_mean"] for r in b]
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    got, ref = load_file(split / "model/model.safetensors"), load_file(full / "model/model.safetensors")  # fmt: skip
    assert all(torch.equal(got[k], ref[k]) for k in ref)
