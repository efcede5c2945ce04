"""Synthetic data: rule-based tasks from the ACME corpus (QA, infill, translation pairs) and
self-instruct generation through a live forgeml server (official `openai` client, a real API
key): dedup against the training set and among records, reward filter, lineage, accounting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_serve_api import running_server
from test_serve_engine import make_tiny_model_dir

from forgeml.core.errors import ForgeError
from forgeml.pipeline.ingest_stage import ingest_stage
from forgeml.registry import open_registry
from forgeml.synth.records import SynthRecord, filter_duplicates
from forgeml.synth.rules import qa_records, rule_records, synth_rules_stage
from forgeml.synth.teacher import synth_teacher_stage
from forgeml.train.chat_data import record_messages


def even_length_reward(prompt: str, completion: str, metadata: dict) -> float:
    """Deterministic and data-dependent, so some records pass and some do not."""
    assert metadata["task"] == "self-instruct" and prompt
    return float(len(completion) % 2 == 0)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def acme(tmp_path_factory) -> tuple[Path, dict]:
    from acme import generate_corpus

    out = tmp_path_factory.mktemp("acme")
    return out, generate_corpus(out, seed=0, scale=0.05)


def test_rules_on_the_acme_corpus(workspace, acme) -> None:
    corpus, manifest = acme
    dataset = ingest_stage(workspace, [corpus], name="acme").output
    res = synth_rules_stage(
        workspace, dataset, pairs=["acl:py"], languages={"acl": "ACME-CL"},
        exclude=["damaged/*"],
    )  # fmt: skip
    reg = open_registry(workspace)
    asset = reg.get_asset(res.output)
    assert asset.metadata["format"] == "chat-jsonl" and asset.metadata["dataset"] == dataset
    assert dataset in {n["id"] for n in reg.lineage(asset.id, "up").nodes}
    by_task = res.metrics["kept_by_task"]
    # Pairs are files with the same stem in one folder: the held-out programs' Python lives
    # under heldout/ (an answer key), so only the others pair up.
    in_corpus = len(list((corpus / "programs").glob("*.py")))
    assert by_task["translation"] == in_corpus and 0 < manifest["program_pairs"] - in_corpus
    assert by_task["qa-heading"] > 10 and by_task["infill"] > 5

    folder = Path(asset.path)
    kept = _lines(folder / "train.jsonl")
    every = _lines(folder / "records.jsonl")
    assert len(kept) == res.metrics["kept"]
    assert (
        len(every) == res.metrics["generated"] == len(kept) + sum(res.metrics["filtered"].values())
    )
    for rec in kept:
        record_messages(rec, rec["id"])  # the SFT loader accepts every record
        meta = rec["metadata"]
        user, answer = rec["messages"][0]["content"], rec["messages"][1]["content"]
        assert not meta["path"].startswith("damaged/")
        if meta["task"] == "translation":
            py = (corpus / meta["target_path"]).read_text().rstrip()
            acl = (corpus / meta["path"]).read_text().rstrip()
            assert answer == f"```py\n{py}\n```" and acl in user and "ACME-CL" in user
        elif meta["task"] == "infill":
            raw = (corpus / meta["path"]).read_bytes()  # the demo has one latin-1 memo
            original = raw.decode("utf-8" if _utf8(raw) else "latin-1")
            assert user.split("\n\n", 1)[1].count("[GAP]") == 1 and answer in original
            before, after = user.split("\n\n", 1)[1].split("[GAP]")
            assert before + answer + after in original
    # the same stage from the CLI is a cached run
    from typer.testing import CliRunner

    from forgeml.cli import app

    out = CliRunner().invoke(app, [
        "-q", "-w", str(workspace.root), "synth", "rules", dataset, "--pair", "acl:py",
        "--lang", "acl=ACME-CL", "--exclude", "damaged/*",
    ])  # fmt: skip
    assert out.exit_code == 0, out.output
    assert f"dataset {res.output}" in out.output and "(cached)" in out.output


def test_definitions_and_dedup_rules() -> None:
    doc = {
        "doc_id": "d1", "path": "glossary.md", "source": "/x", "type": "markdown", "locator": "",
        "text": "# Glossary\n\n**Ledger run**: the nightly batch that posts the day's entries.\n\n"
        "A freeze window means a period in which no change may reach production.\n",
    }  # fmt: skip
    recs = list(qa_records(doc))
    defs = {r.source["term"]: r for r in recs if r.task == "qa-definition"}
    assert defs["Ledger run"].completion.startswith("the nightly batch")
    assert defs["freeze window"].prompt == "What does freeze window mean?"
    # The title is not a section, so there is no heading question: the definitions only.
    assert [(r.task, r.source["term"]) for r in recs] == [
        ("qa-definition", "Ledger run"),
        ("qa-definition", "freeze window"),
    ]
    guide = {**doc, "text": "# Guide\n\n## Backups\n\nBackups run every night at two.\n"}
    (heading,) = qa_records(guide)
    assert heading.task == "qa-heading" and heading.source["heading"] == "Backups"
    assert heading.prompt == 'In "Guide", what does the section "Backups" say?'
    assert heading.completion == "Backups run every night at two."

    a = SynthRecord("a", "t", "Explain the ledger run", "It posts the day's entries at night.")
    b = SynthRecord("b", "t", "Explain the ledger run", "It posts the day's entries at night.")
    c = SynthRecord("c", "t", "List three colours", "Red, green and blue are colours.")
    d = SynthRecord("d", "t", "Name the policy on data retention", "POL-100 covers retention.")
    filter_duplicates(
        [a, b, c, d], ["Name the policy on data retention\nPOL-100 covers retention."]
    )
    assert [r.reason for r in (a, b, c, d)] == ["", "duplicate", "", "duplicate-of-training"]
    assert rule_records([doc], rules=["qa"]) and not rule_records([doc], rules=["infill"])


def test_self_instruct_through_a_local_forgeml_server(workspace, tmp_path, monkeypatch) -> None:
    from forgeml.governance.keys import KeyStore
    from forgeml.serve.api import create_app
    from forgeml.serve.loading import load_served_models

    reg = open_registry(workspace)
    teacher = reg.add_asset("model", "teacher", make_tiny_model_dir(tmp_path, max_seq_len=512))
    keys = KeyStore(reg.engine)
    key, _ = keys.create_key("synth", endpoints=["chat", "models"])
    monkeypatch.setenv("SYNTH_TEACHER_KEY", key)
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"instruction": t}) + "\n" for t in [
        "Explain what the nightly ledger run does.", "Write a short memo about a change freeze.",
        "List the steps to restore a backup.", "Summarise the data retention policy.",
    ]))  # fmt: skip
    reward = f"{Path(__file__).stem}:even_length_reward"
    app = create_app(load_served_models(reg, [teacher.id]), keys=keys)
    with running_server(app) as url:
        common = dict(
            endpoint=f"{url}/v1", model=teacher.id, seeds=seeds, n=8, teacher_asset=teacher.id,
            api_key_env="SYNTH_TEACHER_KEY", temperature=0.0, max_tokens=12, min_words=1,
        )  # fmt: skip
        first = synth_teacher_stage(workspace, reward=reward, **common)
        # the same generation again, deduplicated against the first one's dataset
        second = synth_teacher_stage(workspace, against=[first.output], **common)
        monkeypatch.setenv("SYNTH_TEACHER_KEY", "wrong")
        with pytest.raises(ForgeError, match="refused the request .AuthenticationError"):
            synth_teacher_stage(workspace, seed=1, **common)
        # a request that fails on its own (a prompt longer than the teacher's context) is
        # accounted for as that record's failure; the others go on
        monkeypatch.setenv("SYNTH_TEACHER_KEY", key)
        long_seeds = tmp_path / "long.jsonl"
        long_seeds.write_text(
            seeds.read_text().replace('"}', " with " + "many words " * 300 + '"}', 1)
        )
        too_long = synth_teacher_stage(workspace, **{**common, "seeds": long_seeds, "n": 4})

    m1 = first.metrics
    assert m1["generated"] == 8 and m1["requests"] >= 8
    records = _lines(Path(reg.get_asset(first.output).path) / "records.jsonl")
    scored = [r for r in records if r["score"] is not None]
    assert scored  # the reward saw every record that survived dedup
    low = sum(r["score"] < 0.5 for r in scored)
    assert m1["filtered"].get("reward-below-threshold", 0) == low
    assert all(r["score"] == (len(r["completion"]) % 2 == 0) for r in scored)
    assert m1["kept"] + sum(m1["filtered"].values()) == 8

    m2 = second.metrics
    # deterministic teacher (greedy, seeded): what the first run kept is now a training duplicate
    assert m2["filtered"].get("duplicate-of-training", 0) >= m1["kept"] > 0
    m3 = too_long.metrics
    assert m3["generated"] == 4 and m3["kept"] + sum(m3["filtered"].values()) == 4
    assert m3["filtered"]["teacher-error: BadRequestError"] >= 1

    asset = reg.get_asset(second.output)
    assert asset.metadata["teacher"]["endpoint"] == f"{url}/v1"
    assert asset.metadata["teacher"]["asset"] == teacher.id
    up = {n["id"] for n in reg.lineage(asset.id, "up").nodes}
    assert {teacher.id, first.output} <= up
    folder = Path(reg.get_asset(first.output).path)
    requests = _lines(folder / "requests.jsonl")
    assert {r["kind"] for r in requests} == {"propose", "answer"}
    assert "Task 1:" in requests[0]["messages"][0]["content"]
    for f in folder.iterdir():  # the API key is in no file of the dataset
        assert key not in f.read_text()
    for rec in _lines(folder / "train.jsonl"):
        record_messages(rec, rec["id"])


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
