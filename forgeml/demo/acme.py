"""The ACME demo domain: a seeded, byte-for-byte deterministic corpus of a fictional company.

`generate_corpus` writes manuals for the made-up legacy language ACME-CL, equivalent
ACME-CL/Python program pairs with test cases, policies, memos, damaged documents with an
answer key, records with planted fake PII and secrets, and a few files ingest must skip.
Every task on it is checkable (see `examples/acme/README.md`); nothing is downloaded.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import keyword
import os
import random
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from forgeml.core.errors import DataError
from forgeml.core.io import fsync_dir
from forgeml.demo.acme_cl import check_translation, parse_acme, run_acme

__all__ = [
    "GAP",
    "GENERATOR_VERSION",
    "build_corpus",
    "build_sft_records",
    "check_translation",
    "corpus_digest",
    "generate_corpus",
    "generate_sft_data",
]

GENERATOR_VERSION = 3
GAP = "[...]"  # marks an illegible passage in damaged/*.txt

FIRST_NAMES = (
    "Ada Bertram Clara Dmitri Edith Farid Greta Hiro Imogen Jonas Keiko Lars Marisol Nadia "
    "Oskar Priya Quentin Rosa Sven Tamsin Ulrich Vera Wendell Xenia Yusuf Zelda Amos Bianca "
    "Cyrus Delia"
).split()
LAST_NAMES = (
    "Abernathy Brightwater Castellano Dunmore Eskildsen Fairweather Galloway Hollis Ingram "
    "Jablonski Kettleborough Lindqvist Marchetti Northcott Okonkwo Pemberton Quigley Rasmussen "
    "Sandoval Thistlewood Underhill Valderrama Whitcombe Yardley Zabrowski"
).split()
DEPARTMENTS = (
    "Payroll",
    "Logistics",
    "Billing",
    "Warehouse Operations",
    "Customer Accounts",
    "Mainframe Operations",
    "Procurement",
    "Quality Assurance",
    "Internal Audit",
    "Human Resources",
    "Treasury",
    "Field Service",
)
SITES = (
    "Springfield plant",
    "Riverton data centre",
    "Harbor Point office",
    "Northgate warehouse",
    "Cedar Falls depot",
    "Mesa Verde test range",
)
SYSTEMS = ("PAYMASTER", "LEDGER-7", "STOCKPILE", "ROUTEMASTER", "BILLWISE", "GATEKEEPER")
PRODUCTS = (
    "anvils",
    "rocket skates",
    "giant magnets",
    "portable holes",
    "spring boots",
    "bird seed",
    "dehydrated boulders",
    "jet-propelled pogo sticks",
)
MACHINE = "ACME/370"


def _person(rng: random.Random) -> str:
    return f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"


def _date(rng: random.Random, start_year: int, end_year: int) -> dt.date:
    start = dt.date(start_year, 1, 1)
    span = (dt.date(end_year, 12, 31) - start).days
    return start + dt.timedelta(days=rng.randrange(span))


# =======================================================================================
# Program pairs: a tiny AST emitted both as ACME-CL and as modern Python

Expr = tuple
Stmt = tuple


def num(v: int) -> Expr:
    return ("num", v)


def var(name: str) -> Expr:
    return ("var", name)


def text(s: str) -> Expr:
    return ("str", s)


def binop(op: str, left: Expr, right: Expr) -> Expr:
    return ("bin", op, left, right)


def call(fn: str, *args: Expr) -> Expr:
    return ("call", fn, list(args))


def cmp(op: str, left: Expr, right: Expr) -> Expr:
    return ("cmp", op, left, right)


_PREC = {"+": 1, "-": 1, "*": 2, "/": 2, "MOD": 2}
_PY_OP = {"+": "+", "-": "-", "*": "*", "/": "//", "MOD": "%"}
_PY_CMP = {"=": "==", "<>": "!=", "<": "<", ">": ">", "<=": "<=", ">=": ">="}
_PY_RESERVED = frozenset(
    "sum max min len input print id type list str int range round abs next iter map filter "
    "all any open format hash object set dict zip pow divmod vars dir bin hex oct ord chr "
    "bool float bytes tuple exit quit main".split()
)


def py_name(name: str) -> str:
    """ACME-CL name → Python name: TOTAL-PAY → total_pay (suffixed if it shadows a builtin)."""
    snake = name.lower().replace("-", "_")
    if snake in _PY_RESERVED or keyword.iskeyword(snake):
        snake += "_"
    return snake


def _acl_expr(e: Expr, parent: int = 0, right: bool = False) -> str:
    kind = e[0]
    if kind == "num":
        return str(e[1]) if e[1] >= 0 else f"(-{-e[1]})"
    if kind == "var":
        return e[1]
    if kind == "str":
        return '"' + e[1].replace('"', '""') + '"'
    if kind == "call":
        return f"{e[1]}({', '.join(_acl_expr(a) for a in e[2])})"
    if kind == "bin":
        p = _PREC[e[1]]
        s = f"{_acl_expr(e[2], p)} {e[1]} {_acl_expr(e[3], p, True)}"
        return f"({s})" if p < parent or (p == parent and right) else s
    return _acl_cond(e)


def _acl_cond(c: Expr, parent: str = "") -> str:
    kind = c[0]
    if kind == "cmp":
        return f"{_acl_expr(c[2])} {c[1]} {_acl_expr(c[3])}"
    if kind == "not":
        return f"NOT {_acl_cond(c[1], 'NOT')}"
    op = kind.upper()
    s = f"{_acl_cond(c[1], op)} {op} {_acl_cond(c[2], op)}"
    return f"({s})" if parent and parent != op else s


def _py_expr(e: Expr, parent: int = 0, right: bool = False) -> str:
    kind = e[0]
    if kind == "num":
        return str(e[1]) if e[1] >= 0 else f"(-{-e[1]})"
    if kind == "var":
        return py_name(e[1])
    if kind == "str":
        return json.dumps(e[1])
    if kind == "call":
        fn, args = e[1], [_py_expr(a) for a in e[2]]
        if fn in ("UPPER", "LOWER"):
            return f"{_py_wrap(e[2][0], args[0])}.{fn.lower()}()"
        py_fn = {"LENGTH": "len", "TEXT": "str", "NUMBER": "int", "ABS": "abs"}.get(fn, fn.lower())
        return f"{py_fn}({', '.join(args)})"
    if kind == "bin":
        p = _PREC[e[1]]
        s = f"{_py_expr(e[2], p)} {_PY_OP[e[1]]} {_py_expr(e[3], p, True)}"
        return f"({s})" if p < parent or (p == parent and right) else s
    return _py_cond(e)


def _py_wrap(node: Expr, s: str) -> str:
    return f"({s})" if node[0] == "bin" else s


def _py_cond(c: Expr, parent: str = "") -> str:
    kind = c[0]
    if kind == "cmp":
        return f"{_py_expr(c[2])} {_PY_CMP[c[1]]} {_py_expr(c[3])}"
    if kind == "not":
        return f"not {_py_cond(c[1], 'not')}"
    s = f"{_py_cond(c[1], kind)} {kind} {_py_cond(c[2], kind)}"
    return f"({s})" if parent and parent != kind else s


def _py_fstring(parts: list[Expr]) -> str:
    if len(parts) == 1:
        return _py_expr(parts[0])
    out = []
    for p in parts:
        if p[0] == "str":
            out.append(p[1].replace("\\", "\\\\").replace("{", "{{").replace("}", "}}"))
            out[-1] = out[-1].replace('"', '\\"')
        else:
            out.append("{" + _py_expr(p) + "}")
    return 'f"' + "".join(out) + '"'


def emit_acl(stmts: list[Stmt], indent: int = 0) -> list[str]:
    """ACME-CL lines for a statement list (three-space indents, as in the 1980s listings)."""
    pad = "   " * indent
    lines: list[str] = []
    for s in stmts:
        kind = s[0]
        if kind == "comment":
            lines.append(f"{pad}*> {s[1]}")
        elif kind == "declare":
            _, name, vtype, init = s
            tail = f" VALUE {_acl_expr(init)}" if init is not None else ""
            lines.append(f"{pad}DECLARE {name} AS {vtype}{tail}.")
        elif kind == "accept":
            lines.append(f"{pad}ACCEPT {s[1]}.")
        elif kind == "set":
            lines.append(f"{pad}SET {s[1]} TO {_acl_expr(s[2])}.")
        elif kind == "add":
            lines.append(f"{pad}ADD {_acl_expr(s[1])} TO {s[2]}.")
        elif kind == "sub":
            lines.append(f"{pad}SUBTRACT {_acl_expr(s[1])} FROM {s[2]}.")
        elif kind == "mul":
            lines.append(f"{pad}MULTIPLY {s[1]} BY {_acl_expr(s[2])}.")
        elif kind == "div":
            lines.append(f"{pad}DIVIDE {s[1]} BY {_acl_expr(s[2])}.")
        elif kind == "display":
            lines.append(f"{pad}DISPLAY {' & '.join(_acl_expr(p, 1) for p in s[1])}.")
        elif kind == "if":
            lines.append(f"{pad}IF {_acl_cond(s[1])} THEN")
            lines += emit_acl(s[2], indent + 1)
            if s[3]:
                lines.append(f"{pad}ELSE")
                lines += emit_acl(s[3], indent + 1)
            lines.append(f"{pad}END-IF.")
        elif kind == "while":
            lines.append(f"{pad}WHILE {_acl_cond(s[1])} DO")
            lines += emit_acl(s[2], indent + 1)
            lines.append(f"{pad}END-WHILE.")
        elif kind == "repeat":
            _, name, start, stop, step, body = s
            tail = f" STEP {step}" if step is not None else ""
            lines.append(
                f"{pad}REPEAT {name} FROM {_acl_expr(start)} TO {_acl_expr(stop)}{tail} DO"
            )
            lines += emit_acl(body, indent + 1)
            lines.append(f"{pad}END-REPEAT.")
        elif kind == "times":
            lines.append(f"{pad}REPEAT {_acl_expr(s[1])} TIMES")
            lines += emit_acl(s[2], indent + 1)
            lines.append(f"{pad}END-REPEAT.")
        elif kind == "leave":
            lines.append(f"{pad}LEAVE.")
        else:
            raise ValueError(f"unknown statement {kind}")
    return lines


def emit_python(stmts: list[Stmt], indent: int = 1, types: dict | None = None) -> list[str]:
    """Idiomatic Python lines for the same statements (inside `def main()`)."""
    types = {} if types is None else types
    pad = "    " * indent
    lines: list[str] = []
    for i, s in enumerate(stmts):
        kind = s[0]
        if kind == "comment":
            lines.append(f"{pad}# {s[1]}")
        elif kind == "declare":
            _, name, vtype, init = s
            types[name] = vtype
            nxt = stmts[i + 1] if i + 1 < len(stmts) else None
            if init is None and nxt is not None and nxt[0] == "accept" and nxt[1] == name:
                continue  # `x = int(input())` declares and reads in one line
            default = num(0) if vtype == "NUMBER" else text("")
            lines.append(f"{pad}{py_name(name)} = {_py_expr(init if init else default)}")
        elif kind == "accept":
            read = "input()" if types.get(s[1]) == "TEXT" else "int(input())"
            lines.append(f"{pad}{py_name(s[1])} = {read}")
        elif kind == "set":
            lines.append(f"{pad}{py_name(s[1])} = {_py_expr(s[2])}")
        elif kind in ("add", "sub"):
            op = "+=" if kind == "add" else "-="
            lines.append(f"{pad}{py_name(s[2])} {op} {_py_expr(s[1])}")
        elif kind in ("mul", "div"):
            op = "*=" if kind == "mul" else "//="
            lines.append(f"{pad}{py_name(s[1])} {op} {_py_expr(s[2])}")
        elif kind == "display":
            lines.append(f"{pad}print({_py_fstring(s[1])})")
        elif kind == "if":
            lines += _py_if(s, pad, indent, types, "if")
        elif kind == "while":
            lines.append(f"{pad}while {_py_cond(s[1])}:")
            lines += emit_python(s[2], indent + 1, types)
        elif kind == "repeat":
            _, name, start, stop, step, body = s
            delta = 1 if step is None or step > 0 else -1
            end = num(stop[1] + delta) if stop[0] == "num" else binop("+", stop, num(1))
            if delta < 0 and stop[0] != "num":
                end = binop("-", stop, num(1))
            args = [_py_expr(start), _py_expr(end)]
            if step is not None:
                args.append(str(step))
            if start == num(0) and step is None:
                args = args[1:]
            lines.append(f"{pad}for {py_name(name)} in range({', '.join(args)}):")
            lines += emit_python(body, indent + 1, types)
        elif kind == "times":
            lines.append(f"{pad}for _ in range({_py_expr(s[1])}):")
            lines += emit_python(s[2], indent + 1, types)
        elif kind == "leave":
            lines.append(f"{pad}break")
        else:
            raise ValueError(f"unknown statement {kind}")
    return lines


def _py_if(s: Stmt, pad: str, indent: int, types: dict, word: str) -> list[str]:
    lines = [f"{pad}{word} {_py_cond(s[1])}:"]
    lines += emit_python(s[2], indent + 1, types)
    orelse = s[3]
    if len(orelse) == 1 and orelse[0][0] == "if":
        lines += _py_if(orelse[0], pad, indent, types, "elif")  # ACME-CL has no ELSE IF
    elif orelse:
        lines.append(f"{pad}else:")
        lines += emit_python(orelse, indent + 1, types)
    return lines


@dataclass
class ProgramSpec:
    """One generated program: its name, purpose and body, and how to draw test inputs."""

    name: str
    purpose: str
    system: str
    body: list[Stmt]
    sample_inputs: Callable[[random.Random], list]


def _names(rng: random.Random, *pools: tuple[str, ...]) -> list[str]:
    return [rng.choice(pool) for pool in pools]


def _arch_payroll(rng: random.Random) -> ProgramSpec:
    hours, rate, pay, ot = _names(
        rng,
        ("HOURS", "HOURS-WORKED", "WORK-HOURS"),
        ("RATE", "HOURLY-RATE", "PAY-RATE"),
        ("PAY", "GROSS-PAY", "WEEK-PAY"),
        ("OVERTIME", "OT-HOURS", "EXTRA-HOURS"),
    )
    limit = rng.choice((35, 37, 38, 40))
    factor = rng.choice(((3, 2), (2, 1), (7, 4)))
    body: list[Stmt] = [
        ("declare", hours, "NUMBER", None),
        ("accept", hours),
        ("declare", rate, "NUMBER", None),
        ("accept", rate),
        ("declare", pay, "NUMBER", num(0)),
        ("declare", ot, "NUMBER", num(0)),
        (
            "if",
            cmp(">", var(hours), num(limit)),
            [
                ("set", ot, binop("-", var(hours), num(limit))),
                (
                    "set",
                    pay,
                    binop(
                        "+",
                        binop("*", num(limit), var(rate)),
                        binop(
                            "/",
                            binop("*", var(ot), binop("*", var(rate), num(factor[0]))),
                            num(factor[1]),
                        ),
                    ),
                ),
            ],
            [("set", pay, binop("*", var(hours), var(rate)))],
        ),
    ]
    if rng.random() < 0.6:
        threshold, bonus = rng.choice((600, 800, 1000, 1200)), rng.choice((25, 40, 50, 75))
        body.append(("comment", f"attendance bonus above {threshold}, per memo of the period"))
        body.append(("if", cmp(">=", var(pay), num(threshold)), [("add", num(bonus), pay)], []))
    if rng.random() < 0.5:
        body.append(("display", [text("OVERTIME HOURS: "), var(ot)]))
    body.append(
        ("display", [text(rng.choice(("GROSS PAY: ", "PAY DUE: ", "TOTAL PAY: "))), var(pay)])
    )
    return ProgramSpec(
        rng.choice(("PAYCALC", "PAY-GROSS", "WEEKPAY", "OT-CALC")),
        f"weekly gross pay with overtime above {limit} hours",
        "PAYMASTER",
        body,
        lambda r: [r.randint(0, 60), r.randint(8, 40)],
    )


def _arch_series(rng: random.Random) -> ProgramSpec:
    count, total, i = _names(
        rng, ("COUNT", "N", "PERIODS", "BATCHES"), ("TOTAL", "RUNNING", "ACCUM"), ("I", "K", "P")
    )
    a, b = rng.randint(1, 9), rng.randint(0, 9)
    term = rng.choice(
        (
            binop("+", binop("*", var(i), num(a)), num(b)),
            binop("*", var(i), var(i)),
            binop("-", binop("*", var(i), num(a)), num(b)),
        )
    )
    loop: list[Stmt] = [("add", term, total)]
    if rng.random() < 0.5:
        m, bonus = rng.choice((2, 3, 4, 5)), rng.randint(1, 20)
        loop.append(
            ("if", cmp("=", binop("MOD", var(i), num(m)), num(0)), [("add", num(bonus), total)], [])
        )
    body: list[Stmt] = [
        ("declare", count, "NUMBER", None),
        ("accept", count),
        ("declare", total, "NUMBER", num(0)),
        ("repeat", i, num(1), var(count), None, loop),
        (
            "display",
            [text(rng.choice(("TOTAL = ", "SERIES TOTAL: ", "SUM OF TERMS: "))), var(total)],
        ),
    ]
    if rng.random() < 0.4:
        body.append(
            (
                "display",
                [text("AVERAGE: "), binop("/", var(total), call("MAX", var(count), num(1)))],
            )
        )
    return ProgramSpec(
        rng.choice(("SERIES", "ACCUM-TERMS", "SUMTERMS", "RUNTOTAL")),
        "accumulates a series of per-period charges",
        rng.choice(("LEDGER-7", "BILLWISE")),
        body,
        lambda r: [r.randint(0, 25)],
    )


def _arch_inventory(rng: random.Random) -> ProgramSpec:
    stock, use, days, floor = _names(
        rng,
        ("STOCK", "ON-HAND", "UNITS"),
        ("DAILY-USE", "USAGE", "DRAW"),
        ("DAYS", "DAY-COUNT", "CYCLES"),
        ("FLOOR", "RESERVE", "SAFETY-STOCK"),
    )
    reserve = rng.randint(0, 40)
    cap = rng.choice((30, 45, 60, 90))
    body: list[Stmt] = [
        ("declare", stock, "NUMBER", None),
        ("accept", stock),
        ("declare", use, "NUMBER", None),
        ("accept", use),
        ("declare", days, "NUMBER", num(0)),
        ("declare", floor, "NUMBER", num(reserve)),
        ("comment", f"stop after {cap} days: the planning horizon of {rng.choice(PRODUCTS)}"),
        (
            "while",
            (
                "and",
                cmp(">=", binop("-", var(stock), var(use)), var(floor)),
                cmp("<", var(days), num(cap)),
            ),
            [("sub", var(use), stock), ("add", num(1), days)],
        ),
        ("display", [text("DAYS OF SUPPLY: "), var(days)]),
        ("display", [text("REMAINING: "), var(stock)]),
    ]
    if rng.random() < 0.5:
        body.append(
            (
                "if",
                cmp("<", var(days), num(rng.choice((5, 7, 10)))),
                [("display", [text("REORDER NOW")])],
                [("display", [text("STOCK OK")])],
            )
        )
    return ProgramSpec(
        rng.choice(("STOCKDAYS", "DRAWDOWN", "SUPPLY-RUN", "INV-HORIZON")),
        "days of supply before stock falls below the safety reserve",
        "STOCKPILE",
        body,
        lambda r: [r.randint(0, 900), r.randint(1, 60)],
    )


def _arch_classify(rng: random.Random) -> ProgramSpec:
    score = rng.choice(("SCORE", "RATING", "POINTS", "CREDIT"))
    labels = rng.choice(
        (
            ("PLATINUM", "GOLD", "SILVER", "BRONZE"),
            ("EXCELLENT", "GOOD", "FAIR", "POOR"),
            ("PRIORITY", "STANDARD", "DEFERRED", "HOLD"),
        )
    )
    cuts = sorted(rng.sample(range(10, 100), 3), reverse=True)
    tail: list[Stmt] = [("display", [text(labels[3])])]
    for cut, label in zip(reversed(cuts), reversed(labels[:3]), strict=True):
        tail = [("if", cmp(">=", var(score), num(cut)), [("display", [text(label)])], tail)]
    body: list[Stmt] = [("declare", score, "NUMBER", None), ("accept", score)]
    if rng.random() < 0.5:
        body.append(("if", cmp("<", var(score), num(0)), [("set", score, num(0))], []))
    body += tail
    return ProgramSpec(
        rng.choice(("TIERING", "CLASSIFY", "GRADE-IT", "RANKER")),
        f"assigns a tier ({', '.join(labels)}) from a score",
        rng.choice(("BILLWISE", "GATEKEEPER")),
        body,
        lambda r: [r.randint(-5, 110)],
    )


def _arch_greeting(rng: random.Random) -> ProgramSpec:
    name, ident = _names(rng, ("NAME", "CUSTOMER", "VISITOR"), ("BADGE-NO", "ID", "ACCOUNT"))
    limit = rng.randint(4, 8)
    body: list[Stmt] = [
        ("declare", name, "TEXT", None),
        ("accept", name),
        ("declare", ident, "NUMBER", None),
        ("accept", ident),
        (
            "display",
            [text(rng.choice(("WELCOME, ", "HELLO, ", "GOOD DAY, "))), call("UPPER", var(name))],
        ),
        (
            "if",
            cmp(">", call("LENGTH", var(name)), num(limit)),
            [("display", [text("BADGE: "), call("LOWER", var(name)), text("-"), var(ident)])],
            [("display", [text("BADGE: "), var(name), text("-"), binop("*", var(ident), num(10))])],
        ),
    ]
    if rng.random() < 0.5:
        body.append(("display", [text("NAME LENGTH: "), call("LENGTH", var(name))]))
    first = ("ada", "Bertram", "clara", "DMITRI", "edith", "Farid", "greta", "Hiro", "Imogen")
    return ProgramSpec(
        rng.choice(("GREETER", "BADGEGEN", "VISITOR-IN", "FRONTDESK")),
        "prints a visitor greeting and badge line",
        "GATEKEEPER",
        body,
        lambda r: [r.choice(first) + r.choice(("", "lynn", "x", "-jo")), r.randint(1, 9999)],
    )


def _arch_checksum(rng: random.Random) -> ProgramSpec:
    acct, n, total, weight = _names(
        rng,
        ("ACCOUNT-NO", "PART-NO", "ORDER-NO"),
        ("DIGITS", "REST", "WORK"),
        ("CHECK-SUM", "TOTAL", "ACC"),
        ("WEIGHT", "FACTOR", "W"),
    )
    mod = rng.choice((7, 10, 11))
    body: list[Stmt] = [
        ("declare", acct, "NUMBER", None),
        ("accept", acct),
        ("declare", n, "NUMBER", var(acct)),
        ("declare", total, "NUMBER", num(0)),
        ("declare", weight, "NUMBER", num(1)),
        (
            "while",
            cmp(">", var(n), num(0)),
            [
                ("add", binop("*", binop("MOD", var(n), num(10)), var(weight)), total),
                ("div", n, num(10)),
                ("set", weight, binop("+", binop("MOD", var(weight), num(3)), num(1))),
            ],
        ),
        (
            "display",
            [text("CHECK DIGIT FOR "), var(acct), text(": "), binop("MOD", var(total), num(mod))],
        ),
    ]
    return ProgramSpec(
        rng.choice(("CHKDIGIT", "ACCT-CHECK", "MOD-CHECK", "DIGITSUM")),
        f"weighted digit checksum modulo {mod}",
        rng.choice(("LEDGER-7", "BILLWISE")),
        body,
        lambda r: [r.randint(0, 99_999_999)],
    )


def _arch_labels(rng: random.Random) -> ProgramSpec:
    orders, i = _names(rng, ("ORDERS", "PARCELS", "ITEMS"), ("I", "SLOT", "SEQ"))
    a, b = rng.sample((2, 3, 4, 5, 7), 2)
    big, small, rest = rng.choice(
        (("CRATE", "BOX", "BAG"), ("PALLET", "CARTON", "ENVELOPE"), ("DRUM", "CASE", "SACK"))
    )
    loop: list[Stmt] = [
        (
            "if",
            (
                "and",
                cmp("=", binop("MOD", var(i), num(a)), num(0)),
                cmp("=", binop("MOD", var(i), num(b)), num(0)),
            ),
            [("display", [text(big + " "), var(i)])],
            [
                (
                    "if",
                    cmp("=", binop("MOD", var(i), num(a)), num(0)),
                    [("display", [text(small + " "), var(i)])],
                    [("display", [text(rest + " "), var(i)])],
                )
            ],
        )
    ]
    return ProgramSpec(
        rng.choice(("PACKLABEL", "SHIPTAGS", "LABELER", "PACKPLAN")),
        f"packing labels: every {a}th item boxed, every {a * b}th crated",
        "ROUTEMASTER",
        [
            ("declare", orders, "NUMBER", None),
            ("accept", orders),
            ("repeat", i, num(1), call("MIN", var(orders), num(20)), None, loop),
            ("display", [text("LABELS PRINTED: "), call("MIN", var(orders), num(20))]),
        ],
        lambda r: [r.randint(0, 24)],
    )


def _arch_interest(rng: random.Random) -> ProgramSpec:
    bal, rate, years, yr = _names(
        rng,
        ("BALANCE", "PRINCIPAL", "FUND"),
        ("RATE", "PCT", "INTEREST-RATE"),
        ("YEARS", "TERM", "PERIODS"),
        ("Y", "YEAR", "T"),
    )
    loop: list[Stmt] = [("add", binop("/", binop("*", var(bal), var(rate)), num(100)), bal)]
    yearly = rng.random() < 0.5
    if yearly:
        loop.append(("display", [text("YEAR "), var(yr), text(": "), var(bal)]))
    body: list[Stmt] = [
        ("declare", bal, "NUMBER", None),
        ("accept", bal),
        ("declare", rate, "NUMBER", None),
        ("accept", rate),
        ("declare", years, "NUMBER", None),
        ("accept", years),
    ]
    if yearly:
        body.append(("repeat", yr, num(1), var(years), None, loop))
    else:
        body.append(("times", var(years), loop))
    body.append(("display", [text("FINAL BALANCE: "), var(bal)]))
    return ProgramSpec(
        rng.choice(("COMPOUND", "INTEREST", "FUNDGROW", "ACCRUAL")),
        "compound interest, rounded down each year",
        "LEDGER-7",
        body,
        lambda r: [r.randint(100, 50_000), r.randint(0, 12), r.randint(0, 15)],
    )


def _arch_readings(rng: random.Random) -> ProgramSpec:
    count, reading, high, total = _names(
        rng,
        ("COUNT", "SAMPLES", "N-READINGS"),
        ("READING", "VALUE-IN", "SAMPLE"),
        ("HIGHEST", "PEAK", "TOP"),
        ("TOTAL", "SUM-ALL", "ACC"),
    )
    body: list[Stmt] = [
        ("declare", count, "NUMBER", None),
        ("accept", count),
        ("declare", reading, "NUMBER", num(0)),
        ("declare", high, "NUMBER", num(0)),
        ("declare", total, "NUMBER", num(0)),
        (
            "times",
            var(count),
            [
                ("accept", reading),
                ("set", high, call("MAX", var(high), var(reading))),
                ("add", var(reading), total),
            ],
        ),
        ("display", [text(rng.choice(("PEAK: ", "HIGHEST READING: ", "MAX: "))), var(high)]),
        (
            "if",
            cmp(">", var(count), num(0)),
            [("display", [text("MEAN: "), binop("/", var(total), var(count))])],
            [("display", [text("NO READINGS")])],
        ),
    ]

    def sample(r: random.Random) -> list:
        n = r.randint(0, 6)
        return [n] + [r.randint(0, 500) for _ in range(n)]

    return ProgramSpec(
        rng.choice(("GAUGELOG", "METER-READ", "SENSORS", "PEAKFIND")),
        f"peak and mean of gauge readings at the {rng.choice(SITES)}",
        "STOCKPILE",
        body,
        sample,
    )


def _arch_countdown(rng: random.Random) -> ProgramSpec:
    start, halt, i = _names(
        rng, ("START", "FROM-NO", "TOP"), ("HALT-AT", "ABORT-AT", "HOLD"), ("I", "TICK", "C")
    )
    body: list[Stmt] = [
        ("declare", start, "NUMBER", None),
        ("accept", start),
        ("declare", halt, "NUMBER", None),
        ("accept", halt),
        (
            "repeat",
            i,
            call("MIN", var(start), num(12)),
            num(1),
            -1,
            [
                (
                    "if",
                    cmp("=", var(i), var(halt)),
                    [("display", [text("HOLD AT T-"), var(i)]), ("leave",)],
                    [],
                ),
                ("display", [text("T-"), var(i)]),
            ],
        ),
        ("display", [text(rng.choice(("IGNITION", "LAUNCH", "GO")))]),
    ]
    return ProgramSpec(
        rng.choice(("COUNTDOWN", "LAUNCHSEQ", "TMINUS")),
        "launch countdown for the rocket-skate test range, with a hold",
        "GATEKEEPER",
        body,
        lambda r: [r.randint(0, 15), r.randint(0, 12)],
    )


def _arch_shipping(rng: random.Random) -> ProgramSpec:
    weight, dist, mode, cost = _names(
        rng,
        ("WEIGHT", "KILOS", "MASS"),
        ("DISTANCE", "MILES", "LEG"),
        ("MODE", "SERVICE", "SPEED"),
        ("COST", "CHARGE", "FREIGHT"),
    )
    base, per_kg, per_mile = rng.randint(3, 15), rng.randint(1, 4), rng.choice((5, 10, 20))
    fast = rng.choice(("EXPRESS", "RUSH", "PRIORITY"))
    body: list[Stmt] = [
        ("declare", weight, "NUMBER", None),
        ("accept", weight),
        ("declare", dist, "NUMBER", None),
        ("accept", dist),
        ("declare", mode, "TEXT", None),
        ("accept", mode),
        ("declare", cost, "NUMBER", num(base)),
        ("add", binop("*", var(weight), num(per_kg)), cost),
        ("add", binop("/", var(dist), num(per_mile)), cost),
        ("if", cmp("=", call("UPPER", var(mode)), text(fast)), [("mul", cost, num(2))], []),
        ("display", [text("FREIGHT FOR "), var(weight), text(" KG: "), var(cost)]),
    ]
    return ProgramSpec(
        rng.choice(("FREIGHT", "SHIPCOST", "RATECARD", "ROUTECOST")),
        f"freight charge for {rng.choice(PRODUCTS)}: base plus weight and distance",
        "ROUTEMASTER",
        body,
        lambda r: [
            r.randint(0, 80),
            r.randint(0, 3000),
            r.choice(("standard", fast.lower(), fast, "economy")),
        ],
    )


ARCHETYPES: tuple[Callable[[random.Random], ProgramSpec], ...] = (
    _arch_payroll,
    _arch_series,
    _arch_inventory,
    _arch_classify,
    _arch_greeting,
    _arch_checksum,
    _arch_labels,
    _arch_interest,
    _arch_readings,
    _arch_countdown,
    _arch_shipping,
)


def render_program(spec: ProgramSpec, rng: random.Random, number: int) -> tuple[str, str]:
    """The ACME-CL listing (with a period header) and its Python translation."""
    author = _person(rng)
    written = _date(rng, 1983, 1996)
    name = f"{spec.name}-{number:03d}"
    header = [
        f"*> PROGRAM:  {name}",
        f"*> SYSTEM:   {spec.system} on the {MACHINE}",
        f"*> PURPOSE:  {spec.purpose}",
        f"*> WRITTEN:  {written.isoformat()} BY {author.upper()}",
    ]
    if rng.random() < 0.5:
        changed = written + dt.timedelta(days=rng.randint(30, 2000))
        header.append(f"*> CHANGED:  {changed.isoformat()} ({rng.choice(CHANGE_NOTES)})")
    acl = header + ["", f"PROGRAM {name}.", *emit_acl(spec.body), "END-PROGRAM.", ""]
    py = [
        f'"""{spec.purpose[0].upper()}{spec.purpose[1:]}.',
        "",
        f"Translated from ACME-CL program {name} ({spec.system}).",
        '"""',
        "",
        "",
        "def main() -> None:",
        *emit_python(spec.body),
        "",
        "",
        'if __name__ == "__main__":',
        "    main()",
        "",
    ]
    return "\n".join(acl), "\n".join(py)


