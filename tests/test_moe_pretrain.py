"""The pre-training loop trains a mixture-of-experts model exactly as a dense one, logging
router statistics, and the result loads back as an MoE model."""

from __future__ import annotations

import json

from test_pretrain import make_data, tiny_recipe

from forgeml.models.hf_io import load_model
from forgeml.models.moe import MoETransformer
from forgeml.train.pretrain import pretrain


def test_moe_pretrain_learns_logs_router_stats_and_reloads(tmp_path) -> None:
    train, held = make_data(tmp_path)
    base = tiny_recipe(max_steps=30)
    recipe = base.model_copy(
        update={"model": base.model.model_copy(update={"arch": "moe", "n_experts": 4, "top_k": 2})}
    )
    summary = pretrain(recipe, train_shards=train, out_dir=tmp_path / "run", eval_shards=held,
                       progress=False)  # fmt: skip
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert records[-1]["loss"] < records[0]["loss"] - 0.5
    assert any(k.startswith("moe_") for k in records[-1]), records[-1]
    model = load_model(summary["model_dir"])
    assert isinstance(model, MoETransformer)
