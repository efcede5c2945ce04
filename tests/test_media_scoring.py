"""CER/WER scorers: hand-computed edit distances, normalisation options, agreement with
jiwer where it is installed, registration under `cer`/`wer` and lower-is-better KPIs."""

from __future__ import annotations

import random

import pytest

from forgeml.eval.media_scoring import (
    character_error_rate,
    edit_distance,
    normalize_transcript,
    word_error_rate,
)
from forgeml.eval.scoring import resolve_scorer


def naive_distance(a, b) -> int:
    """Full-table Levenshtein, the textbook recurrence."""
    table = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            table[i][j] = min(
                table[i - 1][j] + 1,
                table[i][j - 1] + 1,
                table[i - 1][j - 1] + (a[i - 1] != b[j - 1]),
            )
    return table[-1][-1]


def test_hand_computed_distances_and_rates():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("", "abc") == 3 and edit_distance("abc", "") == 3
    assert edit_distance("flaw", "lawn") == 2
    # "the pump feeds tank" vs reference "the pump feeds the tank": one deletion of 5 words.
    assert word_error_rate("the pump feeds tank", "the pump feeds the tank") == pytest.approx(0.2)
    # one substitution in 10 characters: "valve 12 a" -> "valve 17 a"
    assert character_error_rate("valve 17 a", "valve 12 a") == pytest.approx(0.1)
    assert character_error_rate("", "abcd") == 1.0
    assert character_error_rate("abcdefgh", "ab") == pytest.approx(3.0)  # insertions count
    assert word_error_rate("", "") == 0.0 and word_error_rate("x", "") == 1.0


def test_normalisation_options():
    assert normalize_transcript("  The PUMP,  feeds\tTank-3. ") == "the pump feeds tank3"
    assert normalize_transcript("A.B", punctuation=True, lowercase=False) == "A.B"
    assert character_error_rate("THE PUMP!", "the pump") == 0.0
    assert character_error_rate("THE PUMP!", "the pump", normalize=False) > 0.5
    assert resolve_scorer("cer_raw")("the pump", "The pump") == pytest.approx(1 / 8)
    assert resolve_scorer("wer_raw")("the Pump", "the pump") == pytest.approx(0.5)


def test_agrees_with_the_naive_recurrence_on_random_strings():
    rng = random.Random(0)
    for _ in range(200):
        a = "".join(rng.choice("abc ") for _ in range(rng.randint(0, 12)))
        b = "".join(rng.choice("abc ") for _ in range(rng.randint(0, 12)))
        assert edit_distance(a, b) == naive_distance(a, b)
        assert edit_distance(a.split(), b.split()) == naive_distance(a.split(), b.split())


def test_agrees_with_jiwer():
    jiwer = pytest.importorskip("jiwer", reason="jiwer not installed (optional cross-check)")
    rng = random.Random(1)
    words = "pump valve tank feeds the a unit 7 check".split()
    for _ in range(100):
        ref = " ".join(rng.choice(words) for _ in range(rng.randint(1, 12)))
        hyp = " ".join(rng.choice(words) for _ in range(rng.randint(0, 12)))
        assert word_error_rate(hyp, ref, normalize=False) == pytest.approx(jiwer.wer(ref, hyp))
        assert character_error_rate(hyp, ref, normalize=False) == pytest.approx(jiwer.cer(ref, hyp))


def test_registered_and_gated_lower_is_better():
    from forgeml.eval.suite import DataSpec, TaskSpec
    from forgeml.eval.tasks import TaskResult, kpis_of

    assert resolve_scorer("cer")("The pump.", "the pump") == 0.0
    assert resolve_scorer("wer")("pump", "the pump") == pytest.approx(0.5)
    task = TaskSpec(name="pages", kind="generate", data=DataSpec(inline=[{}]), scorers=["cer"])
    result = TaskResult("pages", "generate", "cer", {"cer": 0.3}, [])
    assert kpis_of(task, result)[0]["higher_is_better"] is False