CHANGE_NOTES = (
    "Y2K review, no change needed",
    "rounding fix after audit finding",
    "limits raised per Treasury memo",
    "comment cleanup",
    "ported from the old batch deck",
    "added trailer line for the operators",
)


def pick_test_cases(acl: str, candidates: list[list], k: int) -> list[dict]:
    """Choose `k` of the candidate inputs: greedily by new lines covered, then by new output.

    Random inputs alone often miss a branch (no overtime in any case, say), and a test deck
    that never runs a branch cannot tell a correct translation of it from a wrong one.
    """
    program = parse_acme(acl)
    runs = []
    for inputs in candidates:
        lines: set[int] = set()
        runs.append((inputs, run_acme(program, inputs, lines_run=lines), lines))
    chosen: list[int] = []
    covered: set[int] = set()
    outputs: list[list[str]] = []
    while len(chosen) < min(k, len(runs)):
        gains = {
            i: (len(runs[i][2] - covered), int(runs[i][1] not in outputs))
            for i in range(len(runs))
            if i not in chosen
        }
        best = max(gains, key=gains.__getitem__)
        chosen.append(best)
        covered |= runs[best][2]
        outputs.append(runs[best][1])
    return [{"inputs": runs[i][0], "expected": runs[i][1]} for i in chosen]


