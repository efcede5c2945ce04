"""Drift detection: statistics against hand values, a planted shift is flagged on every
shifted signal (reward-model scores included), two samples of the same traffic are not
flagged, and the audit log a real server writes is read end to end by `forgeml drift report`."""

from __future__ import annotations

import json
import random
import shutil

import httpx
import numpy as np
import openai
import pytest
import torch
from preference_fixtures import WORDS as YES_NO_WORDS
from preference_fixtures import make_base_model, write_pairs
from test_reward_model import _recipe as reward_recipe
from test_serve_api import running_server
from test_serve_engine import make_tiny_model_dir
from typer.testing import CliRunner

from forgeml.cli import app
from forgeml.core.errors import DataError, ForgeError
from forgeml.eval.drift import (
    drift_report,
    js_divergence,
    ks_test,
    load_traffic,
    psi,
    refusal_rate,
    split_by_time,
    standardized_mean_difference,
)

TOPICS = {
    "payroll": "how do I compute overtime pay for hours above forty in ACME-CL".split(),
    "policy": "how many days are LEDGER-7 job logs retained under the policy".split(),
    "new": "please write a poem about kubernetes clusters and docker images".split(),
}


def traffic(
    n: int,
    seed: int,
    *,
    topics=("payroll", "policy"),
    length=(5, 12),
    answer_length=(5, 20),
    refusals=0.02,
) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = TOPICS[rng.choice(topics)]
        k = rng.randint(*length)
        prompt = " ".join(rng.choice(words) for _ in range(k))
        if rng.random() < refusals:
            completion = "I'm sorry, but I can't help with that."
        else:
            completion = " ".join(rng.choice(words) for _ in range(rng.randint(*answer_length)))
        out.append({"prompt": prompt, "completion": completion, "ts": f"2025-01-01T00:{i:05d}"})
    return out


def test_statistics_match_hand_values():
    assert psi([1, 2, 3, 4] * 50, [1, 2, 3, 4] * 50) == pytest.approx(0.0, abs=1e-12)
    assert psi(list(range(100)), list(range(100, 200))) > 1.0
    d, p = ks_test([1, 2, 3, 4], [5, 6, 7, 8])
    assert d == 1.0 and p < 0.05
    d, p = ks_test(np.arange(200), np.arange(200) + 0.5)
    assert d == pytest.approx(1 / 200) and p > 0.99
    from collections import Counter

    assert js_divergence(Counter("aabb"), Counter("aabb")) == 0.0
    assert js_divergence(Counter("aa"), Counter("bb")) == pytest.approx(1.0)
    assert refusal_rate(["I can't help with that", "sure: 42", "As an AI, no"]) == pytest.approx(
        2 / 3
    )
    # means 1 -> 3, sample variances 2 and 2: d = 2 / sqrt(2)
    assert standardized_mean_difference([0, 2], [2, 4]) == pytest.approx(2**0.5)
    assert standardized_mean_difference([1, 1], [1, 1]) == 0.0


def test_no_shift_is_not_flagged():
    report = drift_report(traffic(300, seed=1), traffic(300, seed=2))
    assert not report.drifted, report.table()
    assert len(report.checks) == 6


def test_small_windows_are_not_flagged_by_chance_but_a_shift_is():
    # Two samples of 40 from one distribution: PSI averages (B-1)(1/n+1/m) ~ 0.45 by chance,
    # above the 0.2 band (16 of these 20 pairs were over it), so PSI must beat chance too.
    calm = [drift_report(traffic(40, seed=s), traffic(40, seed=s + 100)) for s in range(20)]
    assert sum(r.checks[0].value > 0.2 for r in calm) > 10
    assert not any(r.drifted for r in calm), next(r.table() for r in calm if r.drifted)
    shifted = drift_report(traffic(40, seed=1), traffic(40, seed=2, length=(15, 30)))
    assert {c.statistic for c in shifted.checks if c.name == "prompt length" and c.flagged} == {
        "psi",
        "ks_p_value",
    }


