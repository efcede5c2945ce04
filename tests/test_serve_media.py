"""Images and audio through `forgeml serve` (issue 24): the official `openai` client sends
data-URL images, base64 audio and transcription uploads to a live server over a tiny random
vision+audio LM; batched media prefill equals one-at-a-time greedy; malformed or oversized
media, media a model or a key's policy does not allow, are 400s; usage, rate limits and the
audit log count and hash the media, never keep its bytes."""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import json
import threading
from contextlib import contextmanager

import httpx
import numpy as np
import openai
import pytest
import torch
from PIL import Image
from test_serve_api import running_server
from test_serve_engine import make_tiny_model_dir

from forgeml.core.config import ModelConfig
from forgeml.eval.media_generate import greedy_media_tokens
from forgeml.governance.audit import AuditLog
from forgeml.governance.keys import KeyStore
from forgeml.governance.policy import InputRules, Policy, PolicyConfig, PrincipalSection
from forgeml.models.audio import AudioConfig, log_mel_windows
from forgeml.models.hf_multimodal_io import save_multimodal
from forgeml.models.multimodal import MultimodalConfig, MultimodalLM, expand_placeholders
from forgeml.models.vision import VisionConfig, image_to_pixels
from forgeml.registry.store import Registry
from forgeml.serve.api import create_app
from forgeml.serve.engine import PrefillMedia, SamplingParams
from forgeml.serve.loading import load_served_models
from forgeml.serve.requests import RequestLimits
from forgeml.tokenizer.chat import render_chat

soundfile = pytest.importorskip("soundfile", reason="the audio path reads clips with soundfile")

TEXT = ["transcribe the page: work order 12 at the pump", "which unit feeds the tank?"]
LIMITS = RequestLimits(max_media_parts=3, max_image_pixels=96 * 96, max_audio_seconds=3.0)


def make_tiny_multimodal_dir(root, *, audio: bool = True):
    """A saved tiny vision(+audio) LM with random, sharpened weights and its tokenizer."""
    from forgeml.tokenizer.extend import extend_tokenizer
    from forgeml.tokenizer.train import load_tokenizer, train_bpe_tokenizer

    if not (root / "mm" / "tokenizer.json").is_file():
        base = train_bpe_tokenizer(TEXT * 40, vocab_size=300, out_dir=root / "base")
        extend_tokenizer(base, ["<|image|>", "<|audio|>"], root / "mm")
    tok = load_tokenizer(root / "mm")
    ids = {t: tok.token_to_id(t) for t in ("<|image|>", "<|audio|>")}
    cfg = MultimodalConfig(
        lm=ModelConfig(arch="dense", dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=48,
                       vocab_size=max(ids.values()) + 1, max_seq_len=128),
        vision=VisionConfig(image_size=32, patch_size=8, dim=32, n_layers=1, n_heads=2,
                            ffn_hidden=48),
        audio=AudioConfig(n_mels=16, window_frames=200, dim=32, n_layers=1, n_heads=2,
                          ffn_hidden=48, stack=4) if audio else None,
        image_token_id=ids["<|image|>"], audio_token_id=ids["<|audio|>"] if audio else None,
    )  # fmt: skip
    torch.manual_seed(0)
    model = MultimodalLM(cfg)
    with torch.no_grad():  # weights far from init, so greedy tokens vary step to step
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.5)
    return save_multimodal(model, root / ("model" if audio else "vision_model"), root / "mm")


def png_bytes(seed: int, size: int = 40, fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


def wav_bytes(seed: int, seconds: float = 0.5, rate: int = 16000, fmt: str = "WAV") -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    soundfile.write(buf, rng.normal(0, 0.1, int(seconds * rate)).astype(np.float32), rate,
                    format=fmt)  # fmt: skip
    return buf.getvalue()


def image_part(data: bytes, mime: str = "image/png") -> dict:
    url = f"data:{mime};base64,{base64.b64encode(data).decode()}"
    return {"type": "image_url", "image_url": {"url": url}}


def audio_part(data: bytes, fmt: str = "wav") -> dict:
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(data).decode(),
                                                   "format": fmt}}  # fmt: skip


