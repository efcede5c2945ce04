"""`eval run` as one function: a model's held-out perplexity, its infill eval or a KPI suite,
chosen by `suite`. The CLI command and a queued eval job (forgeml.control.run_job) call it,
so both evaluate the same way; each result is a cached, registered eval run. A model folder
on disk (HF, or a vision/audio LM from save_multimodal) is registered first."""

from __future__ import annotations

from pathlib import Path

from forgeml.core.config import EvalConfig
from forgeml.core.errors import ForgeError
from forgeml.core.workspace import Workspace
from forgeml.pipeline.runtime import Notify, Output, StageResult, run_stage


def evaluate_model(
    ws: Workspace,
    model: str,
    *,
    suite: str = "perplexity",
    data: str | None = None,
    data_root: str | Path | None = None,
    batch_size: int = 8,
    max_batches: int = 64,
    seq_len: int = 256,
    dtype: str = "auto",
    force: bool = False,
    notify: Notify | None = None,
) -> StageResult:
    """Evaluate `model` → eval asset: `perplexity` (held-out windows of `data`, default the
    model's held-out shards), `infill` (the damaged folder `data`; `max_batches * batch_size`
    gaps at most) or a suite YAML (its data relative to `data_root`). `model` is an asset
    reference or a model folder."""
    model = registered_model(ws, model, notify=notify)
    if suite == "infill":
        from forgeml.pipeline.infill_stage import infill_eval_stage

        if data is None:
            raise ForgeError("--suite infill needs --data DAMAGED_DIR", hint="e.g. corpus/damaged")
        return infill_eval_stage(
            ws, model, data, max_examples=max_batches * batch_size, force=force, notify=notify
        )
    if suite != "perplexity":
        from forgeml.pipeline.eval_suite_stage import eval_suite_stage

        if not Path(suite).is_file():
            raise ForgeError(f"suite not found: {suite}", hint="pass `perplexity` or a suite YAML")
        return eval_suite_stage(
            ws, model, Path(suite), data_root=data_root, batch_size=batch_size, dtype=dtype,
            force=force, notify=notify,
        )  # fmt: skip
    from forgeml.pipeline.perplexity_stage import perplexity_eval_stage

    return perplexity_eval_stage(
        ws,
        model,
        EvalConfig(batch_size=batch_size, max_batches=max_batches, seq_len=seq_len),
        shards_ref=data,
        dtype=dtype,
        force=force,
        notify=notify,
    )


def registered_model(ws: Workspace, model: str, *, notify: Notify | None = None) -> str:
    """`model` itself, or for a model folder on disk the id of that folder as a model asset
    (a vision/audio LM registered as it is, cached by its files' sizes and times; any other
    through `forgeml import hf`)."""
    folder = Path(model).expanduser()
    if not (folder / "config.json").is_file():
        return model
    from forgeml.eval.media_suite import is_multimodal_dir
    from forgeml.pipeline.interop import _fingerprint, _stage_files, import_hf_stage

    if not is_multimodal_dir(folder):
        return import_hf_stage(ws, folder, notify=notify).output
    folder = folder.resolve()
    files = sorted(p for p in folder.iterdir() if p.is_file())

    def body(work: Path) -> tuple[list[Output], dict]:
        meta = {"source": str(folder), "format": "multimodal"}
        name = folder.parent.name if folder.name == "model" else folder.name  # a run's model/
        return [Output("model", name, _stage_files(files, work / "model"), meta)], {}

    config = {"source": str(folder), "fingerprint": _fingerprint(files)}
    return run_stage(ws, "import-multimodal", config, [], body, notify=notify).output
