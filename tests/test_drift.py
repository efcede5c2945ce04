"""Drift detection: statistics against hand values, a planted shift is flagged on every
shifted signal, and two samples of the same traffic are not flagged."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from forgeml.core.errors import DataError
from forgeml.eval.drift import (
    drift_report,
    js_divergence,
    ks_test,
    load_traffic,
    psi,
    refusal_rate,
    split_by_time,
)

TOPICS = {
    "payroll": "how do I compute overtime pay for hours above forty in ACME-CL".split(),
    "policy": "how many days are LEDGER-7 job logs retained under the policy".split(),
    "new": "please write a poem about kubernetes clusters and docker images".split(),
}


def traffic(
    n: int, seed: int, *, topics=("payroll", "policy"), length=(5, 12), refusals=0.02
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
            completion = " ".join(rng.choice(words) for _ in range(rng.randint(5, 20)))
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


def test_no_shift_is_not_flagged():
    report = drift_report(traffic(300, seed=1), traffic(300, seed=2))
    assert not report.drifted, report.table()
    assert len(report.checks) == 6


def test_planted_shift_is_found():
    ref = traffic(300, seed=1)
    cur = traffic(300, seed=2, topics=("payroll", "new"), length=(15, 30), refusals=0.25)
    report = drift_report(ref, cur)
    flagged = {(c.name, c.statistic) for c in report.checks if c.flagged}
    assert report.drifted
    assert {
        ("prompt length", "psi"),
        ("prompt length", "ks_p_value"),
        ("prompt bigrams", "jsd_p_value"),
        ("refusal rate", "z_p_value"),
    } <= flagged
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
    assert loaded == recs
    ref, cur = split_by_time(list(reversed(loaded)), 0.25)
    assert len(ref) == 10 and ref[0]["ts"] < cur[0]["ts"]
    with pytest.raises(DataError, match="at least 30"):
        drift_report(recs[:10], recs[10:])
    (tmp_path / "bad.jsonl").write_text('{"completion": "x"}\n')
    with pytest.raises(DataError, match="needs a 'prompt'"):
        load_traffic(tmp_path / "bad.jsonl")
