"""ACME-CL, the made-up legacy language of the ACME demo domain, and its interpreter.

ACME-CL is a small COBOL/BASIC-flavoured language: statements end with a period, blocks
close with END-IF / END-WHILE / END-REPEAT. `run_acme` executes a program on input values
with step, time and output limits; `check_translation` runs an ACME-CL program and a Python
translation on the same test inputs and compares outputs (the reward of the RL stage).

Language summary (the generated manuals in `examples/acme` describe it at length)::

    *> comment to the end of the line
    PROGRAM PAY-CALC.                     optional header (END-PROGRAM. optional footer)
    DECLARE HOURS AS NUMBER VALUE 0.      types NUMBER (integer, 18 digits) and TEXT
    ACCEPT HOURS.                         read the next input value
    SET PAY TO HOURS * 12 + 5.            + - * / (floor division) MOD, unary -
    ADD 1 TO N.  SUBTRACT 2 FROM N.  MULTIPLY N BY 3.  DIVIDE N BY 2.
    DISPLAY "PAY: " & PAY.                & joins text (numbers are converted)
    IF A > 3 AND NOT B = 0 THEN ... ELSE ... END-IF.     = <> < > <= >=
    WHILE N > 0 DO ... END-WHILE.
    REPEAT I FROM 1 TO N [STEP 2] DO ... END-REPEAT.     bounds are inclusive
    REPEAT 3 TIMES ... END-REPEAT.        LEAVE. exits the innermost loop
    PROCEDURE SHOW. ... END-PROCEDURE.    PERFORM SHOW.  (procedures share all variables)
    STOP.                                 end the program
    functions: LENGTH(t) UPPER(t) LOWER(t) TEXT(n) NUMBER(t) ABS(n) MAX(a, b) MIN(a, b)

Names are letters, digits and inner hyphens (TOTAL-PAY), case-insensitive; as in COBOL a
minus sign needs spaces around it (`A - 1`), because `A-1` is a name.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from acme_cl_syntax import (
    CMP_OPS,
    MAX_NUMBER,
    MAX_PERFORM_DEPTH,
    MAX_TEXT,
    AcmeError,
    AcmeLimitError,
    AcmeRuntimeError,
    Binary,
    Call,
    Num,
    Program,
    Stmt,
    Str,
    Unary,
    Value,
    Var,
    parse_acme,
)

# ---------------------------------------------------------------------------------------
# Interpreter


class _Leave(Exception):
    pass


class _Stop(Exception):
    pass


def _type_name(value: object) -> str:
    if isinstance(value, bool):
        return "CONDITION"
    return "NUMBER" if isinstance(value, int) else "TEXT"


class _Machine:
    def __init__(
        self,
        program: Program,
        inputs: Sequence[Value],
        max_steps: int,
        timeout_s: float,
        max_output_lines: int,
    ) -> None:
        self.program = program
        self.inputs = list(inputs)
        self.next_input = 0
        self.values: dict[str, Value] = {}
        self.types: dict[str, str] = {}
        self.output: list[str] = []
        self.steps = 0
        self.max_steps = max_steps
        self.max_output_lines = max_output_lines
        self.deadline = time.monotonic() + timeout_s
        self.timeout_s = timeout_s
        self.depth = 0
        self.lines_run: set[int] = set()

    def tick(self, line: int) -> None:
        self.steps += 1
        self.lines_run.add(line)
        if self.steps > self.max_steps:
            raise AcmeLimitError(f"step limit of {self.max_steps} exceeded (endless loop?)", line)
        if self.steps % 1024 == 0 and time.monotonic() > self.deadline:
            raise AcmeLimitError(f"time limit of {self.timeout_s:g} s exceeded", line)

    # values
    def number(self, value: object, line: int, what: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise AcmeRuntimeError(f"{what} needs a NUMBER, got {_type_name(value)}", line)
        return value

    def checked(self, value: int, line: int) -> int:
        if abs(value) > MAX_NUMBER:
            raise AcmeRuntimeError("numeric overflow (NUMBER holds at most 18 digits)", line)
        return value

    def storable(self, value: object, line: int) -> Value:
        if isinstance(value, bool):
            raise AcmeRuntimeError("a condition is not a value; use IF ... THEN to act on it", line)
        return value  # type: ignore[return-value]

    def assign(self, name: str, value: object, line: int) -> None:
        if name not in self.types:
            raise AcmeRuntimeError(f"{name} is not declared (add DECLARE {name}.)", line)
        value = self.storable(value, line)
        if _type_name(value) != self.types[name]:
            conv = "TEXT(...)" if self.types[name] == "TEXT" else "NUMBER(...)"
            raise AcmeRuntimeError(
                f"{name} is {self.types[name]} and cannot hold {_type_name(value)} "
                f"(convert with {conv})",
                line,
            )
        self.values[name] = value

    def read(self, name: str, line: int) -> Value:
        if name not in self.types:
            raise AcmeRuntimeError(f"{name} is not declared (add DECLARE {name}.)", line)
        return self.values[name]

    # expressions
    def eval(self, node: object) -> Value | bool:
        if isinstance(node, Num):
            return node.value
        if isinstance(node, Str):
            return node.value
        if isinstance(node, Var):
            return self.read(node.name, node.line)
        if isinstance(node, Binary):
            return self.binary(node)
        if isinstance(node, Unary):
            value = self.eval(node.operand)
            if node.op == "NOT":
                if not isinstance(value, bool):
                    raise AcmeRuntimeError("NOT needs a condition", node.line)
                return not value
            return self.checked(-self.number(value, node.line, "unary minus"), node.line)
        if isinstance(node, Call):
            return self.call(node)
        raise AssertionError(f"unknown node {node!r}")

    def binary(self, node: Binary) -> Value | bool:
        op, line = node.op, node.line
        if op in ("AND", "OR"):
            left = self.eval(node.left)
            if not isinstance(left, bool):
                raise AcmeRuntimeError(f"{op} needs conditions on both sides", line)
            if (op == "AND" and not left) or (op == "OR" and left):
                return left
            right = self.eval(node.right)
            if not isinstance(right, bool):
                raise AcmeRuntimeError(f"{op} needs conditions on both sides", line)
            return right
        left, right = self.eval(node.left), self.eval(node.right)
        if op == "&":
            text = str(self.storable(left, line)) + str(self.storable(right, line))
            if len(text) > MAX_TEXT:
                raise AcmeRuntimeError(f"text overflow (TEXT holds at most {MAX_TEXT})", line)
            return text
        if op in CMP_OPS:
            lt, rt = _type_name(left), _type_name(right)
            if lt != rt or lt == "CONDITION":
                raise AcmeRuntimeError(f"cannot compare {lt} with {rt} using {op}", line)
            return _compare(op, left, right)  # type: ignore[arg-type]
        a = self.number(left, line, f"'{op}'")
        b = self.number(right, line, f"'{op}'")
        if op == "+":
            return self.checked(a + b, line)
        if op == "-":
            return self.checked(a - b, line)
        if op == "*":
            return self.checked(a * b, line)
        if b == 0:
            raise AcmeRuntimeError("division by zero", line)
        return a // b if op == "/" else a % b  # floor division and modulo, as documented

    def call(self, node: Call) -> Value:
        args = [self.storable(self.eval(a), node.line) for a in node.args]
        fn, line = node.fn, node.line
        if fn in ("LENGTH", "UPPER", "LOWER", "NUMBER"):
            if not isinstance(args[0], str):
                raise AcmeRuntimeError(f"{fn} needs TEXT, got NUMBER", line)
            text = args[0]
            if fn == "LENGTH":
                return len(text)
            if fn == "UPPER":
                return text.upper()
            if fn == "LOWER":
                return text.lower()
            try:
                return self.checked(int(text.strip()), line)
            except ValueError:
                raise AcmeRuntimeError(f'NUMBER("{text}"): not a whole number', line) from None
        nums = [self.number(a, line, fn) for a in args]
        if fn == "TEXT":
            return str(nums[0])
        if fn == "ABS":
            return abs(nums[0])
        return max(nums) if fn == "MAX" else min(nums)

    def condition(self, node: object, line: int, what: str) -> bool:
        value = self.eval(node)
        if not isinstance(value, bool):
            raise AcmeRuntimeError(f"{what} needs a condition such as X > 0", line)
        return value

    # statements
    def run_block(self, body: list[Stmt]) -> None:
        for stmt in body:
            self.execute(stmt)

    def execute(self, stmt: Stmt) -> None:
        self.tick(stmt.line)
        kind, line, args = stmt.kind, stmt.line, stmt.args
        if kind == "DECLARE":
            name, vtype, init = args
            if name in self.types:
                raise AcmeRuntimeError(f"{name} is already declared", line)
            self.types[name] = vtype
            self.values[name] = 0 if vtype == "NUMBER" else ""
            if init is not None:
                self.assign(name, self.eval(init), line)
        elif kind == "SET":
            self.assign(args[0], self.eval(args[1]), line)
        elif kind in ("ADD", "SUBTRACT", "MULTIPLY", "DIVIDE"):
            name = args[0]
            current = self.number(self.read(name, line), line, f"{kind} {name}")
            operand = self.number(self.eval(args[1]), line, kind)
            if kind == "ADD":
                result = current + operand
            elif kind == "SUBTRACT":
                result = current - operand
            elif kind == "MULTIPLY":
                result = current * operand
            else:
                if operand == 0:
                    raise AcmeRuntimeError("division by zero", line)
                result = current // operand
            self.values[name] = self.checked(result, line)
        elif kind == "ACCEPT":
            self.accept(args[0], line)
        elif kind == "DISPLAY":
            if len(self.output) >= self.max_output_lines:
                raise AcmeLimitError(f"output limit of {self.max_output_lines} lines", line)
            self.output.append(str(self.storable(self.eval(args[0]), line)))
        elif kind == "IF":
            if self.condition(args[0], line, "IF"):
                self.run_block(stmt.body)
            else:
                self.run_block(stmt.orelse)
        elif kind == "WHILE":
            try:
                while self.condition(args[0], line, "WHILE"):
                    self.run_block(stmt.body)
                    self.tick(line)
            except _Leave:
                pass
        elif kind == "REPEAT":
            self.repeat(stmt)
        elif kind == "TIMES":
            count = self.number(self.eval(args[0]), line, "REPEAT ... TIMES")
            try:
                for _ in range(count):
                    self.run_block(stmt.body)
                    self.tick(line)
            except _Leave:
                pass
        elif kind == "PERFORM":
            if self.depth >= MAX_PERFORM_DEPTH:
                raise AcmeRuntimeError(
                    f"PERFORM nested deeper than {MAX_PERFORM_DEPTH} (recursive procedure?)",
                    line,
                )
            self.depth += 1
            self.run_block(self.program.procedures[args[0]])
            self.depth -= 1
        elif kind == "LEAVE":
            raise _Leave
        elif kind == "STOP":
            raise _Stop

    def accept(self, name: str, line: int) -> None:
        if name not in self.types:
            raise AcmeRuntimeError(f"{name} is not declared (add DECLARE {name}.)", line)
        if self.next_input >= len(self.inputs):
            raise AcmeRuntimeError(
                f"ACCEPT {name}: no more input (the program was given {len(self.inputs)})",
                line,
            )
        raw = self.inputs[self.next_input]
        self.next_input += 1
        if isinstance(raw, bool) or not isinstance(raw, int | str):
            raise AcmeRuntimeError(
                f"ACCEPT {name}: input values must be integers or text, got {raw!r}", line
            )
        if self.types[name] == "TEXT":
            self.values[name] = str(raw)
            return
        if isinstance(raw, str):
            try:
                raw = int(raw.strip())
            except ValueError:
                raise AcmeRuntimeError(
                    f'ACCEPT {name}: "{raw}" is not a whole number', line
                ) from None
        self.values[name] = self.checked(raw, line)

    def repeat(self, stmt: Stmt) -> None:
        var, start_node, stop_node, step_node = stmt.args
        line = stmt.line
        # Bounds are evaluated once, like a Python range: changing them in the body does not
        # change the number of iterations.
        start = self.number(self.eval(start_node), line, "REPEAT ... FROM")
        stop = self.number(self.eval(stop_node), line, "REPEAT ... TO")
        step = 1 if step_node is None else self.number(self.eval(step_node), line, "STEP")
        if step == 0:
            raise AcmeRuntimeError("REPEAT STEP cannot be 0", line)
        if var not in self.types:
            self.types[var] = "NUMBER"
            self.values[var] = 0
        elif self.types[var] != "NUMBER":
            raise AcmeRuntimeError(f"REPEAT counter {var} must be a NUMBER", line)
        try:
            for value in range(start, stop + (1 if step > 0 else -1), step):
                self.values[var] = value
                self.run_block(stmt.body)
                self.tick(line)
        except _Leave:
            pass


def _compare(op: str, a: Value, b: Value) -> bool:
    if op == "=":
        return a == b
    if op == "<>":
        return a != b
    if op == "<":
        return a < b  # type: ignore[operator]
    if op == ">":
        return a > b  # type: ignore[operator]
    if op == "<=":
        return a <= b  # type: ignore[operator]
    return a >= b  # type: ignore[operator]


def run_acme(
    source: str | Program,
    inputs: Sequence[Value] = (),
    *,
    max_steps: int = 100_000,
    timeout_s: float = 5.0,
    max_output_lines: int = 10_000,
    lines_run: set[int] | None = None,
) -> list[str]:
    """Run an ACME-CL program on `inputs` (read in order by ACCEPT); return its output lines.

    Raises `AcmeSyntaxError` / `AcmeRuntimeError` / `AcmeLimitError` (all `AcmeError`) with
    the line number. A step is one executed statement or loop iteration. When `lines_run` is
    given, the line numbers of executed statements are added to it (line coverage, used to
    pick test cases that exercise every branch). `source` may be a parsed `Program`, to run
    one program on many inputs without parsing it again.
    """
    program = source if isinstance(source, Program) else parse_acme(source)
    machine = _Machine(program, inputs, max_steps, timeout_s, max_output_lines)
    try:
        machine.run_block(program.statements)
    except _Stop:
        pass
    except RecursionError:
        raise AcmeLimitError("program nested too deeply") from None
    finally:
        if lines_run is not None:
            lines_run |= machine.lines_run
    return machine.output


# ---------------------------------------------------------------------------------------
# Checking a Python translation

# Runs in a fresh interpreter (or in-process when sandbox=False): executes the translation
# once per test case with stdin fed from the inputs and stdout captured.
_PY_HARNESS = r"""
import contextlib, io, json, sys

