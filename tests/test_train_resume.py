"""The shared resume kit (forgeml.train.resume) and seed helper (forgeml.core.seeds): every
training loop resumes through `resume_or_start`, a checkpoint whose results-deciding settings
changed is refused naming the field (the reward model too, which checked nothing before),
and `derive_seed` gives each call site the seed its old formula gave."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from preference_fixtures import make_base_model, write_pairs

import forgeml.train
from forgeml.core.config import validate_recipe
from forgeml.core.errors import ConfigError, NotFoundError
from forgeml.core.seeds import SEED_STREAMS, derive_seed
from forgeml.train.checkpoint import save_checkpoint
from forgeml.train.resume import (
    check_same_run,
    identity_record,
    resume_or_start,
)

LOOPS = ("pretrain", "sft", "dpo", "online_dpo", "reward_model", "rl")


@pytest.mark.parametrize("loop", LOOPS)
def test_every_loop_resumes_through_the_kit(loop: str) -> None:
    """The loop resumes through the kit (`open_run`, or `resume_or_start` directly) and loads
    no checkpoint itself."""
    path = Path(forgeml.train.__file__).parent / f"{loop}.py"
    tree = ast.parse(path.read_text())
    calls = {  # `open_run(...)` or `kit.open_run(...)`
        node.func.id if isinstance(node.func, ast.Name) else node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name | ast.Attribute)
    }
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert {"resume_or_start", "open_run"} & calls
    assert not {"load_checkpoint", "latest_checkpoint"} & imported


def _model_and_optimizer() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def test_resume_or_start_restores_the_same_run_and_names_what_changed(tmp_path) -> None:
    model, opt = _model_and_optimizer()
    identity = {"optim": {"lr": 0.1}, "rl": {"rewards": [{"kind": "x"}], "lora": {"rank": 4}}}
    assert resume_or_start(tmp_path, identity, model=model, optimizer=opt, resume=False).step == 0
    with pytest.raises(NotFoundError, match="no checkpoint in"):
        resume_or_start(tmp_path, identity, model=model, optimizer=opt, resume=True)
    save_checkpoint(
        tmp_path, 3, model=model, optimizer=opt, data_state={"pos": 7},
        extra={**identity_record(identity), "loss": 1.5},
    )  # fmt: skip
    fresh, fresh_opt = _model_and_optimizer()
    with torch.no_grad():
        fresh.weight.zero_()
    start = resume_or_start(tmp_path, identity, model=fresh, optimizer=fresh_opt, resume=True)
    assert (start.step, start.data, start.saved["loss"], start.resumed) == (
        3,
        {"pos": 7},
        1.5,
        True,
    )
    assert torch.equal(fresh.weight, model.weight)
    changed = {**identity, "rl": {**identity["rl"], "lora": {"rank": 8}}}
    with pytest.raises(ConfigError, match=r"rl\.lora\.rank: 4 -> 8"):
        resume_or_start(tmp_path, changed, model=fresh, optimizer=fresh_opt, resume=True)


def test_a_checkpoint_without_settings_is_refused_by_its_hash() -> None:
    with pytest.raises(ConfigError, match="config hash differs"):
        check_same_run({"config_hash": "0" * 64}, {"optim": {"lr": 0.1}}, Path("ckpt"))
    check_same_run(identity_record({"optim": {"lr": 0.1}}), {"optim": {"lr": 0.1}}, Path("c"))


def _rm_recipe(**optim: object):
    return validate_recipe({
        "reward_model": {"heldout_fraction": 0.25, "max_length": 64,
                         "train": {"max_steps": 2, "micro_batch_size": 8, "log_every": 1,
                                   "dtype": "fp32", "checkpoint_every": 0, "device": "cpu"},
                         "optim": {"lr": 3e-3, "warmup_steps": 3, "weight_decay": 0.1,
                                   **optim}},
    })  # fmt: skip


def test_reward_model_refuses_a_resume_whose_settings_changed(tmp_path) -> None:
    from forgeml.train.reward_model import train_reward_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny kernels: no OpenMP spin-waits on the busy 2-core box
    try:
        kw = dict(
            base_model_dir=make_base_model(tmp_path),
            pairs_path=write_pairs(tmp_path / "pairs.jsonl", 16), out_dir=tmp_path / "run",
            progress=False,
        )  # fmt: skip
        train_reward_model(_rm_recipe(), **kw)
        with pytest.raises(ConfigError, match=r"optim\.lr: 0\.003 -> 0\.001"):
            train_reward_model(_rm_recipe(lr=1e-3), resume=True, **kw)
        summary = train_reward_model(_rm_recipe(), resume=True, **kw)  # the same run: resumes
        assert summary["steps"] == 2
    finally:
        torch.set_num_threads(threads)


OLD_FORMULAS = {
    "pretrain.epoch": lambda s, i: s + i,
    "sft.epoch": lambda s, i: s + i,
    "preference.epoch": lambda s, i: s * 100_003 + i,
    "rl.prompt_epoch": lambda s, i: s * 1_000_003 + i,
    "rl.spare_prompts": lambda s, i: s + 7919,
    "rl.sample_step": lambda s, i: s * 1_000_003 + i,
    "online_dpo.sample_step": lambda s, i: s * 1_000_003 + i * 10_007,
    "online_dpo.eval": lambda s, i: s + 7_000_000,
    "sample.prompt_batch": lambda s, i: s + 1000 * i,
    "sample.rank": lambda s, i: s + 104_729 * i,
    "eval.example": lambda s, i: s * 1_000_003 + i,
    "synth.teacher_request": lambda s, i: s * 100_003 + i,
    "hpo.trial_sampler": lambda s, i: s + 10_007 * i,
    # streams added after derive_seed (no older call site to match): their own formulas
    "mm.heldout": lambda s, i: s * 15_485_863,
    "mm.batch": lambda s, i: s * 15_485_863 + 1 + 7_919 * i,
}


def test_derive_seed_gives_every_call_site_its_old_seed() -> None:
    assert OLD_FORMULAS.keys() == SEED_STREAMS.keys()
    for stream, old in OLD_FORMULAS.items():
        for base in (0, 1, 11, 1337, 2**31 - 1):
            for index in (0, 1, 5, 99):
                assert derive_seed(base, stream, index) == old(base, index), (stream, base)
    with pytest.raises(ValueError, match="unknown seed stream 'nope'"):
        derive_seed(0, "nope")