def generate_programs(rng: random.Random, count: int) -> list[dict]:
    """`count` program pairs with 4 test cases each (expected output from `run_acme`)."""
    pairs = []
    for number in range(1, count + 1):
        spec = ARCHETYPES[(number - 1) % len(ARCHETYPES)](rng)
        acl, py = render_program(spec, rng, number)
        cases = pick_test_cases(acl, [spec.sample_inputs(rng) for _ in range(12)], 4)
        slug = f"{number:04d}_{spec.name.lower().replace('-', '_')}"
        pairs.append(
            {"slug": slug, "acl": acl, "python": py, "cases": cases, "purpose": spec.purpose}
        )
    return pairs


# Short programs ("snippets"): two to four statements, the first rung of the translation task.
# A small model learns to translate these long before whole listings; the RL demo starts here.
_SNIPPET_NUMBERS = ("QTY", "UNITS", "HOURS", "PRICE", "COUNT", "STOCK", "DAYS", "LOAD")
_SNIPPET_TEXTS = ("NAME", "CITY", "CODE", "WHO")
_SNIPPET_LABELS = ("TOTAL", "RESULT", "ANSWER", "VALUE", "SUM", "OUT")


def _snippet_body(rng: random.Random) -> tuple[list[Stmt], Callable[[random.Random], list]]:
    """One short statement list and how to draw its inputs (a value per ACCEPT, in order)."""
    a, b = rng.sample(_SNIPPET_NUMBERS, 2)
    label = rng.choice(_SNIPPET_LABELS)
    op = rng.choice(("+", "-", "*"))
    n = rng.randint(2, 12)
    kind = rng.choice(("scale", "two", "update", "branch", "text", "fixed"))
    if kind == "scale":  # read one number, print it combined with a constant
        body: list[Stmt] = [
            ("declare", a, "NUMBER", None),
            ("accept", a),
            ("display", [text(f"{label}: "), binop(op, var(a), num(n))]),
        ]
        return body, lambda r: [r.randint(0, 99)]
    if kind == "two":  # read two numbers, print an expression of both
        body = [
            ("declare", a, "NUMBER", None),
            ("accept", a),
            ("declare", b, "NUMBER", None),
            ("accept", b),
            ("display", [text(f"{label} = "), binop(op, var(a), var(b))]),
        ]
        return body, lambda r: [r.randint(0, 99), r.randint(0, 99)]
    if kind == "update":  # a verb statement changes a variable in place
        verb = rng.choice((("add", num(n), a), ("sub", num(n), a), ("mul", a, num(n))))
        body = [("declare", a, "NUMBER", None), ("accept", a), verb, ("display", [var(a)])]
        return body, lambda r: [r.randint(0, 99)]
    if kind == "branch":  # one IF/ELSE on a read number
        high, low = rng.choice((("HIGH", "LOW"), ("OVER", "UNDER"), ("YES", "NO")))
        limit = n * 5
        body = [
            ("declare", a, "NUMBER", None),
            ("accept", a),
            (
                "if",
                cmp(rng.choice((">", "<", ">=")), var(a), num(limit)),
                [("display", [text(high)])],
                [("display", [text(low)])],
            ),
        ]
        return body, lambda r: [r.randint(max(0, limit - 9), limit + 9)]
    if kind == "text":  # a text value through UPPER/LOWER/LENGTH
        who = rng.choice(_SNIPPET_TEXTS)
        fn = rng.choice(("UPPER", "LOWER", "LENGTH"))
        greet = rng.choice(("HELLO, ", "CODE ", "TAG "))
        body = [
            ("declare", who, "TEXT", None),
            ("accept", who),
            ("display", [text(greet), call(fn, var(who))]),
        ]
        names = ("ada", "Bertram", "clara", "DMITRI", "edith", "Farid")
        return body, lambda r: [r.choice(names)]
    body = [  # fixed: declared values, no input
        ("declare", a, "NUMBER", num(n)),
        ("declare", b, "NUMBER", num(rng.randint(1, 9))),
        ("display", [text(f"{label} "), binop(op, var(a), var(b))]),
    ]
    return body, lambda r: []


def generate_snippets(rng: random.Random, count: int) -> list[dict]:
    """`count` short program pairs (slug `snip_NNNN`) with up to 3 test cases each, in the
    format of `generate_programs`: the ACME-CL listing, its Python translation (`main()`,
    as for whole programs, without the docstring) and the expected output per case."""
    pairs = []
    for number in range(1, count + 1):
        body, sample = _snippet_body(rng)
        name = f"SNIP-{number:03d}"
        acl = "\n".join([f"PROGRAM {name}.", *emit_acl(body), "END-PROGRAM.", ""])
        py = "\n".join([
            "def main() -> None:", *emit_python(body), "", "",
            'if __name__ == "__main__":', "    main()", "",
        ])  # fmt: skip
        candidates = [sample(rng) for _ in range(8)]
        k = 1 if not candidates[0] else 3
        cases = pick_test_cases(acl, candidates, k)
        pairs.append({"slug": f"snip_{number:04d}", "acl": acl, "python": py, "cases": cases})
    return pairs


def snippet_pairs(seed: int = 0, scale: float = 1.0) -> list[dict]:
    """The snippets of the ACME SFT data for `seed` and `scale` (the RL prompts use the same)."""
    return generate_snippets(random.Random(f"acme:{seed}:snippets"), _counts(scale)["snippets"])


# =======================================================================================
# Manuals: reference chapters, guide lessons, quick references, FAQs, migration notes

