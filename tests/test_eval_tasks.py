"""Eval suites: scorers against hand values, each task kind with a scripted model (exact
numbers) and on a tiny real model (batched == unbatched), the suite stage's eval asset."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from forgeml.core.config import ModelConfig
from forgeml.core.errors import ConfigError, DataError
from forgeml.eval.scoring import (
    bootstrap_ci,
    exact_match,
    normalized_exact_match,
    paired_bootstrap_delta,
    regex_match,
    resolve_scorer,
    token_f1,
)
from forgeml.eval.suite import suite_from_dict
from forgeml.eval.tasks import EvalModel, GenerationRequest, fim_prompt, run_task, task_data
from forgeml.models.dense import Transformer
from forgeml.models.sampling import generate

CORPUS = [
    "DISPLAY HELLO. SET PAY TO HOURS * RATE. ACCEPT HOURS. END-IF. END-WHILE.",
    "Policy POL-100 keeps logs for 120 days and backups for 4 weeks.",
    "def pay(hours, rate):\n    return hours * rate\n",
] * 20


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    from forgeml.models.hf_io import save_model
    from forgeml.tokenizer.train import train_bpe_tokenizer

    root = tmp_path_factory.mktemp("tiny")
    tok_dir = train_bpe_tokenizer(iter(CORPUS), vocab_size=320, out_dir=root / "tok")
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(tok_dir / "tokenizer.json")).get_vocab_size()
    torch.manual_seed(0)
    cfg = ModelConfig(
        dim=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        ffn_hidden=160,
        vocab_size=vocab,
        max_seq_len=48,
    )
    return save_model(Transformer(cfg), root / "model", tokenizer_dir=tok_dir)


@pytest.fixture(scope="module")
def lm(tiny_dir) -> EvalModel:
    return EvalModel.from_dir(tiny_dir, dtype="fp32", batch_size=3)


class ScriptedLM:
    """Answers from lookup tables, so every task's score is known by hand."""

    def __init__(self, outputs=None, loglik=None, nll=None):
        self.outputs, self.loglik, self.nll = outputs or {}, loglik or {}, nll or {}
        self.requests: list = []

    def generate(self, requests):
        self.requests += list(requests)
        return [self.outputs.get(r.prompt.rsplit("\n\n", 1)[-1], "") for r in requests]

    def loglikelihood(self, requests):
        return [(self.loglik.get(c.strip(), -10.0), False) for _, c in requests]

    def rolling_nll(self, texts):
        return [self.nll[t] for t in texts]


def run(lm_, task: dict, **suite):
    s = suite_from_dict({"name": "t", "tasks": [task], **suite})
    t = s.spec.tasks[0]
    examples, pool = task_data(s, t)
    return run_task(lm_, s, t, examples, pool)


# -- scorers --------------------------------------------------------------------------------


def test_scorers_match_hand_values():
    assert exact_match(" 120 ", "120") == 1.0 and exact_match("120 days", "120") == 0.0
    assert normalized_exact_match("The Saturday!", "saturday") == 1.0
    assert regex_match("window is 02:00-06:00", r"\d\d:\d\d-\d\d:\d\d") == 1.0
    assert regex_match("no window", r"\d\d:\d\d") == 0.0
    # pred {cat, sat}, ref {cat, sat, down}: P=1, R=2/3, F1=0.8
    assert token_f1("the cat sat", "cat sat down") == pytest.approx(0.8)
    assert token_f1("dog", "cat") == 0.0
    assert resolve_scorer("forgeml.eval.scoring:token_f1") is token_f1
    with pytest.raises(ConfigError, match="unknown scorer"):
        resolve_scorer("bleu9")


def test_bootstrap_interval_covers_mean_and_shrinks_with_data():
    few = [1, 0, 1, 1, 0, 1, 0, 1]
    lo, hi = bootstrap_ci(few)
    assert lo <= sum(few) / len(few) <= hi
    lo2, hi2 = bootstrap_ci(few * 50)
    assert hi2 - lo2 < (hi - lo) / 3
    assert paired_bootstrap_delta(few, few) == (0.0, 0.0, 0.0)
    point, lo, hi = paired_bootstrap_delta([1.0] * 40, [0.0] * 20 + [1.0] * 20)
    assert point == 0.5 and 0.3 < lo <= 0.5 <= hi < 0.7


