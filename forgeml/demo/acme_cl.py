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
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

MAX_NUMBER = 10**18 - 1  # NUMBER is a signed 18-digit field, like COBOL's PIC S9(18)
MAX_TEXT = 4096
MAX_PERFORM_DEPTH = 64

Value = int | str


class AcmeError(Exception):
    """An ACME-CL program is invalid or failed; `line` is 1-based (None when unknown)."""

    def __init__(self, message: str, line: int | None = None) -> None:
        self.message = message
        self.line = line
        super().__init__(f"line {line}: {message}" if line else message)


class AcmeSyntaxError(AcmeError):
    """The source does not parse."""


class AcmeRuntimeError(AcmeError):
    """The program failed while running (type mismatch, division by zero, no more input...)."""


class AcmeLimitError(AcmeRuntimeError):
    """The program ran past its step, time or output limit."""


# ---------------------------------------------------------------------------------------
# Lexer

KEYWORDS = frozenset(
    """PROGRAM END-PROGRAM DECLARE AS NUMBER TEXT VALUE SET TO ADD SUBTRACT FROM MULTIPLY
    DIVIDE BY ACCEPT DISPLAY IF THEN ELSE END-IF WHILE DO END-WHILE REPEAT TIMES STEP
    END-REPEAT PROCEDURE END-PROCEDURE PERFORM LEAVE STOP AND OR NOT MOD""".split()
)
FUNCTIONS = {  # name -> number of arguments
    "LENGTH": 1,
    "UPPER": 1,
    "LOWER": 1,
    "TEXT": 1,
    "NUMBER": 1,
    "ABS": 1,
    "MAX": 2,
    "MIN": 2,
}

_TOKEN_RE = re.compile(
    r"""
    (?P<ws>[ \t\r\f]+)
  | (?P<nl>\n)
  | (?P<comment>\*>[^\n]*)
  | (?P<num>\d+)
  | (?P<str>"(?:[^"\n]|"")*")
  | (?P<name>[A-Za-z][A-Za-z0-9]*(?:-[A-Za-z0-9]+)*)
  | (?P<op><>|<=|>=|[-+*/()&=<>,.])
    """,
    re.VERBOSE,
)


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # num, str, name, kw, op, eof
    value: str | int
    line: int


def tokenize(source: str) -> list[Token]:
    """Split ACME-CL source into tokens (keywords and names upper-cased)."""
    tokens: list[Token] = []
    pos, line = 0, 1
    while pos < len(source):
        m = _TOKEN_RE.match(source, pos)
        if m is None:
            ch = source[pos]
            if ch == '"':
                raise AcmeSyntaxError("text literal is not closed before the end of the line", line)
            raise AcmeSyntaxError(f"unexpected character {ch!r}", line)
        kind, text = m.lastgroup, m.group()
        pos = m.end()
        if kind == "nl":
            line += 1
        elif kind == "num":
            tokens.append(Token("num", int(text), line))
        elif kind == "str":
            tokens.append(Token("str", text[1:-1].replace('""', '"'), line))
        elif kind == "name":
            word = text.upper()
            tokens.append(Token("kw" if word in KEYWORDS else "name", word, line))
        elif kind == "op":
            tokens.append(Token("op", text, line))
    tokens.append(Token("eof", "", line))
    return tokens


# ---------------------------------------------------------------------------------------
# Syntax tree


@dataclass(slots=True)
class Num:
    value: int


@dataclass(slots=True)
class Str:
    value: str


@dataclass(slots=True)
class Var:
    name: str
    line: int


@dataclass(slots=True)
class Unary:
    op: str  # "-" or "NOT"
    operand: object
    line: int


@dataclass(slots=True)
class Binary:
    op: str
    left: object
    right: object
    line: int


@dataclass(slots=True)
class Call:
    fn: str
    args: list
    line: int