# Each fact is (question, [phrasings]); documents pick phrasings so the same rule is
# stated many ways across the corpus.
TOPICS: list[dict] = [
    {
        "title": "Program Structure",
        "intro": [
            "An ACME-CL program is a sequence of statements, each closed by a period.",
            "Every ACME-CL listing reads from top to bottom, one period-terminated statement "
            "at a time.",
            "The shape of an ACME-CL program has not changed since the first {machine} "
            "release in 1983.",
        ],
        "facts": [
            (
                "How does a statement end?",
                [
                    "Every statement ends with a period (.), even the last one in a block.",
                    "A statement is not complete until its closing period; forgetting it is the "
                    "most common syntax error in new listings.",
                    "The period is the statement terminator, so `DISPLAY X.` is complete while "
                    "`DISPLAY X` is not.",
                ],
            ),
            (
                "Is the PROGRAM header required?",
                [
                    "The header `PROGRAM name.` is optional but customary, and `END-PROGRAM.` may "
                    "close the listing.",
                    "Most shop listings open with `PROGRAM name.` and close with `END-PROGRAM.`; "
                    "the interpreter accepts programs without either.",
                ],
            ),
            (
                "How are comments written?",
                [
                    "A comment starts with `*>` and runs to the end of the line.",
                    "Anything after `*>` on a line is ignored, which is how the change log at "
                    "the top of every listing is written.",
                ],
            ),
            (
                "Are keywords case-sensitive?",
                [
                    "Keywords and names are case-insensitive: `display`, `Display` and "
                    "`DISPLAY` are the same word, though house style is upper case.",
                    "The interpreter upper-cases every keyword and name, so `Total` and `TOTAL` "
                    "refer to the same variable.",
                ],
            ),
        ],
        "examples": ["hello", "header"],
        "mapping": [
            ("PROGRAM NAME. ... END-PROGRAM.", "def main() -> None: ..."),
            ("*> comment", "# comment"),
        ],
    },
    {
        "title": "Names and Literals",
        "intro": [
            "Names in ACME-CL follow the COBOL tradition of hyphenated words.",
            "Choosing names is the first thing a reviewer checks in an ACME-CL listing.",
        ],
        "facts": [
            (
                "What characters may a name contain?",
                [
                    "A name starts with a letter and may contain letters, digits and inner "
                    "hyphens, such as TOTAL-PAY or ROW-2.",
                    "Names like GROSS-PAY and ORDER-NO are typical: a letter first, then letters, "
                    "digits and single hyphens between them.",
                ],
            ),
            (
                "Why must a minus sign have spaces around it?",
                [
                    "Because hyphens are part of names, a minus sign needs a space on each side: "
                    "`A - 1` subtracts, while `A-1` is a single name.",
                    "Write `COUNT - 1`, never `COUNT-1`; the second form is read as a variable "
                    "called COUNT-1 and usually fails with 'not declared'.",
                ],
            ),
            (
                "How is a quote written inside text?",
                [
                    "Text literals use double quotes, and a quote inside text is doubled: "
                    '`"SAY ""HI"""` holds SAY "HI".',
                    'Double the quote character to include it in a literal, as in `"6"" PIPE"`.',
                ],
            ),
            (
                "Can a keyword be used as a name?",
                [
                    "Keywords such as SET, VALUE or TIMES cannot be names, and neither can the "
                    "built-in function names LENGTH, UPPER, LOWER, ABS, MAX and MIN.",
                    "Reserved words cannot be reused as names; the interpreter reports "
                    "'a keyword cannot be a name'.",
                ],
            ),
            (
                "Are there decimal numbers?",
                [
                    "Numbers are whole numbers only; there is no decimal point in ACME-CL, so "
                    "money is kept in cents.",
                    "ACME-CL has no fractions: amounts are stored in the smallest unit (cents, "
                    "grams, minutes) by long-standing convention.",
                ],
            ),
        ],
        "examples": ["quotes", "names"],
        "mapping": [("TOTAL-PAY", "total_pay"), ('"SAY ""HI"""', "'SAY \"HI\"'")],
    },
    {
        "title": "Declaring Data",
        "intro": [
            "ACME-CL is strict about data: nothing may be used before it is declared.",
            "The DECLARE statement introduces every variable a program uses.",
        ],
        "facts": [
            (
                "What types does ACME-CL have?",
                [
                    "There are two types: NUMBER, a signed whole number of up to 18 digits, and "
                    "TEXT, up to 4096 characters.",
                    "A variable is either NUMBER (18 digits, signed) or TEXT (at most 4096 "
                    "characters); there is no third type.",
                ],
            ),
            (
                "What is the default type and value?",
                [
                    "`DECLARE X.` declares a NUMBER holding 0; `DECLARE T AS TEXT.` declares "
                    "empty text.",
                    "Without AS, DECLARE makes a NUMBER, and without VALUE a NUMBER starts at 0 "
                    "and a TEXT starts empty.",
                ],
            ),
            (
                "How is a starting value given?",
                [
                    "The VALUE clause sets a starting value: `DECLARE RATE AS NUMBER VALUE 12.`",
                    "Use `VALUE` to initialise at declaration, for example "
                    '`DECLARE CITY AS TEXT VALUE "RIVERTON".`',
                ],
            ),
            (
                "What happens if a variable is declared twice?",
                [
                    "Declaring the same name twice is a runtime error, so DECLARE statements "
                    "belong at the top of the program, not inside loops.",
                    "A second DECLARE of the same name stops the program with 'already "
                    "declared'; keep declarations out of loop bodies.",
                ],
            ),
            (
                "Can a NUMBER hold text?",
                [
                    "A NUMBER variable cannot hold TEXT and a TEXT variable cannot hold a NUMBER; "
                    "convert with TEXT(n) or NUMBER(t).",
                    "Assigning the wrong type fails with a message such as 'X is NUMBER and "
                    "cannot hold TEXT'.",
                ],
            ),
        ],
        "examples": ["declare", "convert"],
        "mapping": [("DECLARE X AS NUMBER VALUE 5.", "x = 5"), ("DECLARE T AS TEXT.", 't = ""')],
    },
    {
        "title": "Arithmetic",
        "intro": [
            "Arithmetic in ACME-CL comes in two styles: the verb statements inherited from "
            "COBOL and the SET statement with ordinary formulas.",
            "Most of the PAYMASTER and LEDGER-7 code is arithmetic, and most of its bugs are "
            "about rounding.",
        ],
        "facts": [
            (
                "Which arithmetic verbs exist?",
                [
                    "`ADD 5 TO X.`, `SUBTRACT 2 FROM X.`, `MULTIPLY X BY 3.` and "
                    "`DIVIDE X BY 4.` change X in place.",
                    "The verbs ADD ... TO, SUBTRACT ... FROM, MULTIPLY ... BY and DIVIDE ... BY "
                    "update a variable where it stands.",
                ],
            ),
            (
                "How does SET work?",
                [
                    "`SET X TO expression.` evaluates the expression and stores the result.",
                    "SET ... TO takes any formula built from + - * / MOD and parentheses.",
                ],
            ),
            (
                "How does division round?",
                [
                    "Division rounds down toward minus infinity: 7 / 2 is 3 and -7 / 2 is -4.",
                    "The / operator is floor division, so -7 / 2 gives -4, exactly like Python's "
                    "// operator.",
                    "Integer division always rounds down; auditors call this 'the ACME floor'.",
                ],
            ),
            (
                "What does MOD return?",
                [
                    "MOD is the remainder of floor division and takes the sign of the divisor: "
                    "-7 MOD 2 is 1.",
                    "`A MOD B` matches Python's `a % b`, including for negative numbers.",
                ],
            ),
            (
                "What is the operator precedence?",
                [
                    "* / and MOD bind tighter than + and -, and operators of equal rank group "
                    "from the left, so 10 - 4 - 3 is 3.",
                    "Precedence is the usual one: multiply, divide and MOD first, then add and "
                    "subtract, left to right.",
                ],
            ),
            (
                "What happens on overflow or division by zero?",
                [
                    "A result beyond 18 digits stops the program with 'numeric overflow', and "
                    "dividing by zero stops it with 'division by zero'.",
                    "Division by zero and 18-digit overflow are runtime errors, never silent "
                    "wrap-around.",
                ],
            ),
        ],
        "examples": ["arith", "division"],
        "mapping": [
            ("ADD 5 TO X.", "x += 5"),
            ("DIVIDE X BY 4.", "x //= 4"),
            ("A MOD B", "a % b"),
            ("A / B", "a // b"),
        ],
    },
    {
        "title": "Working with Text",
        "intro": [
            "Text handling arrived in the 1986 revision, when BILLWISE started printing "
            "customer names on invoices.",
            "ACME-CL keeps text handling deliberately small.",
        ],
        "facts": [
            (
                "How is text joined?",
                [
                    "The & operator joins values into text and converts numbers automatically: "
                    '`"TOTAL: " & 42` gives TOTAL: 42.',
                    'Use & to build a line: `DISPLAY "PAY " & PAY.` prints PAY followed by '
                    "the number.",
                ],
            ),
            (
                "Which text functions exist?",
                [
                    "LENGTH(t) counts characters, UPPER(t) and LOWER(t) change case.",
                    "The text functions are LENGTH, UPPER and LOWER, each taking one TEXT "
                    "argument.",
                ],
            ),
            (
                "How is a number converted to text and back?",
                [
                    "TEXT(n) turns a NUMBER into TEXT and NUMBER(t) reads a whole number from "
                    "TEXT, failing if the text is not a number.",
                    'NUMBER(" 42 ") gives 42; NUMBER("4X") stops with "not a whole number".',
                ],
            ),
            (
                "Does + join text?",
                [
                    "No: + works only on numbers. Joining text with + is a type error; use &.",
                    "Writing `NAME + \"X\"` fails with 'needs a NUMBER'; the join operator is &.",
                ],
            ),
            (
                "How are text values compared?",
                [
                    "Text compares with the same operators as numbers, letter by letter, and "
                    "the comparison is case-sensitive, so compare UPPER(T) when case may vary.",
                    '`"ABC" < "ABD"` is true; `"abc" = "ABC"` is false unless both sides '
                    "go through UPPER.",
                ],
            ),
        ],
        "examples": ["text", "textfn"],
        "mapping": [
            ('"A" & X', 'f"A{x}"'),
            ("LENGTH(T)", "len(t)"),
            ("UPPER(T)", "t.upper()"),
            ("NUMBER(T)", "int(t)"),
        ],
    },
    {
        "title": "Conditions and IF",
        "intro": [
            "IF is the only branching statement in ACME-CL.",
            "Decisions in ACME-CL are written with IF ... THEN ... ELSE ... END-IF.",
        ],
        "facts": [
            (
                "What is the form of IF?",
                [
                    "`IF condition THEN statements ELSE statements END-IF.` where the ELSE part "
                    "may be left out.",
                    "An IF block opens with IF ... THEN and closes with END-IF followed by a "
                    "period.",
                ],
            ),
            (
                "Which comparison operators exist?",
                [
                    "The comparisons are = <> < > <= and >=; note that 'not equal' is written <>.",
                    "Equality is a single =, and inequality is <>, as on every {machine} "
                    "compiler of the period.",
                ],
            ),
            (
                "How are conditions combined?",
                [
                    "AND, OR and NOT combine conditions; NOT binds tightest, then AND, then OR.",
                    "Use parentheses when mixing AND and OR; without them AND groups first.",
                ],
            ),
            (
                "Is there ELSE IF?",
                [
                    "There is no ELSE IF: nest a second IF inside the ELSE part, and close each "
                    "IF with its own END-IF.",
                    "Chains of decisions are written as nested IF blocks, each with its own "
                    "END-IF.",
                ],
            ),
            (
                "Can comparisons be chained?",
                [
                    "Comparisons cannot be chained: write `A < B AND B < C`, not `A < B < C`.",
                    "`0 < X < 10` is a syntax error; join the two tests with AND.",
                ],
            ),
        ],
        "examples": ["if", "nested_if"],
        "mapping": [
            ("IF A <> B THEN ... END-IF.", "if a != b: ..."),
            ("ELSE IF (nested)", "elif ...:"),
        ],
    },
    {
        "title": "WHILE Loops",
        "intro": [
            "WHILE repeats a block as long as a condition holds.",
            "Use WHILE when the number of passes is not known in advance.",
        ],
        "facts": [
            (
                "What is the form of WHILE?",
                [
                    "`WHILE condition DO statements END-WHILE.`",
                    "A WHILE loop opens with WHILE ... DO and closes with END-WHILE.",
                ],
            ),
            (
                "When is the condition tested?",
                [
                    "The condition is tested before every pass, so the body may run zero times.",
                    "If the condition is false at the start, the body never runs.",
                ],
            ),
            (
                "How do you leave a loop early?",
                [
                    "LEAVE exits the innermost WHILE or REPEAT at once.",
                    "`LEAVE.` jumps to the statement after the innermost END-WHILE or END-REPEAT.",
                ],
            ),
            (
                "What stops a runaway loop?",
                [
                    "The interpreter stops any program after its step limit, reporting 'step "
                    "limit exceeded (endless loop?)'.",
                    "Operations caps every job at a fixed number of steps; an endless WHILE is "
                    "cut off with a step-limit error.",
                ],
            ),
        ],
        "examples": ["while", "leave"],
        "mapping": [("WHILE C DO ... END-WHILE.", "while c: ..."), ("LEAVE.", "break")],
    },
    {
        "title": "REPEAT Loops",
        "intro": [
            "REPEAT is the counting loop of ACME-CL.",
            "REPEAT comes in two forms: a fixed number of TIMES, or a counter running FROM "
            "one value TO another.",
        ],
        "facts": [
            (
                "What are the forms of REPEAT?",
                [
                    "`REPEAT n TIMES ... END-REPEAT.` runs a block n times; "
                    "`REPEAT I FROM a TO b DO ... END-REPEAT.` counts I from a to b.",
                    "Use REPEAT ... TIMES for a fixed count and REPEAT I FROM ... TO ... DO for "
                    "a counter.",
                ],
            ),
            (
                "Are the bounds inclusive?",
                [
                    "Both bounds are inclusive: REPEAT I FROM 1 TO 3 DO runs with I = 1, 2 and 3.",
                    "FROM 1 TO 5 means five passes; the upper bound is included, unlike "
                    "Python's range.",
                ],
            ),
            (
                "How does STEP work?",
                [
                    "STEP sets the increment and may be negative: FROM 10 TO 1 STEP -3 gives "
                    "10, 7, 4, 1. STEP 0 is an error.",
                    "A negative STEP counts down; a STEP of 0 stops the program.",
                ],
            ),
            (
                "Are the bounds re-evaluated?",
                [
                    "The bounds are evaluated once, when the loop starts; changing them inside "
                    "the body does not change the number of passes.",
                    "Changing the TO variable inside the loop has no effect on how many times "
                    "it runs.",
                ],
            ),
            (
                "Must the counter be declared?",
                [
                    "The counter is declared automatically as a NUMBER if it was not declared "
                    "before.",
                    "REPEAT declares its counter for you; declaring it yourself is allowed but "
                    "it must be a NUMBER.",
                ],
            ),
        ],
        "examples": ["repeat", "times"],
        "mapping": [
            ("REPEAT I FROM 1 TO N DO", "for i in range(1, n + 1):"),
            ("REPEAT N TIMES", "for _ in range(n):"),
            ("FROM A TO B STEP -1", "range(a, b - 1, -1)"),
        ],
    },
    {
        "title": "Procedures",
        "intro": [
            "Procedures let a listing name a block and run it from several places.",
            "ACME-CL procedures are the descendants of COBOL paragraphs.",
        ],
        "facts": [
            (
                "How is a procedure defined?",
                [
                    "`PROCEDURE NAME. statements END-PROCEDURE.` defines a procedure at the top "
                    "level of the program.",
                    "A procedure is written between PROCEDURE name. and END-PROCEDURE., never "
                    "inside another block.",
                ],
            ),
            (
                "How is a procedure called?",
                [
                    "`PERFORM NAME.` runs the procedure and then continues after the PERFORM.",
                    "PERFORM transfers control to a procedure and comes back when it ends.",
                ],
            ),
            (
                "Do procedures have parameters?",
                [
                    "Procedures have no parameters or local variables: they share every variable "
                    "with the rest of the program.",
                    "All variables are global, so a procedure reads and changes the same "
                    "variables as the main program.",
                ],
            ),
            (
                "Where may a procedure appear?",
                [
                    "A procedure may be defined before or after the PERFORM that calls it; "
                    "house style puts procedures at the end.",
                    "The order of definition does not matter, but every PERFORM must name an "
                    "existing procedure.",
                ],
            ),
            (
                "Can procedures call themselves?",
                [
                    "A procedure may PERFORM another, but nesting is limited to 64 levels, so "
                    "recursion is effectively forbidden.",
                    "PERFORM chains deeper than 64 stop the program; write loops, not recursion.",
                ],
            ),
        ],
        "examples": ["procedure"],
        "mapping": [
            ("PROCEDURE SHOW. ... END-PROCEDURE.", "def show(): ..."),
            ("PERFORM SHOW.", "show()"),
        ],
    },
    {
        "title": "Input and Output",
        "intro": [
            "ACME-CL programs talk to the operator console through two statements.",
            "Batch jobs on the {machine} read their parameters with ACCEPT and report with "
            "DISPLAY.",
        ],
        "facts": [
            (
                "How does a program read input?",
                [
                    "`ACCEPT X.` reads the next input value into X, converting it to X's type.",
                    "Each ACCEPT consumes one input value, in order, from the job's input deck.",
                ],
            ),
            (
                "What if the input runs out?",
                [
                    "ACCEPT with no input left stops the program with 'no more input'.",
                    "Running out of input is a runtime error, not an empty value.",
                ],
            ),
            (
                "What if the input is not a number?",
                [
                    "Reading text such as 'ABC' into a NUMBER stops the program with 'not a "
                    "whole number'.",
                    "Input for a NUMBER must be a whole number; anything else is rejected.",
                ],
            ),
            (
                "How does DISPLAY work?",
                [
                    "`DISPLAY expression.` prints one line; use & to put several values on it.",
                    "Every DISPLAY writes exactly one line to the console.",
                ],
            ),
        ],
        "examples": ["io", "accept_loop"],
        "mapping": [
            ("ACCEPT X. (NUMBER)", "x = int(input())"),
            ("ACCEPT T. (TEXT)", "t = input()"),
            ('DISPLAY "A" & X.', 'print(f"A{x}")'),
        ],
    },
    {
        "title": "Errors and Limits",
        "intro": [
            "When an ACME-CL program fails, the interpreter names the line and the reason.",
            "Knowing the limits of the runtime saves hours of reading dumps.",
        ],
        "facts": [
            (
                "What kinds of errors are there?",
                [
                    "Syntax errors are found before the program runs; runtime errors (type "
                    "mismatch, division by zero, missing input) stop it while running.",
                    "The interpreter reports syntax errors up front and runtime errors as they "
                    "happen, always with a line number.",
                ],
            ),
            (
                "Which limits does the runtime enforce?",
                [
                    "A job is stopped after its step limit, its time limit or 10000 lines of "
                    "output.",
                    "Every run has a step limit, a time limit and an output limit of 10000 lines.",
                ],
            ),
            (
                "What does 'not declared' mean?",
                [
                    "'X is not declared' means a variable was used before any DECLARE of it; "
                    "check for a misspelt name or a minus sign without spaces.",
                    "Most 'not declared' errors come from `A-1` written without spaces.",
                ],
            ),
            (
                "Can a condition be stored?",
                [
                    "A condition is not a value: `SET X TO A > B.` fails; use IF to act on it.",
                    "Comparisons produce conditions, which IF and WHILE test but variables "
                    "cannot hold.",
                ],
            ),
        ],
        "examples": ["errors"],
        "mapping": [],
    },
    {
        "title": "House Style",
        "intro": [
            "The Mainframe Guild has kept a house style for ACME-CL since 1988.",
            "Reviewers in {dept} apply the house style to every change.",
        ],
        "facts": [
            (
                "What belongs at the top of a listing?",
                [
                    "Every listing opens with a comment block naming the program, system, "
                    "purpose, author and date, followed by a change log.",
                    "The header block (PROGRAM, SYSTEM, PURPOSE, WRITTEN, CHANGED) is mandatory "
                    "for production code.",
                ],
            ),
            (
                "How should code be indented?",
                [
                    "Indent block bodies by three spaces, and write keywords in upper case.",
                    "Three-space indentation and upper-case keywords are the house standard.",
                ],
            ),
            (
                "Where do declarations go?",
                [
                    "Declare every variable at the top, in the order the inputs are read.",
                    "Declarations come first, then ACCEPT statements, then processing, then "
                    "DISPLAY.",
                ],
            ),
            (
                "How is money stored?",
                [
                    "Money is kept in cents in NUMBER variables and divided only when printing.",
                    "Keep amounts in the smallest unit and round down at the end, never in the "
                    "middle of a calculation.",
                ],
            ),
        ],
        "examples": ["hello"],
        "mapping": [],
    },
]

