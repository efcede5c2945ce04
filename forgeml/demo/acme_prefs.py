"""ACME preference pairs for DPO and reward models: each generated ACME-CL program with its
correct Python translation (chosen) and a subtly broken one (rejected), where "broken" is
verified by running both on the program's test cases with the real interpreter (acme_cl).

`translation_reward` is the same check as a reward function for online DPO and GRPO.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from forgeml.core.errors import DataError
from forgeml.core.io import atomic_write_text
from forgeml.demo.acme import generate_programs
from forgeml.demo.acme_cl import score_translation

TRANSLATE_ASK = "Translate this ACME-CL program to Python:"
_CODE_BLOCK = re.compile(r"```(?:python|py)?\n(.*?)```", re.S)


def _swap(pattern: str, replacements: dict[str, str]) -> Callable[[str, random.Random], str | None]:
    """A mutation replacing one random match of `pattern` by its entry in `replacements`."""
    regex = re.compile(pattern)

    def mutate(source: str, rng: random.Random) -> str | None:
        matches = list(regex.finditer(source))
        if not matches:
            return None
        m = rng.choice(matches)
        return source[: m.start()] + replacements[m.group(0)] + source[m.end() :]

    return mutate


def _bump_constant(source: str, rng: random.Random) -> str | None:
    matches = [m for m in re.finditer(r"(?<![\w.])\d+(?![\w.])", source)]
    if not matches:
        return None
    m = rng.choice(matches)
    return source[: m.start()] + str(int(m.group(0)) + rng.choice([1, 2, 10])) + source[m.end() :]


def _drop_print(source: str, rng: random.Random) -> str | None:
    lines = source.splitlines(keepends=True)
    prints = [i for i, line in enumerate(lines) if line.strip().startswith("print(")]
    if len(prints) < 2:
        return None
    del lines[rng.choice(prints)]
    return "".join(lines)


# The kinds of mistakes a weak translator makes: an operator, an off-by-one comparison, a
# wrong constant, a missing output line.
MUTATIONS: dict[str, Callable[[str, random.Random], str | None]] = {
    "operator": _swap(
        r" (\+|-|\*|//|%) ",
        {" + ": " - ", " - ": " + ", " * ": " + ", " // ": " % ", " % ": " // "},
    ),  # fmt: skip
    "comparison": _swap(
        r" (<=|>=|<|>|==|!=) ",
        {
            " < ": " <= ",
            " <= ": " < ",
            " > ": " >= ",
            " >= ": " > ",
            " == ": " != ",
            " != ": " == ",
        },
    ),  # fmt: skip
    "constant": _bump_constant,
    "drop_print": _drop_print,
}


def _inputs(cases: list[dict[str, Any]]) -> list[list[Any]]:
    return [list(c["inputs"]) for c in cases]


def build_translation_preferences(
    seed: int = 0, count: int = 40, *, system: str | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Preference records for the first `count` ACME programs of corpus seed `seed` (the same
    programs `build_corpus` writes), and a report accounting for every program.

    Each record: messages (optional system + the translation request), chosen = the
    reference translation, rejected = a mutation of it that fails at least one test case,
    metadata = {slug, acl, tests, mutation}. A chosen answer that does not pass every test,
    or a program no mutation breaks, is skipped and counted.
    """
    programs = generate_programs(random.Random(f"acme:{seed}:programs"), count)
    rng = random.Random(f"acme:{seed}:preferences")
    records, skipped = [], {"reference_fails": 0, "no_breaking_mutation": 0}
    for p in programs:
        cases = _inputs(p["cases"])
        if score_translation(p["acl"], p["python"], cases) < 1.0:
            skipped["reference_fails"] += 1
            continue
        broken, kind = None, None
        for name in rng.sample(sorted(MUTATIONS), len(MUTATIONS)):
            candidate = MUTATIONS[name](p["python"], rng)
            if candidate is not None and score_translation(p["acl"], candidate, cases) < 1.0:
                broken, kind = candidate, name
                break
        if broken is None:
            skipped["no_breaking_mutation"] += 1
            continue
        messages = [{"role": "system", "content": system}] if system else []
        messages.append(
            {"role": "user", "content": f"{TRANSLATE_ASK}\n\n```acme-cl\n{p['acl']}```"}
        )
        records.append({
            "messages": messages,
            "chosen": f"```python\n{p['python']}```",
            "rejected": f"```python\n{broken}```",
            "metadata": {"slug": p["slug"], "acl": p["acl"], "tests": p["cases"], "mutation": kind},
        })  # fmt: skip
    report = {"programs": len(programs), "pairs": len(records), "skipped": skipped}
    return records, report


def write_translation_preferences(
    out_path: str | Path, seed: int = 0, count: int = 40, *, system: str | None = None
) -> dict[str, Any]:
    """Write `build_translation_preferences` as JSONL (atomically); return its report."""
    records, report = build_translation_preferences(seed, count, system=system)
    if not records:
        raise DataError(f"no preference pairs from {count} ACME programs ({report['skipped']})")
    atomic_write_text(out_path, "".join(json.dumps(r) + "\n" for r in records))
    return report


def extract_python(completion: str) -> str:
    """The first ```python block of a completion, or the whole completion when it has none."""
    match = _CODE_BLOCK.search(completion)
    return match.group(1) if match else completion


def translation_reward(prompt: str, completion: str, metadata: dict[str, Any]) -> float:
    """Execution-verified reward: the share of the program's test cases on which the Python in
    `completion` prints what the ACME-CL program (metadata.acl) prints; 0 without metadata."""
    if not metadata.get("acl") or not metadata.get("tests"):
        return 0.0
    return score_translation(
        metadata["acl"], extract_python(completion), _inputs(metadata["tests"]), timeout_s=5.0
    )
