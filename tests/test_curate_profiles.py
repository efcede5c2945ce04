"""Curation profiles: `enterprise` (the default) judges records, configs, short and structured
text by rules made for them and prose by the prose rules; `web` keeps the Gopher/C4 rules;
a recipe's own settings win over either; drop warnings reach the report and the CLI."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from forgeml.core.config import (
    CurateConfig,
    GopherQualityConfig,
    GopherRepetitionConfig,
    config_hash,
    load_recipe,
)
from forgeml.data.curate import curate_documents
from forgeml.data.curate_report import warning_line
from forgeml.data.filters import build_filters, document_kind, word_shape
from forgeml.data.report import render_html

PROSE = (
    "The warehouse at Harbor Point receives three deliveries a week. Each crate is checked "
    "against the manifest before it is moved to the racks, and any damage is reported to the "
    "supervisor on duty. Staff who have completed the forklift course may move pallets with "
    "the electric trucks; everyone else uses the hand carts. The night shift closes the loading "
    "doors at ten and records the temperature of the cold room in the log book that is kept "
    "with the keys."
)
GRAMMAR = "\n".join(
    f"rule_{i}: NAME '=' expr_{i} ['|' atom_{i}] (',' NAME)* NEWLINE  # {i * 7}" for i in range(30)
)


def _verdict(text: str, record: dict, cfg: CurateConfig) -> str | None:
    record = {"text": text, **record}
    record["kind"] = document_kind(text, record, cfg)
    for flt in build_filters(cfg):
        if flt.name != "language" and flt.applies(record) and (why := flt.check(text, record)):
            return why
    return None


# ---------------------------------------------------------------------------------------
# Resolving a profile under the recipe


def test_default_is_enterprise_and_web_is_the_published_rules():
    ent, web = CurateConfig(), CurateConfig(profile="web")
    assert ent.profile == "enterprise" and ent.prose_min_words > 0 and ent.prose_shape_gate
    assert "records" in ent.record_types and "yaml" in ent.config_languages
    # web: every threshold as the field defaults (Gopher, Rae et al. table A1) and no kinds
    assert web.gopher_repetition == GopherRepetitionConfig()
    assert web.gopher_quality == GopherQualityConfig()
    assert web.prose_min_words == 0 and not web.prose_shape_gate and not web.record_types
    assert ent.gopher_repetition.max_dup_line_fraction > web.gopher_repetition.max_dup_line_fraction
    assert config_hash(ent.output_settings()) != config_hash(web.output_settings())


def test_what_the_recipe_writes_wins_over_the_profile(tmp_path):
    written = {"gopher_repetition": {"max_dup_line_fraction": 0.3}, "prose_min_words": 7}
    cfg = CurateConfig.model_validate(written)
    assert cfg.profile == "enterprise"
    assert cfg.gopher_repetition.max_dup_line_fraction == 0.3  # written
    assert cfg.gopher_repetition.max_dup_para_fraction == 0.5  # the profile's, not written
    assert cfg.prose_min_words == 7 and cfg.record_types == ["records", "spreadsheet"]
    # a section passed as a model counts only the fields its author set
    model = CurateConfig(gopher_repetition=GopherRepetitionConfig(max_dup_line_fraction=0.3))
    assert model.gopher_repetition == cfg.gopher_repetition
    # a web recipe can opt into one enterprise rule
    web = CurateConfig.model_validate({"profile": "web", "record_types": ["records"]})
    assert web.record_types == ["records"] and web.prose_min_words == 0
    # recipes and dotted overrides go through the same resolution
    recipe = tmp_path / "r.yaml"
    recipe.write_text("curate:\n  gopher_repetition:\n    max_dup_line_fraction: 0.3\n")
    loaded = load_recipe(recipe, ["curate.prose_min_words=7"]).curate
    assert loaded == cfg
    assert load_recipe(recipe, ["curate.profile=web"]).curate.prose_min_words == 0
    # a resolved config read back is the same config (saved recipes, Ray, worker processes)
    assert CurateConfig.model_validate(cfg.model_dump()) == cfg
    with pytest.raises(ValueError, match="profile"):
        CurateConfig.model_validate({"profile": "crawl"})


# ---------------------------------------------------------------------------------------
# Document kinds and their rules


@pytest.mark.parametrize(
    ("text", "record", "kind", "web_kind"),
    [
        ("id: 7; name: Ada", {"type": "records"}, "records", "prose"),
        ("Sheet1\nname: Ada; id: 7", {"type": "spreadsheet"}, "records", "other"),
        ("a: 1\nb: [2, 3]\n", {"type": "code", "language": "yaml"}, "config", "code"),
        ("def f():\n    return 1\n", {"type": "code", "language": "python"}, "code", "code"),
        ("Call me back about the invoice.", {"type": "mail"}, "short_text", "prose"),
        (GRAMMAR, {"type": "text"}, "structured_text", "prose"),
        (PROSE, {"type": "markdown"}, "prose", "prose"),
        ("-----BEGIN PUBLIC KEY-----", {"type": "sensitive_file"}, "other", "other"),
    ],
)
def test_document_kinds(text, record, kind, web_kind):
    assert document_kind(text, record, CurateConfig()) == kind
    assert document_kind(text, record, CurateConfig(profile="web")) == web_kind


def test_enterprise_keeps_what_web_drops_for_being_no_web_prose():
    ent, web = CurateConfig(), CurateConfig(profile="web")
    row = "name: Ada Lovelace; team: analytics; joined: 1843"
    assert _verdict(row, {"type": "records"}, web) == "gopher_quality:few_words"
    assert _verdict(row, {"type": "records"}, ent) is None
    note = "Printer on floor 3 is fixed, thanks to Sam."
    assert _verdict(note, {"type": "mail"}, web) == "gopher_quality:few_words"
    assert _verdict(note, {"type": "mail"}, ent) is None
    assert _verdict(GRAMMAR, {"type": "text"}, web).startswith("gopher_quality:")
    assert _verdict(GRAMMAR, {"type": "text"}, ent) is None
    # a licence notice repeated through a manual: Gopher's repetition rules, not enterprise's
    rng = random.Random(0)
    notice = "Copyright the authors. This manual may be copied under the terms of the licence."
    parts = [" ".join(rng.choice(PROSE.split()) for _ in range(40)) for _ in range(3)]
    manual = "\n\n".join([PROSE, notice, parts[0], notice, parts[1], notice, parts[2], notice])
    assert _verdict(manual, {"type": "text"}, web).startswith("gopher_repetition:")
    assert _verdict(manual, {"type": "text"}, ent) is None


def test_enterprise_still_drops_junk_with_a_reason():
    ent = CurateConfig()
    assert _verdict("name: null; id: N/A; team: -", {"type": "records"}, ent) == "records:all_null"
    assert _verdict("name: Ada Lovelace; id: null", {"type": "records"}, ent) is None
    lock = {"type": "code", "language": "json", "path": "web/package-lock.json"}
    assert _verdict('{"name": "web", "lockfileVersion": 3}', lock, ent) == "config:lock_file"
    dump = {"type": "code", "language": "json", "path": "data.json"}
    assert _verdict("[" + ",".join(["1234"] * 400) + "]", dump, ent) == "config:long_lines"
    jsonc = '{\n  // build output\n  "outDir": "dist"\n}\n'
    assert _verdict(jsonc, dump, ent) is None  # not parsed by default: JSON with comments
    strict = CurateConfig.model_validate({"config_files": {"require_parseable": True}})
    assert _verdict(jsonc, dump, strict) == "config:unparseable"
    assert _verdict("x", {"type": "mail"}, ent) == "length:too_short"
    assert _verdict("1234 5678 9012 3456 7890 ----", {"type": "text"}, ent) == (
        "short_text:few_words"
    )
    log = "\n".join(["2026-01-01 12:00:00 ERROR disk /dev/sda1 full (code 28)"] * 60)
    assert _verdict(log, {"type": "text"}, ent) == "structured_text:dup_lines"
    blob = "\n".join(["Zm9vYmFyYmF6" * 8] * 60)
    assert _verdict(blob, {"type": "text"}, ent) == "structured_text:data_blob"
    rng = random.Random(0)
    spam = " ".join(["buy cheap watches and the best deals on the market today"] * 30)
    spam += " " + " ".join(rng.choice(PROSE.split()) for _ in range(40))
    assert _verdict(spam, {"type": "html"}, ent).startswith("gopher_repetition:")
    code = "def f():\n    return 1\n" * 3
    generated = {"type": "code", "language": "python", "path": "a_pb2.py"}
    assert _verdict("# Code generated by protoc. DO NOT EDIT.\n" + code, generated, ent) == (
        "code:auto_generated"
    )


# ---------------------------------------------------------------------------------------
# End to end: the report's drops by type, warnings, HTML and CLI


def _raw(tmp_path: Path) -> Path:
    from forgeml.data.ingest import SCHEMA as RAW

    rng = random.Random(1)
    docs = [
        (f"Row {i}: name {rng.choice('ABCDEFG')}; amount {i * 3}", "records") for i in range(12)
    ]
    docs += [(PROSE.replace("ten", str(i)) + f" Entry {i}.", "text") for i in range(6)]
    docs += [(f"Ticket {i}: the VPN drops every hour since Monday.", "mail") for i in range(4)]
    rows = {f.name: [None] * len(docs) for f in RAW}
    rows.update(
        text=[t for t, _ in docs],
        type=[k for _, k in docs],
        doc_id=[f"d{i}" for i in range(len(docs))],
        path=[f"exports/{k}/{i}" for i, (_, k) in enumerate(docs)],
        locator=["" for _ in docs],
    )
    raw = tmp_path / "raw.parquet"
    pq.write_table(pa.table(rows, schema=RAW), raw)
    return raw


def test_report_counts_drops_by_type_and_warns(tmp_path):
    raw = _raw(tmp_path)
    settings = {"dedup": {"near": False}, "language": {"enabled": False}}
    web = curate_documents(raw, tmp_path / "web.parquet", CurateConfig.model_validate(
        {"profile": "web", **settings}))  # fmt: skip
    assert web.profile == "web" and web.kept == 6
    assert web.by_type["records"]["dropped"] == {"gopher_quality:few_words": 12}
    assert web.by_type["records"]["judged_as"] == {"prose": 12}
    assert web.by_type["records"]["examples"]["gopher_quality:few_words"] == "exports/records/0"
    by_type = {(w["filter"], w["type"]): w for w in web.warnings}
    assert set(by_type) == {("gopher_quality", "records"), ("gopher_quality", "mail")}
    w = by_type[("gopher_quality", "records")]
    assert (w["dropped"], w["of"], w["share"]) == (12, 12, 1.0)
    assert w["example_reason"] == "gopher_quality:few_words"
    assert "dropped 12 of 12 records documents (100%)" in warning_line(w)
    html = render_html(web.to_dict())
    assert "Warnings" in html and "gopher_quality:few_words on exports/records/0" in html
    json.dumps(web.to_dict())  # the report is JSON

    ent = curate_documents(raw, tmp_path / "ent.parquet", CurateConfig.model_validate(settings))
    assert ent.kept == 22 and not ent.warnings and ent.dropped == 0
    assert ent.by_type["records"]["judged_as"] == {"records": 12}
    assert ent.by_type["mail"]["judged_as"] == {"short_text": 4}
    # a share above the threshold is the user's to set
    strict = CurateConfig.model_validate(
        {**settings, "records": {"min_words": 7}, "warn_drop_share": 0.5}
    )
    rep = curate_documents(raw, tmp_path / "strict.parquet", strict)
    assert [(w["filter"], w["type"]) for w in rep.warnings] == [("records", "records")]


@pytest.mark.slow  # four CLI processes
def test_cli_prints_drop_warnings(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "people.csv").write_text(
        "text,team\n" + "".join(f"Ada Lovelace joined team {i},t{i}\n" for i in range(6))
    )
    (folder / "manual.md").write_text(PROSE + "\n")
    ws = tmp_path / "ws"

    def forgeml(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "forgeml.cli", "-w", str(ws), *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300)

    assert forgeml("init", str(ws)).returncode == 0
    assert forgeml("-q", "data", "ingest", str(folder), "--name", "docs").returncode == 0
    res = forgeml("-q", "data", "curate", "docs", "--set", "curate.profile=web")
    assert res.returncode == 0, res.stderr
    assert "warning: filter gopher_quality dropped 6 of 6 records documents (100%)" in res.stdout
    res = forgeml("-q", "data", "curate", "docs", "--name", "docs-ent")
    assert res.returncode == 0, res.stderr
    assert "warning:" not in res.stdout


def _naive_word_shape(text: str, cfg: GopherQualityConfig) -> str | None:
    words = text.split()
    real = [w for w in words if not re.fullmatch(r"\W+", w)]
    mean = sum(map(len, real)) / max(1, len(real))
    if not cfg.min_mean_word_length <= mean <= cfg.max_mean_word_length:
        return "gopher_quality:mean_word_length"
    if (text.count("#") + text.count("...") + text.count("…")) / len(words) > (
        cfg.max_symbol_word_ratio
    ):
        return "gopher_quality:symbol_ratio"
    if sum(any(c.isalpha() for c in w) for w in words) / len(words) < cfg.min_alpha_words_ratio:
        return "gopher_quality:alpha_words"
    return None


@pytest.mark.parametrize(
    "text",
    [
        PROSE,
        GRAMMAR,
        " ".join(["1234 5678 -- the and window 3456 x_1"] * 20),
        " ".join(["#tag the and ... — word"] * 30),
        "Überprüfung der Maßnahmen: Änderungen 2024 – siehe § 3 ( Absatz 2 ) !",
        " ".join(["internationalization"] * 40),
    ],
)
def test_word_shape_counts_as_the_per_word_rules(text):
    q = CurateConfig().gopher_quality
    assert word_shape(text, text.split(), q) == _naive_word_shape(text, q)