DOC_STYLES = ("reference", "guide", "quickref", "faq", "migration")


def _example_source(kind: str, rng: random.Random) -> tuple[str, list[list]]:
    """A short ACME-CL example of one feature, with the inputs to show it on."""
    n = rng.randint(2, 9)
    item = rng.choice(PRODUCTS).upper()
    who = rng.choice(FIRST_NAMES).upper()
    if kind == "hello":
        return (
            f'PROGRAM HELLO-{rng.randint(1, 99)}.\nDISPLAY "ACME CORP - {rng.choice(SITES).upper()}".\n'
            f'DISPLAY "SHIFT REPORT READY".\nEND-PROGRAM.\n',
            [[]],
        )
    if kind == "header":
        return (
            f"*> PROGRAM: STOCK-NOTE\n*> SYSTEM:  STOCKPILE\nPROGRAM STOCK-NOTE.\n"
            f'DECLARE QTY VALUE {n * 12}.\nDISPLAY "{item} ON HAND: " & QTY.\nEND-PROGRAM.\n',
            [[]],
        )
    if kind == "quotes":
        return (f'DISPLAY "LABEL SAYS ""{item}""".\nDISPLAY "{who}" & "-" & {n}.\n', [[]])
    if kind == "names":
        return (
            f"DECLARE ROW-{n} VALUE {n * 3}.\nDECLARE TOTAL-QTY VALUE ROW-{n} - 1.\n"
            f'DISPLAY "TOTAL-QTY = " & TOTAL-QTY.\n',
            [[]],
        )
    if kind == "declare":
        return (
            f'DECLARE CITY AS TEXT VALUE "{rng.choice(SITES).split()[0].upper()}".\n'
            f"DECLARE UNITS AS NUMBER VALUE {n * 5}.\nDECLARE SPARE.\n"
            f'DISPLAY CITY & ": " & UNITS & " UNITS, SPARE " & SPARE.\n',
            [[]],
        )
    if kind == "convert":
        return (
            "DECLARE RAW AS TEXT.\nACCEPT RAW.\nDECLARE QTY AS NUMBER.\n"
            f'SET QTY TO NUMBER(RAW) * {n}.\nDISPLAY "CODE-" & TEXT(QTY).\n',
            [[str(rng.randint(1, 50))], [f" {rng.randint(1, 50)} "]],
        )
    if kind == "arith":
        a, b = rng.randint(10, 99), rng.randint(2, 9)
        return (
            f"DECLARE X VALUE {a}.\nADD {b} TO X.\nMULTIPLY X BY {n}.\nSUBTRACT {b * 2} FROM X.\n"
            f'DISPLAY "X = " & X.\nSET X TO (X + {b}) * 2 - {a} MOD {b}.\nDISPLAY "X = " & X.\n',
            [[]],
        )
    if kind == "division":
        a, b = rng.randint(7, 50), rng.randint(2, 6)
        return (
            "DECLARE A.\nDECLARE B.\nACCEPT A.\nACCEPT B.\n"
            'DISPLAY A & " / " & B & " = " & A / B.\n'
            'DISPLAY A & " MOD " & B & " = " & A MOD B.\n',
            [[a, b], [-a, b]],
        )
    if kind == "text":
        return (
            f"DECLARE WHO AS TEXT.\nACCEPT WHO.\nDECLARE ORDERS VALUE {n}.\n"
            f'DISPLAY "CUSTOMER " & UPPER(WHO) & " HAS " & ORDERS & " OPEN ORDERS".\n',
            [[rng.choice(FIRST_NAMES).lower()]],
        )
    if kind == "textfn":
        return (
            "DECLARE CODE AS TEXT.\nACCEPT CODE.\n"
            'DISPLAY "LENGTH " & LENGTH(CODE).\nDISPLAY LOWER(CODE) & "/" & UPPER(CODE).\n'
            f'IF UPPER(CODE) = "{item.split()[0]}" THEN\n   DISPLAY "MATCH".\nELSE\n'
            '   DISPLAY "NO MATCH".\nEND-IF.\n',
            [[item.split()[0].lower()], [who.capitalize()]],
        )
    if kind == "if":
        t = rng.choice((10, 50, 100))
        return (
            f'DECLARE QTY.\nACCEPT QTY.\nIF QTY >= {t} THEN\n   DISPLAY "BULK ORDER".\n'
            f'ELSE\n   DISPLAY "SMALL ORDER OF " & QTY.\nEND-IF.\n',
            [[t + n], [t - n]],
        )
    if kind == "nested_if":
        return (
            'DECLARE TEMP.\nACCEPT TEMP.\nIF TEMP > 30 THEN\n   DISPLAY "HOT".\nELSE\n'
            '   IF TEMP < 5 AND NOT TEMP = 0 THEN\n      DISPLAY "COLD".\n   ELSE\n'
            '      DISPLAY "MILD".\n   END-IF.\nEND-IF.\n',
            [[rng.randint(31, 40)], [rng.randint(1, 4)], [0]],
        )
    if kind == "while":
        return (
            f"DECLARE LEFT.\nACCEPT LEFT.\nDECLARE TRIPS VALUE 0.\nWHILE LEFT > 0 DO\n"
            f"   SUBTRACT {n} FROM LEFT.\n   ADD 1 TO TRIPS.\nEND-WHILE.\n"
            f'DISPLAY "TRIPS NEEDED: " & TRIPS.\n',
            [[rng.randint(10, 60)], [0]],
        )
    if kind == "leave":
        return (
            f"DECLARE I VALUE 1.\nWHILE I < 100 DO\n   IF I * I > {n * 10} THEN\n"
            "      LEAVE.\n   END-IF.\n   ADD 1 TO I.\nEND-WHILE.\n"
            'DISPLAY "FIRST SQUARE OVER LIMIT: " & I.\n',
            [[]],
        )
    if kind == "repeat":
        return (
            f"DECLARE TOTAL VALUE 0.\nREPEAT I FROM 1 TO {n} DO\n   ADD I TO TOTAL.\n"
            f'END-REPEAT.\nDISPLAY "SUM 1.." & {n} & " = " & TOTAL.\n'
            f"REPEAT K FROM {n + 3} TO 1 STEP -3 DO\n   DISPLAY K.\nEND-REPEAT.\n",
            [[]],
        )
    if kind == "times":
        return (
            f'DECLARE LINE AS TEXT VALUE "".\nREPEAT {min(n, 6)} TIMES\n'
            f'   SET LINE TO LINE & "*".\nEND-REPEAT.\nDISPLAY LINE.\n',
            [[]],
        )
    if kind == "procedure":
        return (
            f"DECLARE QTY VALUE {n}.\nPERFORM SHOW-QTY.\nMULTIPLY QTY BY 2.\nPERFORM SHOW-QTY.\n"
            f'STOP.\nPROCEDURE SHOW-QTY.\n   DISPLAY "{item}: " & QTY.\nEND-PROCEDURE.\n',
            [[]],
        )
    if kind == "io":
        return (
            "DECLARE NAME AS TEXT.\nDECLARE HOURS.\nACCEPT NAME.\nACCEPT HOURS.\n"
            'DISPLAY NAME & " WORKED " & HOURS & " HOURS".\n',
            [[rng.choice(FIRST_NAMES), rng.randint(20, 45)]],
        )
    if kind == "accept_loop":
        k = rng.randint(2, 4)
        return (
            "DECLARE N.\nDECLARE V.\nDECLARE TOTAL.\nACCEPT N.\nREPEAT N TIMES\n   ACCEPT V.\n"
            '   ADD V TO TOTAL.\nEND-REPEAT.\nDISPLAY "TOTAL OF " & N & ": " & TOTAL.\n',
            [[k] + [rng.randint(1, 99) for _ in range(k)]],
        )
    if kind == "errors":
        return (
            f'DECLARE STOCK VALUE {n}.\nDECLARE DAYS VALUE 0.\nDISPLAY "PER DAY: " & STOCK / DAYS.\n',
            [[]],
        )
    raise ValueError(kind)


def _example_block(kind: str, rng: random.Random) -> str:
    source, cases = _example_source(kind, rng)
    parts = ["```acme-cl", source.rstrip("\n"), "```"]
    for inputs in cases:
        try:
            out = run_acme(source, inputs)
            result = "\n".join(out)
        except Exception as err:  # the errors chapter shows the interpreter's message
            result = f"*** {err}"
        if inputs:
            shown = ", ".join(str(v) for v in inputs)
            lead = rng.choice(
                (
                    "With the input {x} it prints:",
                    "Given {x}, the output is:",
                    "Run with input {x}:",
                    "Input {x} produces:",
                )
            )
            parts.append(lead.format(x=shown))
        else:
            parts.append(
                rng.choice(("It prints:", "Output:", "Running it prints:", "The console shows:"))
            )
        parts += ["```text", result, "```"]
    return "\n".join(parts)


def _fill(s: str, rng: random.Random) -> str:
    return s.replace("{machine}", MACHINE).replace("{dept}", rng.choice(DEPARTMENTS))


def _manual_doc(topic: dict, chapter: int, style: str, rng: random.Random, prog: str) -> str:
    title, facts = topic["title"], topic["facts"]
    author, year = _person(rng), rng.randint(1984, 1999)
    intro = _fill(rng.choice(topic["intro"]), rng)
    out: list[str] = []
    if style == "reference":
        edition = rng.choice(("second", "third", "fourth", "fifth"))
        out += [
            f"# ACME-CL Language Reference, {edition} edition",
            f"## Chapter {chapter}: {title}",
            "",
            f"*Revised {year} by {author}, {rng.choice(DEPARTMENTS)}.*",
            "",
            intro,
            "",
            "### Rules",
            "",
        ]
        out += [f"{i}. {_fill(rng.choice(p), rng)}" for i, (_, p) in enumerate(facts, 1)]
        out += ["", "### Examples", ""]
        for kind in topic["examples"]:
            out += [_example_block(kind, rng), ""]
        out += [
            "### See also",
            "",
            ", ".join(t["title"] for t in rng.sample(TOPICS, 3) if t is not topic) + ".",
        ]
    elif style == "guide":
        out += [
            f"# Programmer's Guide to ACME-CL - Lesson {chapter}: {title}",
            "",
            f"Course notes from the {rng.choice(SITES)}, {year}. Instructor: {author}.",
            "",
            intro,
        ]
        connectors = (
            "First,",
            "Next,",
            "Keep in mind:",
            "Also,",
            "Remember that",
            "Note that",
            "In practice,",
            "Finally,",
        )
        for i, (_, phrasings) in enumerate(rng.sample(facts, len(facts))):
            sentence = _fill(rng.choice(phrasings), rng)
            lead = connectors[min(i, len(connectors) - 2)] if i < len(facts) - 1 else "Finally,"
            out += ["", f"{lead} {sentence[0].lower()}{sentence[1:]}"]
        out += [
            "",
            "Try this example on the training terminal:",
            "",
            _example_block(rng.choice(topic["examples"]), rng),
            "",
            rng.choice(
                (
                    "Exercise: change the constants and predict the output first.",
                    "Exercise: rewrite the example without the last statement.",
                    "Exercise: explain each line to your neighbour.",
                )
            ),
        ]
    elif style == "quickref":
        out += [
            f"# ACME-CL Quick Reference Card: {title}",
            "",
            f"{MACHINE} operations desk, card {chapter}-{rng.randint(1, 9)}.",
            "",
        ]
        out += [f"- {_fill(rng.choice(p), rng)}" for _, p in facts]
        if topic["mapping"]:
            out += ["", "| ACME-CL | Python |", "|---|---|"]
            out += [f"| `{a}` | `{b}` |" for a, b in topic["mapping"]]
        out += ["", _example_block(topic["examples"][0], rng)]
    elif style == "faq":
        out += [
            f"# ACME-CL FAQ: {title}",
            "",
            f"Collected by {author} from questions to the Mainframe Guild help desk.",
            "",
        ]
        for q, phrasings in rng.sample(facts, len(facts)):
            out += [f"**Q: {q}**", "", f"A: {_fill(rng.choice(phrasings), rng)}", ""]
        out += [_example_block(rng.choice(topic["examples"]), rng)]
    else:  # migration
        out += [
            f"# Migrating ACME-CL to Python: {title}",
            "",
            f"Migration programme notes, {rng.choice(DEPARTMENTS)}, prepared by {author}.",
            "",
            intro,
            "",
        ]
        if topic["mapping"]:
            out += ["| ACME-CL | Python |", "|---|---|"]
            out += [f"| `{a}` | `{b}` |" for a, b in topic["mapping"]]
            out.append("")
        out += [f"- {_fill(rng.choice(p), rng)}" for _, p in rng.sample(facts, min(3, len(facts)))]
        out += ["", "A complete program and its translation, verified on test inputs:", "", prog]
    return "\n".join(out).rstrip() + "\n"


