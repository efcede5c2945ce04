"""ACME-CL's syntax: the errors the language reports, the lexer, the syntax tree and the
recursive-descent parser (`parse_acme`). The language itself is summarised in acme_cl.py."""

from __future__ import annotations

import re
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

CMP_OPS = ("=", "<>", "<", ">", "<=", ">=")


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
        if self.is_op(*CMP_OPS):
            tok = self.advance()
            node = Binary(str(tok.value), node, self.concat(), tok.line)
            if self.is_op(*CMP_OPS):
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
