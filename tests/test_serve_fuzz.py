"""Schemathesis against the serving API's own OpenAPI schema, with a valid key, on a live
server: valid and invalid requests to every operation, and no answer is a 5xx or goes
unaudited."""

from __future__ import annotations

import json

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from test_serve_api import running_server
from test_serve_engine import make_tiny_model_dir

from forgeml.governance.audit import AuditLog
from forgeml.governance.keys import KeyStore
from forgeml.governance.policy import Policy, PolicyConfig
from forgeml.registry.store import Registry
from forgeml.serve.api import create_app
from forgeml.serve.loading import load_served_models

POSITIVE, NEGATIVE = GenerationMode.POSITIVE, GenerationMode.NEGATIVE
# (method, path, valid or invalid requests, how many): a few hundred in all. The GET routes
# take no parameters, so they have no invalid requests to make.
CASES = [
    ("POST", "/v1/chat/completions", POSITIVE, 100),
    ("POST", "/v1/chat/completions", NEGATIVE, 60),
    ("POST", "/v1/completions", POSITIVE, 80),
    ("POST", "/v1/completions", NEGATIVE, 45),
    ("GET", "/v1/models", POSITIVE, 5),
    ("GET", "/metrics", POSITIVE, 5),
    ("GET", "/healthz", POSITIVE, 5),
]


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    registry = Registry(f"sqlite:///{root / 'registry.db'}", root / "artifacts")
    model_dir = make_tiny_model_dir(root, max_seq_len=64)
    asset = registry.add_asset("model", "tiny", model_dir, metadata={"classification": "internal"})
    registry.set_alias("champion", asset.id)
    models = load_served_models(registry, ["champion"], max_batch=4, max_queue=16)
    keys = KeyStore(registry.engine)
    key, _ = keys.create_key(
        "fuzzer", clearance="internal", endpoints=["chat", "completions", "models", "metrics"]
    )
    policy = Policy(
        PolicyConfig.model_validate(
            {"default": {"input": {"redact": ["email"]}, "output": {"max_tokens": 4}}}
        )
    )
    audit = AuditLog(root / "audit.jsonl", fsync=False)
    app = create_app(models, keys=keys, policy=policy, audit=audit, log_bodies=True)
    with running_server(app) as url:
        yield {"url": url, "key": key, "audit": audit.path, "schema": app.openapi()}
    for m in models.values():
        m.engine.close()
    registry.close()


def audit_count(path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def served_model_sometimes(case, use_champion: bool):
    """Point half the valid-looking bodies at the served model, so generation is fuzzed too
    (a random model name is only ever a 404)."""
    if use_champion and isinstance(case.body, dict) and "model" in case.body:
        case.body["model"] = "champion"
    return case


@pytest.mark.parametrize(("method", "path", "mode", "examples"), CASES)
def test_fuzzed_requests_get_no_5xx_and_are_all_audited(fuzzed, method, path, mode, examples):
    schema = schemathesis.openapi.from_dict(fuzzed["schema"])
    operation = schema[path][method]
    cases = st.tuples(operation.as_strategy(generation_mode=mode), st.booleans()).map(
        lambda pair: served_model_sometimes(*pair)
    )
    headers = {"Authorization": f"Bearer {fuzzed['key']}"}

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases)
    def check(case) -> None:
        before = audit_count(fuzzed["audit"])
        response = case.call(base_url=fuzzed["url"], headers=headers, timeout=60)
        detail = f"{method} {path} {json.dumps(case.body, default=str)[:500]} -> {response.text}"
        assert response.status_code < 500, detail
        if path != "/healthz" or response.status_code != 200:
            assert audit_count(fuzzed["audit"]) > before, f"not audited: {detail}"

    check()