def user(*parts: dict | str) -> list[dict]:
    content = [{"type": "text", "text": p} if isinstance(p, str) else p for p in parts]
    return [{"role": "user", "content": content}]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_media")
    registry = Registry(f"sqlite:///{root / 'registry.db'}", root / "artifacts")
    for name, path in (
        ("mm", make_tiny_multimodal_dir(root)),
        ("vision", make_tiny_multimodal_dir(root, audio=False)),
        ("text", make_tiny_model_dir(root / "text")),
    ):
        registry.set_alias(name, registry.add_asset("model", name, path).id)
    models = load_served_models(registry, ["mm", "vision", "text"], max_batch=4)
    keys = KeyStore(registry.engine)
    key, _ = keys.create_key("tester", endpoints=["chat", "completions", "models"])
    no_images, _ = keys.create_key("no_images")
    tight = {n: keys.create_key(f"tight_{n}", tokens_per_minute=30)[0] for n in ("text", "media")}
    policy = Policy(
        PolicyConfig(principals={"no_images": PrincipalSection(input=InputRules(media=["audio"]))})
    )
    audit = AuditLog(root / "audit.jsonl", fsync=False)
    app = create_app(models, keys=keys, policy=policy, audit=audit, log_bodies=True, limits=LIMITS)
    with running_server(app) as url:
        yield {"url": url, "key": key, "no_images": no_images, "tight": tight, "models": models,
               "audit": audit.path}  # fmt: skip
    for m in models.values():
        m.engine.close()
    registry.close()


def client_for(env, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=env["url"] + "/v1", api_key=key or env["key"], max_retries=0)


def post_chat(env, messages: list[dict], model: str = "mm", key: str | None = None, **extra):
    body = {"model": model, "messages": messages, "max_tokens": 4, "temperature": 0, **extra}
    headers = {"Authorization": f"Bearer {key or env['key']}"}
    return httpx.post(env["url"] + "/v1/chat/completions", json=body, headers=headers, timeout=60)


def direct_tokens(served, messages: list[dict], images=(), clips=(), max_tokens: int = 12):
    """The reference: the prompt built by hand (one placeholder per medium, expanded), greedy
    through `greedy_media_tokens` (eval's kv-cache generation) on the served model."""
    model, tok = served.engine.model, served.tokenizer
    cfg = model.cfg
    ids = tok.encode(render_chat(messages, add_generation_prompt=True)).ids
    pixels = [image_to_pixels(Image.open(io.BytesIO(b)), cfg.vision) for b in images]
    ids = expand_placeholders(ids, cfg.image_token_id, [cfg.vision.tokens_per_image] * len(images))
    audio, counts = [], []
    for clip in clips:
        samples, _ = soundfile.read(io.BytesIO(clip), dtype="float32")
        audio.append(log_mel_windows(samples, cfg.audio))
        counts.append(audio[-1].shape[0] * cfg.audio.tokens_per_window)
    if cfg.audio_token_id is not None:
        ids = expand_placeholders(ids, cfg.audio_token_id, counts)
    stops = frozenset(served.special_ids[s] for s in ("end", "eos"))
    out = greedy_media_tokens(model, ids, torch.stack(pixels) if images else None,
                              torch.cat(audio) if clips else None, max_tokens, stops)  # fmt: skip
    return ids, out


def test_image_and_audio_chat_through_the_openai_client(env):
    client, served = client_for(env), env["models"]["mm"]
    png, wav = png_bytes(1), wav_bytes(2)
    r = client.chat.completions.create(
        model="mm", messages=user(image_part(png), audio_part(wav), "which unit feeds the tank?"),
        max_tokens=12, temperature=0,
    )  # fmt: skip
    text = "<|image|><|audio|>which unit feeds the tank?"
    ids, want = direct_tokens(served, [{"role": "user", "content": text}], [png], [wav])
    assert r.choices[0].message.content == served.tokenizer.decode(want, skip_special_tokens=True)
    cfg = served.multimodal
    details = r.usage.prompt_tokens_details.model_dump()
    assert details["image_tokens"] == cfg.vision.tokens_per_image == 16
    assert details["audio_tokens"] == cfg.audio.tokens_per_window  # a 0.5 s clip: one window
    assert r.usage.prompt_tokens == len(ids) > details["image_tokens"] + details["audio_tokens"]
    chunks = client.chat.completions.create(
        model="mm", messages=user(image_part(png), audio_part(wav), "which unit feeds the tank?"),
        max_tokens=12, temperature=0, stream=True, stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        r.choices[0].message.content
    )
    assert chunks[-1].usage.prompt_tokens_details.model_dump()["image_tokens"] == 16


