"""The ACME seed use case for RL: translate ACME-CL programs to Python, rewarded by execution.

`build_rl_prompts` turns the corpus's program pairs into chat prompts (the format of the ACME
SFT data) carrying the ACME-CL source and test inputs; `translation_reward` runs a completion
as Python in the sandbox on those inputs and compares with what the ACME-CL interpreter
prints; `evaluate_translation` measures the execution-verified pass rate of a model.
"""

from __future__ import annotations

import difflib
import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from acme_cl import run_acme
from acme_cl_syntax import AcmeError
from acme_common import translation_is_heldout
from acme_programs import snippet_pairs

from forgeml.core.errors import DataError, NotFoundError
from forgeml.core.io import atomic_write_text
from forgeml.eval.sandbox import CaseResult, SandboxLimits, score_io_cases
from forgeml.train.rewards import compiles, extract_code

# The chat format and the held-out rule of the ACME SFT data (acme_sft.py), so RL
# starts from what SFT taught and the held-out programs are the same for both stages.
SYSTEM = "You are the ACME Corp internal assistant. Answer briefly and exactly."
ASK = "Translate this ACME-CL program to Python:"
LIMITS = SandboxLimits(timeout_s=4.0, memory_mb=512)  # wall clock, Python start-up included


def is_heldout(slug: str) -> bool:
    """The SFT data's deterministic ~10% split of translation items (key translate-<slug>);
    the corpus keeps these programs' Python out of the training folders too."""
    return translation_is_heldout(slug)


def translation_messages(acl: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"{ASK}\n\n```acme-cl\n{acl}```"},
    ]


def build_rl_prompts(corpus: Path, *, max_chars: int | None = None) -> dict[str, list[dict]]:
    """Prompt records `{messages, slug, acl, inputs}` for every program pair of an ACME corpus
    (`programs/tests/*.json`), split into train and held-out; programs longer than
    `max_chars` are left out (they would not fit a small model's context)."""
    tests_dir = Path(corpus) / "programs" / "tests"
    files = sorted(tests_dir.glob("*.json"))
    if not files:
        raise NotFoundError(
            f"no program tests in {tests_dir}",
            hint="generate the corpus first: python examples/acme/generate.py --out DIR",
        )
    out: dict[str, list[dict]] = {"train": [], "heldout": []}
    for path in files:
        test = json.loads(path.read_text())
        acl = (Path(corpus) / test["program"]).read_text()
        if max_chars is not None and len(acl) > max_chars:
            continue
        slug = path.stem
        out["heldout" if is_heldout(slug) else "train"].append(
            _prompt_record(slug, acl, test["cases"])
        )
    return out


def _prompt_record(slug: str, acl: str, cases: list[dict]) -> dict:
    return {
        "messages": translation_messages(acl),
        "slug": slug,
        "acl": acl,
        "inputs": [case["inputs"] for case in cases],
    }


def build_snippet_prompts(seed: int = 0, scale: float = 1.0) -> dict[str, list[dict]]:
    """Prompt records, as `build_rl_prompts`, for the short programs of the ACME SFT data
    (`translate_snippet`), split as the SFT data splits them."""
    out: dict[str, list[dict]] = {"train": [], "heldout": []}
    for pair in snippet_pairs(seed, scale):
        out["heldout" if is_heldout(pair["slug"]) else "train"].append(
            _prompt_record(pair["slug"], pair["acl"], pair["cases"])
        )
    return out


def write_rl_prompts(
    corpus: Path | None, out_dir: Path, *, max_chars: int | None = None,
    snippets: bool = False, seed: int = 0,
) -> dict[str, int]:  # fmt: skip
    """Write `train.jsonl` and `heldout.jsonl` under `out_dir` (the corpus's programs, or
    with `snippets` the SFT data's short programs for `seed`); return the counts."""
    if snippets and corpus is not None:
        raise DataError(
            "both an ACME corpus and --snippets given",
            hint="the snippets come from the SFT data, not a corpus: pass one of the two",
        )
    if snippets:
        splits = build_snippet_prompts(seed)
    elif corpus is None:
        raise DataError("no ACME corpus given", hint="pass the corpus folder, or --snippets")
    else:
        splits = build_rl_prompts(corpus, max_chars=max_chars)
    for name, records in splits.items():
        body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        atomic_write_text(Path(out_dir) / f"{name}.jsonl", body)
    return {name: len(records) for name, records in splits.items()}


@functools.lru_cache(maxsize=4096)
def _reference_outputs(acl: str, inputs_json: str) -> tuple[tuple[str, ...] | None, ...]:
    """What the ACME-CL interpreter prints for each test case (None where it fails)."""
    outputs = []
    for case in json.loads(inputs_json):
        try:
            outputs.append(tuple(run_acme(acl, case)))
        except AcmeError:
            outputs.append(None)
    return tuple(outputs)


@functools.lru_cache(maxsize=2048)
def _case_runs(acl: str, inputs_json: str, python: str) -> tuple[tuple[list[str], CaseResult], ...]:
    """Each test case's expected lines and the sandboxed run of `python` on its inputs (one
    own process per case); cached, so several rewards of one completion share the runs.
    Cases the ACME-CL program itself fails on are left out."""
    inputs = json.loads(inputs_json)
    expected = _reference_outputs(acl, inputs_json)
    cases = [
        {"inputs": list(case), "expected": list(lines)}
        for case, lines in zip(inputs, expected, strict=True)
        if lines is not None
    ]
    if not cases or not compiles(python):
        return ()
    results = score_io_cases(python, cases, limits=LIMITS, stop_after_timeout=True)[1]
    return tuple((case["expected"], res) for case, res in zip(cases, results, strict=True))