@dataclass(slots=True)
class Stmt:
    """One statement; `kind` is its keyword and `args` its parts (see `_Parser.statement`)."""

    kind: str
    line: int
    args: tuple = ()
    body: list = field(default_factory=list)
    orelse: list = field(default_factory=list)


@dataclass(slots=True)
class Program:
    name: str | None
    statements: list[Stmt]
    procedures: dict[str, list[Stmt]]


# ---------------------------------------------------------------------------------------
# Parser (recursive descent)

_CMP_OPS = ("=", "<>", "<", ">", "<=", ">=")


class _Parser:
    def __init__(self, tokens: list[Token]) -> None:
        self.toks = tokens
        self.i = 0
        self.loop_depth = 0
        self.procedures: dict[str, list[Stmt]] = {}
        self.performed: list[tuple[str, int]] = []

    # token helpers
    def peek(self, k: int = 0) -> Token:
        return self.toks[min(self.i + k, len(self.toks) - 1)]

    def advance(self) -> Token:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def is_kw(self, *words: str) -> bool:
        tok = self.peek()
        return tok.kind == "kw" and tok.value in words

    def is_op(self, *ops: str) -> bool:
        tok = self.peek()
        return tok.kind == "op" and tok.value in ops

    @staticmethod
    def describe(tok: Token) -> str:
        if tok.kind == "eof":
            return "end of program"
        if tok.kind == "str":
            return f'text "{tok.value}"'
        return f"'{tok.value}'"

    def expect_kw(self, word: str, context: str) -> Token:
        if not self.is_kw(word):
            tok = self.peek()
            raise AcmeSyntaxError(
                f"expected {word} {context}, found {self.describe(tok)}", tok.line
            )
        return self.advance()

    def expect_op(self, op: str, context: str) -> Token:
        if not self.is_op(op):
            tok = self.peek()
            what = "'.'" if op == "." else f"'{op}'"
            raise AcmeSyntaxError(
                f"expected {what} {context}, found {self.describe(tok)}", tok.line
            )
        return self.advance()

    def expect_name(self, context: str) -> str:
        tok = self.peek()
        if tok.kind != "name":
            hint = " (a keyword cannot be a name)" if tok.kind == "kw" else ""
            raise AcmeSyntaxError(
                f"expected a name {context}, found {self.describe(tok)}{hint}", tok.line
            )
        if tok.value in FUNCTIONS:
            raise AcmeSyntaxError(f"{tok.value} is a built-in function, not a name", tok.line)
        self.advance()
        return str(tok.value)

    def end(self, what: str) -> None:
        self.expect_op(".", f"at the end of the {what} statement")

    # program structure
    def program(self) -> Program:
        name = None
        if self.is_kw("PROGRAM"):
            self.advance()
            name = self.expect_name("after PROGRAM")
            self.end("PROGRAM")
        statements = self.block(("END-PROGRAM",), top=True)
        if self.is_kw("END-PROGRAM"):
            self.advance()
            self.end("END-PROGRAM")
        tok = self.peek()
        if tok.kind != "eof":
            raise AcmeSyntaxError(f"unexpected {self.describe(tok)} after END-PROGRAM", tok.line)
        for proc, line in self.performed:
            if proc not in self.procedures:
                raise AcmeSyntaxError(f"PERFORM {proc}: no PROCEDURE named {proc}", line)
        return Program(name, statements, self.procedures)

    def block(self, terminators: tuple[str, ...], top: bool = False) -> list[Stmt]:
        body: list[Stmt] = []
        while not self.is_kw(*terminators):
            tok = self.peek()
            if tok.kind == "eof":
                if top:
                    break
                raise AcmeSyntaxError(
                    f"missing {' or '.join(terminators)} before the end of the program", tok.line
                )
            if self.is_kw("PROCEDURE"):
                if not top:
                    raise AcmeSyntaxError(
                        "PROCEDURE must be at the top level, not inside a block", tok.line
                    )
                self.procedure()
                continue
            body.append(self.statement())
        return body

    def procedure(self) -> None:
        line = self.advance().line
        name = self.expect_name("after PROCEDURE")
        self.end("PROCEDURE")
        if name in self.procedures:
            raise AcmeSyntaxError(f"PROCEDURE {name} is defined twice", line)
        outer, self.loop_depth = self.loop_depth, 0
        self.procedures[name] = self.block(("END-PROCEDURE",))
        self.loop_depth = outer
        self.advance()
        self.end("END-PROCEDURE")

    def statement(self) -> Stmt:
        tok = self.peek()
        if tok.kind != "kw":
            hint = " (statements start with a keyword such as SET or DISPLAY)"
            raise AcmeSyntaxError(f"unexpected {self.describe(tok)}{hint}", tok.line)
        word, line = str(tok.value), tok.line
        self.advance()
        if word == "DECLARE":
            name = self.expect_name("after DECLARE")
            vtype = "NUMBER"
            if self.is_kw("AS"):
                self.advance()
                if not self.is_kw("NUMBER", "TEXT"):
                    raise AcmeSyntaxError(
                        f"expected NUMBER or TEXT after AS, found {self.describe(self.peek())}",
                        line,
                    )
                vtype = str(self.advance().value)
            init = None
            if self.is_kw("VALUE"):
                self.advance()
                init = self.expr()
            self.end("DECLARE")
            return Stmt("DECLARE", line, (name, vtype, init))
        if word == "SET":
            name = self.expect_name("after SET")
            self.expect_kw("TO", f"after SET {name}")
            value = self.expr()
            self.end("SET")
            return Stmt("SET", line, (name, value))
        if word in ("ADD", "SUBTRACT"):
            value = self.expr()
            self.expect_kw("TO" if word == "ADD" else "FROM", f"in {word}")
            name = self.expect_name(f"in {word}")
            self.end(word)
            return Stmt(word, line, (name, value))
        if word in ("MULTIPLY", "DIVIDE"):
            name = self.expect_name(f"after {word}")
            self.expect_kw("BY", f"after {word} {name}")
            value = self.expr()
            self.end(word)
            return Stmt(word, line, (name, value))
        if word == "ACCEPT":
            name = self.expect_name("after ACCEPT")
            self.end("ACCEPT")
            return Stmt("ACCEPT", line, (name,))
        if word == "DISPLAY":
            value = self.expr()
            self.end("DISPLAY")
            return Stmt("DISPLAY", line, (value,))
        if word == "IF":
            cond = self.expr()
            self.expect_kw("THEN", "after the IF condition")
            body = self.block(("ELSE", "END-IF"))
            orelse: list[Stmt] = []
            if self.is_kw("ELSE"):
                self.advance()
                orelse = self.block(("END-IF",))
            self.advance()
            self.end("END-IF")
            return Stmt("IF", line, (cond,), body, orelse)
        if word == "WHILE":
            cond = self.expr()
            self.expect_kw("DO", "after the WHILE condition")
            body = self.loop_body("END-WHILE")
            return Stmt("WHILE", line, (cond,), body)
        if word == "REPEAT":
            if self.peek().kind == "name" and self.peek(1).kind == "kw":
                if self.peek(1).value == "FROM":
                    var = self.expect_name("after REPEAT")
                    self.advance()
                    start = self.expr()
                    self.expect_kw("TO", f"in REPEAT {var} FROM ...")
                    stop = self.expr()
                    step = None
                    if self.is_kw("STEP"):
                        self.advance()
                        step = self.expr()
                    self.expect_kw("DO", f"to start the body of REPEAT {var}")
                    body = self.loop_body("END-REPEAT")
                    return Stmt("REPEAT", line, (var, start, stop, step), body)
            count = self.expr()
            self.expect_kw("TIMES", "in REPEAT (use REPEAT n TIMES or REPEAT I FROM a TO b DO)")
            body = self.loop_body("END-REPEAT")
            return Stmt("TIMES", line, (count,), body)
        if word == "PERFORM":
            name = self.expect_name("after PERFORM")
            self.end("PERFORM")
            self.performed.append((name, line))
            return Stmt("PERFORM", line, (name,))
        if word == "LEAVE":
            if self.loop_depth == 0:
                raise AcmeSyntaxError("LEAVE is only allowed inside WHILE or REPEAT", line)
            self.end("LEAVE")
            return Stmt("LEAVE", line)
        if word == "STOP":
            self.end("STOP")
            return Stmt("STOP", line)
        if word in ("ELSE", "END-IF", "END-WHILE", "END-REPEAT", "END-PROCEDURE"):
            raise AcmeSyntaxError(f"{word} without a matching block", line)
        raise AcmeSyntaxError(f"{word} cannot start a statement", line)

    def loop_body(self, terminator: str) -> list[Stmt]:
        self.loop_depth += 1
        body = self.block((terminator,))
        self.loop_depth -= 1
        self.advance()
        self.end(terminator)
        return body

    # expressions, lowest precedence first
    def expr(self) -> object:
        node = self.and_expr()
        while self.is_kw("OR"):
            line = self.advance().line
            node = Binary("OR", node, self.and_expr(), line)
        return node

    def and_expr(self) -> object:
        node = self.not_expr()
        while self.is_kw("AND"):
            line = self.advance().line
            node = Binary("AND", node, self.not_expr(), line)
        return node

    def not_expr(self) -> object:
        if self.is_kw("NOT"):
            line = self.advance().line
            return Unary("NOT", self.not_expr(), line)
        return self.comparison()

    def comparison(self) -> object:
        node = self.concat()
        if self.is_op(*_CMP_OPS):
            tok = self.advance()
            node = Binary(str(tok.value), node, self.concat(), tok.line)
            if self.is_op(*_CMP_OPS):
                raise AcmeSyntaxError(
                    "comparisons cannot be chained; join them with AND", self.peek().line
                )
        return node

    def concat(self) -> object:
        node = self.additive()
        while self.is_op("&"):
            line = self.advance().line
            node = Binary("&", node, self.additive(), line)
        return node

    def additive(self) -> object:
        node = self.term()
        while self.is_op("+", "-"):
            tok = self.advance()
            node = Binary(str(tok.value), node, self.term(), tok.line)
        return node

    def term(self) -> object:
        node = self.unary()
        while self.is_op("*", "/") or self.is_kw("MOD"):
            tok = self.advance()
            node = Binary(str(tok.value), node, self.unary(), tok.line)
        return node

    def unary(self) -> object:
        if self.is_op("-"):
            line = self.advance().line
            return Unary("-", self.unary(), line)
        return self.primary()

    def primary(self) -> object:
        tok = self.peek()
        if tok.kind == "num":
            self.advance()
            return Num(int(tok.value))
        if tok.kind == "str":
            self.advance()
            return Str(str(tok.value))
        if tok.value in FUNCTIONS and tok.kind in ("name", "kw"):
            self.advance()
            self.expect_op("(", f"after {tok.value}")
            args = [self.expr()]
            while self.is_op(","):
                self.advance()
                args.append(self.expr())
            self.expect_op(")", f"to close {tok.value}(")
            want = FUNCTIONS[str(tok.value)]
            if len(args) != want:
                raise AcmeSyntaxError(
                    f"{tok.value} takes {want} argument(s), got {len(args)}", tok.line
                )
            return Call(str(tok.value), args, tok.line)
        if tok.kind == "name":
            self.advance()
            return Var(str(tok.value), tok.line)
        if self.is_op("("):
            self.advance()
            node = self.expr()
            self.expect_op(")", "to close '('")
            return node
        raise AcmeSyntaxError(f"expected a value, found {self.describe(tok)}", tok.line)


def parse_acme(source: str) -> Program:
    """Parse ACME-CL source; raises `AcmeSyntaxError` with the line of the first problem."""
    return _Parser(tokenize(source)).program()


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
        if op in _CMP_OPS:
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
