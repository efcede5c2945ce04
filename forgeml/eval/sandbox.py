"""Run generated Python against stdin/stdout test cases in a separate, time-limited process.

Used by execution-verified code tasks (forgeml.eval.tasks `code_exec`). This is isolation
from our process (fresh `python -I`, empty temp folder, timeout, capped output), not a
security boundary: run untrusted models' code inside a container.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

MAX_OUTPUT_BYTES = 1 << 20


@dataclass(frozen=True)
class CaseResult:
    passed: bool
    stdout: str
    error: str | None = None


def run_python(source: str, stdin: str = "", *, timeout_s: float = 10.0) -> CaseResult:
    """Run `source` once in a fresh isolated interpreter; passed = exit status 0 in time."""
    with tempfile.TemporaryDirectory(prefix="forgeml-sandbox-") as cwd:
        try:
            proc = subprocess.run(
                [sys.executable, "-I", "-c", source],
                input=stdin,
                capture_output=True,
                text=True,
                timeout=timeout_s,
                cwd=cwd,
                env={"PYTHONHASHSEED": "0", "PATH": "/usr/bin:/bin"},
            )
        except subprocess.TimeoutExpired:
            return CaseResult(False, "", f"timed out after {timeout_s:g}s")
    out = proc.stdout[:MAX_OUTPUT_BYTES]
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        return CaseResult(False, out, tail[0][:500])
    return CaseResult(True, out)


def score_io_cases(
    source: str, cases: Sequence[dict[str, Any]], *, timeout_s: float = 10.0
) -> tuple[float, list[CaseResult]]:
    """Fraction of cases `{"inputs": [...], "expected": [lines]}` whose stdout lines (inputs
    fed one per line on stdin) equal `expected`, and each case's result."""
    results = []
    passed = 0
    for case in cases:
        stdin = "".join(f"{v}\n" for v in case.get("inputs", []))
        res = run_python(source, stdin, timeout_s=timeout_s)
        ok = res.passed and res.stdout.splitlines() == [str(x) for x in case["expected"]]
        passed += ok
        results.append(CaseResult(ok, res.stdout, res.error))
    return (passed / len(cases) if cases else 0.0), results
