"""lm-evaluation-harness interop: local lm-eval YAML tasks scored through the `forgeml`
model type give the same numbers as the same tasks in a forgeml suite, offline."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval", reason="lm-evaluation-harness (pip install lm-eval) not installed")

from forgeml.core.config import ModelConfig  # noqa: E402
from forgeml.core.errors import NotFoundError  # noqa: E402
from forgeml.eval.suite import suite_from_dict  # noqa: E402
from forgeml.eval.tasks import EvalModel, GenerationRequest, run_task, task_data  # noqa: E402
from forgeml.models.dense import Transformer  # noqa: E402

CORPUS = [
    "DISPLAY HELLO. SET PAY TO HOURS * RATE. ACCEPT HOURS. END-IF. END-WHILE.",
    "Policy POL-100 keeps logs for 120 days and backups for 4 weeks.",
    "def pay(hours, rate):\n    return hours * rate\n",
] * 20
WORDS = ["END-IF", "FI", "DISPLAY", "ACCEPT", "PAY", "RATE", "logs", "weeks"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    from tokenizers import Tokenizer

    from forgeml.models.hf_io import save_model
    from forgeml.tokenizer.train import train_bpe_tokenizer

    root = tmp_path_factory.mktemp("tiny")
    tok_dir = train_bpe_tokenizer(iter(CORPUS), vocab_size=320, out_dir=root / "tok")
    vocab = Tokenizer.from_file(str(tok_dir / "tokenizer.json")).get_vocab_size()
    torch.manual_seed(0)
    cfg = ModelConfig(
        dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=160, vocab_size=vocab,
        max_seq_len=48,
    )  # fmt: skip
    return save_model(Transformer(cfg), root / "model", tokenizer_dir=tok_dir)


@pytest.fixture(scope="module")
def lm(tiny_dir) -> EvalModel:
    return EvalModel.from_dir(tiny_dir, dtype="fp32", batch_size=4)


def _yaml(path: Path, text: str) -> None:
    path.write_text(text.strip() + "\n")


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory, lm) -> Path:
    """Three local lm-eval tasks (multiple choice, rolling log-likelihood, generation) on
    JSONL files; generation answers are planted so half of them match the model's output."""
    root = tmp_path_factory.mktemp("lm_eval_tasks")
    rng = random.Random(0)
    mc = []
    for i in range(12):
        choices = rng.sample(WORDS, 4)
        mc.append({"q": f"Which word, case {i}?", "choices": choices, "answer": i % 4})
    docs = [{"text": t} for t in CORPUS[:3]] + [{"text": "SET RATE TO 4. DISPLAY PAY."}]
    questions = [f"Q: what is item {i}?\nA:" for i in range(6)]
    reqs = [GenerationRequest(q, 4, stop=("\n",)) for q in questions]
    outputs = lm.generate(reqs)
    gen = [
        {"question": q, "answer": out if i % 2 == 0 else "zzz"}
        for i, (q, out) in enumerate(zip(questions, outputs, strict=True))
    ]
    for name, rows in (("mc", mc), ("docs", docs), ("qa", gen)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    _yaml(
        root / "acme_mc.yaml",
        f"""
task: acme_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {root / "mc.jsonl"}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{q}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
  - metric: acc_norm
""",
    )
    _yaml(
        root / "acme_ppl.yaml",
        f"""
task: acme_ppl
dataset_path: json
dataset_kwargs:
  data_files:
    test: {root / "docs.jsonl"}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: bits_per_byte
""",
    )
    _yaml(
        root / "acme_qa.yaml",
        f"""
task: acme_qa
dataset_path: json
dataset_kwargs:
  data_files:
    test: {root / "qa.jsonl"}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 4
  do_sample: false
metric_list:
  - metric: exact_match
""",
    )
    return root


def _ours(lm: EvalModel, task: dict, data: Path):
    s = suite_from_dict({"name": "ours", "tasks": [task]}, data_root=data)
    t = s.spec.tasks[0]
    examples, pool = task_data(s, t)
    return run_task(lm, s, t, examples, pool)


@pytest.fixture(scope="module")
def harness_run(lm, task_dir):
    from forgeml.eval.lm_eval_adapter import ForgeLM, lm_eval_records, load_tasks, run_lm_eval

    loaded = load_tasks(["acme_mc", "acme_ppl", "acme_qa"], [task_dir])
    output = run_lm_eval(ForgeLM(eval_model=lm), loaded)
    return loaded, output, lm_eval_records(output, loaded)


def test_multiple_choice_score_equals_our_task(lm, task_dir, harness_run):
    _, output, (tasks, examples) = harness_run
    ours = _ours(
        lm,
        {"name": "mc", "kind": "multiple_choice", "data": {"path": "mc.jsonl"}, "prompt": "{q}"},
        task_dir,
    )
    assert 0.0 < ours.metrics["acc"] < 1.0  # not a degenerate all-or-nothing score
    assert tasks["acme_mc"]["metrics"]["acc"] == pytest.approx(ours.metrics["acc"], abs=1e-12)
    assert output["results"]["acme_mc"]["acc,none"] == pytest.approx(ours.metrics["acc"])
    samples = sorted(output["samples"]["acme_mc"], key=lambda s: s["doc_id"])
    for sample, ex in zip(samples, ours.examples, strict=True):
        theirs = [ll for ll, _ in sample["filtered_resps"]]
        assert theirs == pytest.approx(ex["loglikelihoods"], abs=1e-5)
    assert [e["scores"]["acc"] for e in examples["acme_mc"]] == [
        e["scores"]["acc"] for e in ours.examples
    ]


def test_rolling_loglikelihood_bits_per_byte_equals_our_perplexity(lm, task_dir, harness_run):
    _, output, (tasks, examples) = harness_run
    ours = _ours(
        lm, {"name": "ppl", "kind": "perplexity", "data": {"path": "docs.jsonl"}}, task_dir
    )
    bpb = ours.metrics["bits_per_byte"]
    assert bpb > 1.0  # an untrained model: far from a perfect score
    assert output["results"]["acme_ppl"]["bits_per_byte,none"] == pytest.approx(bpb, rel=1e-6)
    assert tasks["acme_ppl"]["primary"] == "bits_per_byte"
    per_doc = [e["scores"]["bits_per_byte"] for e in examples["acme_ppl"]]
    assert per_doc == pytest.approx([e["scores"]["bits_per_byte"] for e in ours.examples])
    assert [e["weight"] for e in examples["acme_ppl"]] == [e["weight"] for e in ours.examples]


def test_generate_until_outputs_and_exact_match_equal_our_task(lm, task_dir, harness_run):
    _, output, (tasks, _) = harness_run
    ours = _ours(
        lm,
        {
            "name": "qa",
            "kind": "generate",
            "data": {"path": "qa.jsonl"},
            "prompt": "{question}",
            "max_new_tokens": 4,
            "stop": ["\n"],
        },
        task_dir,
    )
    assert ours.metrics["exact_match"] == pytest.approx(0.5)
    assert tasks["acme_qa"]["metrics"]["exact_match"] == pytest.approx(0.5)
    samples = sorted(output["samples"]["acme_qa"], key=lambda s: s["doc_id"])
    assert [s["filtered_resps"][0] for s in samples] == [e["output"] for e in ours.examples]


def test_model_type_is_registered_and_built_from_arg_string(tiny_dir):
    from lm_eval.api.registry import get_model

    import forgeml.eval.lm_eval_adapter  # noqa: F401  (registers the model type)

    lm = get_model("forgeml").create_from_arg_string(
        f"model_dir={tiny_dir},dtype=fp32", {"batch_size": 2, "device": "cpu"}
    )
    assert lm.lm.batch_size == 2
    with pytest.raises(Exception, match="model_dir"):
        get_model("forgeml")()


def test_lm_eval_stage_registers_eval_asset_with_lineage(workspace, tiny_dir, task_dir):
    from forgeml.eval.gate import compare_evals, load_eval_record
    from forgeml.pipeline.lm_eval_stage import lm_eval_stage
    from forgeml.registry import open_registry

    reg = open_registry(workspace)
    model = reg.add_asset("model", "tiny", tiny_dir)
    res = lm_eval_stage(
        workspace, "tiny", [str(task_dir / "acme_mc.yaml")], dtype="fp32", batch_size=4
    )
    asset = reg.get_asset(res.output)
    assert asset.kind == "eval" and asset.metadata["format"] == "lm-eval"
    up = {n["id"]: n for n in reg.lineage(asset.id, "up").nodes}
    assert model.id in up
    task_assets = [n for n in up.values() if n.get("name") == "lm-eval-task-acme_mc"]
    assert len(task_assets) == 1
    task_files = reg.get_asset(task_assets[0]["id"]).path / "files"
    assert sorted(p.name for p in task_files.iterdir()) == ["acme_mc.yaml", "mc.jsonl"]
    record = load_eval_record(asset.path)
    assert record.summary["tasks"]["acme_mc"]["primary"] == "acc"
    assert res.metrics["acme_mc/acc"] == record.summary["tasks"]["acme_mc"]["metrics"]["acc"]
    assert (asset.path / "report.html").read_text().startswith("<!DOCTYPE html>")
    assert compare_evals(record, record).passed  # the gate reads lm-eval assets
    again = lm_eval_stage(
        workspace, "tiny", [str(task_dir / "acme_mc.yaml")], dtype="fp32", batch_size=4
    )
    assert again.cached and again.output == res.output


def test_cli_eval_lm_eval(workspace, tiny_dir, task_dir):
    from typer.testing import CliRunner

    from forgeml.cli import app
    from forgeml.registry import open_registry

    open_registry(workspace).add_asset("model", "tiny", tiny_dir)
    args = ["-w", str(workspace.root), "eval", "lm-eval", "tiny", "--tasks", "acme_mc"]
    result = CliRunner().invoke(app, [*args, "--include-path", str(task_dir), "--dtype", "fp32"])
    assert result.exit_code == 0, result.output
    assert "acme_mc/acc" in result.output
    missing = CliRunner().invoke(app, [*args[:-1], "no_such", "--include-path", str(task_dir)])
    assert isinstance(missing.exception, NotFoundError) and "no_such" in str(missing.exception)


def test_hub_task_fails_fast_offline(tmp_path):
    from forgeml.core.errors import DataError
    from forgeml.eval.lm_eval_adapter import load_tasks

    _yaml(
        tmp_path / "hub.yaml",
        """
task: hub_task
dataset_path: super_glue
dataset_name: boolq
validation_split: validation
output_type: multiple_choice
doc_to_text: "{{question}}"
doc_to_choice: ["no", "yes"]
doc_to_target: label
""",
    )
    with pytest.raises(DataError, match="offline"):
        load_tasks([str(tmp_path / "hub.yaml")])
