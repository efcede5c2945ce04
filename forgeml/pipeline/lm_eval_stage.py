"""lm-evaluation-harness tasks as a registered eval run: model + task definitions in, eval out.

Each local lm-eval task (its YAML and data files) is registered as a dataset asset, so the
eval asset's lineage names the model and the exact task it was scored on. The eval asset
has our suite layout (results.json, examples/*.jsonl, report.html) plus lm-eval's own
aggregate output, so reports and the gate read it like any suite eval.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from forgeml.core.config import config_hash
from forgeml.core.errors import ForgeError
from forgeml.core.io import atomic_write_text
from forgeml.core.workspace import Workspace
from forgeml.pipeline.runtime import Notify, Output, StageResult, run_stage
from forgeml.registry import open_registry

LM_EVAL_OUTPUT = "lm_eval_output.json"


def _register_task(reg, ws: Workspace, loaded, name: str) -> str:
    """The task's resolved config and files as a dataset asset (content-addressed, so the
    same task definition registers once)."""
    folder = ws.runs_dir / "lm-eval-tasks" / loaded.fingerprints[name][:16]
    if not folder.is_dir():
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "files").mkdir(parents=True)
        config = loaded.tasks[name].dump_config()
        atomic_write_text(tmp / "task_config.json", json.dumps(config, indent=1, default=str))
        for f in loaded.files[name]:
            if f.is_file():
                shutil.copy2(f, tmp / "files" / f.name)
        tmp.rename(folder)
    meta = {
        "format": "lm-eval-task",
        "task": name,
        "sources": [str(f) for f in loaded.files[name]],
        "fingerprint": loaded.fingerprints[name],
    }
    return reg.add_asset("dataset", f"lm-eval-task-{name}", folder, metadata=meta).id


def lm_eval_stage(
    ws: Workspace,
    model_ref: str,
    tasks: Sequence[str],
    *,
    include_path: Sequence[str | Path] = (),
    builtin_tasks: bool = False,
    num_fewshot: int | None = None,
    limit: int | None = None,
    seed: int = 0,
    batch_size: int = 8,
    device: str = "auto",
    dtype: str = "auto",
    force: bool = False,
    notify: Notify | None = None,
) -> StageResult:
    """Evaluate a model asset on lm-eval tasks (names under `include_path` or YAML paths)
    through the `forgeml` lm-eval model type → eval asset (parents: model + task assets)."""
    import lm_eval

    from forgeml.core.runtime import pick_device
    from forgeml.eval.gate import EXAMPLES_DIR, RESULTS_FILE, load_eval_record
    from forgeml.eval.lm_eval_adapter import ForgeLM, lm_eval_records, load_tasks, run_lm_eval
    from forgeml.eval.report import eval_report_html
    from forgeml.eval.tasks import EvalModel

    reg = open_registry(ws)
    model_asset = reg.get_asset(model_ref)
    if model_asset.kind != "model":
        raise ForgeError(f"{model_asset.id} is a {model_asset.kind}, not a model")
    loaded = load_tasks(tasks, include_path, builtin=builtin_tasks)
    task_assets = {name: _register_task(reg, ws, loaded, name) for name in loaded.tasks}
    config = {
        "tasks": dict(sorted(loaded.fingerprints.items())),
        "num_fewshot": num_fewshot,
        "limit": limit,
        "seed": seed,
        "dtype": dtype,
        "lm_eval_version": lm_eval.__version__,
    }
    inputs = [model_asset.id, *sorted(task_assets.values())]

    def body(work: Path) -> tuple[list[Output], dict[str, Any]]:
        model = EvalModel.from_dir(
            model_asset.path, device=pick_device(device), dtype=dtype, batch_size=batch_size
        )
        if notify:
            notify(f"lm-eval: {', '.join(loaded.tasks)} on {model_asset.name}")
        output = run_lm_eval(ForgeLM(eval_model=model), loaded, num_fewshot=num_fewshot,
                             limit=limit, seed=seed)  # fmt: skip
        summary_tasks, examples = lm_eval_records(output, loaded)
        for name, info in summary_tasks.items():
            info["dataset"] = task_assets[name]
        out = work / "eval"
        (out / EXAMPLES_DIR).mkdir(parents=True, exist_ok=True)
        for name, rows in examples.items():
            lines = "".join(json.dumps(e, default=str) + "\n" for e in rows)
            atomic_write_text(out / EXAMPLES_DIR / f"{name}.jsonl", lines)
        raw = {k: output.get(k) for k in ("results", "configs", "versions", "n-shot", "n-samples")}
        atomic_write_text(out / LM_EVAL_OUTPUT, json.dumps(raw, indent=1, default=str))
        suite = "lm-eval:" + "+".join(sorted(loaded.tasks))
        summary = {
            "suite": suite,
            "suite_version": f"lm-eval {lm_eval.__version__}",
            "suite_hash": config_hash(config["tasks"]),
            "suite_path": None,
            "model": model_asset.id,
            "model_name": model_asset.name,
            "tasks": summary_tasks,
        }
        atomic_write_text(out / RESULTS_FILE, json.dumps(summary, indent=1))
        atomic_write_text(out / "report.html", eval_report_html(load_eval_record(out)))
        metrics = {
            f"{name}/{k}": v
            for name, info in summary_tasks.items()
            for k, v in info["metrics"].items()
        }
        meta = {k: v for k, v in summary.items() if k != "tasks"}
        meta.update(format="lm-eval", metrics=metrics, tasks=sorted(loaded.tasks))
        name = f"{model_asset.name}-lm-eval"
        parents = [model_asset.id, *task_assets.values()]
        return [Output("eval", name, out, meta, parents=parents)], metrics

    return run_stage(ws, "lm-eval", config, inputs, body, force=force, seed=seed, notify=notify)
