"""ACME preference pairs for DPO and reward models: each generated ACME-CL program with its
correct Python translation (chosen) and a subtly broken one (rejected), where "broken" is
verified by running both on the program's test cases against the real ACME-CL interpreter.

Prompts, held-out split and metadata follow the ACME SFT/RL data (acme_rl.py), so
`examples/acme/acme_rl.py:translation_reward` ranks samples for online DPO on the same records.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from acme_programs import generate_programs, snippet_pairs
from acme_rl import is_heldout, translation_messages, translation_score

from forgeml.core.errors import DataError
from forgeml.core.io import atomic_write_text


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
    seed: int = 0, count: int | None = 40, *, snippets: bool = False
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Preference records for the first `count` ACME programs of corpus seed `seed` (the same
    programs `build_corpus` writes) or, with `snippets`, for the short programs of the SFT
    data of seed `seed` (those the snippet RL prompts use; `count` None: all of them), and a
    report accounting for every program.

    Each record: messages (the SFT/RL translation request), chosen = the reference
    translation, rejected = a mutation of it that fails at least one test case, metadata =
    {slug, acl, inputs, mutation, split}. A reference that does not pass every test, or a
    program no mutation breaks, is skipped and counted.
    """
    if snippets:
        programs = snippet_pairs(seed)[:count]
    else:
        programs = generate_programs(random.Random(f"acme:{seed}:programs"), count or 40)
    rng = random.Random(f"acme:{seed}:preferences" + (":snippets" if snippets else ""))
    records, skipped = [], {"reference_fails": 0, "no_breaking_mutation": 0}
    for p in programs:
        cases = _inputs(p["cases"])
        if translation_score(p["acl"], cases, p["python"]) < 1.0:
            skipped["reference_fails"] += 1
            continue
        broken, kind = None, None
        for name in rng.sample(sorted(MUTATIONS), len(MUTATIONS)):
            candidate = MUTATIONS[name](p["python"], rng)
            if candidate is not None and translation_score(p["acl"], cases, candidate) < 1.0:
                broken, kind = candidate, name
                break
        if broken is None:
            skipped["no_breaking_mutation"] += 1
            continue
        split = "heldout" if is_heldout(p["slug"]) else "train"
        records.append({
            "messages": translation_messages(p["acl"]),
            "chosen": f"```python\n{p['python']}```",
            "rejected": f"```python\n{broken}```",
            "metadata": {"slug": p["slug"], "acl": p["acl"], "inputs": cases, "mutation": kind,
                         "split": split},
        })  # fmt: skip
    report = {"programs": len(programs), "pairs": len(records), "skipped": skipped}
    return records, report


def write_translation_preferences(
    out_path: str | Path, seed: int = 0, count: int | None = 40, *, snippets: bool = False
) -> dict[str, Any]:
    """Write `build_translation_preferences` as JSONL (atomically); return its report."""
    records, report = build_translation_preferences(seed, count, snippets=snippets)
    if not records:
        raise DataError(
            f"no preference pairs from {report['programs']} ACME programs ({report['skipped']})"
        )
    atomic_write_text(out_path, "".join(json.dumps(r) + "\n" for r in records))
    return report
