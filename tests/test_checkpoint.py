"""Sharded checkpoints (torch.distributed.checkpoint) in one process: the folder layout, an
exact round trip, the older single-file format, async saves that appear only once written
(also after a kill -9 mid-save), per-rank RNG states, and checkpoints of another recipe
refused before any tensor is read."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_pretrain import make_data, tiny_recipe
from test_train_pieces import _step_model

from forgeml.core.errors import ConfigError
from forgeml.train import checkpoint as ckpt
from forgeml.train.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    read_checkpoint_meta,
    save_checkpoint,
    wait_for_checkpoint,
)
from forgeml.train.pretrain import pretrain
from forgeml.train.resume import identity_record, resume_or_start

ROOT = Path(__file__).resolve().parents[1]


def _equal_states(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _exp_avgs(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [s["exp_avg"] for s in opt.state.values()]


def test_dcp_checkpoint_layout_and_exact_round_trip(tmp_path):
    model, opt = _step_model()
    identity = {"optim": {"lr": 0.1}}
    torch.manual_seed(9)
    path = save_checkpoint(
        tmp_path, 4, model=model, optimizer=opt, data_state={"consumed": 32},
        extra={**identity_record(identity), "train_loss": 2.5},
    )  # fmt: skip
    expect = torch.rand(3)
    names = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}
    assert {".metadata", "meta.json", "rng/rank_00000.pt"} <= names
    assert any(n.endswith(".distcp") for n in names) and "state.pt" not in names
    meta = json.loads((path / "meta.json").read_text())
    assert meta["config_hash"] == identity_record(identity)["config_hash"]
    assert meta["data"] == {"consumed": 32} and meta["checkpoint"]["world_size"] == 1
    assert meta["checkpoint"]["model_config"]["dim"] == model.cfg.dim
    assert read_checkpoint_meta(path)["extra"]["train_loss"] == 2.5

    fresh, fresh_opt = _step_model(seed=1)
    assert not _equal_states(model, fresh)
    state = load_checkpoint(path, model=fresh, optimizer=fresh_opt)
    assert (state["step"], state["data"], state["world_size"]) == (4, {"consumed": 32}, 1)
    assert _equal_states(model, fresh)
    assert all(map(torch.equal, _exp_avgs(opt), _exp_avgs(fresh_opt)))
    assert fresh_opt.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert torch.equal(torch.rand(3), expect)  # the RNG continues where the save left it


def test_single_file_checkpoints_still_load(tmp_path):
    """A checkpoint written before DCP (one state.pt by rank 0) resumes as before."""
    model, opt = _step_model()
    identity = {"optim": {"lr": 0.1}}
    old = tmp_path / "step_00000005"
    old.mkdir()
    rng = ckpt._rng_state()
    torch.save(
        {"step": 5, "model": model.state_dict(), "optimizer": opt.state_dict(),
         "data": {"consumed": 40}, "rng": rng, "extra": identity_record(identity)},
        old / "state.pt",
    )  # fmt: skip
    fresh, fresh_opt = _step_model(seed=1)
    start = resume_or_start(tmp_path, identity, model=fresh, optimizer=fresh_opt, resume=True)
    assert (start.step, start.data) == (5, {"consumed": 40})
    assert _equal_states(model, fresh)
    assert all(map(torch.equal, _exp_avgs(opt), _exp_avgs(fresh_opt)))
    with pytest.raises(ConfigError, match=r"optim\.lr: 0\.1 -> 0\.2"):
        resume_or_start(tmp_path, {"optim": {"lr": 0.2}}, model=fresh, optimizer=fresh_opt,
                        resume=True)  # fmt: skip


def test_a_checkpoint_of_another_recipe_is_refused_before_loading(tmp_path):
    model, opt = _step_model()
    save_checkpoint(tmp_path, 2, model=model, optimizer=opt, data_state={},
                    extra=identity_record({"model": {"dim": 64}}))  # fmt: skip
    fresh, fresh_opt = _step_model(seed=1)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(ConfigError, match=r"model\.dim: 64 -> 32"):
        resume_or_start(tmp_path, {"model": {"dim": 32}}, model=fresh, optimizer=fresh_opt,
                        resume=True)  # fmt: skip
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())


def test_async_save_appears_only_once_written_and_keeps_the_state_of_its_step(tmp_path):
    model, opt = _step_model()
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    path = save_checkpoint(tmp_path, 3, model=model, optimizer=opt, data_state={}, async_save=True)
    with torch.no_grad():  # training goes on while the checkpoint is written
        for p in model.parameters():
            p.add_(1.0)
    assert not path.exists() and latest_checkpoint(tmp_path) is None
    assert wait_for_checkpoint() == path and list_checkpoints(tmp_path) == [path]
    assert wait_for_checkpoint() is None
    fresh, fresh_opt = _step_model(seed=1)
    load_checkpoint(path, model=fresh, optimizer=fresh_opt)
    assert all(torch.equal(saved[k], v) for k, v in fresh.state_dict().items())
    # The next save publishes a pending one first; pruning keeps the newest `keep`.
    save_checkpoint(tmp_path, 4, model=model, optimizer=opt, data_state={}, async_save=True)
    save_checkpoint(tmp_path, 5, model=model, optimizer=opt, data_state={}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000004", "step_00000005"]


def test_a_rank_that_did_not_exist_gets_its_own_reproducible_rng(tmp_path, monkeypatch):
    model, opt = _step_model()
    random.seed(1)
    path = save_checkpoint(tmp_path, 1, model=model, optimizer=opt, data_state={})
    draws = {}
    for rank in (0, 1, 2, 1):
        monkeypatch.setattr(ckpt, "_rank", lambda rank=rank: rank)
        load_checkpoint(path, model=model)
        draws.setdefault(rank, []).append((random.random(), np.random.rand(), torch.rand(1).item()))
    assert draws[1][0] == draws[1][1]  # reproducible
    assert len({draws[0][0], draws[1][0], draws[2][0]}) == 3  # and distinct per rank


def test_a_resume_that_cannot_keep_the_global_batch_is_refused(tmp_path):
    train, _ = make_data(tmp_path, n_train=6000)
    out = tmp_path / "run"
    pretrain(
        tiny_recipe(max_steps=2, checkpoint_every=1),
        train_shards=train,
        out_dir=out,
        progress=False,
    )  # fmt: skip (global batch 4 x 2 = 8)
    with pytest.raises(ConfigError, match="global batch of 8 sequences cannot be split"):
        pretrain(tiny_recipe(max_steps=2, micro_batch_size=3), train_shards=train, out_dir=out,
                 resume=True, progress=False)  # fmt: skip


_KILLED_SAVER = """
import sys, time, torch
from forgeml.train.checkpoint import save_checkpoint, wait_for_checkpoint
torch.manual_seed(0)
model = torch.nn.Sequential(*[torch.nn.Linear(2048, 2048, bias=False) for _ in range(8)])
opt = torch.optim.SGD(model.parameters(), lr=0.1)
save_checkpoint(sys.argv[1], 1, model=model, optimizer=opt, data_state={"consumed": 1})
with torch.no_grad():
    for p in model.parameters():
        p.add_(1.0)
