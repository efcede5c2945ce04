"""`forgeml serve --engine vllm`: the governed gateway in front of vLLM replicas, tested with a
stand-in OpenAI server (tests/test_serve_vllm_standin.py) started through the launcher's
command hook: the arguments vLLM gets, keys, policies, labels and audit at the gateway, load
balancing over two replicas, a killed replica, the replicas' lifecycle, a missing vLLM."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
from test_serve_api import running_server
from test_serve_engine import make_tiny_model_dir

from forgeml.core.errors import ConfigError, DataError
from forgeml.core.workspace import init_workspace
from forgeml.eval.drift import load_traffic
from forgeml.governance.audit import AuditLog, audit_log_path, verify_audit_log
from forgeml.governance.keys import KeyStore
from forgeml.governance.policy import Policy, PolicyConfig
from forgeml.registry.store import Registry
from forgeml.serve.api import create_app
from forgeml.serve.vllm import (
    VLLM_SERVER_ENV,
    VllmOptions,
    free_loopback_port,
    launch_replicas,
    replica_devices,
    replica_pool,
    resolve_vllm_target,
    stop_replicas,
    vllm_command,
    vllm_served_models,
    vllm_server_args,
    wait_until_ready,
)
from forgeml.tokenizer.chat import END

STANDIN = [sys.executable, str(Path(__file__).with_name("test_serve_vllm_standin.py"))]
API_KEY = "replica-key-0123456789"
POLICY = {
    "default": {"input": {"redact": ["email"], "blocked_patterns": ["(?i)forbidden topic"]}},
}


def register_models(root: Path, registry: Registry | None = None) -> tuple[Registry, Path]:
    """A registry with the tiny model (alias `champion`, internal) and a LoRA adapter on it
    labelled confidential (PEFT layout, rank 8; the stand-in does not read its weights)."""
    model_dir = make_tiny_model_dir(root, max_seq_len=256)
    registry = registry or Registry(f"sqlite:///{root / 'registry.db'}", root / "artifacts")
    base = registry.add_asset("model", "tiny", model_dir, metadata={"classification": "internal"})
    registry.set_alias("champion", base.id)
    adapter_dir = root / "adapter"
    adapter_dir.mkdir()
    (adapter_dir / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    (adapter_dir / "adapter_model.safetensors").write_bytes(b"stand-in weights")
    registry.add_asset(
        "adapter",
        "tiny-lora",
        adapter_dir,
        metadata={"base_model": base.id, "classification": "confidential"},
    )
    return registry, model_dir


def stats(url: str) -> dict:
    return httpx.get(f"{url}/stats", timeout=10).json()


def client(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("vllm")
    registry, model_dir = register_models(root)
    target = resolve_vllm_target(registry, ["champion", "tiny-lora"])
    options = VllmOptions(replicas=2)
    replicas = launch_replicas(
        target, options, log_dir=root / "logs", api_key=API_KEY, command=STANDIN
    )
    try:
        wait_until_ready(replicas, timeout=60)
        models = vllm_served_models(registry, target, replica_pool(replicas, API_KEY))
        keys = KeyStore(registry.engine)
        audit = AuditLog(root / "audit.jsonl", fsync=False)
        app = create_app(
            models,
            keys=keys,
            policy=Policy(PolicyConfig.model_validate(POLICY)),
            audit=audit,
            log_bodies=True,
        )
        with running_server(app) as url:
            yield {
                "url": url,
                "target": target,
                "replicas": replicas,
                "model_dir": model_dir,
                "registry": registry,
                "audit": audit.path,
                "alice": keys.create_key("alice", clearance="internal")[0],
                "boss": keys.create_key("boss", clearance="confidential")[0],
            }
    finally:
        stop_replicas(replicas)
        registry.close()


def test_vllm_gets_the_model_folder_lora_modules_and_eos_ids(env):
    target, model_dir = env["target"], env["model_dir"]
    args = vllm_server_args(target, VllmOptions(max_model_len=256), 9999)
    pairs = dict(zip(args, args[1:], strict=False))
    assert pairs["--model"] == str(target.model_dir)
    assert pairs["--generation-config"] == str(target.model_dir)
    assert pairs["--served-model-name"] == "champion" and pairs["--max-model-len"] == "256"
    assert pairs["--max-lora-rank"] == "8" and "--enable-lora" in args
    assert pairs["--lora-modules"] == f"tiny-lora={target.adapters['tiny-lora']}"
    replica = env["replicas"][0]
    assert API_KEY not in " ".join(replica.process.args)  # the key goes in the environment
    seen = stats(replica.url)
    assert seen["args"]["served_model_name"] == ["champion"]
    assert seen["args"]["host"] == "127.0.0.1"
    # Prompts stay out of the replica logs (vLLM logs them at INFO).
    assert seen["logging_level"] == os.environ.get("VLLM_LOGGING_LEVEL", "WARNING")
    # The model folder's generation config stops at the end of a chat turn, and at eos.
    vocab = json.loads((model_dir / "tokenizer.json").read_text())
    end_id = next(t["id"] for t in vocab["added_tokens"] if t["content"] == END)
    assert end_id in seen["eos_token_id"] and len(seen["eos_token_id"]) == 2
    config = json.loads((target.model_dir / "tokenizer_config.json").read_text())
    assert END in config["chat_template"]  # vLLM renders chats with the tokenizer's template
    # The replicas refuse callers without their key: only the gateway reaches them.
    assert httpx.get(f"{replica.url}/v1/models").status_code == 401


def test_keys_policies_labels_and_audit_at_the_gateway(env):
    url = env["url"]
    with pytest.raises(openai.AuthenticationError):
        client(url, "not-a-key").models.list()
    with pytest.raises(openai.AuthenticationError):
        client(url, API_KEY).models.list()  # the replicas' key is no gateway key
    alice = client(url, env["alice"])
    assert {m.id for m in alice.models.list().data} == {"champion", "tiny-lora"}
    got = alice.completions.create(model="champion", prompt="mail bob@corp.net", max_tokens=9)
    text = got.choices[0].text
    assert "[REDACTED:email]" in text and "bob@corp.net" not in text  # redacted before vLLM
    assert got.usage.completion_tokens > 0
    with pytest.raises(openai.BadRequestError, match="input policy"):
        alice.chat.completions.create(
            model="champion", messages=[{"role": "user", "content": "a forbidden topic"}]
        )
    with pytest.raises(openai.PermissionDeniedError, match="not cleared"):
        alice.completions.create(model="tiny-lora", prompt="hello", max_tokens=4)
    boss = client(url, env["boss"])
    answer = boss.chat.completions.create(
        model="tiny-lora", messages=[{"role": "user", "content": "the adapter"}], max_tokens=8
    )
    assert answer.choices[0].message.content.endswith("the adapter")
    seen = [s for r in env["replicas"] for s in stats(r.url)["seen"]]
    assert {"model": "tiny-lora", "prompt": "the adapter", "stream": False} in seen
    assert not any("forbidden" in s["prompt"] for s in seen)  # refused before any replica

    entries = [json.loads(line) for line in env["audit"].read_text().splitlines()]
    assert any(e["event"] == "auth_denied" and e["status"] == 401 for e in entries)
    requests = [e for e in entries if e["event"] == "request"]
    by_status = {e["status"]: e for e in requests}
    assert {200, 400, 403} <= set(by_status)
    assert by_status[403]["decisions"][0]["rule"] == "classification"
    lora_id = env["registry"].get_asset("tiny-lora").id
    assert any(e.get("model_version") == lora_id and e["status"] == 200 for e in requests)
    assert verify_audit_log(env["audit"]).ok
    assert API_KEY not in env["audit"].read_text()
    assert "bob@corp.net" not in env["audit"].read_text()  # logged as governed, like vLLM saw it
    # Drift reports read the same log: the served requests with their bodies.
    traffic = load_traffic(env["audit"])
    assert any("[REDACTED:email]" in r["prompt"] for r in traffic.records)


def test_streaming_through_the_gateway(env):
    alice = client(env["url"], env["alice"])
    messages = [{"role": "user", "content": "one two three four"}]
    whole = alice.chat.completions.create(model="champion", messages=messages, max_tokens=20)
    chunks = list(
        alice.chat.completions.create(
            model="champion",
            messages=messages,
            max_tokens=20,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    # Replicas differ only in the port they name first.
    assert text.split("] ", 1)[1] == whole.choices[0].message.content.split("] ", 1)[1]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens == 5


def test_requests_are_balanced_over_both_replicas(env):
    replicas = env["replicas"]
    before = [stats(r.url)["requests"] for r in replicas]
    alice = client(env["url"], env["alice"])
    ports = set()
    for i in range(8):
        text = alice.completions.create(model="champion", prompt=f"n{i}", max_tokens=4)
        ports.add(text.choices[0].text.split("]")[0].lstrip("["))
    after = [stats(r.url)["requests"] for r in replicas]
    assert ports == {str(r.port) for r in replicas}
    assert [a - b for a, b in zip(after, before, strict=True)] == [4, 4]  # round robin


def test_replica_devices_split_the_visible_gpus(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    assert replica_devices(VllmOptions(replicas=2, tensor_parallel_size=2)) == ["0,1", "2,3"]
    assert replica_devices(VllmOptions(replicas=4)) == ["0", "1", "2", "3"]
    with pytest.raises(ConfigError, match="need 6 GPUs"):
        replica_devices(VllmOptions(replicas=3, tensor_parallel_size=2))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert replica_devices(VllmOptions(replicas=2)) == [None, None]


# -- failures and lifecycle ----------------------------------------------------------------


@pytest.fixture
def lone_pair(tmp_path):
    """Two fresh replicas behind a gateway without keys; the test may kill them."""
    registry, _ = register_models(tmp_path)
    target = resolve_vllm_target(registry, ["champion"])
    replicas = launch_replicas(
        target, VllmOptions(replicas=2), log_dir=tmp_path / "logs", api_key=API_KEY, command=STANDIN
    )
    try:
        wait_until_ready(replicas, timeout=60)
        pool = replica_pool(replicas, API_KEY)
        pool.cooldown = 1.0
        audit = AuditLog(tmp_path / "audit.jsonl", fsync=False)
        app = create_app(vllm_served_models(registry, target, pool), keys=None, audit=audit)
        with running_server(app) as url:
            yield {"url": url, "replicas": replicas, "target": target, "audit": audit.path}
    finally:
        stop_replicas(replicas)
        registry.close()


def test_a_killed_replica_is_skipped_then_tried_again(lone_pair, tmp_path):
    dead, alive = lone_pair["replicas"]
    gw = client(lone_pair["url"], "unused")
    os.killpg(dead.process.pid, signal.SIGKILL)
    dead.process.wait()
    for i in range(6):  # every request answered, by the replica that is left
        got = gw.completions.create(model="champion", prompt=f"q{i}", max_tokens=3)
        assert got.choices[0].text.startswith(f"[{alive.port}]")
        streamed = gw.completions.create(model="champion", prompt="s", max_tokens=3, stream=True)
        assert "".join(c.choices[0].text for c in streamed).startswith(f"[{alive.port}]")
    os.killpg(alive.process.pid, signal.SIGKILL)
    alive.process.wait()
    with pytest.raises(openai.InternalServerError) as caught:
        gw.completions.create(model="champion", prompt="x", max_tokens=3)
    assert caught.value.status_code == 503
    assert "no replica of the upstream is reachable" in caught.value.message
    statuses = [
        json.loads(line).get("status") for line in lone_pair["audit"].read_text().splitlines()
    ]
    assert statuses.count(200) == 12 and statuses[-1] == 503 and 500 not in statuses
    # The first replica comes back on its port: after the cooldown it is tried again.
    args = vllm_server_args(lone_pair["target"], VllmOptions(), dead.port)
    back = subprocess.Popen(
        [*STANDIN, *args], env={**os.environ, "VLLM_API_KEY": API_KEY}, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                got = gw.completions.create(model="champion", prompt="back", max_tokens=3)
                break
            except openai.InternalServerError:
                assert time.monotonic() < deadline, "the restarted replica was never tried"
                time.sleep(0.3)
        assert got.choices[0].text.startswith(f"[{dead.port}]")
    finally:
        back.terminate()
        back.wait(timeout=10)


def test_stop_replicas_ends_them(lone_pair):
    replicas = lone_pair["replicas"]
    stop_replicas(replicas, grace=10)
    assert all(r.process.poll() is not None for r in replicas)
    for r in replicas:
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{r.url}/health", timeout=2)


def test_a_replica_that_fails_to_start_is_reported(tmp_path):
    registry, _ = register_models(tmp_path)
    target = resolve_vllm_target(registry, ["champion"])
    replicas = launch_replicas(
        target,
        VllmOptions(),
        log_dir=tmp_path / "logs",
        api_key=API_KEY,
        command=[*STANDIN, "--fail-start"],
    )
    try:
        with pytest.raises(ConfigError, match="exited \\(code 3\\)") as caught:
            wait_until_ready(replicas, timeout=60)
        assert "stand-in refused to start" in str(caught.value)
    finally:
        stop_replicas(replicas)
        registry.close()


def test_targets_vllm_cannot_serve(tmp_path):
    registry, model_dir = register_models(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (other / name).write_bytes((model_dir / name).read_bytes())
    config = json.loads((model_dir / "config.json").read_text())
    config["architectures"] = ["ForgemlMoeForCausalLM"]
    (other / "config.json").write_text(json.dumps(config))
    registry.add_asset("model", "odd-moe", other)
    with pytest.raises(ConfigError, match="2 different base models"):
        resolve_vllm_target(registry, ["champion", "odd-moe"])
    with pytest.raises(ConfigError, match="vLLM cannot run this model"):
        resolve_vllm_target(registry, ["odd-moe"])
    (other / "tokenizer.json").unlink()
    registry.add_asset("model", "no-tokenizer", other)
    with pytest.raises(DataError, match="tokenizer.json"):
        resolve_vllm_target(registry, ["no-tokenizer"])
    registry.close()


def test_missing_vllm_is_a_clear_error(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from forgeml.cli import app

    monkeypatch.setitem(sys.modules, "vllm", None)  # as if not installed, even where it is
    monkeypatch.delenv(VLLM_SERVER_ENV, raising=False)
    with pytest.raises(ConfigError) as caught:
        vllm_command()
    assert "install forgeml[vllm] on a CUDA machine" in caught.value.hint
    ws = init_workspace(tmp_path / "ws")
    result = CliRunner().invoke(app, ["-w", str(ws.root), "serve", "--engine", "vllm"])
    assert isinstance(result.exception, ConfigError)
    assert "vLLM, which is not installed" in str(result.exception)
    assert "built-in engine" in result.exception.hint
    result = CliRunner().invoke(app, ["-w", str(ws.root), "serve", "--replicas", "2"])
    assert "--replicas and --vllm-arg need --engine vllm" in str(result.exception)


@pytest.mark.slow
def test_cli_serves_on_replicas_and_stops_them_on_sigterm(tmp_path):
    """`forgeml serve --engine vllm --replicas 2`: the gateway answers, the audit log names
    the replicas, and SIGTERM to the gateway stops them too."""
    ws = init_workspace(tmp_path / "ws")
    registry, _ = register_models(tmp_path, Registry(ws.registry_url, ws.artifacts_dir))
    registry.close()
    port = free_loopback_port()
    cmd = [sys.executable, "-m", "forgeml.cli", "-w", str(ws.root), "serve", "champion"]
    cmd += ["--engine", "vllm", "--replicas", "2", "--no-auth", "--port", str(port)]
    log = (tmp_path / "gateway.log").open("wb")
    gateway = subprocess.Popen(
        cmd, env={**os.environ, VLLM_SERVER_ENV: shlex.join(STANDIN)}, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert gateway.poll() is None, (tmp_path / "gateway.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the gateway did not start"
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        got = client(url, "unused").completions.create(model="champion", prompt="hi", max_tokens=4)
        assert got.choices[0].text.endswith("hi")
        entries = [json.loads(line) for line in audit_log_path(ws.root).read_text().splitlines()]
        started = next(e for e in entries if e["event"] == "server_started")
        assert started["engine"] == "vllm" and len(started["replicas"]) == 2
    finally:
        gateway.send_signal(signal.SIGTERM)
        code = gateway.wait(timeout=60)
        log.close()
    assert code == 128 + signal.SIGTERM, (tmp_path / "gateway.log").read_text()[-2000:]
    for replica_url in started["replicas"]:
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{replica_url}/health", timeout=2)
    last = json.loads(audit_log_path(ws.root).read_text().splitlines()[-1])
    assert last["event"] == "server_stopped"


def test_vllm_accepts_our_arguments(env):
    """vLLM's own argument parser reads what the launcher passes (where vLLM is installed)."""
    pytest.importorskip("vllm")
    from vllm.entrypoints.openai.cli_args import make_arg_parser

    try:  # where it lives since vLLM 0.11
        from vllm.utils.argparse_utils import FlexibleArgumentParser
    except ImportError:
        from vllm.utils import FlexibleArgumentParser

    parser = make_arg_parser(FlexibleArgumentParser())
    args = parser.parse_args(vllm_server_args(env["target"], VllmOptions(), 8123))
    assert args.port == 8123 and args.enable_lora and args.max_lora_rank == 8


