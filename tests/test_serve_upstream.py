"""Upstream (gateway) mode: a forgeml gateway in front of a second forgeml server acting as the
OpenAI-compatible upstream, both on loopback: same answers as the upstream, keys, policies
(input and output, streamed too), rate limits and audit applied, upstream failures mapped to
clean 502/504 that never carry the upstream's key."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from test_serve_api import running_server, served_workspace

from forgeml.core.errors import ConfigError
from forgeml.governance.audit import AuditLog, verify_audit_log
from forgeml.governance.keys import KeyStore
from forgeml.governance.policy import Policy, PolicyConfig
from forgeml.registry.store import Registry
from forgeml.serve.api import create_app
from forgeml.serve.loading import upstream_served_models
from forgeml.serve.upstream import Upstream, upstream_base_url, upstream_key_from_env

GATEWAY_POLICY = {
    "patterns": {"vowel": "[aeiou]"},
    "default": {"input": {"redact": ["email"], "blocked_patterns": ["(?i)forbidden topic"]}},
    "principals": {"redacted": {"output": {"redact": ["vowel", "email"]}}},
}
MESSAGES = [{"role": "user", "content": "the factory builds"}]


def read_audit(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("upstream")
    registry, _asset, models = served_workspace(root)
    up_keys = KeyStore(registry.engine)
    up_key, _ = up_keys.create_key("gateway", clearance="internal")
    up_audit = AuditLog(root / "upstream-audit.jsonl", fsync=False)
    upstream_app = create_app(models, keys=up_keys, audit=up_audit, log_bodies=True)
    with running_server(upstream_app) as up_url:
        # The gateway has its own registry and keys: an upstream key means nothing to it.
        gw_registry = Registry(f"sqlite:///{root / 'gateway.db'}", root / "gateway-artifacts")
        gw_keys = KeyStore(gw_registry.engine)
        keys = {
            "alice": gw_keys.create_key("alice")[0],
            "redacted": gw_keys.create_key("redacted")[0],
            "limited": gw_keys.create_key("limited", requests_per_minute=2)[0],
            "other_model": gw_keys.create_key("bob", models=["other"])[0],
        }
        upstream = Upstream(upstream_base_url(up_url), up_key)
        gw_audit = AuditLog(root / "gateway-audit.jsonl", fsync=False)
        gateway_app = create_app(
            upstream_served_models(upstream, None),
            keys=gw_keys,
            policy=Policy(PolicyConfig.model_validate(GATEWAY_POLICY)),
            audit=gw_audit,
            log_bodies=True,
        )
        with running_server(gateway_app) as gw_url:
            yield {
                "up_url": up_url,
                "up_key": up_key,
                "gw_url": gw_url,
                "keys": keys,
                "up_audit": up_audit.path,
                "gw_audit": gw_audit.path,
            }
    for m in models.values():
        m.engine.close()
    registry.close()
    gw_registry.close()


def client(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)


@pytest.fixture(scope="module")
def direct(env):
    return client(env["up_url"], env["up_key"])


@pytest.fixture(scope="module")
def gateway(env):
    return client(env["gw_url"], env["keys"]["alice"])


def test_models_and_answers_equal_the_upstream(direct, gateway):
    assert [m.id for m in gateway.models.list().data] == ["champion"]
    want = direct.completions.create(
        model="champion", prompt="the lab", max_tokens=12, temperature=0
    )
    got = gateway.completions.create(
        model="champion", prompt="the lab", max_tokens=12, temperature=0
    )
    assert got.choices[0].text == want.choices[0].text
    assert got.usage.completion_tokens == want.usage.completion_tokens > 0
    want = direct.chat.completions.create(
        model="champion", messages=MESSAGES, max_tokens=12, seed=4, temperature=0.9
    )
    got = gateway.chat.completions.create(
        model="champion", messages=MESSAGES, max_tokens=12, seed=4, temperature=0.9
    )
    assert got.choices[0].message.content == want.choices[0].message.content
    assert got.choices[0].finish_reason == want.choices[0].finish_reason
    assert got.usage.prompt_tokens == want.usage.prompt_tokens
    assert got.usage.completion_tokens == want.usage.completion_tokens > 0  # not vacuous


def test_streaming_equals_upstream_with_usage(direct, gateway):
    want = direct.chat.completions.create(
        model="champion", messages=MESSAGES, max_tokens=16, temperature=0
    )
    chunks = list(
        gateway.chat.completions.create(
            model="champion",
            messages=MESSAGES,
            max_tokens=16,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == want.usage.completion_tokens == 16
    streamed = gateway.completions.create(
        model="champion", prompt="the lab", max_tokens=10, temperature=0, stream=True
    )
    want = direct.completions.create(
        model="champion", prompt="the lab", max_tokens=10, temperature=0
    )
    assert "".join(c.choices[0].text for c in streamed) == want.choices[0].text


def test_output_rules_apply_streamed_and_not(env, direct):
    """The `redacted` principal's output equals the policy applied to the upstream's output."""
    policy = Policy(PolicyConfig.model_validate(GATEWAY_POLICY))
    rules = policy.rules_for(["champion"], "redacted")
    raw = direct.chat.completions.create(
        model="champion", messages=MESSAGES, max_tokens=40, temperature=0
    )
    raw_text = raw.choices[0].message.content
    want, decisions, _ = policy.apply_output(rules, raw_text)
    assert decisions and "[REDACTED:vowel]" in want  # the model's output has vowels to redact
    red = client(env["gw_url"], env["keys"]["redacted"])
    got = red.chat.completions.create(
        model="champion", messages=MESSAGES, max_tokens=40, temperature=0
    )
    assert got.choices[0].message.content == want
    stream = red.chat.completions.create(
        model="champion", messages=MESSAGES, max_tokens=40, temperature=0, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == want


def test_input_rules_before_the_upstream(env, gateway):
    before = len(read_audit(env["up_audit"]))
    gateway.completions.create(
        model="champion", prompt="write to bob@corp-mail.net", max_tokens=2, temperature=0
    )
    seen = read_audit(env["up_audit"])[before:]
    assert len(seen) == 1
    assert "[REDACTED:email]" in seen[0]["prompt"] and "bob@corp-mail.net" not in seen[0]["prompt"]
    with pytest.raises(openai.BadRequestError, match="input policy"):
        gateway.chat.completions.create(
            model="champion", messages=[{"role": "user", "content": "a Forbidden Topic"}]
        )
    with pytest.raises(openai.BadRequestError, match="upstream mode"):
        gateway.completions.create(model="champion", prompt=[5, 6, 7], max_tokens=2)
    assert len(read_audit(env["up_audit"])) == before + 1  # refused requests never went up
    blocked, token_ids = read_audit(env["gw_audit"])[-2:]
    assert {"rule": "input.blocked_patterns[0]", "action": "blocked", "count": 1} in blocked[
        "decisions"
    ]
    assert (blocked["status"], token_ids["status"]) == (400, 400)


def test_keys_scopes_and_rate_limits_at_the_gateway(env):
    before = len(read_audit(env["up_audit"]))
    with pytest.raises(openai.AuthenticationError):
        client(env["gw_url"], env["up_key"]).models.list()  # an upstream key is not a gateway key
    with pytest.raises(openai.PermissionDeniedError):
        client(env["gw_url"], env["keys"]["other_model"]).completions.create(
            model="champion", prompt="x", max_tokens=1
        )
    limited = client(env["gw_url"], env["keys"]["limited"])
    for _ in range(2):
        limited.completions.create(model="champion", prompt="x", max_tokens=1)
    with pytest.raises(openai.RateLimitError):
        limited.completions.create(model="champion", prompt="x", max_tokens=1)
    assert len(read_audit(env["up_audit"])) == before + 2


def test_gateway_audit_chain_and_no_upstream_key(env):
    entries = [e for e in read_audit(env["gw_audit"]) if e.get("event") == "request"]
    served = [e for e in entries if e.get("status") == 200]
    assert served and all(e["model_version"] == "upstream:champion" for e in served)
    assert all(e["completion_tokens"] > 0 for e in served if "completion_tokens" in e)
    assert verify_audit_log(env["gw_audit"]).ok
    assert env["up_key"] not in env["gw_audit"].read_text()


# -- upstream failures --------------------------------------------------------------------

SECRET = "sk-upstream-secret-0123456789"
# The gateway's read timeout on the misbehaving upstream: what every answer but `slow`'s must
# beat, on loopback but on a busy machine too (the servers share this process and its GIL).
UPSTREAM_TIMEOUT_S = 3.0


def misbehaving_upstream() -> FastAPI:
    """An OpenAI-shaped upstream whose model name picks a failure (or a split secret)."""
    app = FastAPI()

    @app.get("/v1/models")
    async def models():
        names = ["slow", "boom", "echo", "busy", "leaky", "cut"]
        return {"object": "list", "data": [{"id": n, "object": "model"} for n in names]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        model = body["model"]
        if model == "slow":
            # Far past the gateway's timeout, and over as soon as the gateway gives up (so a
            # stopping server does not wait for it).
            for _ in range(600):
                if await request.is_disconnected():
                    break
                await asyncio.sleep(0.05)
        if model == "boom":
            return JSONResponse({"error": {"message": "CUDA out of memory"}}, 500)
        if model == "echo":
            auth = request.headers.get("authorization", "")
            return JSONResponse({"error": {"message": f"bad max_tokens; you sent {auth}"}}, 400)
        if model == "busy":
            return JSONResponse({"error": {"message": "queue full"}}, 429, {"Retry-After": "7"})

        def chunk(text: str, finish: str | None = None) -> str:
            c = {"choices": [{"index": 0, "text": text, "finish_reason": finish}]}
            return f"data: {json.dumps(c)}\n\n"

        async def sse():
            # An email split across chunks: the gateway must redact it whole.
            for piece in ["mail carol@corp-ma", "il.net", " today ", "x" * 80]:
                yield chunk(piece)
            if model == "cut":
                yield "data: {not json\n\n"
                return
            yield chunk("", "stop")
            usage = {"prompt_tokens": 3, "completion_tokens": 9, "total_tokens": 12}
            yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        if body.get("stream"):
            return StreamingResponse(sse(), media_type="text/event-stream")
        text = "mail carol@corp-mail.net today " + "x" * 80
        choice = {"index": 0, "text": text, "finish_reason": "stop"}
        return {"choices": [choice], "usage": {"prompt_tokens": 3, "completion_tokens": 9}}

    return app


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    policy = Policy(PolicyConfig.model_validate({"default": {"output": {"redact": ["email"]}}}))
    with running_server(misbehaving_upstream()) as up_url:
        upstream = Upstream(upstream_base_url(up_url), SECRET, timeout=UPSTREAM_TIMEOUT_S)
        audit = AuditLog(root / "audit.jsonl", fsync=False)
        app = create_app(
            upstream_served_models(upstream, None), keys=None, policy=policy, audit=audit
        )
        with running_server(app) as url:
            yield {"url": url, "audit": audit.path}


def ask(url: str, model: str, stream: bool = False) -> httpx.Response:
    body = {"model": model, "prompt": "hi", "max_tokens": 4, "stream": stream}
    return httpx.post(f"{url}/v1/completions", json=body, timeout=30)


@pytest.mark.parametrize("stream", [False, True])
def test_upstream_failures_are_clean_and_keyless(bad, stream):
    expect = {"slow": (504, "upstream_timeout"), "boom": (502, "upstream_error")}
    expect |= {"echo": (400, "upstream_rejected"), "busy": (429, "upstream_busy")}
    for model, (status, code) in expect.items():
        resp = ask(bad["url"], model, stream)
        assert (resp.status_code, resp.json()["error"]["code"]) == (status, code), model
        assert SECRET not in resp.text and "CUDA" not in resp.text
    assert ask(bad["url"], "busy", stream).headers["retry-after"] == "7"
    assert "[REDACTED]" in ask(bad["url"], "echo", stream).json()["error"]["message"]
    assert SECRET not in bad["audit"].read_text()
    assert verify_audit_log(bad["audit"]).ok


def test_upstream_streamed_output_redacted_across_chunks(bad):
    whole = ask(bad["url"], "leaky").json()["choices"][0]["text"]
    resp = ask(bad["url"], "leaky", stream=True)
    events = [line[6:] for line in resp.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    streamed = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    assert streamed == whole == "mail [REDACTED:email] today " + "x" * 80
    entry = read_audit(bad["audit"])[-1]
    assert entry["completion_tokens"] == 9
    assert {"rule": "output.redact.email", "action": "redacted", "count": 1} in entry["decisions"]


def test_upstream_broken_mid_stream_and_unreachable(bad):
    resp = ask(bad["url"], "cut", stream=True)
    assert resp.status_code == 200  # the stream had started: the error arrives as an event
    assert '"code": "bad_upstream"' in resp.text and resp.text.endswith("data: [DONE]\n\n")
    assert read_audit(bad["audit"])[-1]["status"] == 502
    with running_server(misbehaving_upstream()) as up_url:
        upstream = Upstream(upstream_base_url(up_url), SECRET, timeout=UPSTREAM_TIMEOUT_S)
        models = upstream_served_models(upstream, ["boom"])
        with pytest.raises(ConfigError, match="does not serve"):
            upstream_served_models(upstream, ["nothing"])
    # The upstream has stopped: its port refuses connections.
    with running_server(create_app(models, keys=None)) as url:
        for stream in (False, True):
            resp = ask(url, "boom", stream)
            assert resp.status_code == 502
            assert resp.json()["error"]["code"] == "upstream_unavailable"
    with pytest.raises(ConfigError, match="cannot list"):
        upstream_served_models(upstream, None)


def test_upstream_url_and_key_checks(monkeypatch):
    assert upstream_base_url("http://127.0.0.1:8001") == "http://127.0.0.1:8001/v1"
    assert upstream_base_url("http://h:1/v1/") == "http://h:1/v1"
    for url in ("ftp://h/v1", "http://user:pw@h/v1", "localhost:8000"):
        with pytest.raises(ConfigError):
            upstream_base_url(url)
    monkeypatch.delenv("FORGEML_TEST_UPSTREAM_KEY", raising=False)
    with pytest.raises(ConfigError, match="FORGEML_TEST_UPSTREAM_KEY"):
        upstream_key_from_env("FORGEML_TEST_UPSTREAM_KEY")
    monkeypatch.setenv("FORGEML_TEST_UPSTREAM_KEY", "k-1")
    assert upstream_key_from_env("FORGEML_TEST_UPSTREAM_KEY") == "k-1"
    assert "k-1" not in repr(Upstream("http://h/v1", "k-1"))


def test_cli_upstream_errors_are_clean(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from forgeml.cli import app
    from forgeml.core.workspace import init_workspace

    ws = init_workspace(tmp_path / "ws")
    monkeypatch.delenv("FORGEML_TEST_UPSTREAM_KEY", raising=False)
    runner = CliRunner()
    args = ["-w", str(ws.root), "serve", "--upstream", "http://127.0.0.1:9/v1"]
    result = runner.invoke(app, [*args, "--upstream-key", "FORGEML_TEST_UPSTREAM_KEY"])
    assert isinstance(result.exception, ConfigError)
    assert "FORGEML_TEST_UPSTREAM_KEY" in str(result.exception)
    monkeypatch.setenv("FORGEML_TEST_UPSTREAM_KEY", SECRET)
    result = runner.invoke(app, [*args, "--upstream-key", "FORGEML_TEST_UPSTREAM_KEY"])
    assert isinstance(result.exception, ConfigError)
    assert "cannot list the upstream's models" in str(result.exception)
    assert SECRET not in str(result.exception) + result.output
