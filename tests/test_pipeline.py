"""End to end: the quickstart pipeline at a reduced size, caching, lineage, resume."""

from __future__ import annotations

from pathlib import Path

import pytest

from forgeml.core.config import validate_recipe
from forgeml.pipeline.run import run_pipeline
from forgeml.registry import open_registry

TINY = {
    "name": "tiny",
    "data": {"name": "acme", "heldout_fraction": 0.1},
    "tokenizer": {"vocab_size": 512},
    "model": {
        "dim": 64,
        "n_layers": 2,
        "n_heads": 4,
        "n_kv_heads": 2,
        "ffn_hidden": 160,
        "max_seq_len": 128,
    },
    "optim": {"lr": 1e-2, "warmup_steps": 10},
    "train": {
        "max_steps": 100,
        "micro_batch_size": 16,
        "seq_len": 64,
        "eval_every": 0,
        "checkpoint_every": 0,
        "dtype": "fp32",
        "log_every": 20,
    },
    "eval": {"max_batches": 4, "infill_examples": 5},
    "fim": {"rate": 0.5},
    "generate": {"prompts": ["ACME"], "max_new_tokens": 8, "temperature": 0.0},
}


@pytest.fixture(scope="module")
def acme_corpus(tmp_path_factory) -> Path:
    from acme import generate_corpus

    out = tmp_path_factory.mktemp("acme")
    generate_corpus(out, seed=0, scale=0.15)
    return out


def tiny_recipe(corpus: Path, **overrides):
    raw = {**TINY, "data": {**TINY["data"], "sources": [str(corpus)]}}
    for section, values in overrides.items():
        raw[section] = {**raw.get(section, {}), **values}
    return validate_recipe(raw)


def test_pipeline_end_to_end_cached_and_lineage(workspace, acme_corpus: Path) -> None:
    rec = tiny_recipe(acme_corpus)
    first = run_pipeline(workspace, rec, progress=False)
    stages = [s.stage for s in first.stages]
    assert stages == ["ingest", "tokenizer", "pack", "pretrain", "eval", "eval"]
    infill = first.stages[-1].metrics  # the corpus has damaged documents with an answer key
    assert infill["n"] > 0 and 0.0 <= infill["exact_match"] <= 1.0
    assert not any(s.cached for s in first.stages)
    ev = first.stage("eval").metrics
    # the model learned something: well below the unigram baseline on held-out documents
    assert ev["loss"] < ev["unigram_loss"] - 0.3, ev
    assert ev["bits_per_byte"] > 0
    assert first.samples and isinstance(first.samples[0][1], str)

    notes: list[str] = []
    second = run_pipeline(workspace, rec, progress=False, notify=notes.append)
    assert all(s.cached for s in second.stages)
    assert [s.outputs for s in second.stages] == [s.outputs for s in first.stages]
    assert sum("cached" in n for n in notes) == 6

    reg = open_registry(workspace)
    dataset, model = first.stage("ingest").output, first.stage("pretrain").output
    up = {n["id"] for n in reg.lineage(model, "up").nodes}
    assert dataset in up and first.stage("tokenizer").output in up
    down = {n["id"] for n in reg.lineage(dataset, "down").nodes}
    assert {model, first.stage("eval").output} <= down

    run = reg.get_run(first.stage("pretrain").run_id)
    assert run.status == "succeeded" and run.config_hash and run.seed == rec.train.seed
    assert "torch" in run.library_versions

    # a change to training re-runs only training and what follows it
    changed = tiny_recipe(acme_corpus, train={"max_steps": 20})
    third = run_pipeline(workspace, changed, progress=False)
    cached = [(s.stage, s.cached) for s in third.stages]
    assert cached == [
        ("ingest", True),
        ("tokenizer", True),
        ("pack", True),
        ("pretrain", False),
        ("eval", False),
        ("eval", False),
    ]


def test_exported_model_loads_in_transformers(workspace, acme_corpus: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from forgeml.models.hf_io import load_model

    rec = tiny_recipe(acme_corpus, train={"max_steps": 5})
    res = run_pipeline(workspace, rec, progress=False)
    path = open_registry(workspace).get_asset(res.stage("pretrain").output).path
    hf = AutoModelForCausalLM.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    ids = torch.tensor([tok.encode("ACME-CL manual", add_special_tokens=False)])
    ours = load_model(path).eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, ours(ids), atol=1e-4, rtol=1e-4)


def test_train_pretrain_and_pipeline_run_train_the_same_model(tmp_path, acme_corpus) -> None:
    """`forgeml train pretrain R.yaml` prepares the data as `forgeml pipeline run R.yaml` does
    (curation and FIM packing included): the same recipe gives the same model asset."""
    import yaml
    from typer.testing import CliRunner

    from forgeml.cli import app
    from forgeml.core.workspace import init_workspace

    raw = tiny_recipe(
        acme_corpus,
        data={"curate": True},
        curate={"gopher_quality": {"min_words": 20, "max_symbol_word_ratio": 0.5},
                "gopher_repetition": {"enabled": False}},
        train={"max_steps": 6},
        eval={"infill_examples": 1},
        generate={"prompts": []},
    ).model_dump(mode="json")  # fmt: skip
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    models, datasets = [], []
    for command in (["train", "pretrain"], ["pipeline", "run"]):
        ws = init_workspace(tmp_path / command[0])
        res = CliRunner().invoke(app, ["-q", "-w", str(ws.root), *command, str(recipe)])
        assert res.exit_code == 0, res.output
        reg = open_registry(ws)
        assert {"curate", "pack"} <= {r.stage for r in reg.list_runs()}
        (run,) = reg.list_runs(stage="pretrain")
        models.append(run.outputs[0])
        datasets.append([reg.list_runs(stage=s)[0].outputs for s in ("ingest", "curate")])
    assert models[0] == models[1]
    # content-addressed: the raw and curated datasets of two workspaces have the same ids too
    # (their reports name no path of the run that made them)
    assert datasets[0] == datasets[1]