# -- task kinds with a scripted model: exact numbers ----------------------------------------

QA = [
    {"id": f"q{i}", "question": f"How many days for log {i}?", "answer": str(i * 10)}
    for i in range(4)
]


def test_generate_exact_match_and_fewshot():
    outputs = {
        f"Q: How many days for log {i}?\nA:": a
        for i, a in enumerate(["0", "10", "wrong", "30 days"])
    }
    fake = ScriptedLM(outputs=outputs)
    res = run(
        fake,
        {
            "name": "qa",
            "kind": "generate",
            "data": {"inline": QA},
            "prompt": "Q: {question}\nA:",
            "target": "{answer}",
            "scorers": ["exact_match", "f1", "forgeml.eval.scoring:contains"],
            "fewshot": {"k": 2, "seed": 3},
        },
    )
    assert res.metrics["exact_match"] == 0.5  # q0, q1 right; q2 wrong; q3 "30 days"
    assert res.metrics["forgeml.eval.scoring:contains"] == 0.75
    assert res.metrics["f1"] == pytest.approx((1 + 1 + 0 + 2 / 3) / 4)
    prompt0 = fake.requests[0].prompt
    assert prompt0.count("Q: ") == 3 and "log 0?" not in prompt0.split("\n\n")[0]
    assert [e["id"] for e in res.examples] == ["q0", "q1", "q2", "q3"]
    fake2 = ScriptedLM(outputs=outputs)
    run(
        fake2,
        {
            "name": "qa",
            "kind": "generate",
            "data": {"inline": QA},
            "prompt": "Q: {question}\nA:",
            "fewshot": {"k": 2, "seed": 3},
        },
    )
    assert [r.prompt for r in fake2.requests] == [r.prompt for r in fake.requests]


def test_multiple_choice_accuracy():
    recs = [
        {"id": "a", "q": "Ends an IF block?", "choices": ["END-IF", "FI", "ENDIF"], "answer": 0},
        {"id": "b", "q": "Reads input?", "choices": ["READ", "ACCEPT"], "answer": "ACCEPT"},
        {"id": "c", "q": "Prints?", "choices": ["DISPLAY", "PRINT"], "answer": 0},
    ]
    fake = ScriptedLM(
        loglik={
            "END-IF": -1.0,
            "FI": -2.0,
            "ACCEPT": -1.0,
            "READ": -3.0,
            "PRINT": -0.5,
            "DISPLAY": -4.0,
        }
    )
    res = run(
        fake,
        {
            "name": "mc",
            "kind": "multiple_choice",
            "data": {"inline": recs},
            "prompt": "{q} Answer:",
        },
    )
    assert res.metrics["acc"] == pytest.approx(2 / 3)
    assert [e["prediction"] for e in res.examples] == [0, 1, 1]


def test_perplexity_is_bits_per_byte_weighted_by_bytes():
    docs = [{"id": "d1", "text": "abcd"}, {"id": "d2", "text": "é" * 6}]  # 4 and 12 bytes
    fake = ScriptedLM(nll={"abcd": (4.0, 2), "é" * 6: (20.0, 5)})
    res = run(fake, {"name": "ppl", "kind": "perplexity", "data": {"inline": docs}})
    assert res.metrics["bits_per_byte"] == pytest.approx(24.0 / (math.log(2) * 16))
    assert res.metrics["perplexity"] == pytest.approx(math.exp(24.0 / 7))


def test_infill_uses_fim_tokens():
    recs = [{"id": "f", "prefix": "def f(x):\n    return ", "suffix": "\n", "middle": "x + 1"}]
    prompt = fim_prompt(recs[0]["prefix"], recs[0]["suffix"])
    fake = ScriptedLM(outputs={prompt: "x + 1"})
    res = run(
        fake,
        {
            "name": "fim",
            "kind": "infill",
            "data": {"inline": recs},
            "target": "{middle}",
            "stop": [],
        },
    )
    assert res.metrics["exact_match"] == 1.0
    assert fake.requests[0].prompt.startswith("<|fim_prefix|>def f")


