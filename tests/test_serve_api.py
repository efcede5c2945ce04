"""OpenAI-compatible API, driven by the official `openai` client against a live uvicorn server:
chat and completions, streaming and not, seeds, stops, tools, models, health, metrics."""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time
from contextlib import contextmanager

import httpx
import openai
import pytest
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_serve_engine import make_tiny_model_dir

from forgeml.governance.audit import AuditLog, verify_audit_log
from forgeml.governance.keys import KeyStore
from forgeml.registry.store import Registry
from forgeml.serve.api import create_app
from forgeml.serve.engine import SamplingParams
from forgeml.serve.loading import load_served_models
from forgeml.serve.output import parse_tool_calls


@contextmanager
def running_server(app):
    """Serve `app` in a thread on a loopback port the OS picks as the server binds (port 0:
    no window between choosing a free port and binding it for another process to take it);
    yields the base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive(), "server failed to start"
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def served_workspace(root, refs=("champion",), max_batch=4, max_queue=32):
    """A registry holding the tiny model (alias `champion`), its loaded models and key store."""
    model_dir = make_tiny_model_dir(root, max_seq_len=512)
    registry = Registry(f"sqlite:///{root / 'registry.db'}", root / "artifacts")
    asset = registry.add_asset("model", "tiny", model_dir, metadata={"classification": "internal"})
    registry.set_alias("champion", asset.id)
    models = load_served_models(registry, list(refs), max_batch=max_batch, max_queue=max_queue)
    return registry, asset, models


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    registry, asset, models = served_workspace(root)
    keys = KeyStore(registry.engine)
    key, _ = keys.create_key(
        "tester", clearance="internal", endpoints=["chat", "completions", "models", "metrics"]
    )
    audit = AuditLog(root / "audit.jsonl", fsync=False)
    app = create_app(models, keys=keys, audit=audit, log_bodies=True)
    with running_server(app) as url:
        yield {"url": url, "key": key, "asset": asset, "models": models, "audit": audit.path}
    for m in models.values():
        m.engine.close()
    registry.close()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server["url"] + "/v1", api_key=server["key"], max_retries=0)


MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the factory"}]


def test_chat_non_streaming(client, server):
    r = client.chat.completions.create(
        model="champion", messages=MESSAGES, max_tokens=12, temperature=0
    )
    assert r.object == "chat.completion"
    assert r.model == "champion"
    assert r.system_fingerprint == server["asset"].id
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason in ("stop", "length")
    assert 0 < r.usage.completion_tokens <= 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    # The same greedy request through the engine directly gives the same text.
    from forgeml.tokenizer.chat import render_chat

    served = server["models"]["champion"]
    ids = served.tokenizer.encode(render_chat(MESSAGES, add_generation_prompt=True)).ids
    direct = served.engine.generate(ids, SamplingParams(max_tokens=12, temperature=0))
    assert r.choices[0].message.content == direct.text


def test_chat_streaming_equals_non_streaming(client):
    kwargs = dict(model="champion", messages=MESSAGES, max_tokens=20, temperature=0.8, seed=11)
    whole = client.chat.completions.create(**kwargs)
    chunks = list(
        client.chat.completions.create(
            **kwargs, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert len(chunks) > 3


def test_completions_streaming_and_not(client):
    kwargs = dict(model="champion", prompt="alice and bob", max_tokens=15, temperature=0)
    whole = client.completions.create(**kwargs)
    assert whole.object == "text_completion" and whole.usage.completion_tokens > 0
    parts = list(client.completions.create(**kwargs, stream=True))
    assert "".join(p.choices[0].text for p in parts) == whole.choices[0].text


def test_completions_by_token_ids_and_asset_id(client, server):
    r = client.completions.create(
        model=server["asset"].id, prompt=[20, 21, 22], max_tokens=4, temperature=0
    )
    assert r.usage.prompt_tokens == 3


def test_concurrent_seeded_requests_equal_solo(client):
    def ask(i: int) -> str:
        r = client.completions.create(
            model="champion", prompt=f"the lab {i}", max_tokens=10 + i, temperature=1.0, seed=i
        )
        return r.choices[0].text

    solo = [ask(i) for i in range(12)]
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        together = list(pool.map(ask, range(12)))
    assert together == solo
    assert len(set(solo)) > 6


def test_stop_sequence(client):
    free = client.completions.create(model="champion", prompt="ship", max_tokens=30, temperature=0)
    text = free.choices[0].text
    assert len(text) > 8
    stop = text[4:7]
    r = client.completions.create(
        model="champion", prompt="ship", max_tokens=30, temperature=0, stop=[stop]
    )
    assert r.choices[0].text == text[: text.find(stop)]
    assert r.choices[0].finish_reason == "stop"


def test_models_health_metrics(client, server):
    # Its own chat request, so the counter below does not rest on what earlier tests sent.
    client.chat.completions.create(model="champion", messages=MESSAGES, max_tokens=2)
    assert [m.id for m in client.models.list().data] == ["champion"]
    assert httpx.get(server["url"] + "/healthz").json() == {"status": "ok"}
    metrics = httpx.get(
        server["url"] + "/metrics", headers={"Authorization": f"Bearer {server['key']}"}
    )
    assert metrics.status_code == 200
    assert "# TYPE forgeml_requests_total counter" in metrics.text
    assert 'forgeml_requests_total{endpoint="chat",model="champion",status="200"}' in metrics.text
    assert "forgeml_request_seconds_bucket" in metrics.text


def test_invalid_bodies_are_400(client, server):
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="champion", messages=[], max_tokens=3)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="champion", prompt="x", temperature=9)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nosuch", prompt="x")
    with pytest.raises(openai.BadRequestError, match="seed"):
        client.completions.create(model="champion", prompt="x", seed=2**70)
    tiny_t = client.completions.create(model="champion", prompt="x", temperature=1e-300)
    assert tiny_t.usage.completion_tokens > 0
    with pytest.raises(openai.BadRequestError, match="context"):
        client.completions.create(model="champion", prompt=[20] * 600)
    r = httpx.post(
        server["url"] + "/v1/completions",
        content=b"{not json",
        headers={"Authorization": f"Bearer {server['key']}", "Content-Type": "application/json"},
    )
    assert r.status_code == 400 and "error" in r.json()


def test_tools_rendered_and_tool_calls_parsed():
    content, calls, errors = parse_tool_calls(
        'checking\n<tool_call>{"name": "lookup", "arguments": {"id": 7}}</tool_call>\n'
        "<tool_call>{broken</tool_call>"
    )
    assert [c["function"]["name"] for c in calls] == ["lookup"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"id": 7}
    assert content.startswith("checking") and "{broken" in content
    assert errors and "invalid JSON" in errors[0]["error"]
    text, calls, errors = parse_tool_calls("no calls here")
    assert (text, calls, errors) == ("no calls here", [], [])


def test_chat_with_tools_never_crashes(client):
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
    r = client.chat.completions.create(
        model="champion", messages=MESSAGES, tools=tools, max_tokens=8, temperature=0
    )
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")
    # The tools block reached the model: the prompt is longer than without tools.
    plain = client.chat.completions.create(
        model="champion", messages=MESSAGES, max_tokens=8, temperature=0
    )
    assert r.usage.prompt_tokens > plain.usage.prompt_tokens
    chunks = list(
        client.chat.completions.create(
            model="champion",
            messages=MESSAGES,
            tools=tools,
            max_tokens=8,
            temperature=0,
            stream=True,
        )
    )
    assert chunks[-1].choices[0].finish_reason == r.choices[0].finish_reason


def test_audit_log_records_requests(client, server):
    client.completions.create(model="champion", prompt="audit me", max_tokens=3, temperature=0)
    entries = [json.loads(x) for x in server["audit"].read_text().splitlines()]
    last = [e for e in entries if e["event"] == "request" and e["status"] == 200][-1]
    assert last["principal"] == "tester"
    assert last["model_version"] == server["asset"].id
    assert last["completion_tokens"] > 0
    assert last["prompt"] == "audit me"  # log_bodies=True in this server
    assert verify_audit_log(server["audit"]).ok


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 10**12) | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "tool", "bogus"]) | json_values},
    optional={"content": st.text(max_size=30) | json_values, "tool_calls": json_values},
)
chat_body = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(["champion", "nosuch"]) | json_values,
        "messages": st.lists(message, max_size=3) | json_values,
        "max_tokens": st.integers(-2, 6) | json_values,
        "temperature": st.floats(-1, 3) | json_values,
        "top_p": st.floats(-1, 2) | json_values,
        "top_k": st.integers(-1, 5) | json_values,
        "stop": st.text(max_size=3) | st.lists(st.text(max_size=3), max_size=3) | json_values,
        "seed": st.integers(-(2**70), 2**70) | json_values,
        "stream": st.booleans() | json_values,
        "tools": json_values,
        "n": st.integers(0, 3),
    },
)
completion_body = chat_body.map(lambda b: {k: v for k, v in b.items() if k != "messages"}) | (
    st.fixed_dictionaries(
        {"model": st.just("champion"), "max_tokens": st.integers(1, 4)},
        optional={"prompt": st.text(max_size=40) | st.lists(st.integers(-5, 400)) | json_values},
    )
)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    path=st.sampled_from(["/v1/chat/completions", "/v1/completions"]),
    chat=chat_body,
    completion=completion_body,
)
def test_fuzzed_bodies_never_give_5xx(server, path, chat, completion):
    body = chat if path.endswith("chat/completions") else completion
    if isinstance(body.get("max_tokens"), int) and body["max_tokens"] > 6:
        body["max_tokens"] = 6  # keep generation short; validity is what is fuzzed
    elif "max_tokens" not in body:
        body["max_tokens"] = 4
    r = httpx.post(
        server["url"] + path,
        content=json.dumps(body, allow_nan=True),
        headers={"Authorization": f"Bearer {server['key']}", "Content-Type": "application/json"},
        timeout=60,
    )
    assert r.status_code < 500, (body, r.text)
    if r.status_code >= 400:
        assert "error" in r.json()
