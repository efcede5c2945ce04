"""Shared training pieces: lr schedules, gradient accumulation, data order and rank slices,
atomic checkpoints with keep-last-K, metrics log."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from forgeml.core.config import ModelConfig, OptimConfig
from forgeml.core.errors import DataError
from forgeml.models.dense import Transformer
from forgeml.tokenizer.pack import TokenShards
from forgeml.train.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from forgeml.train.data import PretrainBatches, eval_batches
from forgeml.train.metrics import MetricsLogger, read_metrics
from forgeml.train.optim import build_optimizer, lr_at

TINY = ModelConfig(
    dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=128, vocab_size=256, max_seq_len=64
)


def write_token_shards(
    folder: Path, tokens: np.ndarray, *, vocab_size: int = 256, shard_tokens: int = 1000,
    doc_len: int = 50,
) -> Path:  # fmt: skip
    """Write the forgeml-shards-v1 format directly (documents of `doc_len` tokens, the last
    one of each being eos=0), split into shards of `shard_tokens`."""
    folder.mkdir(parents=True, exist_ok=True)
    tokens = np.asarray(tokens, dtype=np.uint16).copy()
    tokens[doc_len - 1 :: doc_len] = 0
    shards = []
    for i, start in enumerate(range(0, len(tokens), shard_tokens)):
        part = tokens[start : start + shard_tokens]
        part.astype("<u2").tofile(folder / f"shard_{i:05d}.bin")
        first_doc = -(-start // doc_len) * doc_len
        starts = np.arange(first_doc, start + len(part), doc_len, dtype=np.uint64) - start
        np.save(folder / f"shard_{i:05d}.docs.npy", starts)
        shards.append({
            "file": f"shard_{i:05d}.bin", "docs_file": f"shard_{i:05d}.docs.npy",
            "n_tokens": len(part), "n_docs": len(starts),
        })  # fmt: skip
    index = {
        "format": "forgeml-shards-v1", "dtype": "uint16", "vocab_size": vocab_size, "eos_id": 0,
        "bos_id": None, "n_tokens": len(tokens), "n_docs": sum(s["n_docs"] for s in shards),
        "n_bytes": 4 * len(tokens), "tokenizer_sha256": None, "shards": shards,
    }  # fmt: skip
    (folder / "index.json").write_text(json.dumps(index))
    return folder


def learnable_tokens(n: int, seed: int = 0, vocab_size: int = 256) -> np.ndarray:
    """A noisy counting sequence: next token is mostly predictable from the current one."""
    rng = np.random.default_rng(seed)
    out = (np.arange(n) * 7) % (vocab_size - 1) + 1
    noise = rng.random(n) < 0.1
    out[noise] = rng.integers(1, vocab_size, noise.sum())
    return out


def test_warmup_is_linear_and_reaches_peak():
    cfg = OptimConfig(lr=1.0, warmup_steps=10, schedule="constant")
    assert [lr_at(s, 100, cfg) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert lr_at(50, 100, cfg) == 1.0


def test_cosine_endpoints_and_monotone_decay():
    cfg = OptimConfig(lr=2.0, min_lr_ratio=0.1, warmup_steps=10, schedule="cosine")
    lrs = [lr_at(s, 100, cfg) for s in range(10, 100)]
    assert lrs[0] == pytest.approx(2.0)
    assert lrs[-1] == pytest.approx(0.2)
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False))
    # Cosine: the midpoint of the decay is the mean of peak and floor.
    mid = OptimConfig(lr=2.0, min_lr_ratio=0.1, warmup_steps=0, schedule="cosine")
    assert lr_at(50, 101, mid) == pytest.approx(1.1)


def test_wsd_plateau_then_linear_decay():
    cfg = OptimConfig(lr=1.0, min_lr_ratio=0.0, warmup_steps=5, schedule="wsd", decay_fraction=0.2)
    assert all(lr_at(s, 100, cfg) == 1.0 for s in range(5, 80))
    decay = [lr_at(s, 100, cfg) for s in range(80, 100)]
    assert decay[0] < 1.0 and decay[-1] == pytest.approx(0.0)
    steps = np.diff(decay)
    assert np.allclose(steps, steps[0])  # linear


def test_weight_decay_only_on_matrices():
    model = Transformer(TINY)
    opt = build_optimizer(model, OptimConfig(weight_decay=0.1), "cpu")
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decayed["params"]) and plain["params"]
    assert all(p.dim() == 1 for p in plain["params"])
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))


def test_grad_accumulation_matches_full_batch(tmp_path):
    shards = TokenShards(write_token_shards(tmp_path / "d", learnable_tokens(4000)))

    def grads(micro: int, accum: int) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = Transformer(TINY)
        data = PretrainBatches(shards, seq_len=16, global_batch_size=8, seed=1)
        for x, y in data.next_micro_batches(micro, accum):
            (model(x, y) / accum).backward()
        return [p.grad.clone() for p in model.parameters()]

    full, accumulated = grads(8, 1), grads(1, 8)
    for a, b in zip(full, accumulated, strict=True):
        assert a.abs().sum() > 0
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_data_order_is_seeded_and_resumable(tmp_path):
    shards = TokenShards(write_token_shards(tmp_path / "d", learnable_tokens(3000)))

    def make(seed: int = 3) -> PretrainBatches:
        return PretrainBatches(shards, seq_len=32, global_batch_size=8, seed=seed)

    a, b = make(), make()
    first = [a.next_micro_batches(4, 2) for _ in range(5)]
    assert all(
        torch.equal(x1, x2)
        for s1, s2 in zip(first, [b.next_micro_batches(4, 2) for _ in range(5)], strict=True)
        for (x1, _), (x2, _) in zip(s1, s2, strict=True)
    )
    other = make(seed=4).next_micro_batches(4, 2)
    assert not torch.equal(other[0][0], first[0][0][0])

    # Mid-epoch resume (the 93 windows of an epoch are not a multiple of 8).
    state = a.state_dict()
    expected = [a.next_micro_batches(8, 1)[0] for _ in range(20)]
    resumed = make()
    resumed.load_state_dict(json.loads(json.dumps(state)))
    for x, y in expected:
        rx, ry = resumed.next_micro_batches(8, 1)[0]
        assert torch.equal(rx, x) and torch.equal(ry, y)
    assert resumed.epoch >= 2


def test_epoch_visits_every_window_once_and_targets_are_shifted(tmp_path):
    # Token value == position + 1, so a window's first token says where it starts.
    tokens = np.arange(1, 1026)
    folder = write_token_shards(
        tmp_path / "d", tokens, vocab_size=2048, shard_tokens=300, doc_len=5000
    )
    data = PretrainBatches(TokenShards(folder), seq_len=32, global_batch_size=4, seed=0)
    assert data.n_windows == 32
    starts = []
    for epoch in range(2):
        assert data.epoch == epoch
        seen = []
        for _ in range(8):
            for x, y in data.next_micro_batches(2, 2):
                assert torch.equal(y, x + 1)  # contiguous windows, targets shifted by one
                seen += (x[:, 0] - 1).tolist()
        assert sorted(seen) == [32 * i for i in range(32)]
        starts.append(seen)
    assert starts[0] != starts[1]  # each epoch has its own permutation


def test_rank_slices_partition_the_global_batch(tmp_path):
    shards = TokenShards(write_token_shards(tmp_path / "d", learnable_tokens(5000)))
    whole = PretrainBatches(shards, seq_len=16, global_batch_size=12, seed=7)
    ranks = [
        PretrainBatches(shards, seq_len=16, global_batch_size=12, seed=7, rank=r, world_size=3)
        for r in range(3)
    ]
    for _ in range(4):
        (gx, gy), = whole.next_micro_batches(12, 1)  # fmt: skip
        parts = [torch.cat([x for x, _ in r.next_micro_batches(2, 2)]) for r in ranks]
        assert torch.equal(torch.cat(parts), gx)
    # Position is global: a 3-process state resumes in one process at the same place.
    single = PretrainBatches(shards, seq_len=16, global_batch_size=12, seed=7)
    single.load_state_dict(ranks[0].state_dict())
    assert torch.equal(
        single.next_micro_batches(12, 1)[0][0], whole.next_micro_batches(12, 1)[0][0]
    )


def test_too_little_data_is_a_clear_error(tmp_path):
    shards = TokenShards(write_token_shards(tmp_path / "d", learnable_tokens(40), doc_len=20))
    with pytest.raises(DataError, match="fewer than one window"):
        PretrainBatches(shards, seq_len=64, global_batch_size=1, seed=0)
    with pytest.raises(DataError):
        next(eval_batches(shards, 64, 2, 2))


def test_eval_batches_are_fixed_contiguous_windows(tmp_path):
    tokens = learnable_tokens(1000)
    shards = TokenShards(write_token_shards(tmp_path / "d", tokens, shard_tokens=128))
    batches = list(eval_batches(shards, 32, 8, 100))
    assert len(batches) == 4 and batches[-1][0].shape == (7, 32)  # 31 windows
    x, y = batches[1]
    ref = shards.window(8 * 32, 8 * 32 + 1)
    assert torch.equal(x[0], torch.from_numpy(ref[:32])) and torch.equal(
        y[0], torch.from_numpy(ref[1:33])
    )
    assert len(list(eval_batches(shards, 32, 8, 2))) == 2


def _step_model(seed: int = 0) -> tuple[Transformer, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = Transformer(TINY)
    opt = build_optimizer(model, OptimConfig(), "cpu")
    x = torch.randint(0, 256, (2, 16))
    model(x, x).backward()
    opt.step()
    return model, opt


def test_checkpoint_roundtrip_restores_everything(tmp_path):
    model, opt = _step_model()
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    path = save_checkpoint(
        tmp_path, 7, model=model, optimizer=opt, data_state={"consumed": 56}, extra={"h": "x"}
    )
    assert path.name == "step_00000007" and latest_checkpoint(tmp_path) == path
    expect = (random.random(), np.random.rand(), torch.rand(3))

    fresh, fresh_opt = _step_model(seed=1)
    state = load_checkpoint(path, model=fresh, optimizer=fresh_opt)
    assert state["step"] == 7 and state["data"] == {"consumed": 56} and state["extra"] == {"h": "x"}
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    exp_avg = [s["exp_avg"] for s in opt.state.values()]
    assert all(
        torch.equal(a, b["exp_avg"]) for a, b in zip(exp_avg, fresh_opt.state.values(), strict=True)
    )
    assert (random.random(), np.random.rand()) == expect[:2] and torch.equal(
        torch.rand(3), expect[2]
    )


def test_leftover_temp_dir_is_ignored_and_old_checkpoints_pruned(tmp_path):
    model, opt = _step_model()
    for step in (5, 10, 15):
        save_checkpoint(tmp_path, step, model=model, optimizer=opt, data_state={}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000010", "step_00000015"]

    # A save killed before its rename leaves only a temp folder: never picked as latest.
    torn = tmp_path / ".tmp-step_00000020.abc123"
    torn.mkdir()
    (torn / "state.pt").write_bytes(b"truncated")
    assert latest_checkpoint(tmp_path).name == "step_00000015"
    save_checkpoint(tmp_path, 25, model=model, optimizer=opt, data_state={}, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000015", "step_00000025"]
    assert latest_checkpoint(tmp_path / "missing") is None


def test_metrics_log_is_jsonl_and_drops_records_after_the_resume_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLogger(path, max_steps=10, progress=False)
    for step in range(1, 7):
        log.log({"step": step, "loss": 1.0 / step})
    assert len(read_metrics(path)) == 6  # flushed before close
    log.close()
    with open(path, "a") as fh:
        fh.write('{"step": 7, "lo')  # torn by a kill
    assert [r["step"] for r in read_metrics(path)] == list(range(1, 7))
    resumed = MetricsLogger(path, max_steps=10, progress=False, resume_step=4)
    resumed.log({"step": 5, "loss": 0.5})
    resumed.close()
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3, 4, 5]
    MetricsLogger(path, max_steps=10, is_main=False).log({"step": 9})
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3, 4, 5]