ACL = 'DECLARE N AS NUMBER.\nACCEPT N.\nDISPLAY "DOUBLE: " & N * 2.\n'
GOOD = 'n = int(input())\nprint(f"DOUBLE: {n * 2}")\n'
HALF = 'n = int(input())\nprint("DOUBLE: 10")\n'


def test_code_exec_runs_translations_against_acme():
    recs = [
        {"id": "p1", "program_text": ACL, "cases": [{"inputs": [5]}, {"inputs": [7]}]},
        {"id": "p2", "program_text": ACL + "*> v2\n", "cases": [[5], [7]]},
    ]
    fake = ScriptedLM(outputs={f"Translate:\n{ACL}": GOOD, f"Translate:\n{ACL}*> v2\n": HALF})
    res = run(
        fake,
        {
            "name": "tr",
            "kind": "code_exec",
            "checker": "examples/acme/acme_cl.py:translation_checker",
            "data": {"inline": recs},
            "prompt": "Translate:\n{program_text}",
            "stop": [],
        },
    )
    assert res.metrics["pass"] == 0.5 and res.metrics["pass_rate"] == 0.75


def test_code_exec_io_cases_in_own_sandbox():
    recs = [
        {
            "id": "s",
            "prompt": "x",
            "cases": [{"inputs": [2], "expected": ["4"]}, {"inputs": [3], "expected": ["9"]}],
        }
    ]
    fake = ScriptedLM(outputs={"x": "n = int(input())\nprint(n + n)\n"})
    res = run(
        fake,
        {
            "name": "io",
            "kind": "code_exec",
            "checker": "io_cases",
            "data": {"inline": recs},
            "stop": [],
        },
    )
    assert res.metrics["pass_rate"] == 0.5 and res.metrics["pass"] == 0.0


def test_custom_task_by_import_path(tmp_path, monkeypatch):
    (tmp_path / "my_kpis.py").write_text(
        "def length_task(lm, records, task):\n"
        "    outs = lm.generate([])\n"
        "    return [{'id': r['id'], 'scores': {'short': float(len(r['t']) < 4)}} "
        "for r in records]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    res = run(
        ScriptedLM(),
        {
            "name": "c",
            "kind": "custom",
            "function": "my_kpis:length_task",
            "data": {"inline": [{"t": "ab"}, {"t": "abcdef"}]},
        },
    )
    assert res.primary == "short" and res.metrics["short"] == 0.5


def test_suite_errors_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="kind"):
        suite_from_dict(
            {"name": "s", "tasks": [{"name": "a", "kind": "bleu", "data": {"inline": []}}]}
        )
    with pytest.raises(ConfigError, match="exactly one"):
        suite_from_dict({"name": "s", "tasks": [{"name": "a", "kind": "generate", "data": {}}]})
    with pytest.raises(DataError, match="needs field 'question'"):
        run(
            ScriptedLM(),
            {
                "name": "qa",
                "kind": "generate",
                "data": {"inline": [{"q": 1}]},
                "prompt": "{question}",
            },
        )


# -- the real tiny model: batching changes nothing -----------------------------------------


def test_loglikelihood_batched_equals_naive(lm):
    reqs = [
        ("Policy POL-100 keeps logs for", " 120 days"),
        ("DISPLAY", " HELLO."),
        ("def pay(hours, rate):", "\n    return hours * rate"),
        ("SET PAY TO", " X"),
    ]
    got = lm.loglikelihood(reqs)
    for (ctx, cont), (ll, _) in zip(reqs, got, strict=True):
        c = [lm.bos, *lm.encode(ctx)]
        whole = [lm.bos, *lm.encode(ctx + cont)]
        assert whole[: len(c)] == c
        with torch.no_grad():
            logp = F.log_softmax(lm.model(torch.tensor([whole[:-1]]))[0], -1)
        ref = sum(float(logp[i - 1, whole[i]]) for i in range(len(c), len(whole)))
        assert ll == pytest.approx(ref, abs=1e-4)