GATEWAY_THAT_DIES = """
import json, sys, time
from pathlib import Path
from forgeml.serve.vllm import VllmOptions, VllmTarget, launch_replicas, wait_until_ready
root = Path(sys.argv[1])
target = VllmTarget(root, "m", {}, None, ())
replicas = launch_replicas(target, VllmOptions(replicas=2), log_dir=root / "logs",
                           api_key="k", command=sys.argv[2:])
wait_until_ready(replicas, timeout=60)
print(json.dumps([[r.process.pid, r.url] for r in replicas]), flush=True)
time.sleep(600)
"""


def _running(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie nobody has reaped yet counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal: Linux")
def test_replicas_die_with_a_killed_gateway(tmp_path):
    """SIGKILL the process that launched the replicas (no cleanup runs): the replicas get
    their parent-death SIGTERM and are gone within seconds, their ports closed."""
    (tmp_path / "generation_config.json").write_text("{}")
    gateway = subprocess.Popen(
        [sys.executable, "-c", GATEWAY_THAT_DIES, str(tmp_path), *STANDIN],
        stdout=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    replicas: list = []
    try:
        replicas = json.loads(gateway.stdout.readline() or "[]")
        assert len(replicas) == 2, "the gateway did not start its replicas"
        assert all(_running(pid) for pid, _ in replicas)
        gateway.kill()
        gateway.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(_running(pid) for pid, _ in replicas) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_running(pid) for pid, _ in replicas), "replicas outlived the gateway"
        for _, url in replicas:
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"{url}/health", timeout=2)
    finally:
        gateway.kill()
        gateway.wait()
        for pid, _ in replicas:
            if _running(pid):
                os.killpg(pid, signal.SIGKILL)