def _migration_example(rng: random.Random, number: int) -> str:
    """A fresh program pair (not one of programs/) with the output both print on one input."""
    spec = rng.choice(ARCHETYPES)(rng)
    acl, py = render_program(spec, rng, number)
    inputs = spec.sample_inputs(rng)
    shown = ", ".join(str(v) for v in inputs) or "no input"
    output = "\n".join(run_acme(acl, inputs))
    return (
        f"```acme-cl\n{acl.rstrip()}\n```\n\n```python\n{py.rstrip()}\n```\n\n"
        f"On the input {shown} both programs print:\n\n```text\n{output}\n```"
    )


def generate_manuals(rng: random.Random, count: int) -> dict[str, str]:
    files = {}
    for i in range(count):
        topic_no = i % len(TOPICS)
        style = DOC_STYLES[(i // len(TOPICS)) % len(DOC_STYLES)]
        prog = _migration_example(rng, 500 + i) if style == "migration" else ""
        doc = _manual_doc(TOPICS[topic_no], topic_no + 1, style, rng, prog)
        slug = TOPICS[topic_no]["title"].lower().replace(" ", "_")
        files[f"manuals/{i + 1:03d}_{style}_{slug}.md"] = doc
    return files


# =======================================================================================
# Policies, memos, meeting notes

POLICIES: list[dict] = [
    {
        "title": "Data Retention",
        "params": {
            "log_days": (30, 60, 90, 120, 180),
            "backup_weeks": (4, 6, 8, 12),
            "record_years": (5, 7, 10),
        },
        "statements": [
            "Production job logs from the {system} system are retained for {log_days} days "
            "and then purged by the nightly housekeeping job.",
            "Full backups of {system} data sets are kept for {backup_weeks} weeks at the {site}.",
            "Business records produced by {dept} are kept for {record_years} years after the "
            "end of the fiscal year.",
            "Records under legal hold are excluded from purging until Internal Audit releases "
            "the hold in writing.",
        ],
        "qa": [
            ("How many days are {system} production job logs retained under {pid}?", "{log_days}"),
            ("For how many weeks are {system} backups kept under {pid}?", "{backup_weeks}"),
            ("How many years are {dept} business records kept under {pid}?", "{record_years}"),
        ],
    },
    {
        "title": "Change Management for the Mainframe",
        "params": {
            "approvers": (1, 2, 3),
            "freeze_day": (10, 15, 20, 24),
            "window": ("Saturday 02:00-06:00", "Sunday 01:00-05:00", "Wednesday 22:00-23:30"),
        },
        "statements": [
            "Every change to an ACME-CL program in {system} requires approval from "
            "{approvers} member(s) of the Mainframe Guild before deployment.",
            "Changes are deployed only during the standard window, {window}.",
            "A change freeze applies from December {freeze_day} until the first business day "
            "of January.",
            "Each change record must reference the test cases that were re-run and their results.",
        ],
        "qa": [
            (
                "How many Mainframe Guild approvals does {pid} require for a {system} change?",
                "{approvers}",
            ),
            ("What is the standard deployment window under {pid}?", "{window}"),
            ("On which December day does the change freeze start under {pid}?", "{freeze_day}"),
        ],
    },
    {
        "title": "Access Control and Secrets",
        "params": {
            "min_len": (12, 14, 16),
            "rotate_days": (30, 60, 90),
            "vault": ("KEYSAFE", "STRONGBOX", "LOCKER-9"),
        },
        "statements": [
            "Passwords for {system} accounts must be at least {min_len} characters long.",
            "Service credentials and API keys are rotated every {rotate_days} days.",
            "Secrets are stored only in the {vault} vault; they must never appear in source "
            "code, job decks, memos or tickets.",
            "A secret found in a document or listing is treated as compromised and rotated "
            "the same day.",
        ],
        "qa": [
            ("What is the minimum password length for {system} accounts under {pid}?", "{min_len}"),
            ("How often are service credentials rotated under {pid} (days)?", "{rotate_days}"),
            ("In which vault must secrets be stored under {pid}?", "{vault}"),
        ],
    },
    {
        "title": "Code Review",
        "params": {"reviewers": (1, 2), "max_lines": (200, 300, 400), "hours": (24, 48, 72)},
        "statements": [
            "Every change needs {reviewers} reviewer(s) other than the author.",
            "A single review covers at most {max_lines} changed lines; larger changes are split.",
            "Reviewers respond within {hours} hours of the request.",
            "ACME-CL listings are checked against the house style: header block, three-space "
            "indentation, declarations at the top.",
        ],
        "qa": [
            ("How many reviewers does {pid} require besides the author?", "{reviewers}"),
            (
                "What is the maximum number of changed lines in one review under {pid}?",
                "{max_lines}",
            ),
            ("Within how many hours must reviewers respond under {pid}?", "{hours}"),
        ],
    },
    {
        "title": "Incident Response",
        "params": {
            "ack_minutes": (5, 10, 15, 30),
            "postmortem_days": (3, 5, 7, 10),
            "bridge": ("BRIDGE-1", "ROOM 4B", "the Operations Hotline"),
        },
        "statements": [
            "A severity-1 incident on {system} is acknowledged within {ack_minutes} minutes "
            "by the on-call engineer.",
            "The incident commander opens {bridge} and keeps a written timeline.",
            "A blameless post-mortem is published within {postmortem_days} days.",
            "Customer-facing incidents are reported to {dept} leadership the same day.",
        ],
        "qa": [
            (
                "Within how many minutes is a severity-1 incident acknowledged under {pid}?",
                "{ack_minutes}",
            ),
            ("Within how many days is the post-mortem published under {pid}?", "{postmortem_days}"),
        ],
    },
    {
        "title": "Travel and Expenses",
        "params": {
            "meal_limit": (35, 45, 60, 75),
            "approval_over": (500, 1000, 2500),
            "claim_days": (14, 30, 45),
        },
        "statements": [
            "The daily meal allowance for travel on {dept} business is {meal_limit} dollars.",
            "Any single expense over {approval_over} dollars needs prior written approval.",
            "Expense claims are filed within {claim_days} days of returning.",
            "Travel to the {site} is booked through the internal travel desk.",
        ],
        "qa": [
            ("What is the daily meal allowance in dollars under {pid}?", "{meal_limit}"),
            (
                "Above what amount in dollars does an expense need prior approval under {pid}?",
                "{approval_over}",
            ),
            ("Within how many days must expense claims be filed under {pid}?", "{claim_days}"),
        ],
    },
    {
        "title": "ACME-CL Migration Programme",
        "topic": "the migration of ACME-CL programs to Python",
        "params": {"cases": (3, 4, 5, 8), "target_year": (2026, 2027, 2028), "pilot": SYSTEMS},
        "statements": [
            "Every ACME-CL program is translated to Python together with at least {cases} "
            "test cases that cover its branches.",
            "A translation is accepted only when the Python and ACME-CL programs print the "
            "same lines on every test case.",
            "The {pilot} system is the pilot; all systems are migrated by the end of "
            "{target_year}.",
            "The original listing is archived read-only next to its translation.",
        ],
        "qa": [
            ("How many test cases must accompany each translation under {pid}?", "{cases}"),
            ("Which system is the migration pilot under {pid}?", "{pilot}"),
            ("By the end of which year must all systems be migrated under {pid}?", "{target_year}"),
        ],
    },
    {
        "title": "Use of AI Assistants",
        "topic": "the use of AI assistants",
        "params": {
            "model": ("ACME-FORGE-1", "ANVIL-LM", "ROADRUNNER-7B"),
            "review_pct": (100, 50, 25),
        },
        "statements": [
            "Only the internally trained model {model} may be given company documents or "
            "source code.",
            "No customer data, personal data or secrets may be sent to external AI services.",
            "Code suggested by an assistant is reviewed like any other change; {review_pct} "
            "percent of assistant-written translations are re-tested by a second engineer.",
            "Assistant outputs used in decisions are kept with the decision record.",
        ],
        "qa": [
            ("Which model may be given company documents under {pid}?", "{model}"),
            (
                "What percentage of assistant-written translations are re-tested under {pid}?",
                "{review_pct}",
            ),
        ],
    },
    {
        "title": "Handling Personal Data",
        "params": {"days": (7, 14, 30), "officer": ("the Privacy Office", "Internal Audit")},
        "statements": [
            "Personal data (names, e-mail addresses, telephone numbers) is redacted before "
            "any document leaves {dept}.",
            "Requests to delete personal data are completed within {days} days.",
            "Data sets used for training internal models are scanned for personal data and "
            "secrets first.",
            "Breaches are reported to {officer} immediately.",
        ],
        "qa": [
            ("Within how many days are deletion requests completed under {pid}?", "{days}"),
            ("To whom are breaches reported under {pid}?", "{officer}"),
        ],
    },
]

POLICY_SECTIONS = {
    "purpose": [
        "This policy sets out how {dept} handles {topic}.",
        "The purpose of this policy is to make {topic} predictable and auditable across {dept}.",
        "This document defines the rules for {topic} that apply to {dept}.",
    ],
    "scope": [
        "It applies to all employees, contractors and systems of {dept}, including {system}.",
        "The policy covers every team in {dept} and every job running on the {machine}.",
        "All staff of {dept} and all batch jobs of {system} are in scope.",
    ],
    "exceptions": [
        "Exceptions require written approval from the head of {dept} and expire after one year.",
        "Any exception is recorded in the exceptions register and reviewed every quarter.",
        "No exceptions are granted without a documented risk assessment.",
    ],
}


def generate_policies(rng: random.Random, count: int) -> tuple[dict[str, str], list[dict]]:
    files, qa = {}, []
    for i in range(count):
        pol = POLICIES[i % len(POLICIES)]
        pid = f"POL-{100 + i:03d}"
        ctx = {k: rng.choice(v) for k, v in pol["params"].items()}
        ctx.update(
            dept=rng.choice(DEPARTMENTS),
            system=rng.choice(SYSTEMS),
            site=rng.choice(SITES),
            machine=MACHINE,
            topic=pol.get("topic", pol["title"].lower()),
            pid=pid,
        )
        owner, effective = _person(rng), _date(rng, 2019, 2025)
        version = f"{rng.randint(1, 4)}.{rng.randint(0, 9)}"
        lines = [
            f"# ACME Corp Policy {pid}: {pol['title']} ({ctx['dept']})",
            "",
            f"- Owner: {owner}, {ctx['dept']}",
            f"- Version: {version}",
            f"- Effective: {effective.isoformat()}",
            f"- Review cycle: every {rng.choice((12, 18, 24))} months",
            "",
            "## 1. Purpose",
            "",
            rng.choice(POLICY_SECTIONS["purpose"]).format(**ctx),
            "",
            "## 2. Scope",
            "",
            rng.choice(POLICY_SECTIONS["scope"]).format(**ctx),
            "",
            "## 3. Policy",
            "",
        ]
        lines += [f"3.{j}. {s.format(**ctx)}" for j, s in enumerate(pol["statements"], 1)]
        lines += [
            "",
            "## 4. Exceptions",
            "",
            rng.choice(POLICY_SECTIONS["exceptions"]).format(**ctx),
            "",
            "## 5. Revision history",
            "",
        ]
        d = effective
        for _ in range(rng.randint(1, 3)):
            d -= dt.timedelta(days=rng.randint(100, 700))
            lines.append(f"- {d.isoformat()}: {rng.choice(REVISION_NOTES)} ({_person(rng)})")
        files[f"policies/{pid.lower()}_{pol['title'].lower().replace(' ', '_')}.md"] = (
            "\n".join(lines) + "\n"
        )
        for q, a in pol["qa"]:
            qa.append(
                {
                    "id": f"{pid}-{len(qa)}",
                    "question": q.format(**ctx),
                    "answer": str(a.format(**ctx)),
                    "source": pid,
                }
            )
    return files, qa


REVISION_NOTES = (
    "first issue",
    "aligned with the audit findings",
    "clarified scope for contractors",
    "limits updated after the annual review",
    "wording simplified",
)

MEMO_KINDS = ("maintenance", "migration", "training", "freeze", "meeting", "incident")


def _memo(kind: str, rng: random.Random, number: int) -> str:
    sender, recipient = _person(rng), rng.choice(DEPARTMENTS)
    date = _date(rng, 2023, 2025)
    system, site = rng.choice(SYSTEMS), rng.choice(SITES)
    head = [
        f"ACME CORP INTERNAL MEMO {number:04d}",
        f"DATE: {date.isoformat()}",
        f"FROM: {sender}",
        f"TO: {recipient}",
    ]
    if kind == "maintenance":
        hours = rng.randint(2, 8)
        day = (date + dt.timedelta(days=rng.randint(3, 20))).isoformat()
        subject = f"Planned {MACHINE} maintenance on {day}"
        body = [
            rng.choice(
                (
                    f"The {MACHINE} at the {site} will be unavailable for about {hours} hours on "
                    f"{day} while the storage controllers are replaced.",
                    f"On {day} we take the {MACHINE} down for roughly {hours} hours to apply the "
                    "operating system maintenance level.",
                )
            ),
            rng.choice(
                (
                    f"Batch jobs of {system} scheduled in the window will run after the restart.",
                    f"{system} users should finish their updates the evening before.",
                )
            ),
            rng.choice(
                (
                    "Please plan accordingly.",
                    "Thank you for your patience.",
                    "Questions to the operations desk.",
                )
            ),
        ]
    elif kind == "migration":
        done, total = rng.randint(5, 80), rng.randint(90, 240)
        subject = f"ACME-CL migration status: {system}"
        body = [
            f"{done} of {total} ACME-CL programs of {system} now have Python translations "
            "that pass all their test cases.",
            rng.choice(
                (
                    "The most frequent defect this month was division: ACME-CL rounds down, so "
                    "the Python code must use // and not /.",
                    "Most rejected translations forgot that REPEAT bounds are inclusive; "
                    "range() needs the upper bound plus one.",
                    "Several translations compared text without UPPER(); ACME-CL comparisons "
                    "are case-sensitive.",
                    "Reviewers found translations that read input as text where the listing "
                    "declares a NUMBER; use int(input()).",
                )
            ),
            rng.choice(
                (
                    "The next milestone is the month-end batch.",
                    f"Next up is {rng.choice(SYSTEMS)}.",
                    "We will pair a Guild member with each new translator.",
                )
            ),
        ]
    elif kind == "training":
        seats = rng.randint(8, 24)
        subject = "ACME-CL refresher course"
        body = [
            f"A two-day ACME-CL refresher runs at the {site}, {seats} seats.",
            rng.choice(
                (
                    "Day one covers DECLARE, the arithmetic verbs and the rounding rules; day "
                    "two covers loops, procedures and reading old listings.",
                    "The course walks through IF, WHILE and REPEAT with exercises taken from "
                    "real PAYMASTER listings.",
                )
            ),
            f"Register with {_person(rng)} before the end of the month.",
        ]
    elif kind == "freeze":
        subject = "Year-end change freeze reminder"
        body = [
            rng.choice(
                (
                    "The year-end change freeze starts soon. Only emergency changes approved by "
                    "the Mainframe Guild will be deployed.",
                    "A reminder that no changes to production ACME-CL programs are deployed "
                    "during the year-end freeze.",
                )
            ),
            f"{system} owners: make sure your pending changes are reviewed this week.",
        ]
    elif kind == "incident":
        minutes = rng.randint(12, 240)
        subject = f"Incident summary: {system} batch delay"
        cause = rng.choice(
            (
                "a program divided by a counter that was zero on the first day of the month",
                "an ACCEPT statement ran out of input because a job deck was truncated",
                "a WHILE loop never ended after a reference table was emptied, and the job hit "
                "its step limit",
                "a NUMBER field overflowed its 18 digits when two totals were multiplied",
            )
        )
        body = [
            f"The nightly {system} batch finished {minutes} minutes late.",
            f"Root cause: {cause}.",
            rng.choice(
                (
                    "A fix is in review.",
                    "The listing has been corrected and re-tested.",
                    "A post-mortem follows this week.",
                )
            ),
        ]
    else:
        subject = (
            f"Meeting notes: {rng.choice(('Mainframe Guild', 'migration board', 'ops review'))}"
        )
        attendees = sorted({_person(rng) for _ in range(rng.randint(3, 6))})
        body = [
            "Attendees: " + ", ".join(attendees) + ".",
            "Agenda: "
            + "; ".join(
                rng.sample(
                    [
                        "migration backlog",
                        "review turnaround",
                        "test coverage of translations",
                        "freeze calendar",
                        "on-call rota",
                        "training plan",
                        "storage costs",
                    ],
                    3,
                )
            )
            + ".",
            "Decisions: "
            + rng.choice(
                (
                    "translations without test cases are not merged",
                    "the pilot system moves first",
                    "house style checks are automated",
                )
            )
            + ".",
            "Actions: "
            + "; ".join(f"{rng.choice(attendees)} to {rng.choice(ACTIONS)}" for _ in range(2))
            + ".",
        ]
    if kind != "meeting":
        body.insert(0, rng.choice(GREETINGS))
        extras = MEMO_EXTRAS[kind]
        body[2:2] = rng.sample(extras, rng.randint(1, min(2, len(extras))))
    body = [_fill(line.replace("{system}", system), rng) for line in body]
    role = rng.choice(ROLES).format(dept=rng.choice(DEPARTMENTS))
    return "\n".join(
        head + [f"SUBJECT: {subject}", ""] + ["\n\n".join(body), "", f"-- {sender}", role, ""]
    )


GREETINGS = ("Colleagues,", "Hello all,", "Dear colleagues,", "Team,", "Good morning,")
ROLES = (
    "Operations Manager, {dept}",
    "Mainframe Guild coordinator",
    "Team lead, {dept}",
    "Head of {dept}",
    "Migration programme office",
)
MEMO_EXTRAS = {
    "maintenance": [
        "Interactive sessions will be closed fifteen minutes before the window starts; save "
        "your work early.",
        "The operators will post a status line on the console every hour during the work.",
        "Jobs submitted during the window are queued, not lost, and run in submission order.",
        "If the work finishes early we will release the {machine} and announce it on the "
        "operations board.",
    ],
    "migration": [
        "A translation is only merged when the Python program prints exactly the same lines "
        "as the ACME-CL listing on every test case.",
        "Remember that a REPEAT loop counts both bounds, that division rounds down, and that "
        "TEXT comparisons are case-sensitive.",
        "Listings without a test deck go back to the owning team before translation starts.",
        "The reviewers' checklist now includes a check that every ACCEPT becomes exactly one "
        "input() call.",
    ],
    "training": [
        "Bring a listing from your own system; the afternoon sessions work on real code.",
        "No prior ACME-CL experience is needed, but you should be comfortable reading Python.",
        "Course material, including the quick reference cards, is handed out on the first morning.",
    ],
    "freeze": [
        "Emergency changes still need a change record and two approvals from the Guild.",
        "Batch schedules for the month-end close are fixed now and will not be moved.",
        "After the freeze, the backlog is deployed in the order the changes were approved.",
    ],
    "incident": [
        "The on-call engineer acknowledged the page within the agreed time and opened the bridge.",
        "Downstream jobs of {system} were held until the corrected run completed.",
        "We will add a test case for this input to the program's test deck.",
    ],
}


ACTIONS = (
    "update the translation checklist",
    "re-run the failing test cases",
    "book the training room",
    "draft the freeze calendar",
    "review the oldest open changes",
    "archive the retired listings",
)


def generate_memos(rng: random.Random, count: int) -> dict[str, str]:
    files = {}
    for i in range(count):
        kind = MEMO_KINDS[i % len(MEMO_KINDS)]
        files[f"memos/{i + 1:04d}_{kind}.txt"] = _memo(kind, rng, i + 1)
    return files


# =======================================================================================
# Damaged documents (infill task)

_GAP_WORD = re.compile(r"[A-Za-z][A-Za-z0-9-]{3,}|\d{2,}")
_STOP = frozenset(
    "this that with from when then they their there which while into only "
    "must will have been each were also".split()
)


def generate_damaged(rng: random.Random, count: int, sources: dict[str, str]) -> tuple[dict, dict]:
    """Passages of manuals and policies with words blanked out as `[...]`, and the key."""
    names = sorted(p for p in sources if p.startswith(("manuals/", "policies/")))
    files, answers = {}, {}
    for i in range(count):
        src = rng.choice(names)
        paras = [p for p in sources[src].split("\n\n") if p.strip()]
        start = rng.randrange(max(1, len(paras) - 4))
        passage = "\n\n".join(paras[start : start + rng.randint(3, 6)])
        words = [m for m in _GAP_WORD.finditer(passage) if m.group().lower() not in _STOP]
        chosen: list[re.Match] = []
        # Gaps at least 40 characters apart, so each one has context on both sides.
        for m in rng.sample(words, len(words)):
            if all(abs(m.start() - c.start()) >= 40 for c in chosen):
                chosen.append(m)
            if len(chosen) == 6:
                break
        chosen.sort(key=lambda m: m.start())
        out, gaps, pos = [], [], 0
        for m in chosen:
            out.append(passage[pos : m.start()])
            out.append(GAP)
            gaps.append(m.group())
            pos = m.end()
        out.append(passage[pos:])
        rel = f"damaged/{i + 1:04d}.txt"
        tape = f"T{rng.randint(1000, 9999)}"
        files[rel] = (
            f"Recovered from archive tape {tape}. Illegible words are marked with an "
            f"ellipsis in brackets.\n\n" + "".join(out) + "\n"
        )
        answers[rel] = {"source": src, "answers": gaps}
    return files, answers


# =======================================================================================
# Records with planted fake PII and secrets (redaction task)

AREA_CODES = ("212", "312", "415", "617", "702", "808")
COMPANIES = (
    "globex",
    "initech",
    "umbrella-supply",
    "wonka-parts",
    "tyrell-freight",
    "soylent-foods",
)


@dataclass
class _Plants:
    rng: random.Random

    def email(self, first: str, last: str, domain: str = "acme.example") -> str:
        sep = self.rng.choice((".", "_", ""))
        return f"{first.lower()}{sep}{last.lower()}@{domain}"

    def phone(self) -> str:
        # 555-0100..555-0199 is reserved for fiction in the North American numbering plan.
        return f"({self.rng.choice(AREA_CODES)}) 555-01{self.rng.randint(0, 99):02d}"

    def api_key(self) -> str:
        alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
        return "acme_sk_" + "".join(self.rng.choice(alphabet) for _ in range(32))

    def password(self) -> str:
        alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz23456789"
        return "".join(self.rng.choice(alphabet) for _ in range(14)) + self.rng.choice("!#%+")


def generate_records(rng: random.Random, scale: float) -> tuple[dict[str, str], list[dict]]:
    plants = _Plants(rng)
    files: dict[str, str] = {}
    planted: dict[str, list[tuple[str, str]]] = {}

    def add(path: str, textv: str, items: list[tuple[str, str]]) -> None:
        files[path] = textv
        planted[path] = items

    for f in range(max(1, round(8 * scale))):
        blocks, items = [], []
        for _ in range(25):
            first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
            email, phone = plants.email(first, last), plants.phone()
            items += [("email", email), ("phone", phone)]
            blocks.append(
                "\n".join(
                    [
                        "EMPLOYEE RECORD",
                        f"Name: {first} {last}",
                        f"Employee number: E-{rng.randint(10000, 99999)}",
                        f"Department: {rng.choice(DEPARTMENTS)}",
                        f"Email: {email}",
                        f"Phone: {phone}",
                        f"Hired: {_date(rng, 1985, 2024).isoformat()}",
                        f"Notes: {rng.choice(RECORD_NOTES)}",
                    ]
                )
            )
        add(f"records/employees_{f + 1:02d}.txt", "\n\n".join(blocks) + "\n", items)

    for f in range(max(1, round(4 * scale))):
        rows, items = ["customer_id,name,company,email,phone,tier,notes"], []
        for _ in range(40):
            first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
            company = rng.choice(COMPANIES)
            email, phone = plants.email(first, last, f"{company}.example"), plants.phone()
            items += [("email", email), ("phone", phone)]
            rows.append(
                f"C{rng.randint(100000, 999999)},{first} {last},{company},{email},"
                f"{phone},{rng.choice(('gold', 'silver', 'bronze'))},"
                f"{rng.choice(('net 30', 'net 60', 'prepaid', 'on hold'))}"
            )
        add(f"records/customers_{f + 1:02d}.csv", "\n".join(rows) + "\n", items)

    for f in range(max(1, round(8 * scale))):
        tickets, items = [], []
        for _ in range(12):
            first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
            email, phone = (
                plants.email(first, last, f"{rng.choice(COMPANIES)}.example"),
                plants.phone(),
            )
            item = rng.choice(PRODUCTS)
            lines = [
                f"TICKET {rng.randint(10000, 99999)} - {rng.choice(TICKET_SUBJECTS)}",
                f"Customer {first} {last} asked about an order of {item}. "
                f"Call back on {phone} or reply to {email}.",
            ]
            items += [("phone", phone), ("email", email)]
            if rng.random() < 0.3:
                key = plants.api_key()
                items.append(("api_key", key))
                lines.append(
                    f"Agent note: customer pasted their integration key {key} into "
                    "the portal; advised rotation."
                )
            lines.append(f"Status: {rng.choice(('open', 'closed', 'waiting on customer'))}.")
            tickets.append("\n".join(lines))
        add(f"records/tickets_{f + 1:02d}.txt", "\n\n".join(tickets) + "\n", items)

    for f in range(max(1, round(3 * scale))):
        system = rng.choice(SYSTEMS)
        key, pw, phone = plants.api_key(), plants.password(), plants.phone()
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        email = plants.email(first, last)
        body = "\n".join(
            [
                f"# {system} batch bridge configuration (exported {_date(rng, 2022, 2025)})",
                f"system = {system}",
                f"host = {system.lower()}.ops.internal",
                f"batch_window = {rng.choice(('02:00-06:00', '22:00-23:30'))}",
                f"api_key = {key}",
                f"db_user = svc_{system.lower().replace('-', '_')}",
                f"db_password = {pw}",
                f"oncall_email = {email}",
                f"oncall_phone = {phone}",
                "",
            ]
        )
        add(
            f"records/config_{f + 1:02d}.txt",
            body,
            [("api_key", key), ("password", pw), ("email", email), ("phone", phone)],
        )

    manifest = []
    for path in sorted(files):
        body = files[path]
        seen = []
        for kind, value in planted[path]:
            if (kind, value) in seen:
                continue
            seen.append((kind, value))
            start = body.find(value)
            while start >= 0:
                manifest.append(
                    {
                        "file": path,
                        "kind": kind,
                        "value": value,
                        "start": start,
                        "end": start + len(value),
                    }
                )
                start = body.find(value, start + 1)
    manifest.sort(key=lambda d: (d["file"], d["start"]))
    return files, manifest


RECORD_NOTES = (
    "completed ACME-CL refresher",
    "on the Mainframe Guild rota",
    "works from the Harbor Point office on Fridays",
    "certified forklift operator",
    "member of the migration board",
    "none",
)
TICKET_SUBJECTS = (
    "delivery late",
    "invoice question",
    "damaged crate",
    "portal login problem",
    "change of address",
    "bulk order quote",
)


# =======================================================================================
# The corpus


def _bad_files(rng: random.Random) -> dict[str, bytes]:
    blob = bytearray(rng.randbytes(4096))
    blob[0:8] = b"\x89ACME\x00\x01\x02"  # a NUL in the header, like most binary formats
    latin1 = (
        "Notes from the Zurich office (legacy terminal export)\n"
        "Meeting with Mr. M\u00fcller at the caf\u00e9 about the se\u00f1or Garc\u00eda "
        "account.\nThe fa\u00e7ade of the Northgate warehouse needs repair; cost "
        "\u00a3 1200.\n"
    )
    return {
        "assets/logo.bin": bytes(blob),
        "legacy/notes_latin1.txt": latin1.encode("latin-1"),
        "legacy/empty.txt": b"",
    }


def _counts(scale: float) -> dict[str, int]:
    def n(base: int) -> int:
        return max(1, round(base * scale))

    return {
        "programs": n(420),
        "manuals": n(360),
        "policies": n(96),
        "memos": n(480),
        "damaged": n(150),
        "snippets": n(400),
    }


def _json_compact(obj: dict | list) -> str:
    """JSON with one top-level key, and one list item, per line: readable and diff-able."""

    def block(v: object, indent: int) -> str:
        if isinstance(v, list) and v:
            pad = " " * (indent + 1)
            inner = ",\n".join(pad + json.dumps(x, ensure_ascii=False) for x in v)
            return "[\n" + inner + "\n" + " " * indent + "]"
        return json.dumps(v, ensure_ascii=False)

    if isinstance(obj, dict):
        items = ",\n".join(f" {json.dumps(k)}: {block(v, 1)}" for k, v in obj.items())
        return "{\n" + items + "\n}\n"
    return block(obj, 0) + "\n"


def build_corpus(seed: int = 0, scale: float = 1.0) -> tuple[dict[str, bytes], dict]:
    """All files of the corpus in memory (path -> bytes) and its manifest; writes nothing."""
    if scale <= 0:
        raise DataError(f"scale must be positive, got {scale}", "use e.g. --scale 1.0")

    def rng_for(section: str) -> random.Random:
        # A string seed is hashed with SHA-512 by `random`, so this is stable across runs
        # and unaffected by PYTHONHASHSEED; one stream per section keeps sections independent.
        return random.Random(f"acme:{seed}:{section}")

    counts = _counts(scale)
    pairs = generate_programs(rng_for("programs"), counts["programs"])
    texts: dict[str, str] = {}
    for p in pairs:
        # The Python of the translation task's held-out programs is an answer key: it lives
        # under heldout/ (recipes exclude it), so a model trained on the corpus has seen the
        # ACME-CL listing but never its translation.
        python = f"{'heldout/' if translation_is_heldout(p['slug']) else ''}programs/{p['slug']}.py"
        texts[f"programs/{p['slug']}.acl"] = p["acl"]
        texts[python] = p["python"]
        test = {
            "program": f"programs/{p['slug']}.acl",
            "python": python,
            "purpose": p["purpose"],
            "cases": p["cases"],
        }
        texts[f"programs/tests/{p['slug']}.json"] = _json_compact(test)
    texts.update(generate_manuals(rng_for("manuals"), counts["manuals"]))
    policies, qa = generate_policies(rng_for("policies"), counts["policies"])
    texts.update(policies)
    texts["qa/policy_qa.json"] = _json_compact(qa)
    texts.update(generate_memos(rng_for("memos"), counts["memos"]))
    damaged, answers = generate_damaged(rng_for("damaged"), counts["damaged"], texts)
    texts.update(damaged)
    texts["damaged/answers.json"] = _json_compact(answers)
    records, planted = generate_records(rng_for("records"), scale)
    texts.update(records)
    texts["records/planted.json"] = _json_compact(
        {
            "note": "all values are fictional; phones use the 555-01xx fiction range",
            "items": planted,
        }
    )

    files = {path: body.encode("utf-8") for path, body in texts.items()}
    bad = _bad_files(rng_for("assets"))
    files.update(bad)

    by_folder: dict[str, dict[str, int]] = {}
    for path in sorted(files):
        folder = path.split("/")[0] if "/" in path else "."
        entry = by_folder.setdefault(folder, {"files": 0, "bytes": 0})
        entry["files"] += 1
        entry["bytes"] += len(files[path])
    manifest = {
        "name": "acme",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "scale": scale,
        "files": len(files) + 1,
        "bytes": sum(len(b) for b in files.values()),
        "by_folder": by_folder,
        "program_pairs": len(pairs),
        "qa_items": len(qa),
        "damaged_documents": len(damaged),
        "planted_items": len(planted),
        "bad_files": {
            "assets/logo.bin": "binary",
            "legacy/notes_latin1.txt": "latin-1 text",
            "legacy/empty.txt": "empty",
        },
        "tasks": {
            "translation": "programs/tests/*.json",
            "infill": "damaged/answers.json",
            "qa": "qa/policy_qa.json",
            "redaction": "records/planted.json",
        },
        "answer_keys": [
            "damaged/answers.json",
            "qa/policy_qa.json",
            "records/planted.json",
            "heldout/",
        ],
    }
    files["manifest.json"] = (json.dumps(manifest, indent=1) + "\n").encode("utf-8")
    return files, manifest


def generate_corpus(out_dir: Path, *, seed: int = 0, scale: float = 1.0) -> dict:
    """Write the ACME corpus under `out_dir` and return its manifest (also `manifest.json`).

    The tree is written into a sibling temp folder and renamed into place, so `out_dir` is
    either the old corpus or the complete new one. An existing `out_dir` is replaced only
    when it is empty or holds an earlier ACME corpus (it has an ACME `manifest.json`).
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    files, manifest = build_corpus(seed, scale)
    if out_dir.exists() and any(out_dir.iterdir()):
        try:
            old = json.loads((out_dir / "manifest.json").read_text())
            is_acme = old.get("name") == "acme"
        except (OSError, ValueError):
            is_acme = False
        if not is_acme:
            raise DataError(
                f"{out_dir} is not empty and does not hold an ACME corpus",
                "choose a new folder for --out; nothing was written",
            )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for rel in sorted(files):
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(files[rel])
        os.chmod(tmp, 0o755)
        if out_dir.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
            os.replace(out_dir, trash / "old")
            os.replace(tmp, out_dir)
            shutil.rmtree(trash)
        else:
            os.replace(tmp, out_dir)
        fsync_dir(out_dir.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dict(manifest, seconds=round(time.perf_counter() - started, 3))


def corpus_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under `root` (relative posix path -> hex), for determinism checks."""
    root = Path(root)
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# =======================================================================================
# Chat SFT data: policy Q&A, translation requests and tool-use traces (OpenAI format)

SFT_SYSTEM = "You are the ACME Corp internal assistant. Answer briefly and exactly."
SFT_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "run_acme_program",
            "description": "Run a program of the ACME/370 library on inputs; returns its output lines.",  # noqa: E501
            "parameters": {
                "type": "object",
                "properties": {
                    "program": {"type": "string", "description": "program id, e.g. PAYCALC-001"},
                    "inputs": {"type": "array", "items": {"type": ["number", "string"]}},
                },
                "required": ["program", "inputs"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "search_policy",
            "description": "Return the statement of an ACME policy that answers a question.",
            "parameters": {
                "type": "object",
                "properties": {
                    "policy_id": {"type": "string", "description": "e.g. POL-104"},
                    "query": {"type": "string"},
                },
                "required": ["policy_id", "query"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "system_status",
            "description": "Current status and next maintenance window of an ACME system.",
            "parameters": {
                "type": "object",
                "properties": {"system": {"type": "string", "enum": list(SYSTEMS)}},
                "required": ["system"],
            },
        },
    },
]
SFT_HELDOUT_PERCENT = 10
_PROGRAM_NAME = re.compile(r"^PROGRAM\s+([A-Z0-9-]+)\.", re.MULTILINE)
_STATUS_QUESTIONS = (
    ("Is {system} up right now?", "status"),
    ("Can I run jobs on {system} at the moment?", "status"),
    ("When is the next maintenance window for {system}?", "window"),
    ("When does {system} next go down for maintenance?", "window"),
)
_TRANSLATE_ASKS = (
    "Translate this ACME-CL program to Python:",
    "Rewrite this ACME-CL listing as an equivalent Python program:",
    "Please port this program from ACME-CL to Python.",
)


def _sft_is_heldout(key: str) -> bool:
    """Deterministic ~10% held-out split by a hash of the item's key."""
    digest = hashlib.sha256(f"acme-sft-heldout:{key}".encode()).hexdigest()
    return int(digest[:8], 16) % 100 < SFT_HELDOUT_PERCENT


def translation_is_heldout(slug: str) -> bool:
    """Whether program `slug` is held out of the translation task (SFT, DPO, RL and the
    corpus's Python files alike)."""
    return _sft_is_heldout(f"translate-{slug}")


def _call(call_id: str, name: str, arguments: dict) -> dict:
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(arguments)},
            }
        ],
    }