def run_cases(source, cases):
    try:
        code = compile(source, "<translation>", "exec")
    except SyntaxError as e:
        return [{"ok": False, "error": f"SyntaxError: {e}"} for _ in cases]
    results = []
    for case in cases:
        stdin = io.StringIO("".join(f"{v}\n" for v in case))
        stdout = io.StringIO()
        old_in = sys.stdin
        sys.stdin = stdin
        try:
            with contextlib.redirect_stdout(stdout):
                exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
            results.append({"ok": True, "out": stdout.getvalue()})
        except SystemExit as e:
            ok = e.code in (None, 0)
            results.append({"ok": ok, "out": stdout.getvalue(), "error": f"SystemExit: {e.code}"})
        except BaseException as e:
            results.append({"ok": False, "error": f"{type(e).__name__}: {e}"})
        finally:
            sys.stdin = old_in
    return results

if __name__ == "__main__":
    request = json.loads(sys.stdin.read())
    results = run_cases(request["source"], request["cases"])
    sys.__stdout__.write("\n@@FORGEML-RESULTS@@" + json.dumps(results))
"""

_RESULT_MARK = "@@FORGEML-RESULTS@@"
_harness_ns: dict = {"__name__": "forgeml_python_harness"}


def run_python_cases(
    py_source: str,
    cases: Sequence[Sequence[Value]],
    *,
    timeout_s: float = 10.0,
    sandbox: bool = True,
) -> list[list[str] | None]:
    """Run a Python program once per test case (inputs on stdin, one per line).

    Returns the output lines of each case, or None where it raised. With `sandbox` (the
    default) all cases run in one fresh `python -I` process killed after `timeout_s`; this is
    isolation from our process, not a security sandbox, so run untrusted RL samples inside
    a container. `sandbox=False` runs in-process (fast, for trusted generated code only).
    """
    cases = [[v for v in case] for case in cases]
    if not sandbox:
        if "run_cases" not in _harness_ns:
            exec(_PY_HARNESS, _harness_ns)
        results = _harness_ns["run_cases"](py_source, cases)
    else:
        request = json.dumps({"source": py_source, "cases": cases})
        with tempfile.TemporaryDirectory(prefix="forgeml-py-") as cwd:
            try:
                proc = subprocess.run(
                    [sys.executable, "-I", "-c", _PY_HARNESS],
                    input=request,
                    capture_output=True,
                    text=True,
                    timeout=timeout_s,
                    cwd=cwd,
                )
            except subprocess.TimeoutExpired:
                return [None for _ in cases]
        mark = proc.stdout.rfind(_RESULT_MARK)
        if mark < 0:
            return [None for _ in cases]
        results = json.loads(proc.stdout[mark + len(_RESULT_MARK) :])
    return [r["out"].splitlines() if r["ok"] else None for r in results]


def _as_cases(inputs: Sequence) -> list[list[Value]]:
    """Accept one input list (`[3, 4]`) or a list of test cases (`[[3, 4], [0, 1]]`)."""
    if inputs and all(isinstance(case, list | tuple) for case in inputs):
        return [list(case) for case in inputs]
    return [list(inputs)]


def score_translation(
    acl_source: str,
    py_source: str,
    inputs: Sequence,
    *,
    timeout_s: float = 10.0,
    sandbox: bool = True,
) -> float:
    """Fraction of test cases on which the Python program prints what the ACME-CL one does.

    `inputs` is one list of input values or a list of such lists (test cases). The ACME-CL
    program is the reference: where it fails on a case, that case counts as failed.
    """
    cases = _as_cases(inputs)
    expected: list[list[str] | None] = []
    for case in cases:
        try:
            expected.append(run_acme(acl_source, case))
        except AcmeError:
            expected.append(None)
    actual = run_python_cases(py_source, cases, timeout_s=timeout_s, sandbox=sandbox)
    passed = sum(1 for e, a in zip(expected, actual, strict=True) if e is not None and e == a)
    return passed / len(cases)


def check_translation(
    acl_source: str,
    py_source: str,
    inputs: Sequence,
    *,
    timeout_s: float = 10.0,
    sandbox: bool = True,
) -> bool:
    """True when the Python program's output equals the ACME-CL program's on every case."""
    score = score_translation(acl_source, py_source, inputs, timeout_s=timeout_s, sandbox=sandbox)
    return score == 1.0


def translation_checker(completion: str, record: dict, task: Any) -> float:
    """The `code_exec` eval checker `examples/acme/acme_cl.py:translation_checker`: the share of
    the record's test cases (field `task.cases`) on which the completion prints what the ACME-CL
    program (field `task.source`) prints."""
    cases = [c["inputs"] if isinstance(c, dict) else c for c in record[task.cases]]
    return score_translation(record[task.source], completion, cases, timeout_s=task.timeout_s)