def test_a_replica_answering_503_is_retried_on_another(lone_pair):
    """A replica that answers 502/503/504 before streaming anything: the request (plain or
    streamed) goes to the other replica; a 500 is not retried (another would answer the
    same); when every replica answers 503, the client gets the gateway's 502."""
    sick, well = lone_pair["replicas"]
    gw = client(lone_pair["url"], "unused")
    httpx.post(f"{sick.url}/fail/503", timeout=10).raise_for_status()
    for i in range(4):  # the rotation puts the sick replica first for half of them
        got = gw.completions.create(model="champion", prompt=f"q{i}", max_tokens=3)
        assert got.choices[0].text.startswith(f"[{well.port}]")
        chat = gw.chat.completions.create(
            model="champion", messages=[{"role": "user", "content": "c"}], stream=True
        )
        text = "".join(c.choices[0].delta.content or "" for c in chat if c.choices)
        assert text.startswith(f"[{well.port}]")
    assert stats(sick.url)["failed"] >= 2  # it was tried, and passed over
    statuses = [
        json.loads(line).get("status") for line in lone_pair["audit"].read_text().splitlines()
    ]
    assert statuses.count(200) == 8 and not {502, 503} & set(statuses)
    httpx.post(f"{sick.url}/fail/500", timeout=10).raise_for_status()
    answers = []
    for i in range(4):
        try:
            gw.completions.create(model="champion", prompt=f"r{i}", max_tokens=3)
            answers.append(200)
        except openai.InternalServerError as exc:
            answers.append(exc.status_code)
    assert 502 in answers and 200 in answers  # the 500 reached the client: not retried
    httpx.post(f"{sick.url}/fail/503", timeout=10).raise_for_status()
    httpx.post(f"{well.url}/fail/504", timeout=10).raise_for_status()
    with pytest.raises(openai.InternalServerError) as caught:
        gw.completions.create(model="champion", prompt="x", max_tokens=3)
    assert caught.value.status_code == 502 and "the upstream failed (HTTP" in caught.value.message
