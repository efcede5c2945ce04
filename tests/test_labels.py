"""Classification labels flow along the lineage to every derived asset and are enforced where
data leaves: serving (403 below the model's effective label), plus `assets label` with an
audited upgrade and an approved downgrade."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from test_serve_api import running_server
from test_serve_engine import make_tiny_model_dir
from typer.testing import CliRunner

from forgeml.cli import app
from forgeml.core.config import TokenizerConfig
from forgeml.core.errors import ForgeError
from forgeml.governance.audit import audit_log_path
from forgeml.governance.labels import (
    effective_label,
    label_origin,
    own_label,
    set_label,
    stamp_effective_label,
)
from forgeml.pipeline.ingest_stage import ingest_stage
from forgeml.pipeline.tokenizer_stage import tokenizer_stage
from forgeml.registry import Registry, open_registry


def _folder(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "part.txt").write_text(name)
    return folder


@pytest.fixture
def reg(tmp_path):
    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}", tmp_path / "artifacts")
    yield registry
    registry.close()


def _factory(reg: Registry, tmp_path: Path, label: str | None = "restricted") -> dict[str, str]:
    """dataset -> (tokenizer run) tokenizer -> (pack) shards -> (pretrain) model -> adapter,
    merged model, eval: the assets of a real pipeline, registered with their lineage."""
    meta = {"classification": label} if label else {}
    ids = {"dataset": reg.add_asset("dataset", "hr", _folder(tmp_path, "d"), metadata=meta).id}

    def stage(name: str, kind: str, inputs: list[str]) -> str:
        run = reg.start_run(name, {"stage": name}, inputs=inputs)
        asset = reg.add_asset(kind, name, _folder(tmp_path, name), run_id=run.id)
        reg.finish_run(run.id, status="succeeded", outputs=[asset.id])
        return asset.id

    ids["tokenizer"] = stage("tokenizer", "tokenizer", [ids["dataset"]])
    ids["shards"] = stage("pack", "dataset", [ids["dataset"], ids["tokenizer"]])
    ids["model"] = stage("pretrain", "model", [ids["shards"], ids["tokenizer"]])
    ids["adapter"] = reg.add_asset(
        "adapter", "lora", _folder(tmp_path, "lora"), parents=[ids["model"]]
    ).id
    ids["merged"] = stage("merge", "model", [ids["adapter"]])
    ids["eval"] = stage("eval", "eval", [ids["merged"]])
    return ids


def test_label_reaches_every_derived_asset(reg, tmp_path) -> None:
    ids = _factory(reg, tmp_path)
    for kind, asset_id in ids.items():
        assert effective_label(reg, reg.get_asset(asset_id)) == "restricted", kind
    label, source = label_origin(reg, reg.get_asset(ids["eval"]))
    assert (label, source) == ("restricted", ids["dataset"])


def test_unlabelled_lineage_has_no_label(reg, tmp_path) -> None:
    ids = _factory(reg, tmp_path, label=None)
    assert effective_label(reg, reg.get_asset(ids["eval"])) is None
    # The most sensitive of several inputs wins, wherever it comes in.
    set_label(reg, ids["tokenizer"], "confidential")
    assert effective_label(reg, reg.get_asset(ids["model"])) == "confidential"
    assert effective_label(reg, reg.get_asset(ids["dataset"])) is None  # upstream untouched


def test_relabelling_an_input_reaches_derived_assets(reg, tmp_path) -> None:
    ids = _factory(reg, tmp_path, label="internal")
    model = reg.get_asset(ids["model"])
    set_label(reg, ids["model"], "confidential")  # the model's own label, above its data's
    change = set_label(reg, ids["dataset"], "restricted")  # an upgrade: immediate
    assert change.effective == "restricted" and not change.downgrade
    assert effective_label(reg, model) == "restricted"
    stamped = reg.get_asset(ids["eval"]).metadata
    assert stamped["classification"] == "restricted"
    assert stamped["classification_from"] == ids["dataset"]
    assert own_label(reg.get_asset(ids["model"])) == "confidential"  # kept while inherited
    assert ids["eval"] in change.restamped
    with pytest.raises(ForgeError, match="needs an approval"):
        set_label(reg, ids["dataset"], "public")
    set_label(reg, ids["dataset"], "public", allow_downgrade=True)
    assert effective_label(reg, reg.get_asset(ids["tokenizer"])) == "public"
    assert effective_label(reg, reg.get_asset(ids["eval"])) == "confidential"  # the model's
    assert reg.get_asset(ids["eval"]).metadata["classification_from"] == ids["model"]
    with pytest.raises(ForgeError, match="unknown label"):
        set_label(reg, ids["dataset"], "secret")


def test_stages_stamp_the_inherited_label(workspace, text_folder) -> None:
    raw = ingest_stage(workspace, [text_folder], name="docs").output
    set_label(open_registry(workspace), raw, "restricted")
    tok = tokenizer_stage(workspace, raw, TokenizerConfig(vocab_size=300)).output
    meta = open_registry(workspace).get_asset(tok).metadata
    assert meta["classification"] == "restricted" and meta["classification_from"] == raw


def _served(tmp_path: Path, train_label: str | None):
    """A model registered as trained on a dataset labelled `train_label` (the model itself
    carries no label), served behind keys of three clearances."""
    from forgeml.governance.audit import AuditLog
    from forgeml.governance.keys import KeyStore
    from forgeml.serve.api import create_app
    from forgeml.serve.loading import load_served_models

    reg = Registry(f"sqlite:///{tmp_path / 'registry.db'}", tmp_path / "artifacts")
    meta = {"classification": train_label} if train_label else {}
    data = reg.add_asset("dataset", "hr", _folder(tmp_path, "hr"), metadata=meta)
    run = reg.start_run("pretrain", {"steps": 1}, inputs=[data.id])
    model = reg.add_asset("model", "tiny", make_tiny_model_dir(tmp_path), run_id=run.id)
    reg.finish_run(run.id, status="succeeded", outputs=[model.id])
    reg.set_alias("champion", model.id)
    assert "classification" not in model.metadata
    keys = KeyStore(reg.engine)
    tokens = {c: keys.create_key(c or "nobody", clearance=c)[0] for c in ("public", None)}
    tokens["restricted"] = keys.create_key("cleared", clearance="restricted")[0]
    models = load_served_models(reg, ["champion"], max_batch=2, max_queue=4)
    audit = AuditLog(audit_log_path(tmp_path), fsync=False)
    return reg, models, tokens, create_app(models, keys=keys, audit=audit)


def test_serving_refuses_keys_below_the_training_data_label(tmp_path) -> None:
    reg, models, tokens, served_app = _served(tmp_path, "restricted")
    body = {"model": "champion", "prompt": "the", "max_tokens": 2, "temperature": 0}
    try:
        with running_server(served_app) as url:

            def status(token: str) -> int:
                headers = {"Authorization": f"Bearer {token}"}
                return httpx.post(f"{url}/v1/completions", json=body, headers=headers).status_code

            assert status(tokens["public"]) == 403
            assert status(tokens[None]) == 403  # no clearance: the lowest level
            assert status(tokens["restricted"]) == 200
    finally:
        for m in models.values():
            m.engine.close()
        reg.close()
    events = [json.loads(x) for x in audit_log_path(tmp_path).read_text().splitlines()]
    denied = [e for e in events if e.get("status") == 403]
    assert len(denied) == 2 and all(e["decisions"][0]["rule"] == "classification" for e in denied)


def test_cli_label_upgrade_is_immediate_and_downgrade_needs_approval(workspace, tmp_path) -> None:
    from forgeml.governance.keys import create_api_key

    reg = open_registry(workspace)
    ids = _factory(reg, tmp_path, label="internal")
    runner = CliRunner()
    w = ["-w", str(workspace.root)]
    r = runner.invoke(app, [*w, "assets", "label", ids["dataset"], "restricted", "--reason", "hr"])
    assert r.exit_code == 0, r.output
    assert effective_label(reg, reg.get_asset(ids["model"])) == "restricted"
    r = runner.invoke(app, [*w, "assets", "label", ids["dataset"], "public"])
    assert r.exit_code == 0 and "needs an approval" in r.output, r.output
    assert effective_label(reg, reg.get_asset(ids["model"])) == "restricted"  # not yet
    pending = r.output.split("approval: ")[1].split()[0]
    key, _ = create_api_key(workspace.root, "alice", roles=["approver"])
    (tmp_path / "alice.key").write_text(key + "\n")
    r = runner.invoke(
        app, [*w, "approvals", "approve", pending, "--key-file", str(tmp_path / "alice.key")]
    )
    assert r.exit_code == 0 and "executed" in r.output, r.output
    assert effective_label(reg, reg.get_asset(ids["model"])) == "public"
    r = runner.invoke(app, [*w, "assets", "label", ids["dataset"], "secret"])
    assert isinstance(r.exception, ForgeError) and "unknown label" in str(r.exception)
    events = [json.loads(x) for x in audit_log_path(workspace.root).read_text().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds.count("asset_labelled") == 1 and "approval_requested" in kinds
    labelled = next(e for e in events if e["event"] == "asset_labelled")
    assert labelled["label"] == "restricted" and labelled["reason"] == "hr"
    assert labelled["previous"] == "internal"


def test_stamp_is_idempotent(reg, tmp_path) -> None:
    ids = _factory(reg, tmp_path)
    first = stamp_effective_label(reg, ids["model"])
    assert first.metadata["classification"] == "restricted"
    assert stamp_effective_label(reg, ids["model"]).metadata == first.metadata


def test_control_plane_reads_and_exports_need_clearance(workspace, tmp_path) -> None:
    from forgeml.control.ops import ControlPlane, Forbidden
    from forgeml.governance.keys import Principal

    control = ControlPlane(workspace)
    ids = _factory(control.reg, tmp_path)
    low = Principal("bot", "k1", roles=("viewer", "exports:write"), clearance="internal")
    high = Principal("boss", "k2", roles=("viewer", "exports:write"), clearance="restricted")
    try:
        assert [a["id"] for a in control.list_assets(low)] == []
        assert {a["id"] for a in control.list_assets(high)} == set(ids.values())
        for read in (control.show_asset, control.lineage, control.read_eval):
            with pytest.raises(Forbidden, match="labelled restricted"):
                read(low, ids["eval"])
        with pytest.raises(Forbidden, match="inherited from " + ids["dataset"]):
            control.show_run(low, reg_run(control, ids["model"]))
        with pytest.raises(Forbidden, match="may not export"):
            control.export(low, ids["model"], str(tmp_path / "out"))
        assert control.show_asset(high, ids["eval"])["metadata"] == {}
        assert len(control.lineage(high, ids["eval"])["nodes"]) > 5
        set_label(control.reg, ids["dataset"], "public", allow_downgrade=True)
        set_label(control.reg, ids["model"], "restricted")  # the model, not its data
        up = control.lineage(low, ids["tokenizer"], "down")  # what was made from it
        assert ids["tokenizer"] in {n["id"] for n in up["nodes"]}
        assert ids["model"] not in {n["id"] for n in up["nodes"]}  # above the key: hidden
    finally:
        control.close()


def reg_run(control, asset_id: str) -> str:
    return control.reg.get_asset(asset_id).producer_run


def test_cli_export_needs_a_key_cleared_for_the_model(workspace, tmp_path) -> None:
    from forgeml.governance.keys import create_api_key

    reg = open_registry(workspace)
    data = reg.add_asset(
        "dataset", "hr", _folder(tmp_path, "hr"), metadata={"classification": "confidential"}
    )
    run = reg.start_run("pretrain", {"steps": 1}, inputs=[data.id])
    model = reg.add_asset("model", "tiny", make_tiny_model_dir(tmp_path), run_id=run.id)
    reg.finish_run(run.id, status="succeeded", outputs=[model.id])
    runner = CliRunner()
    export = ["-w", str(workspace.root), "export", model.id, "--out", str(tmp_path / "hf")]
    r = runner.invoke(app, export, env={"FORGEML_API_KEY": ""})
    assert isinstance(r.exception, ForgeError) and "clearance none may not export" in str(
        r.exception
    )
    assert not (tmp_path / "hf").exists()
    low = create_api_key(workspace.root, "eve", clearance="internal")[0]
    r = runner.invoke(app, export, env={"FORGEML_API_KEY": low})
    assert isinstance(r.exception, ForgeError) and "labelled confidential" in str(r.exception)
    ok = create_api_key(workspace.root, "carol", clearance="confidential")[0]
    (tmp_path / "carol.key").write_text(ok)
    r = runner.invoke(app, [*export, "--key-file", str(tmp_path / "carol.key")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "hf" / "config.json").is_file()


def test_rest_label_endpoint_upgrades_at_once_and_asks_approval_to_lower(workspace, tmp_path):
    from fastapi.testclient import TestClient

    from forgeml.control.api import create_control_app
    from forgeml.control.ops import ControlPlane
    from forgeml.governance.keys import create_api_key

    control = ControlPlane(workspace)
    ids = _factory(control.reg, tmp_path, label=None)
    keys = {
        name: create_api_key(workspace.root, name, roles=roles, clearance="restricted")[0]
        for name, roles in {"labeller": ["viewer", "assets:label"], "viewer": ["viewer"]}.items()
    }
    client = TestClient(create_control_app(control))

    def label(key: str, ref: str, body: dict) -> httpx.Response:
        headers = {"Authorization": f"Bearer {keys[key]}"}
        return client.post(f"/v1/assets/{ref}/label", json=body, headers=headers)

    try:
        assert label("viewer", ids["dataset"], {"level": "restricted"}).status_code == 403
        bad = label("labeller", ids["dataset"], {"level": "secretest"})
        assert bad.status_code == 400 and "unknown label" in bad.json()["error"]["message"]
        up = label("labeller", ids["dataset"], {"level": "restricted", "reason": "HR data"})
        assert up.status_code == 200 and up.json()["status"] == "done"
        assert effective_label(control.reg, control.reg.get_asset(ids["model"])) == "restricted"
        down = label("labeller", ids["dataset"], {"level": "public"})
        assert down.status_code == 200 and down.json()["status"] == "pending_approval"
        assert own_label(control.reg.get_asset(ids["dataset"])) == "restricted"  # not yet
        events = [json.loads(x)["event"] for x in audit_log_path(workspace.root).open()]
        assert "asset_labelled" in events and "approval_requested" in events
    finally:
        control.close()
