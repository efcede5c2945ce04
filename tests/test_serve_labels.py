"""A served model's classification label is read from the registry as requests come in (through
a cache of `LABEL_TTL_S` seconds), so relabelling its training data reaches a running server
without a restart."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
from test_serve_api import running_server
from test_serve_engine import make_tiny_model_dir

from forgeml.governance.audit import AuditLog, audit_log_path
from forgeml.governance.keys import KeyStore
from forgeml.governance.labels import set_label
from forgeml.registry import Asset, Registry
from forgeml.serve.api import create_app
from forgeml.serve.loading import LABEL_TTL_S, CurrentLabel, load_served_models


def _trained_model(reg: Registry, tmp_path: Path, label: str) -> tuple[Asset, Asset]:
    """(dataset labelled `label`, the model a run trained on it), the model unlabelled."""
    folder = tmp_path / "hr"
    folder.mkdir()
    (folder / "part.txt").write_text("hr")
    data = reg.add_asset("dataset", "hr", folder, metadata={"classification": label})
    run = reg.start_run("pretrain", {"steps": 1}, inputs=[data.id])
    model = reg.add_asset("model", "tiny", make_tiny_model_dir(tmp_path), run_id=run.id)
    reg.finish_run(run.id, status="succeeded", outputs=[model.id])
    return data, model


def test_current_label_is_cached_for_its_ttl(tmp_path) -> None:
    reg = Registry(f"sqlite:///{tmp_path / 'registry.db'}", tmp_path / "artifacts")
    try:
        data, model = _trained_model(reg, tmp_path, "internal")
        label = CurrentLabel(reg, [model.id], ttl=3600)
        assert label.latest == "internal"
        set_label(reg, data.id, "confidential")
        assert asyncio.run(label.current()) == "internal"  # within the ttl: not re-read
        label.ttl = 0
        assert asyncio.run(label.current()) == "confidential"
    finally:
        reg.close()


def test_relabelled_training_data_is_enforced_by_a_running_server(tmp_path) -> None:
    reg = Registry(f"sqlite:///{tmp_path / 'registry.db'}", tmp_path / "artifacts")
    data, model = _trained_model(reg, tmp_path, "internal")
    reg.set_alias("champion", model.id)
    token, _ = KeyStore(reg.engine).create_key("app", clearance="internal")
    models = load_served_models(reg, ["champion"], max_batch=2, max_queue=4)
    assert models["champion"].label == "internal"
    audit = AuditLog(audit_log_path(tmp_path), fsync=False)
    app = create_app(models, keys=KeyStore(reg.engine), audit=audit)
    body = {"model": "champion", "prompt": "the", "max_tokens": 2, "temperature": 0}
    try:
        with running_server(app) as url:

            def status() -> int:
                headers = {"Authorization": f"Bearer {token}"}
                return httpx.post(f"{url}/v1/completions", json=body, headers=headers).status_code

            assert status() == 200
            set_label(reg, data.id, "restricted")  # an upgrade: immediate, no approval
            time.sleep(LABEL_TTL_S)
            assert status() == 403
    finally:
        for m in models.values():
            m.engine.close()
        reg.close()
    events = [json.loads(x) for x in audit_log_path(tmp_path).read_text().splitlines()]
    requests = [e for e in events if e["event"] == "request"]
    assert [e["status"] for e in requests] == [200, 403]
    assert requests[-1]["decisions"][0]["rule"] == "classification"