def test_transcription_through_the_openai_client(env):
    client, served = client_for(env), env["models"]["mm"]
    wav = wav_bytes(3, seconds=2.5)  # two encoder windows
    got = client.audio.transcriptions.create(model="mm", file=("clip.wav", wav))
    text = "<|audio|>transcribe the recording"
    _, want = direct_tokens(served, [{"role": "user", "content": text}], clips=[wav],
                            max_tokens=256)  # fmt: skip
    assert got.text == served.tokenizer.decode(want, skip_special_tokens=True)
    assert (
        got.usage.input_token_details.audio_tokens == 2 * served.multimodal.audio.tokens_per_window
    )
    plain = client.audio.transcriptions.create(
        model="mm", file=("clip.flac", wav_bytes(3, 2.5, fmt="FLAC")), response_format="text",
        prompt="transcribe the recording",
    )  # fmt: skip
    assert plain == got.text  # FLAC of the same samples: the same transcript
    with pytest.raises(openai.BadRequestError, match="no audio tower"):
        client.audio.transcriptions.create(model="text", file=("clip.wav", wav))
    with pytest.raises(openai.BadRequestError, match="no audio tower"):
        client.audio.transcriptions.create(model="vision", file=("clip.wav", wav))
    with pytest.raises(openai.BadRequestError, match="not a wav, flac, ogg, mp3 file"):
        client.audio.transcriptions.create(model="mm", file=("clip.aiff", wav))


@pytest.mark.parametrize(
    ("fmt", "rate", "windows"),
    [("ogg", 16000, 1), ("mp3", 16000, 1), ("flac", 44100, 2), ("wav", 8000, 2)],
)
def test_audio_containers_and_sample_rates(env, fmt, rate, windows):
    """OGG, MP3, FLAC and WAV decode; other rates are resampled to the encoder's 16 kHz
    (2.5 s at any rate: two 2 s windows; 0.5 s: one)."""
    seconds = 2.5 if windows == 2 else 0.5
    clip = wav_bytes(4, seconds=seconds, rate=rate, fmt=fmt.upper())
    r = post_chat(env, user(audio_part(clip, fmt), "hi"))
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens_details"]["audio_tokens"] == 25 * windows


def test_media_to_a_model_without_its_tower_is_refused(env):
    client = client_for(env)
    for model, part, message in (
        ("text", image_part(png_bytes(1)), "takes text only"),
        ("text", audio_part(wav_bytes(1)), "takes text only"),
        ("vision", audio_part(wav_bytes(1)), "has no audio tower"),
    ):
        with pytest.raises(openai.BadRequestError, match=message):
            client.chat.completions.create(model=model, messages=user(part, "hi"), max_tokens=2)
    r = client.chat.completions.create(model="vision", messages=user(image_part(png_bytes(1)),
                                       "hi"), max_tokens=2)  # fmt: skip
    assert r.usage.prompt_tokens_details.model_dump()["audio_tokens"] == 0


def test_batched_media_prefill_equals_one_at_a_time(env):
    """Requests with an image, audio, both, and none, admitted in one batch, each give the
    tokens they give alone (greedy), and the text request those of the text-only path."""
    engine, served = env["models"]["mm"].engine, env["models"]["mm"]
    cfg, tok = served.multimodal, served.tokenizer
    png, wav = png_bytes(5), wav_bytes(6, seconds=2.2)
    pixels = image_to_pixels(Image.open(io.BytesIO(png)), cfg.vision)[None]
    mel = log_mel_windows(soundfile.read(io.BytesIO(wav), dtype="float32")[0], cfg.audio)
    img, aud = [cfg.image_token_id] * 16, [cfg.audio_token_id] * (25 * mel.shape[0])
    words = tok.encode("which unit feeds the tank?").ids
    requests = [
        (img + words, PrefillMedia(pixels, None)),
        (words + words, None),
        (aud + words, PrefillMedia(None, mel)),
        (img + aud + words[:3], PrefillMedia(pixels, mel)),
    ]
    params = SamplingParams(max_tokens=10, temperature=0)
    alone = [engine.submit(ids, params, media=m).result().token_ids for ids, m in requests]
    with engine._cond:  # holding the lock: the worker admits all four at once
        handles = [engine.submit(ids, params, media=m) for ids, m in requests]
    together = [h.result().token_ids for h in handles]
    assert together == alone
    assert len({tuple(t) for t in alone}) > 1
    assert alone[1] == greedy_media_tokens(engine.model, words + words, None, None, 10)


