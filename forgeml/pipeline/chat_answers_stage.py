"""The chat-answers eval stage: a chat model and held-out chat records in, an eval asset out
(reply vs reference answer, eval/chat_answers.py); post-training measures SFT with it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from forgeml.core.io import atomic_write_text, sha256_file
from forgeml.core.workspace import Workspace
from forgeml.eval.chat_answers import evaluate_chat_answers, load_answer_records
from forgeml.pipeline.runtime import Notify, Output, StageResult, model_asset, run_stage


def chat_answers_eval_stage(
    ws: Workspace,
    model_ref: str,
    records_path: str | Path,
    *,
    limit: int | None = 60,
    max_new_tokens: int = 48,
    force: bool = False,
    notify: Notify | None = None,
) -> StageResult:
    """A cached, registered eval run of `evaluate_chat_answers` → eval asset (eval.json)."""
    from forgeml.core.runtime import pick_device
    from forgeml.models.hf_io import load_model
    from forgeml.tokenizer.train import load_tokenizer

    asset = model_asset(ws, model_ref)
    records_path = Path(records_path).expanduser().resolve()
    records = load_answer_records(records_path, limit)
    config = {
        "suite": "chat-answers", "data_sha256": sha256_file(records_path), "limit": limit,
        "max_new_tokens": max_new_tokens,
    }  # fmt: skip

    def body(work: Path) -> tuple[list[Output], dict[str, Any]]:
        device = pick_device()
        model = load_model(asset.path, device=device).eval()
        result = evaluate_chat_answers(
            model, load_tokenizer(asset.path), records, max_new_tokens=max_new_tokens,
            device=device,
        )  # fmt: skip
        out = work / "eval"
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "eval.json", json.dumps({"model": asset.id, **result}, indent=1))
        metrics = {k: result[k] for k in ("n", "exact_match", "normalised_match", "answer_found")}
        meta = {"suite": "chat-answers", "model": asset.id, **metrics}
        return [Output("eval", f"{asset.name}-chat", out, meta, parents=[asset.id])], metrics

    return run_stage(ws, "eval", config, [asset.id], body, force=force, notify=notify)
