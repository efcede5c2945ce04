"""The control plane under hostile or careless input: agents read only inside their roots,
malformed and oversized requests get a 4xx (never a 500), every request is audited, plans
cost what their bounded arguments cost, and SIGTERM stops the server promptly."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from forgeml.control.api import create_control_app
from forgeml.control.budgets import set_budget
from forgeml.control.limits import MAX_ARG_CHARS, MAX_BODY_BYTES, MAX_JOB_ARGS
from forgeml.control.ops import ControlPlane
from forgeml.control.roots import set_data_roots
from forgeml.governance.audit import audit_log_path
from forgeml.governance.keys import create_api_key

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def env(workspace, tmp_path):
    control = ControlPlane(workspace)
    keys = {
        name: create_api_key(workspace.root, name, roles=roles)[0]
        for name, roles in {"admin": ["admin"], "bot": ["agent", "exports:write"]}.items()
    }
    set_budget(control.reg, "bot", cpu_hours=10.0, max_concurrent_jobs=5)
    yield {"client": TestClient(create_control_app(control)), "keys": keys, "control": control}
    control.close()


def _h(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _requests(workspace) -> list[dict]:
    lines = audit_log_path(workspace.root).read_text().split("\n")
    return [e for e in map(json.loads, filter(None, lines)) if e["event"] == "control_request"]


def _plan(env, args: list[str], who: str = "bot") -> dict:
    r = env["client"].post("/v1/plan", json={"args": args}, headers=_h(env["keys"][who]))
    assert r.status_code == 200, r.text
    return r.json()


# -- item 4: agents read only inside the workspace and the configured data roots ------------


def test_agent_plans_that_read_host_folders_are_refused(env, workspace, tmp_path) -> None:
    inside = workspace.root / "corpus"
    inside.mkdir()
    (inside / "a.txt").write_text("hello")
    (workspace.root / "etc-link").symlink_to("/etc")
    for args in (["data", "ingest", "/etc"], ["data", "ingest", "/root"],
                 ["data", "ingest", str(workspace.root / "etc-link")],  # a symlink out
                 ["data", "ingest", str(inside / ".." / ".." / "..")],  # `..` out
                 ["data", "ingest", "corpus", "--name", "/etc/passwd"],
                 ["data", "ingest", str(workspace.root / "registry.db")],
                 ["data", "ingest", str(workspace.root / "audit")]):  # fmt: skip
        plan = _plan(env, args)
        assert not plan["ok"], args
        assert any(r.startswith("reads ") for r in plan["refusals"]), plan["refusals"]
    reason = _plan(env, ["data", "ingest", "/etc"])["refusals"][0]
    assert "outside the folders agents may read" in reason and "data_roots" in reason
    assert _plan(env, ["data", "ingest", str(inside)])["ok"]
    assert _plan(env, ["data", "ingest", "/etc"], who="admin")["ok"]  # operators unchanged

    # A recipe outside the roots is not even opened (a YAML error would quote its lines).
    secret = tmp_path / "secret.yaml"
    secret.write_text("password: [hunter2\n")
    plan = _plan(env, ["pipeline", "run", str(secret)])
    assert not plan["ok"] and "hunter2" not in json.dumps(plan)
    # A recipe inside the roots that reads outside them.
    recipe = workspace.root / "r.yaml"
    recipe.write_text(yaml.safe_dump({"data": {"sources": ["/etc"]}}))
    (reason,) = _plan(env, ["pipeline", "run", str(recipe)])["refusals"]
    assert "data.sources[0]" in reason and "/etc" in reason
    # The operator lists a data root: folders under it become readable.
    set_data_roots(workspace, [tmp_path])
    assert _plan(env, ["data", "ingest", str(tmp_path)])["ok"]
    assert not _plan(env, ["data", "ingest", "/etc"])["ok"]


# -- item 16 (planner): only a recipe's data fields are dataset reads ------------------------


def test_recipe_strings_that_spell_a_dataset_name_are_not_reads(env, workspace, tmp_path) -> None:
    reg = env["control"].reg
    folder = tmp_path / "hr"
    folder.mkdir()
    (folder / "a.txt").write_text("salaries")
    hr = reg.add_asset("dataset", "hr", folder, metadata={"classification": "restricted"})
    set_budget(reg, "bot", cpu_hours=10.0, max_concurrent_jobs=5, data_clearance="internal")
    corpus = workspace.root / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("public text")
    body = {
        "tokenizer": {"vocab_size": 300},
        "model": {"dim": 16, "n_layers": 1, "n_heads": 2, "n_kv_heads": 1, "ffn_hidden": 32},
        "train": {"max_steps": 2, "seq_len": 16, "micro_batch_size": 1, "device": "cpu"},
        "data": {"sources": [str(corpus)]},
        "generate": {"prompts": ["hr"], "stop": ["hr"]},  # settings that spell the name
    }
    recipe = workspace.root / "r.yaml"
    recipe.write_text(yaml.safe_dump(body))
    plan = _plan(env, ["pipeline", "run", str(recipe)])
    assert plan["ok"], plan["refusals"]
    assert hr.id not in {d["id"] for d in plan["datasets"]}
    # The same name in a field that names data is a read (as a recipe file or an override).
    recipe.write_text(yaml.safe_dump({**body, "sft": {"data": "hr"}}))
    (reason,) = _plan(env, ["train", "sft", str(recipe), "--base", "m"])["refusals"]
    assert hr.id in reason and "sft.data" in reason
    (reason,) = _plan(env, ["pipeline", "run", str(recipe)])["refusals"]
    assert hr.id in reason and "recipe.sft.data" in reason


def test_the_recipe_data_fields_exist_in_the_recipe_schema() -> None:
    from forgeml.control.plan import RECIPE_DATA_FIELDS, RECIPE_MODEL_FIELDS
    from forgeml.core.config import Recipe

    for dotted in RECIPE_DATA_FIELDS + RECIPE_MODEL_FIELDS:
        model = Recipe
        *parents, last = dotted.split(".")
        for part in parents:
            annotation = model.model_fields[part].annotation
            model = next(a for a in (*getattr(annotation, "__args__", ()), annotation)
                         if isinstance(a, type) and hasattr(a, "model_fields"))  # fmt: skip
        assert last in model.model_fields, dotted


# -- item 7: no 500s, every request audited ----------------------------------------------


def test_malformed_requests_get_a_4xx_with_the_reason_and_are_audited(env, workspace) -> None:
    c, hb = env["client"], _h(env["keys"]["bot"])
    recipe = workspace.root / "r.yaml"
    recipe.write_text(yaml.safe_dump({"data": {"sources": [str(workspace.root)]}}))
    before = len(_requests(workspace))
    surrogate = '{"args": ["data", "ingest", "\\ud800"]}'
    cases = [
        (c.post("/v1/exports", json={"model": "m", "out": "/tmp/a\x00b"}, headers=hb), 422),
        (c.post("/v1/plan", content=surrogate, headers={**hb, "content-type": "application/json"}),
         422),
        (c.post("/v1/plan", json={"args": ["data", "ingest", "a\x00b"]}, headers=hb), 422),
        (c.post("/v1/plan", json={"args": ["hpo", str(recipe), "--trials", "many"]}, headers=hb),
         422),
        (c.post("/v1/plan", json={"args": ["data", "ingest", "x" * 10_000_000]}, headers=hb), 413),
        (c.post("/v1/plan", json={"args": ["data", "ingest", "x" * (MAX_ARG_CHARS + 1)]},
                headers=hb), 422),
        (c.post("/v1/exports", json={"model": "m", "out": "/tmp/" + "a" * 5000}, headers=hb), 422),
        (c.post("/v1/exports", json={"model": "m", "out": "/tmp/" + "a" * 300}, headers=hb), 422),
        (c.post("/v1/plan", json={"args": ["data", "ingest", "/" + "a" * 300]}, headers=hb), 200),
        (c.post("/v1/plan", json={"args": ["data", "ingest", "a/" * 2000]}, headers=hb), 200),
        (c.get("/v1/jobs/%25", headers=hb), 404),
        (c.get("/v1/assets", headers=_h("fml_nope_nope")), 401),
    ]  # fmt: skip
    for i, (r, want) in enumerate(cases):
        assert r.status_code == want, (i, r.status_code, r.text[:300])
        if want != 200:
            assert "error" in r.json() or "detail" in r.json(), (i, r.text[:300])
    trials = cases[3][0].json()["error"]["message"]
    assert "--trials must be an integer, got 'many'" in trials
    audited = _requests(workspace)[before:]
    assert [e["status"] for e in audited] == [want for _, want in cases]
    # Refused before the key was read: the 10 MB body (by its length) and the bad key.
    assert [i for i, e in enumerate(audited) if e["principal"] != "bot"] == [4, len(cases) - 1]


def test_an_unexpected_error_is_a_json_500_and_audited(env, workspace, monkeypatch) -> None:
    def broken(*_a, **_k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(env["control"], "list_assets", broken)
    r = env["client"].get("/v1/assets", headers=_h(env["keys"]["bot"]))
    assert r.status_code == 500 and r.json()["error"]["type"] == "internal_error"
    assert "disk on fire" not in r.text  # no internals leak to the caller
    last = _requests(workspace)[-1]
    assert last["status"] == 500 and "RuntimeError: disk on fire" in last["error"]


# -- item 8: bounded plan cost, graceful shutdown ------------------------------------------


def test_job_arguments_are_bounded_and_planned_without_a_query_each(env, monkeypatch) -> None:
    c, hb = env["client"], _h(env["keys"]["bot"])
    r = c.post("/v1/plan", json={"args": ["data", "ingest", *["x"] * MAX_JOB_ARGS]}, headers=hb)
    assert r.status_code == 422 and "at most" in r.text
    r = c.post("/v1/jobs", json={"args": ["data", "ingest", *["x"] * 300_000]}, headers=hb)
    assert r.status_code == 413  # over the body cap: refused before it is parsed
    assert MAX_BODY_BYTES < 300_000 * 5
    calls = []
    reg = env["control"].reg
    real = reg.get_asset
    monkeypatch.setattr(reg, "get_asset", lambda *a, **k: calls.append(a) or real(*a, **k))
    args = ["data", "ingest", *[f"word-{i}" for i in range(MAX_JOB_ARGS - 2)]]
    t0 = time.monotonic()
    assert _plan(env, args)["ok"]
    assert time.monotonic() - t0 < 5.0
    assert calls == []  # one read of the registry per plan, not queries per argument


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, key: str | None = None) -> int:
    req = urllib.request.Request(url, headers=_h(key) if key else {})
    try:
        with urllib.request.urlopen(req, timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_sigterm_stops_the_server_within_seconds_mid_plan(workspace, tmp_path) -> None:
    key, _ = create_api_key(workspace.root, "op", roles=["admin"])
    big = tmp_path / "big"  # a heavy plan: a source tree to size, file by file
    for i in range(50):
        d = big / f"d{i}"
        d.mkdir(parents=True)
        for j in range(100):
            (d / f"f{j}").write_text("x")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"data": {"sources": [str(big)] * 40}}))
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "forgeml.cli", "-q", "-w", str(workspace.root), "control",
         "serve", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if _get(f"{base}/healthz") == 200:
                    break
            except OSError:
                time.sleep(0.2)
        answers: list[int] = []

        def heavy() -> None:
            req = urllib.request.Request(
                f"{base}/v1/plan", method="POST",
                data=json.dumps({"args": ["pipeline", "run", str(recipe)]}).encode(),
                headers={**_h(key), "content-type": "application/json"},
            )  # fmt: skip
            try:
                with urllib.request.urlopen(req, timeout=60) as r:
                    answers.append(r.status)
            except urllib.error.HTTPError as e:
                answers.append(e.code)
            except OSError:
                answers.append(-1)

        t = threading.Thread(target=heavy)
        t.start()
        time.sleep(1.0)  # the plan is now walking the sources (~7 s of it, uncancelled)
        assert t.is_alive(), f"the heavy plan ended too soon to test shutdown: {answers}"
        t0 = time.monotonic()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=15)
        took = time.monotonic() - t0
        t.join(timeout=10)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert took < 4.0, f"stopped {took:.1f} s after SIGTERM"
    events = [
        json.loads(x)["event"] for x in audit_log_path(workspace.root).read_text().split("\n") if x
    ]
    assert events[-1] == "control_server_stopped"
    assert answers and answers[0] in (503, -1)  # abandoned, not answered as if planned