@pytest.mark.parametrize(
    ("part", "code", "message"),
    [
        ({"type": "image_url", "image_url": {"url": "data:image/png,notbase64"}}, "invalid_media",
         "not a base64 data: URL"),
        ({"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}, "invalid_media",
         "not valid base64"),
        (image_part(png_bytes(1)[:60]), "invalid_media", "cannot be decoded"),
        (image_part(b"\x89PNG\r\n\x1a\n" + bytes(200)), "invalid_media", "cannot be decoded"),
        (image_part(png_bytes(1, fmt="GIF"), "image/gif"), "invalid_media", "image/gif"),
        (image_part(png_bytes(1, fmt="GIF")), "invalid_media", "cannot be decoded"),
        (image_part(png_bytes(1, size=100)), "media_too_large", "100x100 pixels"),
        ({"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
         "remote_media_refused", "not fetched"),
        ({"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}, "invalid_media",
         "not a base64 data: URL"),
        ({"type": "image_url", "image_url": 7}, None, "image_url"),
        (audio_part(wav_bytes(1), "aiff"), "invalid_media", '"aiff" is not supported'),
        (audio_part(b"RIFF" + bytes(100)), "invalid_media", "cannot be decoded"),
        (audio_part(wav_bytes(1, seconds=4.0)), "media_too_large", "4.0 s long"),
        ({"type": "input_audio", "input_audio": "AAAA"}, None, "input_audio"),
    ],
)  # fmt: skip
def test_malformed_or_oversized_media_is_a_400(env, part, code, message):
    r = post_chat(env, user(part, "what is this?"))
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == code and message in error["message"]
    assert "messages[0].content[0]" in error["message"]


def test_too_many_media_parts_and_the_policy_per_key(env):
    parts = [image_part(png_bytes(i)) for i in range(4)]
    r = post_chat(env, user(*parts, "four images"))
    assert r.status_code == 400 and r.json()["error"]["code"] == "too_many_media_parts"
    assert post_chat(env, user(*parts[:3], "three")).status_code == 200
    # The policy lets `no_images` send audio, not images; other keys both.
    r = post_chat(env, user(image_part(png_bytes(1)), "hi"), key=env["no_images"])
    assert r.status_code == 400 and r.json()["error"]["code"] == "policy_violation"
    assert "does not allow image input" in r.json()["error"]["message"]
    assert post_chat(env, user(audio_part(wav_bytes(1)), "hi"), key=env["no_images"]).is_success
    # Placeholder text typed by a user is text, not a media slot (else: 2 slots, 1 image).
    typed = [{"role": "system", "content": "<|image|><|audio|>"}]
    r = post_chat(env, typed + user(image_part(png_bytes(1)), "<|image|> hi"))
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens_details"]["image_tokens"] == 16


def test_completions_cannot_smuggle_placeholders(env):
    """A media placeholder in a completion prompt (text or ids) is refused: prefilled beside a
    chat with an image, it would take that image's features."""
    headers = {"Authorization": f"Bearer {env['key']}"}
    image_id = env["models"]["mm"].multimodal.image_token_id
    for prompt in ("<|image|> hi", [image_id, 5, 6]):
        body = {"model": "mm", "prompt": prompt, "max_tokens": 2}
        r = httpx.post(env["url"] + "/v1/completions", json=body, headers=headers, timeout=60)
        assert r.status_code == 400 and "image placeholder" in r.json()["error"]["message"]
    body = {"model": "mm", "prompt": "which unit", "max_tokens": 2}
    assert httpx.post(env["url"] + "/v1/completions", json=body, headers=headers).is_success


def test_media_tokens_count_against_the_token_rate_limit(env):
    tight = env["tight"]
    text = post_chat(env, user("hi"), key=tight["text"], max_tokens=1)
    images = [image_part(png_bytes(1)), image_part(png_bytes(2))]
    media = post_chat(env, user(*images, "hi"), key=tight["media"], max_tokens=1)
    assert text.status_code == media.status_code == 200
    # The same text with and without images: only the images' tokens tip the limit (30/min).
    assert 2 * text.json()["usage"]["total_tokens"] < 30 <= media.json()["usage"]["total_tokens"]
    assert post_chat(env, user("hi"), key=tight["text"], max_tokens=1).status_code == 200
    assert post_chat(env, user("hi"), key=tight["media"], max_tokens=1).status_code == 429


def test_the_audit_log_keeps_media_hashes_never_bytes(env):
    png, wav = png_bytes(9), wav_bytes(9)
    r = post_chat(env, user(image_part(png), audio_part(wav), "hash me"))
    assert r.status_code == 200
    bad = post_chat(env, user(image_part(png), image_part(png_bytes(1)[:60]), "one is broken"))
    assert bad.status_code == 400
    log = env["audit"].read_text()
    entries = [json.loads(line) for line in log.splitlines()]
    ok = next(e for e in entries if e.get("request_id") == r.json()["id"].removeprefix("chatcmpl-"))
    assert [(m["type"], m["sha256"], m["bytes"]) for m in ok["media"]] == [
        ("image", hashlib.sha256(png).hexdigest(), len(png)),
        ("audio", hashlib.sha256(wav).hexdigest(), len(wav)),
    ]
    assert ok["prompt_tokens"] == r.json()["usage"]["prompt_tokens"]
    refused = [
        e for e in entries if e.get("error") == "invalid_media" and len(e.get("media", [])) == 2
    ]
    assert refused and refused[-1]["media"][0]["sha256"] == hashlib.sha256(png).hexdigest()
    for data in (png, wav):
        b64 = base64.b64encode(data).decode()
        assert b64[:64] not in log and b64[-64:] not in log


@contextmanager
def image_host(png: bytes):
    """A loopback HTTP server answering every GET with `png` (no network leaves the machine)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the stdlib's name)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            self.wfile.write(png)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/page.png"
    finally:
        server.shutdown()


def test_remote_image_urls_only_from_hosts_the_policy_lists(env):
    """The policy's `input.media_url_hosts` lets the server fetch from listed hosts; here a
    loopback server, so nothing is fetched from outside the machine."""
    png = png_bytes(4)
    served = env["models"]["mm"]
    with image_host(png) as url:
        remote = {"type": "image_url", "image_url": {"url": url}}
        assert post_chat(env, user(remote, "hi")).json()["error"]["code"] == "remote_media_refused"
        policy = Policy(PolicyConfig(default={"input": {"media_url_hosts": ["127.0.0.1"]}}))
        app = create_app({"mm": served}, keys=None, policy=policy, limits=LIMITS)
        with running_server(app) as other:
            fetched = post_chat({**env, "url": other}, user(remote, "hi"))
            inline = post_chat({**env, "url": other}, user(image_part(png), "hi"))
    assert fetched.status_code == 200, fetched.text
    assert fetched.json()["choices"][0]["message"] == inline.json()["choices"][0]["message"]


def test_upstream_mode_applies_the_media_policy_and_audits_hashes(env, tmp_path):
    """A gateway in front of an upstream (here the server above) refuses media its policy
    forbids before forwarding, forwards the rest, and audits their hashes."""
    from forgeml.serve.loading import upstream_served_models
    from forgeml.serve.upstream import Upstream, upstream_base_url

    upstream = Upstream(upstream_base_url(env["url"]), env["key"])
    policy = Policy(PolicyConfig(default={"input": {"media": ["audio"]}}))
    audit = AuditLog(tmp_path / "gateway.jsonl", fsync=False)
    app = create_app(upstream_served_models(upstream, ["mm"]), keys=None, policy=policy,
                     audit=audit, limits=LIMITS)  # fmt: skip
    wav = wav_bytes(7)
    with running_server(app) as url:
        gateway = {**env, "url": url}
        refused = post_chat(gateway, user(image_part(png_bytes(1)), "hi"))
        forwarded = post_chat(gateway, user(audio_part(wav), "hi"))
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "policy_violation"
    assert forwarded.status_code == 200, forwarded.text
    direct = post_chat(env, user(audio_part(wav), "hi"))
    assert forwarded.json()["choices"][0]["message"] == direct.json()["choices"][0]["message"]
    entries = [json.loads(line) for line in audit.path.read_text().splitlines()]
    (ok,) = [e for e in entries if e.get("event") == "request" and e["status"] == 200]
    assert ok["media"][0]["sha256"] == hashlib.sha256(wav).hexdigest()
