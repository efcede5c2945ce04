"""REST control plane: real API keys, every auth path, jobs, registry reads, approvals, audit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from forgeml.control.api import create_control_app
from forgeml.control.budgets import set_budget
from forgeml.control.ops import ControlPlane
from forgeml.governance.audit import audit_log_path, verify_audit_log
from forgeml.governance.keys import create_api_key, revoke_api_key
from forgeml.registry import open_registry


def _folder(path: Path, files: dict[str, str]) -> Path:
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).write_text(text)
    return path


@pytest.fixture
def env(workspace, tmp_path):
    control = ControlPlane(workspace)
    reg = control.reg
    data = reg.add_asset("dataset", "docs", _folder(tmp_path / "d", {"a.txt": "hello"}))
    run = reg.start_run("pretrain", {"lr": 1e-3}, inputs=[data.id])
    m1 = reg.add_asset("model", "m1", _folder(tmp_path / "m1", {"w": "1"}), run_id=run.id)
    reg.finish_run(run.id, status="succeeded", outputs=[m1.id], metrics={"loss": 1.5})
    m2 = reg.add_asset("model", "m2", _folder(tmp_path / "m2", {"w": "2"}))
    ev_run = reg.start_run("eval", {"suite": "ppl"}, inputs=[m1.id])
    ev = reg.add_asset(
        "eval", "m1-eval", _folder(tmp_path / "e", {"results.json": '{"loss": 2.0}'}),
        run_id=ev_run.id,
    )  # fmt: skip
    reg.finish_run(ev_run.id, status="succeeded", outputs=[ev.id], metrics={"perplexity": 7.4})
    keys = {
        name: create_api_key(workspace.root, name, roles=roles)[0]
        for name, roles in {
            "admin": ["admin"],
            "bot": ["agent", "aliases:write", "exports:write"],
            "reader": ["assets:read"],
            "other": ["agent"],
            "cleaner": ["agent", "assets:delete"],
        }.items()
    }
    set_budget(reg, "bot", cpu_hours=1.0, max_concurrent_jobs=2)
    set_budget(reg, "other", cpu_hours=1.0, max_concurrent_jobs=2)
    client = TestClient(create_control_app(control))
    yield {
        "client": client, "keys": keys, "m1": m1, "m2": m2, "ev": ev, "data": data,
        "m2_src": tmp_path / "m2",
    }  # fmt: skip
    control.close()


def _h(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _audit(workspace) -> list[dict]:
    lines = audit_log_path(workspace.root).read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_openapi_schema_lists_every_route(env) -> None:
    c = env["client"]
    assert c.get("/openapi.json").status_code == 401  # it lists internal routes: a key only
    for page in ("/docs", "/redoc", "/docs/oauth2-redirect"):  # no CDN-loaded Swagger UI
        assert c.get(page, headers=_h(env["keys"]["reader"])).status_code == 404
    schema = c.get("/openapi.json", headers=_h(env["keys"]["reader"])).json()
    paths = schema["paths"]
    for p in ("/v1/jobs", "/v1/plan", "/v1/jobs/{job_id}/logs", "/v1/assets/{ref}/lineage",
              "/v1/evals/{ref}", "/v1/aliases/{alias}/promote", "/v1/approvals/{approval_id}/approve"):  # fmt: skip
        assert p in paths, p
    assert "JobRequest" in schema["components"]["schemas"]
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_auth_paths_401_403_without_leaking(env, workspace) -> None:
    c, keys = env["client"], env["keys"]
    bodies = []
    for headers in ({}, _h("nonsense"), _h("fml_abcd_wrong"), _h(keys["bot"] + "x"),
                    {"Authorization": f"Basic {keys['bot']}"}):  # fmt: skip
        r = c.get("/v1/assets", headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        bodies.append(r.json())
    assert all(b == bodies[0] for b in bodies)  # the same answer whatever was wrong
    revoke_api_key(workspace.root, keys["other"])
    assert c.get("/v1/jobs", headers=_h(keys["other"])).status_code == 401
    r = c.get("/v1/jobs", headers=_h(keys["reader"]))  # valid key, no jobs:read
    assert r.status_code == 403 and r.json()["error"]["type"] == "forbidden"
    assert c.get("/v1/assets", headers=_h(keys["reader"])).status_code == 200
    assert c.get("/healthz").status_code == 200
    events = [e["event"] for e in _audit(workspace)]
    assert events.count("control_auth_denied") == 6 and "control_forbidden" in events
    assert not any(keys["bot"].split("_", 2)[2] in json.dumps(e) for e in _audit(workspace))


def test_browse_assets_lineage_runs_evals(env) -> None:
    c, h = env["client"], _h(env["keys"]["reader"])
    ids = {a["id"] for a in c.get("/v1/assets", headers=h).json()}
    assert {env["m1"].id, env["m2"].id, env["data"].id} <= ids
    assert [a["name"] for a in c.get("/v1/assets?kind=eval", headers=h).json()] == ["m1-eval"]
    shown = c.get("/v1/assets/m1", headers=h).json()
    assert shown["id"] == env["m1"].id and shown["run"]["inputs"] == [env["data"].id]
    lin = c.get(f"/v1/assets/{env['m1'].id}/lineage", headers=h).json()
    assert env["data"].id in {n["id"] for n in lin["nodes"]}
    down = c.get(f"/v1/assets/{env['data'].id}/lineage?direction=down", headers=h).json()
    assert env["ev"].id in {n["id"] for n in down["nodes"]}
    assert c.get("/v1/assets/nope", headers=h).status_code == 404
    hb = _h(env["keys"]["bot"])
    runs = c.get("/v1/runs?stage=pretrain", headers=hb).json()
    assert len(runs) == 1 and runs[0]["outputs"] == [env["m1"].id]
    assert c.get(f"/v1/runs/{runs[0]['id']}", headers=hb).json()["metrics"] == {"loss": 1.5}
    ev = c.get("/v1/evals/m1-eval", headers=hb).json()
    assert ev["results"] == {"loss": 2.0} and ev["metrics"] == {"perplexity": 7.4}
    by_model = c.get("/v1/evals/m1", headers=hb).json()
    assert by_model["evals"][0]["id"] == env["ev"].id
    assert c.get("/v1/evals/m1", headers=h).status_code == 403  # reader lacks evals:read


def test_jobs_submit_list_show_logs_cancel_per_principal(env, workspace) -> None:
    c, hb, ho = env["client"], _h(env["keys"]["bot"]), _h(env["keys"]["other"])
    plan = c.post("/v1/plan", json={"args": ["eval", "run", "m1"]}, headers=hb).json()
    assert plan["ok"] and plan["stages"][0]["name"] == "eval run"
    assert c.get("/v1/jobs", headers=hb).json() == []  # a plan queues nothing
    r = c.post("/v1/jobs", json={"args": ["eval", "run", "m1"]}, headers=hb)
    assert r.status_code == 200, r.text
    job = r.json()["job"]
    assert job["status"] == "queued" and job["submitted_by"] == "bot"
    shown = c.get(f"/v1/jobs/{job['id']}", headers=hb).json()
    assert shown["plan"]["principal"] == "bot" and shown["plan"]["ok"]
    assert [j["id"] for j in c.get("/v1/jobs", headers=hb).json()] == [job["id"]]
    # Another principal neither sees nor cancels it; the admin sees everything.
    assert c.get("/v1/jobs", headers=ho).json() == []
    assert c.get(f"/v1/jobs/{job['id']}", headers=ho).status_code == 404
    assert c.post(f"/v1/jobs/{job['id']}/cancel", headers=ho).status_code == 404
    assert len(c.get("/v1/jobs", headers=_h(env["keys"]["admin"])).json()) == 1
    assert c.get(f"/v1/jobs/{job['id']}/logs", headers=hb).status_code == 400  # not run yet
    assert c.post(f"/v1/jobs/{job['id']}/cancel", headers=hb).json()["status"] == "cancelled"
    # Commands outside the agent set are refused with the reason, and audited.
    r = c.post("/v1/jobs", json={"args": ["keys", "create", "--principal", "x"]}, headers=hb)
    assert r.status_code == 403 and r.json()["error"]["type"] == "budget_exceeded"
    assert "cannot be queued" in r.json()["error"]["message"]
    recipe = workspace.root / "r.yaml"
    recipe.write_text("{}\n")
    args = ["pipeline", "run", str(recipe), "--json", "/tmp/x.json"]
    r = c.post("/v1/jobs", json={"args": args}, headers=hb)
    assert r.status_code == 403 and "outside the workspace" in r.json()["error"]["message"]
    # A command that is no job command is refused with the list of job commands.
    r = c.post("/v1/jobs", json={"args": ["eval", "report", "e"]}, headers=hb)
    assert r.status_code == 403 and "cannot be queued as a job" in r.json()["error"]["message"]
    events = [(e["event"], e.get("principal")) for e in _audit(workspace)]
    assert ("job_submitted", "bot") in events and ("job_cancelled", "bot") in events
    assert events.count(("job_refused", "bot")) == 3


def test_a_job_is_submitted_as_a_typed_spec_too(env) -> None:
    """REST takes a job spec as JSON as well as a command line: the same plan, the same
    queued spec; a spec that does not validate is a 422 naming the field."""
    c, hb = env["client"], _h(env["keys"]["bot"])
    spec = {"command": "eval run", "params": {"model": "m1", "max_batches": 2}}
    by_spec = c.post("/v1/plan", json={"spec": spec}, headers=hb).json()
    by_args = c.post(
        "/v1/plan", json={"args": ["eval", "run", "m1", "--max-batches", "2"]}, headers=hb
    ).json()
    assert by_spec["ok"] and by_spec["command"] == "eval run"
    assert by_spec["args"] == by_args["args"] == ["eval", "run", "m1", "--max-batches", "2"]
    job = c.post("/v1/jobs", json={"spec": spec}, headers=hb).json()["job"]
    assert job["spec"]["command"] == "eval run" and job["spec"]["params"]["model"] == "m1"
    assert job["spec"]["params"]["max_batches"] == 2 and job["spec"]["recipe"] is None
    bad = c.post("/v1/plan", json={"spec": {**spec, "params": {"modle": "m1"}}}, headers=hb)
    assert bad.status_code == 422 and "params" in bad.json()["error"]["message"]
    both = c.post("/v1/plan", json={"spec": spec, "args": ["eval", "run", "m1"]}, headers=hb)
    assert both.status_code == 422


def test_promote_production_alias_waits_for_approval(env, workspace) -> None:
    c, hb, ha = env["client"], _h(env["keys"]["bot"]), _h(env["keys"]["admin"])
    m1, m2 = env["m1"].id, env["m2"].id
    # A non-production alias moves at once.
    r = c.post("/v1/aliases/candidate/promote", json={"model": "m1"}, headers=hb).json()
    assert r["status"] == "done" and c.get("/v1/aliases", headers=hb).json()["candidate"] == m1
    # champion: a pending approval, nothing moves.
    r = c.post("/v1/aliases/champion/promote", json={"model": "m1", "reason": "best"}, headers=hb)
    pending = r.json()["approval"]
    assert r.json()["status"] == "pending_approval" and pending["status"] == "pending"
    assert "champion" not in c.get("/v1/aliases", headers=hb).json()
    # The requester cannot decide (no scope), nor can an admin approve its own request.
    assert c.post(f"/v1/approvals/{pending['id']}/approve", headers=hb).status_code == 403
    approved = c.post(f"/v1/approvals/{pending['id']}/approve", headers=ha).json()
    assert approved["status"] == "executed" and approved["decided_by"] == "admin"
    assert c.get("/v1/aliases", headers=hb).json()["champion"] == m1
    again = c.post(f"/v1/approvals/{pending['id']}/approve", headers=ha)
    assert again.status_code == 400  # executed once only
    # A second move of champion is denied: the alias stays.
    r = c.post(
        "/v1/aliases/champion/promote",
        json={"model": "m2", "force": True, "reason": "try"},
        headers=hb,
    ).json()
    denied = c.post(
        f"/v1/approvals/{r['approval']['id']}/deny", json={"reason": "no"}, headers=ha
    ).json()
    assert denied["status"] == "denied"
    assert c.get("/v1/aliases", headers=hb).json()["champion"] == m1
    own = c.post("/v1/aliases/champion/promote", json={"model": "m2"}, headers=ha).json()
    r = c.post(f"/v1/approvals/{own['approval']['id']}/approve", headers=ha)
    assert r.status_code == 400 and "cannot approve" in r.json()["error"]["message"]
    mine = c.get("/v1/approvals", headers=hb).json()
    assert {a["status"] for a in mine} == {"executed", "denied"}  # only bot's own
    # Rollback is direct (undoing a move is the safe direction).
    r = c.post("/v1/aliases/candidate/promote", json={"model": "m2"}, headers=hb)
    assert r.status_code == 400 and "needs a gate" in r.json()["error"]["message"]
    body = {"model": "m2", "force": True, "reason": "manual"}
    assert c.post("/v1/aliases/candidate/promote", json=body, headers=hb).json()["status"] == "done"
    assert c.post("/v1/aliases/candidate/rollback", json={}, headers=hb).json()["asset_id"] == m1
    assert c.get("/v1/aliases", headers=hb).json()["candidate"] == m1
    moves = [(h["action"], h["asset_id"]) for h in control_history(workspace, "candidate")]
    assert moves == [("set", m1), ("set", m2), ("rollback", m1)]
    history = control_history(workspace, "champion")
    assert [h["actor"] for h in history] == ["bot (approved by admin)"]
    events = [e["event"] for e in _audit(workspace)]
    for ev in ("approval_requested", "approval_approved", "approval_executed", "approval_denied",
               "alias_promoted", "alias_rolled_back"):  # fmt: skip
        assert ev in events, ev
    assert verify_audit_log(audit_log_path(workspace.root)).ok


def control_history(workspace, alias: str) -> list[dict]:
    return open_registry(workspace).alias_history(alias)


def test_export_outside_workspace_needs_approval(env, workspace, tmp_path) -> None:
    c, hb = env["client"], _h(env["keys"]["bot"])
    r = c.post("/v1/exports", json={"model": "m1", "out": str(tmp_path / "out")}, headers=hb)
    assert r.json()["status"] == "pending_approval"
    assert not (tmp_path / "out").exists()
    denied = c.post(
        f"/v1/approvals/{r.json()['approval']['id']}/deny",
        json={},
        headers=_h(env["keys"]["admin"]),
    ).json()
    assert denied["status"] == "denied" and not (tmp_path / "out").exists()


def test_delete_asset_waits_for_a_human_and_refuses_what_others_depend_on(env, workspace) -> None:
    c, keys = env["client"], env["keys"]
    hc, ha = _h(keys["cleaner"]), _h(keys["admin"])
    m1, m2 = env["m1"].id, env["m2"].id
    r = c.delete("/v1/assets/m2", headers=_h(keys["bot"]))
    assert r.status_code == 403 and "assets:delete" in r.json()["error"]["message"]
    r = c.delete("/v1/assets/m1", headers=hc)  # its eval was made from it
    assert r.status_code == 400 and env["ev"].id in r.json()["error"]["message"]
    c.post("/v1/aliases/candidate/promote", json={"model": "m2", "force": True, "reason": "x"},
           headers=ha)  # fmt: skip
    r = c.delete("/v1/assets/m2", headers=hc)
    assert r.status_code == 400 and "point at it: candidate" in r.json()["error"]["message"]
    c.post("/v1/aliases/candidate/promote", json={"model": "m1", "force": True, "reason": "x"},
           headers=ha)  # fmt: skip

    r = c.delete("/v1/assets/m2?reason=duplicate", headers=hc).json()
    pending = r["approval"]
    assert r["status"] == "pending_approval" and pending["action"] == "delete"
    assert c.get(f"/v1/assets/{m2}", headers=hc).status_code == 200  # nothing deleted yet
    assert c.post(f"/v1/approvals/{pending['id']}/approve", headers=hc).status_code == 403
    done = c.post(f"/v1/approvals/{pending['id']}/approve", headers=ha).json()
    assert done["status"] == "executed" and done["result"]["asset"] == m2
    gone = c.get(f"/v1/assets/{m2}", headers=hc)
    assert gone.status_code == 404 and "was deleted" in gone.json()["error"]["message"]
    assert not env["m2"].path.exists() and (env["m2_src"] / "w").read_text() == "2"
    assert m2 not in {a["id"] for a in c.get("/v1/assets", headers=hc).json()}
    assert c.get(f"/v1/assets/{m1}", headers=hc).status_code == 200
    events = [(e["event"], e.get("action")) for e in _audit(workspace)]
    assert ("approval_requested", "delete") in events and ("approval_executed", "delete") in events
    assert verify_audit_log(audit_log_path(workspace.root)).ok


def test_eval_html_report_route_is_scoped(env, workspace, tmp_path) -> None:
    import shutil

    from test_eval_report import SUITE, ScriptedLM

    from forgeml.pipeline.eval_suite_stage import eval_suite_stage

    c, keys = env["client"], env["keys"]
    hb = _h(keys["bot"])
    reg = open_registry(workspace)
    suite_eval = reg.get_asset(eval_suite_stage(workspace, "m2", SUITE, lm=ScriptedLM(15)).output)
    r = c.get(f"/v1/evals/{suite_eval.id}/report", headers=hb)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert r.text == (suite_eval.path / "report.html").read_text() and "0.7500" in r.text
    # An eval folder without a stored report is drawn from its results.
    bare = tmp_path / "bare"
    shutil.copytree(suite_eval.path, bare)
    (bare / "report.html").chmod(0o644)
    (bare / "report.html").unlink()
    drawn = reg.add_asset("eval", "bare", bare)
    r = c.get(f"/v1/evals/{drawn.id}/report", headers=hb)
    assert r.status_code == 200 and r.text.startswith("<!DOCTYPE html>") and "0.7500" in r.text
    assert c.get(f"/v1/evals/{drawn.id}/report").status_code == 401
    assert c.get(f"/v1/evals/{drawn.id}/report", headers=_h(keys["reader"])).status_code == 403
    r = c.get(f"/v1/evals/{env['ev'].id}/report", headers=hb)  # a perplexity eval: no report
    assert r.status_code == 404 and "no HTML report" in r.json()["error"]["message"]
    r = c.get("/v1/evals/m1/report", headers=hb)
    assert r.status_code == 400 and "not an eval" in r.json()["error"]["message"]
    assert "/v1/evals/{ref}/report" in c.get("/openapi.json", headers=hb).json()["paths"]
