"""No request can stall or crash the serving API: body caps, early context checks, tokenizing off
the event loop, bad text and tool calls refused with 4xx, text-only models refusing media,
docs off and the schema behind auth, and an audit entry for every response."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
import torch
from test_serve_api import running_server, served_workspace

from forgeml.governance.audit import AuditLog
from forgeml.governance.keys import KeyStore
from forgeml.models.sampling import filter_logits
from forgeml.serve import gateway as serve_gateway
from forgeml.serve.api import create_app
from forgeml.serve.loading import served_under_alias
from forgeml.serve.requests import RequestLimits, context_char_bound


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("robust")
    registry, asset, models = served_workspace(root)
    keys = KeyStore(registry.engine)
    key, _ = keys.create_key(
        "tester", clearance="internal", endpoints=["chat", "completions", "models", "metrics"]
    )
    chat_only, _ = keys.create_key("chatter", clearance="internal", endpoints=["chat"])
    slow_rate, _ = keys.create_key("slowpoke", clearance="internal", requests_per_minute=1)
    audit = AuditLog(root / "audit.jsonl", fsync=False)
    app = create_app(models, keys=keys, audit=audit, log_bodies=True)
    with running_server(app) as url:
        yield {
            "url": url,
            "key": key,
            "chat_only": chat_only,
            "slow_rate": slow_rate,
            "models": models,
            "audit": audit.path,
            "registry": registry,
            "asset": asset,
        }
    for m in models.values():
        m.engine.close()
    registry.close()


def audit_entries(env) -> list[dict]:
    if not env["audit"].exists():
        return []
    return [json.loads(line) for line in env["audit"].read_text().splitlines()]


def post(env, path: str, body: bytes | dict, key: str | None = None, **kw) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {key or env['key']}", "Content-Type": "application/json"}
    return httpx.post(env["url"] + path, content=content, headers=headers, timeout=60, **kw)


def audited(env, send) -> tuple[httpx.Response, list[dict]]:
    """The response of `send()` and the audit entries it added."""
    before = len(audit_entries(env))
    response = send()
    return response, audit_entries(env)[before:]


def chat(messages: list, **extra) -> dict:
    return {"model": "champion", "messages": messages, "max_tokens": 2, **extra}


# -- item 6: one request must not stall the others -------------------------------------------


def test_body_over_the_cap_is_refused_before_parsing(env):
    huge = json.dumps({"model": "champion", "prompt": "x" * 9_000_000}).encode()
    r, added = audited(env, lambda: post(env, "/v1/completions", huge))
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_too_large"
    assert "bytes this server accepts" in r.json()["error"]["message"]
    assert [e["status"] for e in added] == [413]


def test_chunked_body_over_the_cap_is_refused(env):
    # No Content-Length: the cap holds on the bytes actually streamed.
    def chunks():
        yield b'{"model": "champion", "prompt": "'
        for _ in range(100):
            yield b"y" * 100_000
        yield b'"}'

    r = httpx.post(
        env["url"] + "/v1/completions",
        content=chunks(),
        headers={"Authorization": f"Bearer {env['key']}"},
        timeout=60,
    )
    assert r.status_code == 413


def test_healthz_answers_while_huge_requests_are_handled(env):
    huge = json.dumps({"model": "champion", "prompt": "lorem ipsum " * 750_000}).encode()
    statuses: list[int] = []

    def send_huge() -> None:
        statuses.append(post(env, "/v1/completions", huge).status_code)

    senders = [threading.Thread(target=send_huge) for _ in range(2)]
    for t in senders:
        t.start()
    latencies = []
    while any(t.is_alive() for t in senders) or not latencies:
        start = time.monotonic()
        assert httpx.get(env["url"] + "/healthz", timeout=5).status_code == 200
        latencies.append(time.monotonic() - start)
        time.sleep(0.05)
    for t in senders:
        t.join()
    assert statuses == [413, 413]
    assert max(latencies) < 1.0


class SlowTokenizer:
    """The real tokenizer, with an `encode` that takes `delay` seconds and counts its calls."""

    def __init__(self, real, delay: float) -> None:
        self.real, self.delay, self.calls = real, delay, 0

    def encode(self, text: str, *args, **kwargs):
        self.calls += 1
        time.sleep(self.delay)
        return self.real.encode(text, *args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.real, name)


def test_tokenizing_does_not_block_the_event_loop(env, monkeypatch):
    served = env["models"]["champion"]
    slow = SlowTokenizer(served.tokenizer, delay=2.0)
    monkeypatch.setattr(served, "tokenizer", slow)
    result: list[int] = []
    sender = threading.Thread(
        target=lambda: result.append(
            post(
                env, "/v1/completions", {"model": "champion", "prompt": "hi", "max_tokens": 1}
            ).status_code
        )
    )
    sender.start()
    while slow.calls == 0:
        time.sleep(0.01)
    start = time.monotonic()
    assert httpx.get(env["url"] + "/healthz", timeout=5).status_code == 200
    assert time.monotonic() - start < 1.0
    sender.join()
    assert result == [200]


def test_prompt_longer_than_the_context_can_hold_is_refused_without_tokenizing(env, monkeypatch):
    served = env["models"]["champion"]
    bound = context_char_bound(served.tokenizer, served.engine.max_len)
    slow = SlowTokenizer(served.tokenizer, delay=0)
    monkeypatch.setattr(served, "tokenizer", slow)
    r, added = audited(
        env,
        lambda: post(env, "/v1/completions", {"model": "champion", "prompt": "z" * (bound + 1)}),
    )
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "context_length_exceeded"
    assert f"at most {bound} characters" in r.json()["error"]["message"]
    assert slow.calls == 0
    assert [e["status"] for e in added] == [400]


def test_100k_messages_are_refused_quickly(env):
    body = chat([{"role": "user", "content": "a"}] * 100_000)
    start = time.monotonic()
    r = post(env, "/v1/chat/completions", body)
    assert time.monotonic() - start < 3.0
    assert r.status_code == 400
    assert "messages: List should have at most 4096 items" in r.json()["error"]["message"]


def test_configured_message_limit(env):
    models = {"champion": env["models"]["champion"]}
    app = create_app(models, keys=None, limits=RequestLimits(max_messages=3))
    with running_server(app) as url:
        body = chat([{"role": "user", "content": "a"}] * 4)
        r = httpx.post(url + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "too_many_messages"


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "champion", "prompt": ' + b"[" * 200_000 + b"]" * 200_000 + b"}",
        json.dumps({"model": "champion", "prompt": [1] * 600_000 + ["a"]}).encode(),
        json.dumps({"model": "champion", "prompt": [1] * 600_000}).encode(),
        b'"just a string"',
    ],
    ids=["deeply-nested", "huge-mixed-list", "huge-id-list", "not-an-object"],
)
def test_pathological_bodies_are_refused_quickly(env, raw):
    start = time.monotonic()
    r, added = audited(env, lambda: post(env, "/v1/completions", raw))
    assert time.monotonic() - start < 3.0
    assert r.status_code == 400, r.text
    assert [e["status"] for e in added] == [400]


def test_more_messages_than_the_context_holds_are_refused_before_rendering(env):
    r = post(env, "/v1/chat/completions", chat([{"role": "user", "content": ""}] * 300))
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "context_length_exceeded"
    assert "300 messages" in r.json()["error"]["message"]


def test_configured_prompt_limit(env, tmp_path):
    models = {"champion": env["models"]["champion"]}
    app = create_app(models, keys=None, limits=RequestLimits(max_prompt_chars=10))
    with running_server(app) as url:
        body = {"model": "champion", "prompt": "0123456789ab", "max_tokens": 1}
        r = httpx.post(url + "/v1/completions", json=body, timeout=30)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "prompt_too_long"


# -- item 7: inputs that gave 500 --------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "raw", "where"),
    [
        ("/v1/completions", '{"model": "champion", "prompt": "a\\ud800b"}', "prompt"),
        (
            "/v1/chat/completions",
            '{"model": "champion", "messages": [{"role": "user", "content": "\\udfff"}]}',
            "messages[0].content",
        ),
        ("/v1/completions", '{"model": "\\ud800", "prompt": "hi"}', "model"),
        (
            "/v1/completions",
            '{"model": "champion", "prompt": "hi", "stop": ["\\ud800"]}',
            "stop[0]",
        ),
    ],
)
def test_lone_surrogates_are_refused_with_400(env, path, raw, where):
    r, added = audited(env, lambda: post(env, path, raw.encode()))
    assert r.status_code == 400, r.text
    message = r.json()["error"]["message"]
    assert where in message and "lone UTF-16 surrogate" in message
    assert [e["status"] for e in added] == [400]


@pytest.mark.parametrize(
    "call",
    [
        {"type": "function", "function": {"arguments": "{}"}},
        {"type": "function", "function": "lookup"},
        {"type": "function", "function": {"name": 3, "arguments": "{}"}},
    ],
)
def test_assistant_tool_call_without_a_name_is_refused_with_400(env, call):
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "x", "content": "42"},
    ]
    r, added = audited(env, lambda: post(env, "/v1/chat/completions", chat(messages)))
    assert r.status_code == 400, r.text
    assert "messages[1].tool_calls[0]: a tool call needs a function name" in r.text
    assert [e["status"] for e in added] == [400]


def test_render_chat_names_the_tool_call_without_a_name():
    from forgeml.core.errors import DataError
    from forgeml.tokenizer.chat import render_chat

    messages = [{"role": "assistant", "tool_calls": [{"id": "1", "function": {}}]}]
    with pytest.raises(DataError, match=r"messages\[0\]\.tool_calls\[0\]: a tool call needs"):
        render_chat(messages)


def test_top_p_below_float32_keeps_the_top_token():
    logits = torch.tensor([0.1, 3.0, -1.0, 2.0])
    kept = filter_logits(logits, top_p=1e-46)
    assert torch.isfinite(kept).tolist() == [False, True, False, False]


def test_tiny_top_p_generates(env):
    body = {"model": "champion", "prompt": "hi", "max_tokens": 3, "top_p": 1e-46, "seed": 1}
    r = post(env, "/v1/completions", body)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["finish_reason"] in ("stop", "length")


def test_unexpected_error_is_a_json_500_and_audited(env, monkeypatch):
    def broken(*_a, **_k):
        raise RuntimeError("boom")

    monkeypatch.setattr(serve_gateway, "render_chat", broken)
    r, added = audited(
        env,
        lambda: post(env, "/v1/chat/completions", chat([{"role": "user", "content": "hi"}])),
    )
    assert r.status_code == 500
    assert r.json()["error"]["code"] == "internal_error"
    assert "boom" not in r.text
    assert [e["status"] for e in added] == [500]
    # The server is still up.
    assert httpx.get(env["url"] + "/healthz", timeout=5).status_code == 200


def test_every_failed_request_is_audited(env):
    def bare(method: str, path: str, **kw):
        return lambda: httpx.request(method, env["url"] + path, timeout=30, **kw)

    cases = {
        401: bare("POST", "/v1/completions", json={"model": "champion"}),
        403: lambda: post(env, "/v1/completions", {"model": "champion"}, key=env["chat_only"]),
        404: bare("GET", "/nowhere"),
        405: bare("DELETE", "/v1/models"),
        400: lambda: post(env, "/v1/completions", b"{not json"),
        413: lambda: post(env, "/v1/completions", b"x" * 100_000_000),
    }
    for status, send in cases.items():
        r, added = audited(env, send)
        assert r.status_code == status, (status, r.text)
        assert len(added) == 1 and added[0]["status"] == status, (status, added)
    unknown = {"model": "nope", "prompt": "hi"}
    r, added = audited(env, lambda: post(env, "/v1/completions", unknown))
    assert r.status_code == 404 and [e["status"] for e in added] == [404]
    body = {"model": "champion", "prompt": "hi", "max_tokens": 1}
    post(env, "/v1/completions", body, key=env["slow_rate"])
    r, added = audited(env, lambda: post(env, "/v1/completions", body, key=env["slow_rate"]))
    assert r.status_code == 429 and [e["status"] for e in added] == [429]


def test_successful_reads_are_audited_but_not_health_probes(env):
    headers = {"Authorization": f"Bearer {env['key']}"}
    r, added = audited(env, lambda: httpx.get(env["url"] + "/v1/models", headers=headers))
    assert r.status_code == 200
    assert [(e["event"], e["endpoint"], e["status"], e["principal"]) for e in added] == [
        ("http_request", "models", 200, "tester")
    ]
    r, added = audited(env, lambda: httpx.get(env["url"] + "/healthz"))
    assert r.status_code == 200 and added == []


# -- items 11 and 12: docs, media parts -------------------------------------------------------


def test_no_cdn_docs_and_the_schema_needs_a_key(env):
    for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        assert httpx.get(env["url"] + path).status_code == 404
    assert httpx.get(env["url"] + "/openapi.json").status_code == 401
    headers = {"Authorization": f"Bearer {env['key']}"}
    schema = httpx.get(env["url"] + "/openapi.json", headers=headers).json()
    assert "/v1/chat/completions" in schema["paths"]
    assert "/openapi.json" not in schema["paths"]
    chat_only = {"Authorization": f"Bearer {env['chat_only']}"}
    assert httpx.get(env["url"] + "/openapi.json", headers=chat_only).status_code == 403


@pytest.mark.parametrize(
    "part",
    [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
        {"type": "file", "file": {"file_id": "f"}},
    ],
)
def test_media_parts_to_a_text_only_model_are_refused(env, part):
    content = [{"type": "text", "text": "what is this?"}, part]
    r, added = audited(
        env, lambda: post(env, "/v1/chat/completions", chat([{"role": "user", "content": content}]))
    )
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "unsupported_content"
    assert (
        f'model champion takes text only; content part type "{part["type"]}"' in (error["message"])
    )
    assert [e["status"] for e in added] == [400]


def test_text_parts_are_still_served(env):
    content = [{"type": "text", "text": "hello "}, {"type": "text", "text": "there"}]
    r = post(env, "/v1/chat/completions", chat([{"role": "user", "content": content}]))
    assert r.status_code == 200, r.text


# -- item 16: serve MODEL --alias NAME -------------------------------------------------------


def test_served_under_alias_answers_to_the_alias_and_its_ref(env):
    models = served_under_alias({"tiny": env["models"]["champion"]}, "best")
    app = create_app(models, keys=None)
    with running_server(app) as url:
        listed = httpx.get(url + "/v1/models").json()["data"]
        assert [m["id"] for m in listed] == ["best"]
        for name in ("best", "champion", env["asset"].id):
            body = {"model": name, "prompt": "hi", "max_tokens": 1}
            r = httpx.post(url + "/v1/completions", json=body, timeout=30)
            assert r.status_code == 200, (name, r.text)
            assert r.json()["model"] == "best"


def test_serve_command_serves_the_model_under_its_alias(tmp_path, monkeypatch):
    """`forgeml serve MODEL --alias champion` answers to model="champion"."""
    import uvicorn
    from starlette.testclient import TestClient
    from test_serve_engine import make_tiny_model_dir
    from typer.testing import CliRunner

    from forgeml.cli import app as cli_app
    from forgeml.core.workspace import init_workspace
    from forgeml.registry.store import Registry

    ws = init_workspace(tmp_path / "ws")
    registry = Registry(ws.registry_url, ws.artifacts_dir)
    asset = registry.add_asset("model", "tiny", make_tiny_model_dir(tmp_path, max_seq_len=64))
    registry.close()
    answers: list[tuple[int, str]] = []

    def run(app, **_kwargs) -> None:
        with TestClient(app) as client:
            for name in ("champion", "tiny"):
                body = {"model": name, "prompt": "hi", "max_tokens": 1}
                r = client.post("/v1/completions", json=body)
                answers.append((r.status_code, r.json().get("model")))

    monkeypatch.setattr(uvicorn, "run", run)
    result = CliRunner().invoke(
        cli_app, ["-w", str(ws.root), "serve", asset.id, "--alias", "champion", "--no-auth"]
    )
    assert result.exit_code == 0, result.output
    assert answers == [(200, "champion"), (200, "champion")]


def test_alias_needs_exactly_one_model(env):
    from forgeml.core.errors import ConfigError

    two = {"a": env["models"]["champion"], "b": env["models"]["champion"]}
    with pytest.raises(ConfigError, match="names one served model"):
        served_under_alias(two, "champion")
