"""The perplexity eval stage: a model and its token shards in, an eval asset out.

Held-out loss, perplexity and bits-per-byte (with the unigram baseline beside them), linked
to the model in the lineage; the pipeline runs it right after pre-training.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from forgeml.core.config import EvalConfig
from forgeml.core.errors import DataError, ForgeError
from forgeml.core.io import atomic_write_text
from forgeml.core.workspace import Workspace
from forgeml.pipeline.runtime import Notify, Output, StageResult, model_asset, run_stage
from forgeml.registry import open_registry


def perplexity_eval_stage(
    ws: Workspace,
    model_ref: str,
    cfg: EvalConfig,
    *,
    shards_ref: str | None = None,
    seq_len: int = 256,
    dtype: str = "auto",
    force: bool = False,
    notify: Notify | None = None,
) -> StageResult:
    """Held-out loss, perplexity and bits-per-byte → eval asset linked to the model."""
    from forgeml.eval.perplexity import evaluate_perplexity, token_byte_lengths, unigram_counts
    from forgeml.models.hf_io import load_model
    from forgeml.tokenizer.pack import TokenShards

    model = model_asset(ws, model_ref)
    shards_ref = shards_ref or model.metadata.get("shards")
    if not shards_ref:
        raise ForgeError(
            f"model {model.id} has no recorded evaluation data", hint="pass --data SHARDS"
        )
    shards = open_registry(ws).get_asset(shards_ref)
    heldout = Path(shards.path) / "heldout"
    if not heldout.is_dir():
        raise DataError(
            f"{shards.id} has no held-out split", hint="re-pack with data.heldout_fraction > 0"
        )
    seq = cfg.seq_len or seq_len
    config = {
        "eval": cfg.model_dump(mode="json"),
        "seq_len": seq,
        "dtype": dtype,
        "suite": "perplexity",
    }

    def body(work: Path) -> tuple[list[Output], dict[str, Any]]:
        from forgeml.core.runtime import pick_device

        device = pick_device()
        net = load_model(model.path, device=device)
        held = TokenShards(heldout)
        train = Path(shards.path) / "train"
        result = evaluate_perplexity(
            net,
            held,
            byte_lengths=token_byte_lengths(Path(model.path), held.vocab_size),
            seq_len=min(seq, net.cfg.max_seq_len),
            batch_size=cfg.batch_size,
            max_batches=cfg.max_batches,
            device=device,
            dtype=dtype,
            unigram=unigram_counts(TokenShards(train)) if train.is_dir() else None,
        )
        out = work / "eval"
        out.mkdir(parents=True, exist_ok=True)
        record = {"suite": "perplexity", "model": model.id, "data": shards.id, **result.to_dict()}
        atomic_write_text(out / "eval.json", json.dumps(record, indent=1))
        name = f"{model.name}-perplexity"
        return [Output("eval", name, out, dict(record), parents=[model.id])], result.to_dict()

    return run_stage(ws, "eval", config, [model.id, shards.id], body, force=force, notify=notify)