def test_planted_shift_is_found():
    ref = traffic(300, seed=1)
    cur = traffic(
        300, seed=2, topics=("payroll", "new"), length=(15, 30), answer_length=(20, 40),
        refusals=0.25,
    )  # fmt: skip
    report = drift_report(ref, cur)
    flagged = {(c.name, c.statistic) for c in report.checks if c.flagged}
    assert report.drifted
    assert {
        ("prompt length", "psi"),
        ("prompt length", "ks_p_value"),
        ("prompt bigrams", "jsd_p_value"),
        ("completion length", "psi"),
        ("completion length", "ks_p_value"),
        ("refusal rate", "z_p_value"),
    } <= flagged
    answers = next(c for c in report.checks if c.name == "completion length")
    assert answers.current > 1.5 * answers.reference  # mean length: 5-20 words, then 20-40
    assert "DRIFT" in report.table()


def test_vocabulary_only_shift_is_found_by_ngrams_and_model_loss():
    ref = traffic(200, seed=1)
    cur = traffic(200, seed=2, topics=("new",))
    known = set(TOPICS["payroll"]) | set(TOPICS["policy"])

    def fake_nll(texts):  # a "model" that finds unknown words surprising
        return [(sum(0.5 if w in known else 4.0 for w in t.split()), len(t.split())) for t in texts]

    report = drift_report(ref, cur, prompt_nll=fake_nll, tokenize=str.split)
    by_name = {c.name: c for c in report.checks if c.statistic != "psi"}
    assert by_name["prompt bigrams"].flagged
    assert by_name["prompt loss under model"].flagged
    assert not by_name["prompt length"].flagged  # lengths drawn the same way


def test_traffic_log_loading_and_windows(tmp_path):
    recs = traffic(40, seed=0)
    log = tmp_path / "serve.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in recs))
    loaded = load_traffic(log)
    assert loaded.records == recs and loaded.skipped == {}
    ref, cur = split_by_time(list(reversed(loaded.records)), 0.25)
    assert len(ref) == 10 and ref[0]["ts"] < cur[0]["ts"]
    with pytest.raises(DataError, match="at least 30"):
        drift_report(recs[:10], recs[10:])
    (tmp_path / "bad.jsonl").write_text('{"completion": "x"}\n')
    with pytest.raises(DataError, match="needs a 'prompt'"):
        load_traffic(tmp_path / "bad.jsonl")


def test_audit_log_entries_are_read_and_malformed_logs_are_clear_errors(tmp_path):
    entries = [
        {"index": 0, "event": "server_started", "models": {"champion": "model-1"}},
        {"index": 1, "event": "request", "endpoint": "completions", "model": "champion",
         "status": 200, "prompt": "p1", "completion": "c1\u2028c2", "ts": "t1", "principal": "a"},
        {"index": 2, "event": "request", "status": 403, "principal": "b"},  # denied: no body
        {"index": 3, "event": "request", "status": 200, "prompt": [5, 6], "completion": "c"},
        {"index": 4, "event": "request", "status": 429, "prompt": "p2", "completion": None},
        {"index": 5, "event": "auth_denied", "status": 401},
        {"index": 6, "event": "server_stopped"},
    ]  # fmt: skip
    log = tmp_path / "audit.jsonl"
    # as AuditLog writes it: non-ASCII unescaped (U+2028 must not end a line)
    log.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries))
    loaded = load_traffic(log)
    assert loaded.records == [
        {"prompt": "p1", "completion": "c1\u2028c2", "ts": "t1", "endpoint": "completions",
         "model": "champion", "status": 200},
        {"prompt": "p2", "completion": None, "status": 429},
    ]  # fmt: skip
    assert loaded.skipped == {
        "server_started": 1, "request (no body)": 1, "request (token-id prompt)": 1,
        "auth_denied": 1, "server_stopped": 1,
    }  # fmt: skip

    def fails(text: str, match: str) -> None:
        bad = tmp_path / "bad.jsonl"
        bad.write_text(text)
        with pytest.raises(DataError, match=match):
            load_traffic(bad)

    fails('{"prompt": "a"}\n{"prompt": \n', r"bad.jsonl:2: not valid JSON")
    fails('["prompt", "a"]\n', r"bad.jsonl:1: expected a JSON object, got list")
    fails('{"event": "request", "prompt": {"a": 1}}\n', r"bad.jsonl:1: .*text 'prompt'")
    fails('{"event": "request", "prompt": "a", "completion": 3}\n', r"text or null 'completion'")
    fails(
        '{"event": "server_started"}\n{"event": "request", "status": 200}\n',
        r"no traffic records .*skipped 1 request \(no body\), 1 server_started.*--log-bodies",
    )
    fails("", r"no traffic records")


