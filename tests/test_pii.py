"""PII detection (issue 23): per-kind positives and hard negatives, the national-ID check rules
(cross-checked with python-stdnum where installed), fields of exports as context, serving
policies through the function curation calls, and recall on the benchmark's corpus."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

from forgeml.core.config import RedactConfig
from forgeml.data.redact import find_sensitive, redact_text
from forgeml.governance import national_ids as ids
from forgeml.governance.pii import pii_spans
from forgeml.governance.pii_fields import document_fields, table_fields
from forgeml.governance.policy import Policy, PolicyConfig
from forgeml.governance.spans import non_overlapping

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import redaction_pii  # noqa: E402
import redaction_pii_values  # noqa: E402


def _found(text: str, kind: str, **kw) -> list[str]:
    return [text[s.start : s.end] for s in find_sensitive(text, **kw) if s.kind == kind]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("call +49 30 12345678 today", "+49 30 12345678"),
        ("Tel.: 030 1234567", "030 1234567"),
        ("reach me on (212) 555-0134", "(212) 555-0134"),
        ("phone,4155550134\n", None),  # CSV column: see test_fields_give_context
        ("Mobile: 06 12 34 56 78", "06 12 34 56 78"),
        ("+81 90-1234-5678 (JP mobile)", "+81 90-1234-5678"),
        ("E.164: +442079460958", "+442079460958"),
        ("Telefoon 020 123 4567", "020 123 4567"),
        ("from abroad: 0049 89 1234567", "0049 89 1234567"),
    ],
)
def test_phone_positives(text, value):
    if value is not None:
        assert value in _found(text, "phone")


@pytest.mark.parametrize(
    "text",
    [
        "invoice INV-20240318-0042 was paid",
        "order 114-2345678-9012345 shipped",
        "Windows build 10.0.19045.3693",
        "ISBN 978-3-16-148410-0",
        "released 2024-03-12, see 12.03.2024",
        "PO-2024-00871 approved",
        "epoch 1700000000 seconds",
    ],
)
def test_phone_negatives(text):
    assert _found(text, "phone") == []


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("DOB: 04/12/1986", "04/12/1986"),
        ("Date of birth: 12 March 1979", "12 March 1979"),
        ("Patient Ann Lee, born on July 3, 1990, was seen", "July 3, 1990"),
        ("Geburtsdatum: 14.02.1975", "14.02.1975"),
        ("Herr Weiß, geb. am 14.02.1975", "14.02.1975"),
        ("Mme Moreau, née le 5 mai 1982", "5 mai 1982"),
        ("nacida el 5 de mayo de 1982", "5 de mayo de 1982"),
        ("生年月日：1985年4月12日", "1985年4月12日"),
        ('{"birthDate": "1984-07-23"}', "1984-07-23"),
    ],
)
def test_dob_positives(text, value):
    assert _found(text, "dob") == [value]


@pytest.mark.parametrize(
    "text",
    [
        "Date: 2024-03-12",
        "hired on 2019-04-01, effective 01.01.2025",
        '"createdAt": "2023-11-02"',
        "Patient born 1990-07-03, seen on 2023-01-05 at noon",  # only the first is a birth
        "The product line was born in 2019.",
    ],
)
def test_dates_that_are_not_births_are_kept(text):
    found = _found(text, "dob")
    assert found in ([], ["1990-07-03"])


@pytest.mark.parametrize(
    ("text", "values"),
    [
        ("Send it to 14 Harley Road, London NW3 5QP.", ["14 Harley Road", "NW3 5QP"]),
        (
            "1234 Maple Avenue, Apt 5B\nSpringfield, IL 62704",
            ["1234 Maple Avenue, Apt 5B", "IL 62704"],
        ),
        ("Hauptstraße 12\n10115 Berlin", ["Hauptstraße 12", "10115"]),
        ("12 rue de la Paix, 75002 Paris", ["12 rue de la Paix", "75002"]),
        ("Via Roma 15, 00184 Roma", ["Via Roma 15", "00184"]),
        ("Calle Mayor 8, 3º B, 28013 Madrid", ["Calle Mayor 8, 3º B", "28013"]),
        ("Keizersgracht 123\n1015 CJ Amsterdam", ["Keizersgracht 123", "1015 CJ"]),
        ("〒150-0002 東京都渋谷区渋谷2丁目21-1", ["〒150-0002", "東京都渋谷区渋谷2丁目21-1"]),
        ("Storgatan 12, 111 22 Stockholm", ["Storgatan 12", "111 22"]),
        ("100 Queen St W, Toronto, ON M5H 2N2", ["100 Queen St", "M5H 2N2"]),
    ],
)
def test_address_positives(text, values):
    found = " ".join(_found(text, "address"))
    assert all(v in found for v in values), found


@pytest.mark.parametrize(
    "text",
    [
        "Take Highway 101 to Building 42.",
        "the Oxford Street store opens at 9",
        "Release 2024 notes: 3 new features",
        "we have 12000 Users and 50000 Requests",
    ],
)
def test_address_negatives(text):
    assert _found(text, "address") == []


def _stdnum(module: str):
    return pytest.importorskip(f"stdnum.{module}")


@pytest.mark.parametrize(
    ("validator", "generator", "stdnum_module"),
    [
        (ids.ssn_valid, redaction_pii_values.ssn, "us.ssn"),
        (ids.insee_valid, redaction_pii_values.insee, "fr.nir"),
        (ids.steuer_id_valid, redaction_pii_values.steuer_id, "de.idnr"),
        (ids.bsn_valid, redaction_pii_values.bsn, "nl.bsn"),
        (ids.dni_valid, redaction_pii_values.dni, "es.dni"),
        (ids.codice_fiscale_valid, redaction_pii_values.codice_fiscale, "it.codicefiscale"),
        (ids.personnummer_valid, redaction_pii_values.personnummer, "se.personnummer"),
        (ids.sin_valid, redaction_pii_values.sin, "ca.sin"),
    ],
)
def test_check_rules_agree_with_stdnum(validator, generator, stdnum_module):
    # Random nine-to-sixteen character strings of each shape, valid or not: our rule and
    # python-stdnum's (an independent implementation) must agree on every one.
    stdnum = _stdnum(stdnum_module)
    rng = random.Random(0)
    agreed = valid = 0
    for _ in range(300):
        value = generator(rng)
        if rng.random() < 0.5:  # one digit changed: mostly invalid
            i = rng.choice([i for i, c in enumerate(value) if c.isdigit()])
            value = value[:i] + str((int(value[i]) + rng.randint(1, 9)) % 10) + value[i + 1 :]
        ours = validator(value)
        agreed += ours == stdnum.is_valid(value)
        valid += ours
    assert agreed == 300 and 100 < valid < 300


def test_known_identifiers():
    assert ids.nino_valid("AB123456C") and not ids.nino_valid("QQ123456C")
    assert not ids.nino_valid("BG123456A") and not ids.nino_valid("DA123456A")
    assert ids.dni_valid("12345678Z") and not ids.dni_valid("12345678A")
    assert ids.dni_valid("X1234567L") and not ids.dni_valid("X1234567T")
    assert ids.codice_fiscale_valid("RSSMRA85T10A562S") and not ids.codice_fiscale_valid(
        "RSSMRA85T10A562T"
    )
    assert ids.ssn_valid("123-45-6789") and not ids.ssn_valid("078-05-1120")
    assert not ids.ssn_valid("666-12-3456") and not ids.ssn_valid("900-12-3456")
    assert ids.steuer_id_valid("86095742719") and not ids.steuer_id_valid("86095742718")
    assert ids.bsn_valid("111222333") and not ids.bsn_valid("111222334")
    assert ids.personnummer_valid("811228-9874") and not ids.personnummer_valid("811328-9873")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("SSN: 123-45-6789", "123-45-6789"),
        ("SSN 123456789", "123456789"),
        ("NI number: AB 12 34 56 C", "AB 12 34 56 C"),
        ("N° de sécurité sociale : 2 95 10 99 126 111 93", "2 95 10 99 126 111 93"),
        ("Steuer-ID: 86095742719", "86095742719"),
        ("BSN: 111222333", "111222333"),
        ("DNI 12345678Z", "12345678Z"),
        ("NIE: X1234567L", "X1234567L"),
        ("CF RSSMRA85T10A562S", "RSSMRA85T10A562S"),
        ("Personnummer: 811228-9874", "811228-9874"),
        ("SIN: 130 692 544", "130 692 544"),
    ],
)
def test_national_id_positives(text, value):
    assert _found(text, "national_id") == [value]


@pytest.mark.parametrize(
    "text",
    [
        "ticket 111222333 closed",  # a valid BSN shape, but no identifier word
        "SIN: 130 692 545",  # Luhn fails
        "BSN: 130692544",  # a valid SIN is not a valid BSN
        "reference QQ 12 34 56 C",  # HMRC's documentation example
        "SSN: 000-12-3456",
        "Steuer-ID: 86095742718",
    ],
)
def test_national_id_negatives(text):
    assert _found(text, "national_id") == []


def test_emails_and_ips_reserved_for_documentation_are_kept():
    text = (
        "mail jane@example.com, ops@svc.test, x@host.invalid, but also jane@corp-mail.net; "
        "hosts 192.0.2.10, 198.51.100.7, 203.0.113.99, 2001:db8::1, 127.0.0.1 and 81.2.69.160, "
        "2a02:6b8::11; build 10.2.0.15"
    )
    assert _found(text, "email") == ["jane@corp-mail.net"]
    assert _found(text, "ip") == ["81.2.69.160", "2a02:6b8::11"]


def test_private_ips_redacted_unless_the_config_keeps_them():
    text = "db at 10.1.2.3 and fd12:3456:789a::1, public 81.2.69.160"
    assert _found(text, "ip") == ["10.1.2.3", "fd12:3456:789a::1", "81.2.69.160"]
    keep = RedactConfig(keep_private_ips=True)
    assert _found(text, "ip", cfg=keep) == ["81.2.69.160"]


def test_fields_give_context():
    csv = (
        "id,first_name,last_name,phone,dob,signup\n7,Ann,Miller,4155550134,1984-07-23,2023-01-02\n"
    )
    assert {f.key for f in table_fields(csv)} >= {"first_name", "phone", "dob"}
    out = redact_text(csv).text
    assert out.splitlines()[1] == "7,<PERSON>,<PERSON>,<PHONE>,<DOB>,2023-01-02"
    md = "# Team\n\n| Name | Birthday |\n|---|---|\n| Ada Hollis | 1990-02-03 |\n"
    assert "1990-02-03" not in redact_text(md).text
    form = "Surname | Miller\nDate of birth | 03/02/1990\nStart date | 01/09/2020\n"
    assert (
        redact_text(form).text
        == "Surname | <PERSON>\nDate of birth | <DOB>\nStart date | 01/09/2020\n"
    )
    keys = {f.key for f in document_fields('{"userId":7,"dob":"1984-07-23"}; Zip: 62704')}
    assert keys >= {"dob", "zip"}


def test_names_on_by_default_strict_in_code():
    prose = "Assignee: Oliver Hughes. Dear Daan de Vries, thanks."
    assert _found(prose, "person") == ["Oliver Hughes", "Daan de Vries"]
    code = 'owner = "Hiro Kettleborough"  # Mary Johnson wrote this\n'
    assert _found(code, "person", in_code=True) == ["Mary Johnson"]
    assert _found(prose, "person", cfg=RedactConfig(person="keep")) == []


def test_kept_kinds_are_not_scanned():
    text = "DOB: 04/12/1986, SSN 123-45-6789, call +49 30 12345678"
    assert list(pii_spans(text, kinds=())) == []
    assert {s.kind for s in pii_spans(text, kinds=("dob",))} == {"dob"}
    cfg = RedactConfig(dob="keep", national_id="keep", phone="drop")
    assert redact_text(text, cfg).drop == "redact:phone"


@pytest.mark.parametrize(
    ("kind", "text", "value"),
    [
        ("dob", "Patient record. DOB: 04/12/1986.", "04/12/1986"),
        ("address", "Ship to 14 Harley Road, London NW3 5QP.", "14 Harley Road"),
        ("national_id", "Her NI number is AB 12 34 56 C.", "AB 12 34 56 C"),
        ("person", "Requester: Oliver Hughes", "Oliver Hughes"),
    ],
)
def test_policy_redacts_what_curation_finds(kind, text, value):
    # One detector set: a serving policy naming a kind finds exactly curation's spans.
    policy = Policy(PolicyConfig.model_validate({"default": {"output": {"redact": [kind]}}}))
    curation = [(s.start, s.end) for s in find_sensitive(text) if s.kind == kind]
    serving = [(s.start, s.end) for s in non_overlapping(policy.detectors[kind](text))]
    assert curation == serving and text[slice(*serving[0])] == value
    out, decisions = policy.redact(text, (kind,), "output")
    assert value not in out and f"[REDACTED:{kind}]" in out
    assert decisions[0].rule == f"output.redact.{kind}"


def test_benchmark_corpus_recall_and_negatives():
    cases = redaction_pii.cases(seed=3)
    found = total = kept = negatives = control_kept = controls = 0
    kinds = set()
    for case in cases:
        out = redact_text(case.text, in_code=case.doc_type == "code").text
        for start, end, kind in case.positives:
            found += case.text[start:end] not in out
            total += 1
            kinds.add(kind)
        for start, end, _ in case.negatives:
            kept += case.text[start:end] in out
            negatives += 1
        if not case.positives and not case.negatives:
            control_kept += out == case.text
            controls += 1
    assert len(kinds) >= 9 and total > 500 and negatives > 200
    assert found / total >= 0.95
    assert kept / negatives >= 0.95
    assert control_kept == controls


def test_pathological_inputs_stay_linear():
    # One line of 40k `key: value` pairs, a pipe table row, a digit run before a street type:
    # a quadratic scan (each separator reading to the end of its line) takes ~10 s here.
    import time

    for text in ("a: " * 40_000, "| x " * 40_000, "1 2 " * 20_000 + "Street"):
        start = time.perf_counter()
        redact_text(text)
        assert time.perf_counter() - start < 4
