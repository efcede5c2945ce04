"""The infill eval stage: a FIM-trained model and a folder of damaged documents in, an eval
asset out (exact and whitespace-normalised match of the restored gaps, eval/infill.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from forgeml.core.errors import NotFoundError
from forgeml.core.io import atomic_write_text, sha256_file
from forgeml.core.workspace import Workspace
from forgeml.eval.infill import FimOrder, evaluate_infill
from forgeml.pipeline.runtime import Notify, Output, StageResult, model_asset, run_stage


def infill_eval_stage(
    ws: Workspace,
    model_ref: str,
    damaged_dir: str | Path,
    *,
    max_examples: int | None = 200,
    max_new_tokens: int = 16,
    order: FimOrder = "psm",
    force: bool = False,
    notify: Notify | None = None,
) -> StageResult:
    """`forgeml eval run MODEL --suite infill --data DIR`: a cached, registered eval run."""
    from forgeml.core.runtime import pick_device
    from forgeml.models.hf_io import load_model

    asset = model_asset(ws, model_ref)
    damaged_dir = Path(damaged_dir).expanduser().resolve()
    key_file = damaged_dir / "answers.json"
    if not key_file.is_file():
        raise NotFoundError(f"no answers.json in {damaged_dir}", hint="pass the damaged/ folder")
    config = {
        "suite": "infill", "answers_sha256": sha256_file(key_file),
        "max_examples": max_examples, "max_new_tokens": max_new_tokens, "order": order,
    }  # fmt: skip

    def body(work: Path) -> tuple[list[Output], dict[str, Any]]:
        device = pick_device()
        model = load_model(asset.path, device=device)
        result = evaluate_infill(
            model, asset.path, damaged_dir, max_examples=max_examples,
            max_new_tokens=max_new_tokens, device=device, order=order,
        )  # fmt: skip
        out = work / "eval"
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "eval.json", json.dumps({"model": asset.id, **result}, indent=1))
        metrics = {k: result[k] for k in ("n", "exact_match", "normalized_match")}
        meta = {"suite": "infill", "model": asset.id, **metrics}
        return [Output("eval", f"{asset.name}-infill", out, meta, parents=[asset.id])], metrics

    return run_stage(ws, "eval", config, [asset.id], body, force=force, notify=notify)