def yes_no_traffic(n: int, seed: int, yes_share: float) -> list[dict]:
    """Prompts of the toy preference data; answers the reward model learned to like ('yes
    WORD') with probability `yes_share`, else ones it learned to dislike ('no WORD')."""
    rng = random.Random(seed)
    return [
        {
            "prompt": " ".join(rng.choices(YES_NO_WORDS, k=4)),
            "completion": f"{'yes' if rng.random() < yes_share else 'no'} "
            + rng.choice(YES_NO_WORDS),
        }
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def reward_scorer(tmp_path_factory):
    from forgeml.train.reward_model import RewardScorer, train_reward_model

    root = tmp_path_factory.mktemp("rm")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny kernels: see test_reward_model._one_thread
    try:
        summary = train_reward_model(
            reward_recipe(), base_model_dir=make_base_model(root),
            pairs_path=write_pairs(root / "pairs.jsonl", 64), out_dir=root / "run",
            progress=False,
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert summary["heldout_accuracy"] >= 0.9
    return RewardScorer(None, summary["model_dir"])


def test_reward_model_score_shift_is_found_and_no_shift_is_not(reward_scorer):
    ref = yes_no_traffic(60, seed=1, yes_share=0.8)
    worse = drift_report(ref, yes_no_traffic(60, seed=2, yes_share=0.2), reward=reward_scorer)
    rm = next(c for c in worse.checks if c.name == "reward-model score")
    assert rm.flagged and rm.current < rm.reference, worse.table()
    # same words, lengths and refusal rate: only the reward model sees the answers got worse
    assert [c.name for c in worse.checks if c.flagged] == ["reward-model score"], worse.table()
    same = drift_report(ref, yes_no_traffic(60, seed=3, yes_share=0.8), reward=reward_scorer)
    assert not same.drifted, same.table()
    assert len(same.checks) == 7
    with pytest.raises(DataError, match="needs at least 30 completions"):
        drift_report([{"prompt": r["prompt"]} for r in ref], ref, reward=reward_scorer)


def write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_drift_report_command_exit_codes(tmp_path):
    runner = CliRunner()
    ref = write_jsonl(tmp_path / "ref.jsonl", traffic(300, seed=1))
    same = write_jsonl(tmp_path / "same.jsonl", traffic(300, seed=2))
    shifted = write_jsonl(
        tmp_path / "shifted.jsonl",
        traffic(300, seed=2, topics=("payroll", "new"), length=(15, 30), refusals=0.25),
    )
    calm = runner.invoke(app, ["drift", "report", "--reference", ref, "--current", same])
    assert calm.exit_code == 0, calm.output
    assert "drift: none (300 reference vs 300 current records)" in calm.output
    found = runner.invoke(app, ["drift", "report", "--reference", ref, "--current", shifted])
    assert found.exit_code == 1, found.output
    assert "drift: FOUND" in found.output and "refusal rate" in found.output
    as_json = runner.invoke(app, ["drift", "report", "--log", shifted, "--json"])
    out = json.loads(as_json.output)
    assert as_json.exit_code == 0 and (out["n_reference"], out["n_current"]) == (150, 150)
    missing = runner.invoke(app, ["drift", "report", "--reference", ref])
    assert isinstance(missing.exception, ForgeError)  # `forgeml` prints it in one line, exit 2


def test_drift_report_reads_the_audit_log_of_a_real_server(tmp_path, monkeypatch):
    """`forgeml serve --log-bodies` end to end: `serve()` runs (uvicorn's blocking loop
    swapped for the test server thread), requests go through keys, policy and the engine,
    and `forgeml drift report` reads the audit log it wrote: request bodies are the traffic,
    server and denied entries are counted; a planted shift is found, none before it."""
    import uvicorn

    from forgeml.core.workspace import init_workspace
    from forgeml.governance.audit import audit_log_path, verify_audit_log
    from forgeml.governance.keys import KeyStore
    from forgeml.registry import open_registry
    from forgeml.serve.api import serve

    ws = init_workspace(tmp_path / "ws")
    reg = open_registry(ws)
    model_dir = make_tiny_model_dir(tmp_path, max_seq_len=512)
    asset = reg.add_asset("model", "tiny", model_dir, metadata={"classification": "internal"})
    reg.set_alias("champion", asset.id)
    keys = KeyStore(reg.engine)
    key, _ = keys.create_key("app", clearance="internal", endpoints=["chat", "completions"])
    other, _ = keys.create_key("other-team", clearance="internal", models=["their-model"])
    log, before_shift = audit_log_path(ws.root), tmp_path / "before_shift.jsonl"

    def send_traffic(url: str) -> None:
        client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)

        def ask(i: int, prompt: str) -> None:  # both endpoints, alternately
            if i % 2:
                client.completions.create(
                    model="champion", prompt=prompt, max_tokens=6, temperature=0
                )
            else:
                messages = [{"role": "user", "content": prompt}]
                client.chat.completions.create(
                    model="champion", messages=messages, max_tokens=6, temperature=0
                )

        body = {"model": "champion", "prompt": "hello", "max_tokens": 2}
        for secret, status in (("wrong", 401), (other, 403)):
            headers = {"Authorization": f"Bearer {secret}"}
            assert (
                httpx.post(url + "/v1/completions", json=body, headers=headers).status_code
                == status
            )
        client.completions.create(model="champion", prompt=[20, 21, 22], max_tokens=2)
        for i, rec in enumerate(traffic(80, seed=1)):
            ask(i, rec["prompt"])
        shutil.copy(log, before_shift)  # the live log as it stood before the shift
        for i, rec in enumerate(traffic(60, seed=2, topics=("new",), length=(15, 30))):
            ask(i, rec["prompt"])

    def run_until_traffic_sent(app_, **_options) -> None:
        with running_server(app_) as url:
            send_traffic(url)

    monkeypatch.setattr(uvicorn, "run", run_until_traffic_sent)
    serve(ws.root, None, log_bodies=True, max_batch=4)
    reg.close()

    traffic_log = load_traffic(log)
    assert len(traffic_log.records) == 140
    assert {r["endpoint"] for r in traffic_log.records} == {"chat", "completions"}
    assert all(isinstance(r["completion"], str) and r["status"] == 200 for r in traffic_log.records)
    skipped = {
        "server_started": 1, "auth_denied": 1, "request (no body)": 1,
        "request (token-id prompt)": 1, "server_stopped": 1,
    }  # fmt: skip
    assert traffic_log.skipped == skipped

    runner = CliRunner()
    calm = runner.invoke(app, ["drift", "report", "--log", str(before_shift), "--json"])
    assert calm.exit_code == 0, calm.output
    assert json.loads(calm.output)["n_reference"] == 40
    found = runner.invoke(app, ["drift", "report", "--log", str(log), "--json"])
    assert found.exit_code == 1, found.output
    report = json.loads(found.output)
    assert (report["n_reference"], report["n_current"]) == (70, 70)
    assert report["skipped"] == skipped
    flagged = {c["name"] for c in report["checks"] if c["flagged"]}
    assert {"prompt length", "prompt bigrams"} <= flagged, found.output
    table = runner.invoke(app, ["drift", "report", "--log", str(log)]).output
    assert "log entries that are not traffic: skipped 1 auth_denied" in table
    assert verify_audit_log(log).ok
