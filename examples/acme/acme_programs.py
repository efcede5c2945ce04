"""The corpus's programs: eleven archetypes (payroll, series, inventory, ...) rendered as
ACME-CL listings with Python translations and test cases, and the short "snippets" of the SFT
and RL data."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable
from dataclasses import dataclass

from acme_cl import run_acme
from acme_cl_syntax import parse_acme
from acme_common import MACHINE, PRODUCTS, SITES, person, random_date, section_counts
from acme_emit import Stmt, binop, call, cmp, emit_acl, emit_python, num, text, var


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
    author = person(rng)
    written = random_date(rng, 1983, 1996)
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
    return generate_snippets(
        random.Random(f"acme:{seed}:snippets"), section_counts(scale)["snippets"]
    )
