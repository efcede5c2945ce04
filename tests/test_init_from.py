"""`train.init_from` is resolved once, by the caller (pipeline/pretrain_stage.py or cpt): the
pre-training loop receives a recipe whose `model` is the init model's architecture and whose
`train.init_from` is its folder, starts from exactly those weights, and refuses a recipe
whose `model` is another architecture instead of reading one of its own."""

from __future__ import annotations

import json

import pytest
import torch
from preference_fixtures import make_base_model
from test_train_pieces import learnable_tokens, write_token_shards

from forgeml.core.config import validate_recipe
from forgeml.core.errors import ConfigError
from forgeml.models.hf_io import load_model, read_model_config
from forgeml.tokenizer.pack import TokenShards
from forgeml.train.data import PretrainBatches
from forgeml.train.pretrain import pretrain


def test_the_loop_starts_from_the_resolved_init_model_and_refuses_another(tmp_path) -> None:
    model_dir = make_base_model(tmp_path / "m")
    cfg = read_model_config(model_dir)
    tokens = learnable_tokens(4000, vocab_size=cfg.vocab_size)
    shards = write_token_shards(tmp_path / "shards", tokens, vocab_size=cfg.vocab_size)
    train = {"max_steps": 1, "micro_batch_size": 4, "seq_len": 32, "dtype": "fp32",
             "eval_every": 0, "checkpoint_every": 0, "log_every": 1, "device": "cpu",
             "init_from": str(model_dir)}  # fmt: skip
    resolved = validate_recipe({"model": cfg.model_dump(mode="json"), "train": train})
    pretrain(resolved, train_shards=shards, out_dir=tmp_path / "run", progress=False)

    # Step 1's loss is the init weights' loss on the first batch: it started from them.
    base = load_model(model_dir)
    batches = PretrainBatches(TokenShards(shards), seq_len=32, global_batch_size=4, seed=1337)
    ((x, y),) = batches.next_micro_batches(4, 1)
    (row,) = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    with torch.no_grad():
        assert abs(row["loss"] - base(x, y).item()) < 1e-5

    unresolved = validate_recipe({"model": {"dim": 64, "n_heads": 4}, "train": train})
    with pytest.raises(ConfigError, match="is not the recipe's `model` architecture"):
        pretrain(unresolved, train_shards=shards, out_dir=tmp_path / "other", progress=False)