def translation_score(acl: str, inputs: Sequence[Sequence[Any]], python: str) -> float:
    """Share of test cases on which `python`, run in the sandbox (own process, time and memory
    limits, no network, empty temp folder), prints exactly what the ACME-CL program prints."""
    runs = _case_runs(acl, json.dumps([list(c) for c in inputs]), python)
    return sum(res.passed for _, res in runs) / len(inputs) if inputs else 0.0


def _require_tests(metadata: dict[str, Any]) -> None:
    if "acl" not in metadata or "inputs" not in metadata:
        raise DataError(
            "ACME translation prompt without 'acl' and 'inputs'",
            hint="build the prompts with `python examples/acme/make_data.py rl`",
        )


def _completion_runs(completion: str, metadata: dict[str, Any]) -> tuple:
    """The cached sandboxed runs (`_case_runs`) of a completion's code on a prompt's tests."""
    _require_tests(metadata)
    inputs = json.dumps([list(c) for c in metadata["inputs"]])
    return _case_runs(metadata["acl"], inputs, extract_code(completion))


def translation_reward(prompt: str, completion: str, metadata: dict[str, Any]) -> float:
    """Reward plugin `examples/acme/acme_rl.py:translation_reward` (prompt, completion, metadata)
    -> the execution-verified share of test cases passed (metadata: acl, inputs)."""
    _require_tests(metadata)
    return translation_score(metadata["acl"], metadata["inputs"], extract_code(completion))


def output_similarity(prompt: str, completion: str, metadata: dict[str, Any]) -> float:
    """Shaping reward `examples/acme/acme_rl.py:output_similarity`: how close what the translation
    prints is to what the ACME-CL program prints, per test case (difflib's ratio of the two
    outputs, 0..1), averaged. Partial credit for a near miss (`SUM: 62` for `TOTAL: 61`) that
    `translation_reward` scores 0; the same sandboxed runs, not new ones."""
    ratios = [
        difflib.SequenceMatcher(None, res.stdout, "".join(f"{x}\n" for x in want)).ratio()
        for want, res in _completion_runs(completion, metadata)
    ]
    return sum(ratios) / len(metadata["inputs"]) if ratios else 0.0


def shaped_translation_reward(prompt: str, completion: str, metadata: dict[str, Any]) -> float:
    """Ranker `examples/acme/acme_rl.py:shaped_translation_reward`: `translation_reward` plus a
    tenth of `output_similarity`, from the same sandboxed runs. Samples that pass the same
    share of test cases rank by how close their output is, so online DPO finds a pair on a
    prompt where no sample passes, instead of a tie. Passing one more case always ranks higher
    while a prompt has fewer than ten test cases (the demo's have one to three)."""
    return translation_reward(prompt, completion, metadata) + 0.1 * output_similarity(
        prompt, completion, metadata
    )


def python_runs(prompt: str, completion: str, metadata: dict[str, Any]) -> float:
    """Shaping reward `examples/acme/acme_rl.py:python_runs`: the share of the test inputs on
    which the translation runs to completion in the sandbox (exit 0 in time), whatever it
    prints. Denser than `translation_reward`: a program that reads an undefined name earns
    nothing, one that only prints wrong numbers earns this. The same cached runs as
    `translation_reward`, so next to it on the same completion it costs no new process."""
    runs = _completion_runs(completion, metadata)
    return sum(res.error is None for _, res in runs) / len(metadata["inputs"]) if runs else 0.0


def python_compiles(prompt: str, completion: str, metadata: dict[str, Any]) -> float:
    """Shaping reward `examples/acme/acme_rl.py:python_compiles`: 1.0 when the completion's code
    is valid Python syntax (compiled, never run), else 0.0."""
    return float(compiles(extract_code(completion)))


def evaluate_translation(
    model_dir: Path, prompts: Path, *, limit: int | None = None, max_new_tokens: int = 384,
    device: str = "cpu",
) -> dict[str, float]:  # fmt: skip
    """Greedy translations of the prompts by a model, scored by execution: `pass_rate` (all
    cases pass, pass@1) and `mean_score` (share of cases), over `n` prompts."""
    from forgeml.models.hf_io import load_model
    from forgeml.models.sampling import greedy_replies
    from forgeml.tokenizer.train import load_tokenizer
    from forgeml.train.rl_data import load_prompts

    model = load_model(model_dir, device=device).eval()
    records = load_prompts(prompts)[:limit]
    replies = greedy_replies(
        model, load_tokenizer(model_dir), [rec.text for rec in records],
        max_new_tokens=max_new_tokens, device=device, skip_special_tokens=False,
    )  # fmt: skip
    scores = [
        0.0 if reply is None else translation_reward(rec.text, reply, rec.metadata)
        for rec, reply in zip(records, replies, strict=True)
    ]  # a prompt that does not fit the context counts as failed
    n = len(scores)
    return {
        "n": n,
        "pass_rate": sum(s == 1.0 for s in scores) / n if n else 0.0,
        "mean_score": sum(scores) / n if n else 0.0,
    }
