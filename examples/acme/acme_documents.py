"""The company's other documents: policies (data/policies.yaml), memos and meeting notes
(data/memos.yaml), damaged documents with gaps to infill, and records with planted fake PII
and secrets for the redaction task."""

from __future__ import annotations

import datetime as dt
import random
import re
from dataclasses import dataclass

from acme_common import (
    DEPARTMENTS,
    FIRST_NAMES,
    GAP,
    LAST_NAMES,
    MACHINE,
    PRODUCTS,
    SITES,
    SYSTEMS,
    fill_placeholders,
    load_data,
    person,
    random_date,
)

_POLICY_DATA = load_data("policies")
POLICIES: list[dict] = [
    dict(p, qa=[(qa["question"], qa["answer"]) for qa in p["qa"]]) for p in _POLICY_DATA["policies"]
]
POLICY_SECTIONS: dict[str, list[str]] = _POLICY_DATA["sections"]
REVISION_NOTES: list[str] = _POLICY_DATA["revision_notes"]
_MEMO_DATA = load_data("memos")
GREETINGS: list[str] = _MEMO_DATA["greetings"]
ROLES: list[str] = _MEMO_DATA["roles"]
MEMO_EXTRAS: dict[str, list[str]] = _MEMO_DATA["extras"]
ACTIONS: list[str] = _MEMO_DATA["actions"]


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
        owner, effective = person(rng), random_date(rng, 2019, 2025)
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
            lines.append(f"- {d.isoformat()}: {rng.choice(REVISION_NOTES)} ({person(rng)})")
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


MEMO_KINDS = ("maintenance", "migration", "training", "freeze", "meeting", "incident")


def _memo(kind: str, rng: random.Random, number: int) -> str:
    sender, recipient = person(rng), rng.choice(DEPARTMENTS)
    date = random_date(rng, 2023, 2025)
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
            f"Register with {person(rng)} before the end of the month.",
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
        attendees = sorted({person(rng) for _ in range(rng.randint(3, 6))})
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
    body = [fill_placeholders(line.replace("{system}", system), rng) for line in body]
    role = rng.choice(ROLES).format(dept=rng.choice(DEPARTMENTS))
    return "\n".join(
        head + [f"SUBJECT: {subject}", ""] + ["\n\n".join(body), "", f"-- {sender}", role, ""]
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
                        f"Hired: {random_date(rng, 1985, 2024).isoformat()}",
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
                f"# {system} batch bridge configuration (exported {random_date(rng, 2022, 2025)})",
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