def test_generate_batched_greedy_equals_single_and_sampling_is_seeded(lm):
    prompts = ["DISPLAY", "SET PAY", "Policy", "ACCEPT", "SET PAY TO"]
    reqs = [GenerationRequest(p, max_new_tokens=6) for p in prompts]
    got = lm.generate(reqs)
    for p, text in zip(prompts, got, strict=True):
        ids = generate(
            lm.model, [lm.bos, *lm.encode(p)], max_new_tokens=6, temperature=0, stop_ids={lm.eos}
        )
        assert text == lm.tok.decode(ids, skip_special_tokens=True)
    sampled = [
        GenerationRequest(p, max_new_tokens=6, temperature=1.0, seed=i)
        for i, p in enumerate(prompts)
    ]
    a = lm.generate(sampled)
    lm.batch_size = 1
    try:
        assert lm.generate(sampled) == a  # per-example seeds: batch size does not matter
    finally:
        lm.batch_size = 3


def test_rolling_nll_covers_every_token(lm):
    short = "DISPLAY HELLO."
    ids = [lm.bos, *lm.encode(short)]
    with torch.no_grad():
        ref = F.cross_entropy(
            lm.model(torch.tensor([ids[:-1]]))[0], torch.tensor(ids[1:]), reduction="sum"
        )
    (nll, n), (nll_long, n_long) = lm.rolling_nll([short, " ".join(CORPUS[:6])])
    assert n == len(ids) - 1 and nll == pytest.approx(float(ref), abs=1e-3)
    assert n_long == len(lm.encode(" ".join(CORPUS[:6]))) > lm.max_len  # several windows


# -- the stage: an eval asset with per-example outputs --------------------------------------


def test_eval_suite_stage_registers_eval_asset(workspace, tiny_dir, tmp_path):
    from forgeml.pipeline.eval_suite_stage import eval_suite_stage
    from forgeml.registry import open_registry

    reg = open_registry(workspace)
    model = reg.add_asset("model", "tiny", tiny_dir)
    data = tmp_path / "data"
    data.mkdir()
    (data / "qa.json").write_text(json.dumps(QA))
    (data / "docs").mkdir()
    for i, text in enumerate(CORPUS[:3]):
        (data / "docs" / f"{i}.md").write_text(text)
    suite = {
        "name": "mini",
        "version": "2",
        "batch_size": 4,
        "data_root": "data",
        "tasks": [
            {
                "name": "qa",
                "kind": "generate",
                "data": {"path": "qa.json"},
                "prompt": "Q: {question}\nA:",
                "max_new_tokens": 4,
            },
            {
                "name": "mc",
                "kind": "multiple_choice",
                "data": {"inline": [{"q": "Ends IF?", "choices": ["END-IF", "FI"], "answer": 0}]},
                "prompt": "{q}",
            },
            {"name": "ppl", "kind": "perplexity", "data": {"path": "docs", "glob": "*.md"}},
            {
                "name": "fim",
                "kind": "infill",
                "data": {"inline": [{"prefix": "SET PAY TO ", "suffix": ".", "answer": "HOURS"}]},
                "max_new_tokens": 3,
            },
        ],
    }
    path = tmp_path / "suite.yaml"
    import yaml

    path.write_text(yaml.safe_dump(suite))
    from forgeml.eval.suite import load_suite

    s = load_suite(path)
    res = eval_suite_stage(workspace, "tiny", s, dtype="fp32")
    asset = reg.get_asset(res.output)
    assert asset.kind == "eval" and asset.metadata["suite_version"] == "2"
    assert asset.metadata["model"] == model.id
    assert [n["id"] for n in reg.lineage(asset.id, "up").nodes][:2] == [asset.id, model.id]
    results = json.loads((asset.path / "results.json").read_text())
    assert set(results["tasks"]) == {"qa", "mc", "ppl", "fim"}
    assert results["tasks"]["ppl"]["metrics"]["bits_per_byte"] > 0
    lines = (asset.path / "examples" / "qa.jsonl").read_text().splitlines()
    assert [json.loads(x)["id"] for x in lines] == ["q0", "q1", "q2", "q3"]
    assert (asset.path / "report.html").read_text().startswith("<!DOCTYPE html>")
    again = eval_suite_stage(workspace, "tiny", s, dtype="fp32")
    assert again.cached and again.output == res.output
    (data / "qa.json").write_text(json.dumps(QA[:3]))  # the data changed: not cached
    assert not eval_suite_stage(workspace, "tiny", load_suite(path), dtype="fp32").cached


