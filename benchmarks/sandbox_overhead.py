"""What one sandboxed test-case run costs (forgeml.eval.sandbox.run_python), against the floor.

The RL execution reward runs one sandboxed process per test case, thousands per training run,
so start-up is the cost. Times, in one process, round-robin:
- `sandbox`: `run_python` of a two-line program reading stdin (network namespace, rlimits,
  temp folder, capped output files), from a small parent and again after the parent has
  allocated `--parent-mb` of memory (a training process is large);
- `floor`: `subprocess.run([python, "-I", "-S", "-c", "pass"])`, a bare interpreter start.

    .venv/bin/python benchmarks/sandbox_overhead.py --runs 40
    git show 28e15ee:forgeml/eval/sandbox.py > /tmp/old_sandbox.py   # an earlier version
    .venv/bin/python benchmarks/sandbox_overhead.py --runs 40 --sandbox-file /tmp/old_sandbox.py
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import time

from forgeml.eval import sandbox

PROGRAM = "x = int(input())\nprint(x + 1)\n"
LIMITS = sandbox.SandboxLimits(timeout_s=4.0, memory_mb=512)
run_python = sandbox.run_python


def sandbox_ms() -> float:
    start = time.perf_counter()
    res = run_python(PROGRAM, "41\n", limits=LIMITS)
    assert res.passed and res.stdout == "42\n", res
    return (time.perf_counter() - start) * 1000


def floor_ms() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-I", "-S", "-c", "pass"], check=True)
    return (time.perf_counter() - start) * 1000


def timed(runs: int) -> dict[str, float]:
    got: dict[str, list[float]] = {"sandbox": [], "floor": []}
    for _ in range(runs):
        got["sandbox"].append(sandbox_ms())
        got["floor"].append(floor_ms())
    return {name: statistics.median(v) for name, v in got.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--parent-mb", type=int, default=1024)
    ap.add_argument("--sandbox-file", help="time this copy of forgeml/eval/sandbox.py instead")
    args = ap.parse_args()
    if args.sandbox_file:
        global run_python
        spec = importlib.util.spec_from_file_location("other_sandbox", args.sandbox_file)
        other = importlib.util.module_from_spec(spec)
        sys.modules["other_sandbox"] = other  # dataclasses look their module up
        spec.loader.exec_module(other)
        run_python = other.run_python
    print(f"sandbox: {args.sandbox_file or sandbox.__file__}")
    print(f"isolation: {sandbox.network_isolation(LIMITS)}")
    sandbox_ms(), floor_ms()  # warm caches
    small = timed(args.runs)
    ballast = bytearray(args.parent_mb << 20)  # touched: real resident memory
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1
    big = timed(args.runs)
    print("| parent | sandbox run ms (median) | bare interpreter ms | overhead ms |")
    print("|---|---|---|---|")
    for name, got in (("small", small), (f"+{args.parent_mb} MB", big)):
        print(
            f"| {name} | {got['sandbox']:.1f} | {got['floor']:.1f} | "
            f"{got['sandbox'] - got['floor']:.1f} |"
        )
    del ballast


if __name__ == "__main__":
    main()