def _tool_result(call_id: str, result: dict) -> dict:
    return {"role": "tool", "tool_call_id": call_id, "content": json.dumps(result)}


def _policy_statement(policy_text: str, answer: str) -> str:
    for line in policy_text.splitlines():
        if answer in line:
            return re.sub(r"^\d+\.\d+\.\s*", "", line.strip())
    raise AssertionError(f"answer {answer!r} is not in its policy")  # generator bug


def build_sft_records(seed: int = 0, scale: float = 1.0) -> list[dict]:
    """The chat SFT records (each with `metadata.task` and `metadata.split`), deterministic.

    - policy_qa: a policy question answered directly (metadata.answer: the exact answer);
    - translate: an ACME-CL program to translate (metadata.tests: execution test cases);
    - translate_snippet: the same for a short program of two to four statements;
    - tool_*: the assistant picks one of ACME's internal tools (`SFT_TOOLS`), reads its
      result and answers: running a program, searching a policy, a system's status.
    The same seed and scale draw the same programs and policies as `build_corpus`.
    """
    if scale <= 0:
        raise DataError(f"scale must be positive, got {scale}", "use e.g. --scale 1.0")

    def rng_for(section: str) -> random.Random:
        return random.Random(f"acme:{seed}:{section}")

    counts = _counts(scale)
    pairs = generate_programs(rng_for("programs"), counts["programs"])
    policies, qa = generate_policies(rng_for("policies"), counts["policies"])
    policy_text = {
        path.split("/")[1].split("_")[0].upper(): text for path, text in policies.items()
    }
    rng = rng_for("sft")
    system = {"role": "system", "content": SFT_SYSTEM}
    records: list[dict] = []

    def add(key: str, task: str, messages: list[dict], tools: bool = False, **meta) -> None:
        record = {"id": key, "messages": [system, *messages]}
        if tools:
            record["tools"] = SFT_TOOLS
        split = "heldout" if _sft_is_heldout(key) else "train"
        record["metadata"] = {"task": task, "split": split, **meta}
        records.append(record)

    for i, item in enumerate(qa):
        if i % 3 == 2:  # every third question goes through the policy search tool
            statement = _policy_statement(policy_text[item["source"]], item["answer"])
            call = f"call_{item['id'].lower()}"
            query = {"policy_id": item["source"], "query": item["question"]}
            add(f"tool-policy-{item['id']}", "tool_policy", [
                {"role": "user", "content": item["question"]},
                _call(call, "search_policy", query),
                _tool_result(call, {"policy": item["source"], "statement": statement}),
                {"role": "assistant", "content": item["answer"]},
            ], tools=True, answer=item["answer"], tool="search_policy")  # fmt: skip
        else:
            add(f"qa-{item['id']}", "policy_qa", [
                {"role": "user", "content": item["question"]},
                {"role": "assistant", "content": item["answer"]},
            ], answer=item["answer"], source=item["source"])  # fmt: skip
    for p in pairs:
        name = _PROGRAM_NAME.search(p["acl"]).group(1)
        ask = rng.choice(_TRANSLATE_ASKS)
        add(f"translate-{p['slug']}", "translate", [
            {"role": "user", "content": f"{ask}\n\n```acme-cl\n{p['acl']}```"},
            {"role": "assistant", "content": f"```python\n{p['python']}```"},
        ], program=name, slug=p["slug"], tests=p["cases"])  # fmt: skip
        case = rng.choice(p["cases"])
        call = f"call_{p['slug']}"
        inputs = ", ".join(str(v) for v in case["inputs"])
        output = "\n".join(case["expected"])
        add(f"tool-run-{p['slug']}", "tool_run", [
            {"role": "user", "content": f"What does {name} print for the inputs {inputs}?"},
            _call(call, "run_acme_program", {"program": name, "inputs": case["inputs"]}),
            _tool_result(call, {"program": name, "output": case["expected"]}),
            {"role": "assistant", "content": f"{name} prints:\n{output}"},
        ], tools=True, answer=output, tool="run_acme_program")  # fmt: skip
    for p in snippet_pairs(seed, scale):
        ask = rng.choice(_TRANSLATE_ASKS)
        add(f"translate-{p['slug']}", "translate_snippet", [
            {"role": "user", "content": f"{ask}\n\n```acme-cl\n{p['acl']}```"},
            {"role": "assistant", "content": f"```python\n{p['python']}```"},
        ], slug=p["slug"], tests=p["cases"])  # fmt: skip
    for i in range(max(4, round(60 * scale))):
        sys_name = SYSTEMS[i % len(SYSTEMS)]
        status = rng.choice(("up", "up", "degraded", "maintenance"))
        day = _date(rng, 2025, 2025)
        start = rng.choice((20, 21, 22, 23))
        window = f"{day.isoformat()} {start:02d}:00-{(start + rng.randint(2, 5)) % 24:02d}:00"
        question, asked = rng.choice(_STATUS_QUESTIONS)
        if asked == "status":
            answer = {"up": f"Yes, {sys_name} is up.",
                      "degraded": f"{sys_name} is up but degraded; expect slow jobs.",
                      "maintenance": f"No, {sys_name} is in maintenance until {window[-5:]}."}[status]  # fmt: skip
        else:
            answer = f"The next maintenance window for {sys_name} is {window}."
        call = f"call_status_{i}"
        add(f"tool-status-{i}", "tool_status", [
            {"role": "user", "content": question.format(system=sys_name)},
            _call(call, "system_status", {"system": sys_name}),
            _tool_result(call, {"system": sys_name, "status": status, "next_window": window}),
            {"role": "assistant", "content": answer},
        ], tools=True, answer=answer, tool="system_status")  # fmt: skip
    return records