PROBE_KPIS = '''
from forgeml.eval.sandbox import score_io_cases
from forgeml.eval.tasks import GenerationRequest


def echo_length(completion, record, task):
    """A program made from the model's output: only a real sandbox run prints its length."""
    cases = [{"expected": [str(len(completion))]}, {"expected": ["-1"]}]
    return score_io_cases(f"print(len({completion!r}))", cases, timeout_s=task.timeout_s)[0]


def short_answers(lm, records, task):
    outs = lm.generate([GenerationRequest(r["q"], task.max_new_tokens) for r in records])
    return [
        {"id": r["id"], "scores": {"short": float(len(o) < 12)}, "output": o}
        for r, o in zip(records, outs)
    ]
'''


def test_code_exec_and_custom_kinds_on_the_tiny_model(
    workspace, tiny_dir, lm, tmp_path, monkeypatch
):
    from forgeml.eval.sandbox import score_io_cases
    from forgeml.pipeline.eval_suite_stage import eval_suite_stage
    from forgeml.registry import open_registry

    (tmp_path / "probe_kpis.py").write_text(PROBE_KPIS)
    monkeypatch.syspath_prepend(str(tmp_path))
    code = [
        {"id": f"c{i}", "prompt": p, "cases": [{"inputs": [2], "expected": ["4"]}]}
        for i, p in enumerate(["def pay(hours, rate):", "DISPLAY", "SET PAY TO"])
    ]
    asks = [{"id": f"k{i}", "q": q} for i, q in enumerate(["Policy POL-100", "ACCEPT", "def"])]
    gen = {"max_new_tokens": 8, "stop": []}
    suite = suite_from_dict({"name": "exec", "batch_size": 2, "tasks": [
        {"name": "code", "kind": "code_exec", "checker": "io_cases", "data": {"inline": code},
         **gen},
        {"name": "probe", "kind": "code_exec", "checker": "probe_kpis:echo_length",
         "data": {"inline": code}, **gen},
        {"name": "mine", "kind": "custom", "function": "probe_kpis:short_answers",
         "data": {"inline": asks}, "max_new_tokens": 6},
    ]})  # fmt: skip
    reg = open_registry(workspace)
    reg.add_asset("model", "tiny", tiny_dir)
    asset = reg.get_asset(eval_suite_stage(workspace, "tiny", suite, dtype="fp32").output)
    results = json.loads((asset.path / "results.json").read_text())["tasks"]

    def stored(task: str) -> list[dict]:
        lines = (asset.path / "examples" / f"{task}.jsonl").read_text().splitlines()
        return [json.loads(x) for x in lines]

    greedy = lm.generate([GenerationRequest(r["prompt"], max_new_tokens=8) for r in code])
    for task in ("code", "probe", "mine"):
        examples, records = stored(task), asks if task == "mine" else code
        assert [e["id"] for e in examples] == [r["id"] for r in records]
        assert results[task]["metrics"]["n"] == len(records)
        assert all(0.0 <= v <= 1.0 for e in examples for v in e["scores"].values())
        assert all(0.0 <= v <= 1.0 for k, v in results[task]["metrics"].items() if k != "n")
    # the sandbox ran the real model's completions: their stored scores are those runs' ...
    assert [e["output"] for e in stored("code")] == greedy
    assert [e["scores"]["pass_rate"] for e in stored("code")] == [
        score_io_cases(out, rec["cases"])[0] for out, rec in zip(greedy, code, strict=True)
    ]
    # ... and a program printing len(completion) passed its one right case of two
    assert [e["output"] for e in stored("probe")] == greedy
    assert all(e["scores"] == {"pass": 0.0, "pass_rate": 0.5} for e in stored("probe"))
    # the custom function got the served model: its outputs are the tiny model's own
    mine = stored("mine")
    assert [e["output"] for e in mine] == lm.generate(
        [GenerationRequest(r["q"], max_new_tokens=6) for r in asks]
    )
    assert results["mine"]["primary"] == "short"
    assert results["mine"]["metrics"]["short"] == sum(len(e["output"]) < 12 for e in mine) / 3
