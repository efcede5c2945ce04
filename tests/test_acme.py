"""ACME demo domain: the ACME-CL interpreter, translation checking, and the generated corpus."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from acme import corpus_digest, generate_corpus
from acme_cl import check_translation, run_acme, run_python_cases, score_translation
from acme_cl_syntax import AcmeLimitError, AcmeRuntimeError, AcmeSyntaxError, parse_acme
from acme_common import GAP

from forgeml.core.errors import DataError

# ---------------------------------------------------------------------------------------
# Interpreter


def test_arithmetic_precedence_floor_division_and_mod():
    src = """
    DISPLAY 2 + 3 * 4.
    DISPLAY (2 + 3) * 4.
    DISPLAY 10 - 4 - 3.
    DISPLAY 7 / 2.
    DISPLAY -7 / 2.
    DISPLAY -7 MOD 2.
    DISPLAY 7 MOD -2.
    DISPLAY - (3 - 5).
    """
    assert run_acme(src) == ["14", "20", "3", "3", "-4", "1", "-1", "2"]
    # the verbs change a variable in place
    src = "DECLARE X VALUE 10. ADD 5 TO X. SUBTRACT 3 FROM X. MULTIPLY X BY 4. DIVIDE X BY 5. DISPLAY X."
    assert run_acme(src) == ["9"]


def test_text_join_functions_and_comparison():
    src = '''
    DECLARE T AS TEXT VALUE "ab".
    DISPLAY UPPER(T) & "-" & LENGTH(T) & LOWER("XY").
    DISPLAY TEXT(12) & NUMBER(" 30 ") + 1.
    DISPLAY MAX(3, 9) & MIN(3, 9) & ABS(-4).
    DISPLAY "SAY ""HI""".
    IF "ABC" < "ABD" AND NOT "a" = "A" THEN DISPLAY "ORDERED". END-IF.
    '''
    assert run_acme(src) == ["AB-2xy", "1231", "934", 'SAY "HI"', "ORDERED"]


def test_if_else_nesting_and_short_circuit():
    src = """
    DECLARE N. ACCEPT N.
    IF N > 10 THEN
       DISPLAY "BIG".
    ELSE
       IF N = 0 OR 10 / N > 2 THEN DISPLAY "SMALL". ELSE DISPLAY "MID". END-IF.
    END-IF.
    """
    assert [run_acme(src, [n])[0] for n in (11, 0, 3, 6)] == ["BIG", "SMALL", "SMALL", "MID"]


def test_loops_bounds_step_times_leave():
    src = """
    DECLARE N VALUE 3.
    REPEAT I FROM 1 TO N DO
       SET N TO 100.
       DISPLAY I.
    END-REPEAT.
    REPEAT K FROM 10 TO 1 STEP -4 DO DISPLAY "K" & K. END-REPEAT.
    REPEAT 2 TIMES DISPLAY "T". END-REPEAT.
    REPEAT 0 TIMES DISPLAY "NEVER". END-REPEAT.
    DECLARE W VALUE 0.
    WHILE W < 100 DO
       ADD 1 TO W.
       IF W = 4 THEN LEAVE. END-IF.
    END-WHILE.
    DISPLAY "W" & W.
    """
    assert run_acme(src) == ["1", "2", "3", "K10", "K6", "K2", "T", "T", "W4"]


def test_procedures_share_variables_and_stop():
    src = """
    DECLARE Q VALUE 2.
    PERFORM DOUBLE.
    PERFORM DOUBLE.
    DISPLAY Q.
    STOP.
    DISPLAY "UNREACHED".
    PROCEDURE DOUBLE.
       MULTIPLY Q BY 2.
    END-PROCEDURE.
    """
    assert run_acme(src) == ["8"]
    with pytest.raises(AcmeRuntimeError, match="PERFORM nested deeper"):
        run_acme("PERFORM R. PROCEDURE R. PERFORM R. END-PROCEDURE.")


def test_accept_converts_inputs():
    src = "DECLARE N. DECLARE T AS TEXT. ACCEPT N. ACCEPT T. DISPLAY N + 1 & T."
    assert run_acme(src, ["41", 7]) == ["427"]
    with pytest.raises(AcmeRuntimeError, match="no more input"):
        run_acme(src, [1])
    with pytest.raises(AcmeRuntimeError, match="not a whole number"):
        run_acme(src, ["4x", "a"])


def test_case_insensitive_comments_and_program_wrapper():
    src = "*> header\nprogram Hello-1.\ndeclare total value 2. *> trailing\nDisplay TOTAL.\nEND-PROGRAM.\n"
    assert run_acme(src) == ["2"]
    assert parse_acme(src).name == "HELLO-1"


@pytest.mark.parametrize(
    ("source", "error", "fragment", "line"),
    [
        ("DISPLAY 1", AcmeSyntaxError, "expected '.'", 1),
        ('DISPLAY "open.', AcmeSyntaxError, "not closed", 1),
        ("DECLARE X.\nIF X > 1 THEN\nDISPLAY X.\n", AcmeSyntaxError, "missing ELSE or END-IF", 4),
        ("LEAVE.", AcmeSyntaxError, "only allowed inside", 1),
        ("PERFORM NOPE.", AcmeSyntaxError, "no PROCEDURE named NOPE", 1),
        ("DECLARE SET.", AcmeSyntaxError, "keyword cannot be a name", 1),
        ("DISPLAY 1 < 2 < 3.", AcmeSyntaxError, "cannot be chained", 1),
        ("DECLARE A VALUE 5.\nDISPLAY A-1.", AcmeRuntimeError, "A-1 is not declared", 2),
        ('DECLARE X.\nSET X TO "a".', AcmeRuntimeError, "cannot hold TEXT", 2),
        ('DISPLAY "a" + 1.', AcmeRuntimeError, "needs a NUMBER", 1),
        ("DISPLAY 1 / 0.", AcmeRuntimeError, "division by zero", 1),
        ("DECLARE X. DECLARE X.", AcmeRuntimeError, "already declared", 1),
        ("DECLARE X. SET X TO 1 > 0.", AcmeRuntimeError, "condition is not a value", 1),
        ("IF 1 THEN DISPLAY 1. END-IF.", AcmeRuntimeError, "needs a condition", 1),
        ("DISPLAY 999999999999999999 + 1.", AcmeRuntimeError, "numeric overflow", 1),
        ("REPEAT I FROM 1 TO 2 STEP 0 DO END-REPEAT.", AcmeRuntimeError, "STEP cannot be 0", 1),
        ('DISPLAY 1 = "1".', AcmeRuntimeError, "cannot compare NUMBER with TEXT", 1),
    ],
)
def test_errors_name_the_line(source, error, fragment, line):
    with pytest.raises(error, match=re.escape(fragment)) as info:
        run_acme(source)
    assert info.value.line == line


def test_step_time_and_output_limits():
    endless = "DECLARE X.\nWHILE 1 = 1 DO\n   ADD 1 TO X.\nEND-WHILE.\n"
    with pytest.raises(AcmeLimitError, match="step limit of 500"):
        run_acme(endless, max_steps=500)
    with pytest.raises(AcmeLimitError, match="time limit"):
        run_acme(endless, max_steps=10**9, timeout_s=0.0)
    with pytest.raises(AcmeLimitError, match="output limit"):
        run_acme("REPEAT 50 TIMES DISPLAY 1. END-REPEAT.", max_output_lines=10)
    # a program under its limit runs to the end
    assert run_acme("REPEAT 3 TIMES DISPLAY 1. END-REPEAT.", max_steps=10) == ["1", "1", "1"]


# ---------------------------------------------------------------------------------------
# Translation checking

ACL = """
DECLARE N. ACCEPT N.
DECLARE TOTAL.
REPEAT I FROM 1 TO N DO
   ADD I * I TO TOTAL.
END-REPEAT.
DISPLAY "TOTAL: " & TOTAL / 2.
"""
PY = """
n = int(input())
total = 0
for i in range(1, n + 1):
    total += i * i
print(f"TOTAL: {total // 2}")
"""


def test_check_translation_accepts_equivalent_and_rejects_mutants():
    cases = [[0], [3], [7]]
    assert check_translation(ACL, PY, cases)
    assert check_translation(ACL, PY, [3])  # one flat input list is one case
    assert check_translation(ACL, PY, cases, sandbox=False)
    off_by_one = PY.replace("n + 1", "n")
    assert not check_translation(ACL, off_by_one, cases)
    assert score_translation(ACL, off_by_one, cases) == pytest.approx(1 / 3)  # n=0 agrees
    assert not check_translation(ACL, PY.replace("//", "/"), cases)
    assert not check_translation(ACL, "print(", cases)
    assert not check_translation(ACL, "raise SystemExit(3)", cases)


def test_python_runner_timeout_and_isolation():
    start = time.perf_counter()
    assert run_python_cases("while True: pass", [[1], [2]], timeout_s=1.0) == [None, None]
    assert time.perf_counter() - start < 10
    out = run_python_cases("import sys\nx = input()\nsys.stdout.write(x * 2)\n", [["ab"]])
    assert out == [["abab"]]


# ---------------------------------------------------------------------------------------
# The generated corpus

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
PHONE = re.compile(r"\(\d{3}\) 555-01\d\d")
API_KEY = re.compile(r"acme_sk_[a-z0-9]{32}")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict, float]:
    out = tmp_path_factory.mktemp("acme") / "corpus"
    start = time.perf_counter()
    manifest = generate_corpus(out, seed=0, scale=1.0)
    return out, manifest, time.perf_counter() - start


def test_corpus_size_time_and_layout(corpus):
    root, manifest, seconds = corpus
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert 1.5e6 <= total <= 3e6
    assert seconds < 10
    assert json.loads((root / "manifest.json").read_text())["seed"] == 0
    for folder in ("manuals", "programs", "policies", "memos", "damaged", "records", "qa"):
        assert manifest["by_folder"][folder]["files"] > 0
    assert len(list((root / "manuals").glob("*.md"))) >= 100
    assert len({p.read_text() for p in (root / "manuals").glob("*.md")}) == len(
        list((root / "manuals").glob("*.md"))
    )
    assert b"\x00" in (root / "assets/logo.bin").read_bytes()
    latin = (root / "legacy/notes_latin1.txt").read_bytes()
    with pytest.raises(UnicodeDecodeError):
        latin.decode("utf-8")
    assert "Müller" in latin.decode("latin-1")


def test_corpus_is_deterministic(corpus, tmp_path):
    root, _, _ = corpus
    again = generate_corpus(tmp_path / "again", seed=0, scale=1.0)
    assert corpus_digest(root) == corpus_digest(tmp_path / "again")
    assert again["files"] == len(corpus_digest(root))
    generate_corpus(tmp_path / "other", seed=1, scale=0.1)
    generate_corpus(tmp_path / "small", seed=0, scale=0.1)
    assert corpus_digest(tmp_path / "other") != corpus_digest(tmp_path / "small")


def test_all_generated_translations_are_equivalent(corpus):
    root, manifest, _ = corpus
    tests = sorted((root / "programs/tests").glob("*.json"))
    assert len(tests) == manifest["program_pairs"] >= 300
    for i, path in enumerate(tests):
        test = json.loads(path.read_text())
        acl, py = (root / test["program"]).read_text(), (root / test["python"]).read_text()
        cases = [c["inputs"] for c in test["cases"]]
        for case in test["cases"]:
            assert run_acme(acl, case["inputs"]) == case["expected"], path.name
        # all pairs in-process (fast); every 40th also through the subprocess runner
        assert check_translation(acl, py, cases, sandbox=False), path.name
        if i % 40 == 0:
            assert check_translation(acl, py, cases), path.name


def test_mutated_generated_translation_fails(corpus):
    root, _, _ = corpus
    test = json.loads(next((root / "programs/tests").glob("*_paycalc.json")).read_text())
    acl, py = (root / test["program"]).read_text(), (root / test["python"]).read_text()
    cases = [c["inputs"] for c in test["cases"]]
    assert check_translation(acl, py, cases)
    assert not check_translation(acl, py.replace("//", "/"), cases)
    assert not check_translation(acl, py.replace('print(f"', 'print(f" '), cases)


def test_manual_examples_parse(corpus):
    root, _, _ = corpus
    blocks = 0
    for path in (root / "manuals").glob("*.md"):
        for block in re.findall(r"```acme-cl\n(.*?)```", path.read_text(), re.S):
            parse_acme(block)
            blocks += 1
    assert blocks > 300


def test_damaged_answer_key(corpus):
    root, _, _ = corpus
    answers = json.loads((root / "damaged/answers.json").read_text())
    assert len(answers) == len(list((root / "damaged").glob("*.txt"))) > 50
    for rel, entry in answers.items():
        damaged = (root / rel).read_text()
        assert damaged.count(GAP) == len(entry["answers"]) >= 2
        # filling the gaps gives back a passage of the source document
        body = damaged.split("\n\n", 1)[1].rstrip("\n")
        for word in entry["answers"]:
            body = body.replace(GAP, word, 1)
        assert body in (root / entry["source"]).read_text()


def test_policy_qa_answers_are_in_their_policy(corpus):
    root, _, _ = corpus
    qa = json.loads((root / "qa/policy_qa.json").read_text())
    assert len(qa) > 100
    for item in qa:
        policy = next((root / "policies").glob(f"{item['source'].lower()}_*.md")).read_text()
        assert item["answer"] in policy


def test_planted_pii_manifest_is_exact(corpus):
    root, _, _ = corpus
    planted = json.loads((root / "records/planted.json").read_text())["items"]
    kinds = {p["kind"] for p in planted}
    assert kinds == {"email", "phone", "api_key", "password"}
    for p in planted:
        assert (root / p["file"]).read_text()[p["start"] : p["end"]] == p["value"]
    found = set()
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if not path.is_file() or rel in ("records/planted.json",) or path.suffix == ".bin":
            continue
        try:
            body = path.read_text()
        except UnicodeDecodeError:
            continue
        for regex in (EMAIL, PHONE, API_KEY):
            for m in regex.finditer(body):
                assert rel.startswith("records/"), f"unplanted PII-like text in {rel}: {m.group()}"
                found.add((rel, m.start(), m.end()))
    scannable = {(p["file"], p["start"], p["end"]) for p in planted if p["kind"] != "password"}
    assert found == scannable


def test_generate_refuses_foreign_folder_and_replaces_own(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.txt").write_text("do not delete")
    with pytest.raises(DataError, match="not empty"):
        generate_corpus(foreign, scale=0.05)
    assert (foreign / "thesis.txt").read_text() == "do not delete"
    out = tmp_path / "acme"
    generate_corpus(out, seed=0, scale=0.05)
    (out / "stale.txt").write_text("old")
    generate_corpus(out, seed=0, scale=0.05)
    assert not (out / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
