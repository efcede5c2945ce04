"""The ACME-CL manuals: reference chapters, guide lessons, quick references, FAQs and migration
notes written from the topics of data/topics.yaml, with runnable examples."""

from __future__ import annotations

import random

from acme_cl import run_acme
from acme_common import (
    DEPARTMENTS,
    FIRST_NAMES,
    MACHINE,
    PRODUCTS,
    SITES,
    fill_placeholders,
    load_data,
    person,
)
from acme_programs import ARCHETYPES, render_program

# Each fact is (question, [phrasings]); documents pick phrasings so the same rule is
# stated many ways across the corpus.
TOPICS: list[dict] = [
    dict(
        t,
        facts=[(f["question"], f["answers"]) for f in t["facts"]],
        mapping=[(m["acme_cl"], m["python"]) for m in t["mapping"]],
    )
    for t in load_data("topics")["topics"]
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


def _manual_doc(topic: dict, chapter: int, style: str, rng: random.Random, prog: str) -> str:
    title, facts = topic["title"], topic["facts"]
    author, year = person(rng), rng.randint(1984, 1999)
    intro = fill_placeholders(rng.choice(topic["intro"]), rng)
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
        out += [
            f"{i}. {fill_placeholders(rng.choice(p), rng)}" for i, (_, p) in enumerate(facts, 1)
        ]
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
            sentence = fill_placeholders(rng.choice(phrasings), rng)
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
        out += [f"- {fill_placeholders(rng.choice(p), rng)}" for _, p in facts]
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
            out += [f"**Q: {q}**", "", f"A: {fill_placeholders(rng.choice(phrasings), rng)}", ""]
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
        out += [
            f"- {fill_placeholders(rng.choice(p), rng)}"
            for _, p in rng.sample(facts, min(3, len(facts)))
        ]
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
