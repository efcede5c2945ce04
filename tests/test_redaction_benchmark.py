"""benchmarks/redaction.py on a small seeded corpus: forgeml finds every planted secret and
keeps the hard negatives and control text; detect-secrets runs beside it when installed; the
scoring itself (fragments, line mapping, overlap) is checked on hand-made cases."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import redaction  # noqa: E402
import redaction_secrets  # noqa: E402
from redaction_cases import Case  # noqa: E402

HAS_DETECT_SECRETS = importlib.util.find_spec("detect_secrets") is not None


@pytest.fixture(scope="module")
def results():
    return redaction.run_benchmark(seed=7, per_scenario=2, with_peers=True, corpora=("secrets",))


def test_forgeml_meets_the_secret_targets(results):
    ours = results["secrets"]["forgeml"]
    missed = {k: v["recall"] for k, v in ours["kinds"].items() if v["recall"] < 1.0}
    assert ours["recall"] == 1.0, missed
    assert len(ours["kinds"]) >= 20  # kinds of secret in the corpus
    assert ours["negatives_kept"] >= 0.95, ours["negatives"]
    assert ours["control_kept"] >= 0.95
    assert ours["precision"] >= 0.9


@pytest.mark.skipif(not HAS_DETECT_SECRETS, reason="detect-secrets not installed (bench extra)")
def test_detect_secrets_runs_beside_it(results):
    peer = results["secrets"]["detect-secrets"]
    assert peer["docs"] == results["secrets"]["forgeml"]["docs"] and peer["docs_per_s"] > 0
    assert 0 < peer["recall"] <= results["secrets"]["forgeml"]["recall"]


def test_corpus_is_seeded_and_labelled():
    a, b = redaction_secrets.cases(3, 1), redaction_secrets.cases(3, 1)
    assert [c.text for c in a] == [c.text for c in b]
    assert [c.text for c in a] != [c.text for c in redaction_secrets.cases(4, 1)]
    for case in a:
        for start, end, kind in case.positives + case.negatives:
            assert 0 <= start < end <= len(case.text) and kind.count(":") == 1
            assert "«" not in case.text  # every slot was filled
    kinds = {k for c in a for *_, k in c.positives}
    negatives = {k for c in a for *_, k in c.negatives}
    assert len(kinds) >= 20 and len(negatives) >= 10
    assert any(not c.positives and not c.negatives for c in a)  # control text


def test_scoring_on_hand_made_cases():
    pem = "-----BEGIN PRIVATE KEY-----\nAAAAbbbbCCCCdddd1234\nEEEEffffGGGGhhhh5678\n-----END"
    assert redaction.fragments(pem) == ["AAAAbbbbCCCCdddd1234", "EEEEffffGGGGhhhh5678"]
    assert redaction.fragments("Summer2024!") == ["Summer2024!"]
    text = "a\nDB_PASSWORD=Xk9#mQ2!pLs\nversion=1.2.3\n"
    case = Case(
        text,
        "app.env",
        "config",
        positives=[(text.index("Xk9"), text.index("Xk9") + 11, "secret:config_password")],
        negatives=[(text.index("1.2.3"), text.index("1.2.3") + 5, "negative:version")],
    )
    control = Case("Nothing to see here.\n", "README.md", "markdown")
    run = redaction.run_forgeml([case, control], "secrets")
    assert run.per_case[0].found == [True] and run.per_case[0].kept == [True]
    assert run.per_case[1].kept == [True]
    assert redaction._lines(text, text.index("Xk9"), text.index("Xk9") + 11) == range(2, 3)
    at = text.index("Xk9")
    spans = redaction.run_spans_tool(
        "probe", [case], lambda t: [(at + 1, at + 3, "X"), (0, 1, "Y")]
    )
    assert spans.per_case[0].found == [True] and spans.per_case[0].kept == [True]
    assert (spans.per_case[0].findings, spans.per_case[0].true_findings) == (2, 1)
    summary = redaction.summarise([case, control], run)
    assert summary["recall"] == 1.0 and summary["control_kept"] == 1.0