def generate_sft_data(out_dir: Path, *, seed: int = 0, scale: float = 1.0) -> dict:
    """Write `train.jsonl`, `heldout.jsonl`, `tools.json` and `manifest.json` under `out_dir`
    (a folder of its own, not inside the pre-training corpus: held-out answers must not leak
    into pre-training). Replaced atomically, like `generate_corpus`; returns the manifest."""
    out_dir = Path(out_dir)
    records = build_sft_records(seed, scale)
    files = {
        split: "".join(
            json.dumps(r, ensure_ascii=False) + "\n"
            for r in records
            if r["metadata"]["split"] == split
        )
        for split in ("train", "heldout")
    }
    by_task: dict[str, dict[str, int]] = {}
    for r in records:
        entry = by_task.setdefault(r["metadata"]["task"], {"train": 0, "heldout": 0})
        entry[r["metadata"]["split"]] += 1
    manifest = {
        "name": "acme-sft",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "scale": scale,
        "records": {s: sum(v[s] for v in by_task.values()) for s in ("train", "heldout")},
        "by_task": by_task,
    }
    if out_dir.exists() and any(out_dir.iterdir()):
        try:
            is_ours = json.loads((out_dir / "manifest.json").read_text()).get("name") == "acme-sft"
        except (OSError, ValueError):
            is_ours = False
        if not is_ours:
            raise DataError(
                f"{out_dir} is not empty and does not hold ACME SFT data",
                "choose a new folder for --out; nothing was written",
            )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        (tmp / "train.jsonl").write_text(files["train"], encoding="utf-8")
        (tmp / "heldout.jsonl").write_text(files["heldout"], encoding="utf-8")
        (tmp / "tools.json").write_text(json.dumps(SFT_TOOLS, indent=1) + "\n")
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        os.chmod(tmp, 0o755)
        if out_dir.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
            os.replace(out_dir, trash / "old")
            os.replace(tmp, out_dir)
            shutil.rmtree(trash)
        else:
            os.replace(tmp, out_dir)
        fsync_dir(out_dir.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