save_checkpoint(sys.argv[1], 2, model=model, optimizer=opt, data_state={"consumed": 2},
                async_save=True)
print("async save started", flush=True)
wait_for_checkpoint()
print("async save done", flush=True)
time.sleep(60)
"""


@pytest.mark.slow
def test_kill_9_during_an_async_save_leaves_the_previous_checkpoint_loadable(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_SAVER, str(tmp_path)], cwd=ROOT,
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout.readline().strip() == "async save started"
    torn = tmp_path / ".tmp-step_00000002.dcp"
    deadline = time.monotonic() + 30
    while not any(torn.glob("*.distcp")) and time.monotonic() < deadline:
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert torn.is_dir() and not (torn / ".metadata").exists(), "the kill came after the save"
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000001"]

    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(2048, 2048, bias=False) for _ in range(8)])
    expect = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    state = load_checkpoint(latest_checkpoint(tmp_path), model=model, optimizer=opt)
    assert state["data"] == {"consumed": 1}
    assert all(torch.equal(expect[k], v) for k, v in model.state_dict().items())
    save_checkpoint(tmp_path, 3, model=model, optimizer=opt, data_state={})
    assert not torn.exists()  # the torn save is pruned by the next one


def test_resume_auto_starts_without_a_checkpoint_and_continues_one(tmp_path):
    model, opt = _step_model()
    identity = {"optim": {"lr": 0.1}}
    kw = dict(model=model, optimizer=opt, resume="auto")
    assert not resume_or_start(tmp_path, identity, **kw).resumed
    save_checkpoint(tmp_path, 6, model=model, optimizer=opt, data_state={"consumed": 48},
                    extra=identity_record(identity))  # fmt: skip
    start = resume_or_start(tmp_path, identity, **kw)
    assert (start.resumed, start.step, start.data) == (True, 6, {"consumed": 48})


def test_a_lora_run_round_trips_with_its_frozen_base(tmp_path):
    """Only the adapters are in the optimizer; the frozen base is saved and restored too."""
    from test_train_pieces import TINY

    from forgeml.core.config import OptimConfig
    from forgeml.models.dense import Transformer
    from forgeml.models.lora import apply_lora
    from forgeml.train.optim import build_optimizer

    def lora_model(seed: int):
        torch.manual_seed(seed)
        model = Transformer(TINY)
        apply_lora(model, ["wqkv", "w2"], rank=4, alpha=8.0)
        opt = build_optimizer(model, OptimConfig(lr=1e-2), "cpu")
        x = torch.randint(0, 256, (2, 16))
        model(x, x).backward()
        opt.step()
        return model, opt

    model, opt = lora_model(0)
    path = save_checkpoint(tmp_path, 1, model=model, optimizer=opt, data_state={})
    fresh, fresh_opt = lora_model(1)
    load_checkpoint(path, model=fresh, optimizer=fresh_opt)
    assert _equal_states(model, fresh)
    assert len(opt.state) == len(fresh_opt.state) > 0
    assert all(map(torch.equal, _exp_avgs(opt), _exp_avgs(fresh_opt)))


def test_pretrain_with_async_checkpoints_saves_what_a_synchronous_run_saves(tmp_path, monkeypatch):
    from test_pretrain import weights

    background_saves = []
    async_save = ckpt.dcp.async_save
    monkeypatch.setattr(
        ckpt.dcp, "async_save", lambda *a, **kw: background_saves.append(1) or async_save(*a, **kw)
    )
    train, _ = make_data(tmp_path, n_train=6000)
    runs = {}
    for mode in (False, True):
        out = tmp_path / f"async_{mode}"
        recipe = tiny_recipe(max_steps=4, checkpoint_every=1, keep_checkpoints=3,
                             async_checkpoint=mode)  # fmt: skip
        pretrain(recipe, train_shards=train, out_dir=out, progress=False)
        runs[mode] = out
        assert [p.name for p in list_checkpoints(out / "checkpoints")] == [
            "step_00000002", "step_00000003", "step_00000004",
        ]  # fmt: skip
        assert not list((out / "checkpoints").glob(".tmp-*"))
    assert len(background_saves) == 3  # steps 1-3; the final save is synchronous
    sync, background = weights(runs[False]), weights(runs[True])
    assert all(torch.equal(sync[k], background[k]) for k in sync)
    for step in ("step_00000003", "step_00000004"):
        a = read_checkpoint_meta(runs[False] / "checkpoints" / step)
        b = read_checkpoint_meta(runs[True] / "checkpoints" / step)
        assert a["data"] == b["data"] and a["extra"]["train_loss"] == b["extra"]["train_loss"]
