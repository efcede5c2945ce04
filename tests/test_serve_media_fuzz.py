"""Hostile media through `forgeml serve` (issue 24): bombs, lying headers, odd audio, huge
bodies and uploads, hostile remote hosts and mutated files are each a 400 (or 413) in bounded
time, the server still answers text, decodes off the event loop and audits hashes only."""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.server
import io
import json
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image
from test_serve_api import running_server
from test_serve_media import (
    audio_part,
    image_part,
    make_tiny_multimodal_dir,
    png_bytes,
    post_chat,
    user,
    wav_bytes,
)

import forgeml.serve.gateway as gateway_module
import forgeml.serve.media as media_module
import forgeml.serve.requests as requests_module
from forgeml.governance.audit import AuditLog
from forgeml.governance.policy import Policy, PolicyConfig
from forgeml.registry.store import Registry
from forgeml.serve.api import create_app
from forgeml.serve.loading import load_served_models
from forgeml.serve.media import MediaPart, decode_audio, decode_image
from forgeml.serve.requests import ApiError, RequestLimits

soundfile = pytest.importorskip("soundfile", reason="the audio path reads clips with soundfile")

MEDIA_BYTES = 256 * 2**10
LIMITS = RequestLimits(
    max_media_parts=3, max_media_bytes=MEDIA_BYTES, max_image_pixels=96 * 96, max_audio_seconds=3.0
)
# Seconds any hostile request may take on a loaded machine (the tiny model answers in far less).
BOUNDED_S = 15.0


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A live server over the tiny vision+audio LM, with small media limits, the audit log
    keeping bodies, and remote images allowed from 127.0.0.1 (the loopback hosts below)."""
    root = tmp_path_factory.mktemp("serve_media_fuzz")
    registry = Registry(f"sqlite:///{root / 'registry.db'}", root / "artifacts")
    registry.set_alias("mm", registry.add_asset("model", "mm", make_tiny_multimodal_dir(root)).id)
    models = load_served_models(registry, ["mm"], max_batch=4)
    policy = Policy(PolicyConfig(default={"input": {"media_url_hosts": ["127.0.0.1"]}}))
    audit = AuditLog(root / "audit.jsonl", fsync=False)
    app = create_app(models, keys=None, policy=policy, audit=audit, log_bodies=True, limits=LIMITS)
    with running_server(app) as url:
        yield {"url": url, "key": "none", "audit": audit.path, "models": models}
    models["mm"].engine.close()
    registry.close()


def still_answers(env) -> None:
    r = post_chat(env, user("which unit feeds the tank?"))
    assert r.status_code == 200, r.text


def refused(env, part: dict, code: str | None, message: str, status: int = 400) -> dict:
    """The error of a chat with `part`, asserted: `status`, `code`, `message` in it, in bounded
    time; and the server still answers text."""
    start = time.monotonic()
    r = post_chat(env, user(part, "what is this?"))
    assert time.monotonic() - start < BOUNDED_S
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and message in error["message"], error
    still_answers(env)
    return error


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels over a few bytes of pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(100)))
        + chunk(b"IEND", b"")
    )


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def clip(samples: np.ndarray, rate: int = 16000, fmt: str = "WAV", subtype=None) -> bytes:
    buf = io.BytesIO()
    soundfile.write(buf, samples, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def flac_claiming(total_samples: int, seconds: float = 0.5) -> bytes:
    """A FLAC of `seconds` of noise whose STREAMINFO claims `total_samples` (36 bits)."""
    noise = np.random.default_rng(0).normal(0, 0.1, int(16000 * seconds)).astype(np.float32)
    data = bytearray(clip(noise, fmt="FLAC"))
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # STREAMINFO comes first
    data[21] = (data[21] & 0xF0) | (total_samples >> 32)
    data[22:26] = struct.pack(">I", total_samples & 0xFFFFFFFF)
    return bytes(data)


NOISE = np.random.default_rng(1).normal(0, 0.1, 8000).astype(np.float32)
NAN, INF = NOISE.copy(), NOISE.copy()
NAN[100], INF[200] = np.nan, -np.inf
FRAMES = [Image.new("RGB", (40, 40), (i % 256, 0, 0)) for i in range(1000)]
TIFF = encoded(Image.new("RGB", (40, 40)), "TIFF")


@pytest.mark.parametrize(
    ("part", "code", "message"),
    [
        (image_part(png_claiming(50000, 50000)), "media_too_large", "too many pixels"),
        (image_part(png_claiming(200, 200)), "media_too_large", "200x200 pixels"),
        (image_part(TIFF), "invalid_media", "cannot be decoded as PNG, JPEG or WebP"),
        (image_part(TIFF, "image/tiff"), "invalid_media", '"image/tiff" is not supported'),
        (image_part(b"\xff\xd8\xff" + bytes(500), "image/jpeg"), "invalid_media", "cannot be"),
        (image_part(b"RIFF\x00\x00\x00\x00WEBPVP8 " + bytes(64), "image/webp"), "invalid_media",
         "cannot be decoded"),
        (image_part(png_bytes(1), "image/" + "x" * 200), "invalid_media", "is not supported"),
        (image_part(png_bytes(1), "image/png" + ";x" * 2000), "invalid_media", "not a base64"),
        ({"type": "image_url", "image_url": {"url": "data:" + ";a" * 2**20}}, "invalid_media",
         "not a base64 data: URL"),
        ({"type": "image_url", "image_url": {"url": "data:image/png;base64"}}, "invalid_media",
         "not a base64 data: URL"),
        (image_part(bytes(MEDIA_BYTES + 3)), "media_too_large", "at most 262144 per part"),
        (audio_part(clip(NAN, subtype="FLOAT")), "invalid_media", "NaN or infinite"),
        (audio_part(clip(INF, subtype="DOUBLE")), "invalid_media", "NaN or infinite"),
        (audio_part(clip(np.zeros(0, np.float32))), "invalid_media", "no samples"),
        (audio_part(clip(NOISE, rate=1_000_003)), "invalid_media", "1000003 Hz"),
        (audio_part(clip(NOISE[:50], rate=1)), "invalid_media", "sample rate is 1 Hz"),
        (audio_part(flac_claiming(2**36 - 1), "flac"), "media_too_large", "s long"),
        (audio_part(clip(np.zeros((96000, 8), np.float32), 48000, "FLAC"), "flac"),
         "media_too_large", "8 channels at 48000 Hz, more than the 288000 samples"),
        (audio_part(clip(NOISE, rate=8000, fmt="FLAC"), "flac"), None, None),  # 1 s: fine
        (audio_part(clip(NOISE, fmt="AIFF")), "invalid_media", "not one of these containers"),
        (audio_part(b"fLaC" + bytes(400), "flac"), "invalid_media", "cannot be decoded"),
        (audio_part(b"OggS" + bytes(400), "ogg"), "invalid_media", "cannot be decoded"),
        (audio_part(b"ID3" + bytes(400), "mp3"), "invalid_media", "cannot be decoded"),
        (audio_part(b"RIFF\xff\xff\xff\xffWAVEfmt " + bytes(40)), "invalid_media", "cannot be"),
    ],
)  # fmt: skip
def test_hostile_media_is_a_400_in_bounded_time(env, part, code, message):
    if code is None:  # the control: the same kind of input, well formed, is answered
        assert post_chat(env, user(part, "hi")).status_code == 200
        return
    error = refused(env, part, code, message)
    assert len(error["message"]) < 400  # a client's own strings are cut, not echoed whole


@pytest.mark.parametrize(
    "part",
    [
        image_part(encoded(FRAMES[0], "PNG", save_all=True, append_images=FRAMES[1:])),
        image_part(encoded(FRAMES[0], "WEBP", save_all=True, append_images=FRAMES[1:300]),
                   "image/webp"),
        image_part(encoded(Image.new("I;16", (40, 40)), "PNG")),
        image_part(encoded(Image.new("CMYK", (40, 40)), "JPEG"), "image/jpeg"),
        image_part(encoded(Image.new("RGB", (1, 90)), "PNG")),
        audio_part(clip(np.zeros(1, np.float32))),
        audio_part(clip(NOISE * 1e30, subtype="FLOAT")),
        audio_part(clip(NOISE, subtype="PCM_U8")),
        audio_part(clip(NOISE.astype(np.float64), subtype="DOUBLE")),
        audio_part(clip(np.stack([NOISE] * 6, axis=1))),
        audio_part(clip(np.stack([NOISE] * 8, axis=1), rate=44101, fmt="FLAC"), "flac"),
        audio_part(flac_claiming(16000, seconds=2.5), "flac"),  # decodes 1 s, never 2.5
    ],
)  # fmt: skip
def test_odd_but_valid_media_is_answered(env, part):
    """Animations (their first frame), 16-bit, CMYK and 1-pixel-wide images; 1-sample, loud
    float, 8-bit, float64, many-channel and odd-rate audio; a FLAC holding more than its header
    says: each answered, in bounded time."""
    start = time.monotonic()
    r = post_chat(env, user(part, "hi"))
    assert r.status_code == 200, r.text
    assert time.monotonic() - start < BOUNDED_S


def test_a_flac_never_decodes_past_its_header(env):
    samples = decode_audio(
        MediaPart("audio", flac_claiming(16000, seconds=2.5), "w", "data"),
        env["models"]["mm"].multimodal.audio,
        LIMITS,
    )
    assert samples.shape == (16000,)


def test_the_declared_image_type_is_a_hint_among_the_allowed_formats(env):
    jpeg = png_bytes(3, fmt="JPEG")
    as_png = post_chat(env, user(image_part(jpeg), "hi"))
    as_jpeg = post_chat(env, user(image_part(jpeg, "image/jpeg"), "hi"))
    assert as_png.status_code == as_jpeg.status_code == 200
    assert as_png.json()["choices"] == as_jpeg.json()["choices"]


def test_bodies_over_the_cap_are_a_413_before_parsing(env):
    big = image_part(bytes(6 * 2**20))  # over 4 MiB + the 3 parts' base64
    start = time.monotonic()
    r = post_chat(env, user(big, "hi"))
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert "smaller media" in r.json()["error"]["message"]
    assert time.monotonic() - start < BOUNDED_S
    still_answers(env)


MUTATION_SEEDS = 64


def mutations(data: bytes, seed: int):
    """Seeded damage to a valid file: flipped bytes, a truncation, a spliced repeat."""
    rng = np.random.default_rng(seed)
    raw = bytearray(data)
    for i in rng.integers(0, len(raw), int(rng.integers(1, 12))):
        raw[i] = int(rng.integers(0, 256))
    yield bytes(raw)
    yield data[: int(rng.integers(1, len(data)))]
    cut = int(rng.integers(8, len(data)))
    yield data[:cut] + data[8:cut] + data[cut:]


def test_mutated_files_decode_or_are_a_400(env):
    """Randomly damaged PNG, JPEG, WebP, WAV, FLAC, OGG and MP3 files: each decodes, or is a
    400 (`ApiError`) in bounded time; nothing else escapes the decoders."""
    cfg, seen = env["models"]["mm"].multimodal, {400: 0, 200: 0}
    image = np.random.default_rng(2).integers(0, 255, (48, 48, 3), dtype=np.uint8)
    originals = [("image", encoded(Image.fromarray(image), f)) for f in ("PNG", "JPEG", "WEBP")]
    originals += [("audio", clip(NOISE, fmt=f)) for f in ("WAV", "FLAC", "OGG", "MP3")]
    for kind, original in originals:
        for seed in range(MUTATION_SEEDS):
            for data in mutations(original, seed):
                part, start = MediaPart(kind, data, "w", "data"), time.monotonic()
                try:
                    if kind == "image":
                        decode_image(part, cfg.vision, LIMITS)
                    else:
                        decode_audio(part, cfg.audio, LIMITS)
                    seen[200] += 1
                except ApiError as exc:
                    assert exc.status == 400 and exc.code in ("invalid_media", "media_too_large")
                    seen[400] += 1
                assert time.monotonic() - start < BOUNDED_S
    assert seen[400] > 0 and seen[200] > 0  # the damage both broke files and spared some


def transcribe(env, files=None, data=None) -> httpx.Response:
    return httpx.post(env["url"] + "/v1/audio/transcriptions", files=files, data=data, timeout=60)


@pytest.mark.parametrize(
    ("files", "data", "message"),
    [
        (None, {"model": "mm"}, "`file` field"),
        (None, {"model": "mm", "file": "not a file"}, "`file` field"),
        ({"model": ("m.txt", b"mm")}, {"file": "not a file"}, "model: send it as a form field"),
        ({"file": ("a.wav", wav_bytes(1)), "temperature": ("t.txt", b"0.5")}, {"model": "mm"},
         "Too many files"),
        ([("file", ("a.wav", wav_bytes(1))), ("file", ("b.wav", wav_bytes(2)))], {"model": "mm"},
         "Too many files"),
        ({"file": ("a.wav", bytes(MEDIA_BYTES + 1))}, {"model": "mm"}, "at most 262144 per part"),
        ({"file": ("x" * 3000 + ".aiff", wav_bytes(1))}, {"model": "mm"}, "is not a wav"),
        ({"file": ("a.wav", clip(NAN, subtype="FLOAT"))}, {"model": "mm"}, "NaN or infinite"),
        ({"file": ("a.wav", wav_bytes(1))}, {"model": "mm", "temperature": "nan"}, "temperature"),
    ],
)  # fmt: skip
def test_hostile_transcription_uploads_are_a_400(env, files, data, message):
    start = time.monotonic()
    r = transcribe(env, files, data)
    assert time.monotonic() - start < BOUNDED_S
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]["message"]
    assert len(r.json()["error"]["message"]) < 400
    still_answers(env)


@pytest.mark.parametrize(
    ("content_type", "body", "message"),
    [
        ("multipart/form-data", b"abc", "Missing boundary"),
        ("multipart/form-data; boundary=xyz", b"--xyz\r\nX-H: " + b"a" * 10**5, "Invalid multipart"),
        ("multipart/form-data; boundary=xyz", b'--xyz\r\nContent-Disposition: form-data; '
         b'name="file"; filename="a.wav"\r\n\r\nRIFF', "`file` field"),
        ("application/json", b'{"model": "mm"}', "`file` field"),
    ],
)  # fmt: skip
def test_malformed_multipart_bodies_are_a_400(env, content_type, body, message):
    r = httpx.post(env["url"] + "/v1/audio/transcriptions", content=body, timeout=60,
                   headers={"content-type": content_type})  # fmt: skip
    assert r.status_code == 400 and message in r.json()["error"]["message"]


class Host(http.server.BaseHTTPRequestHandler):
    """A loopback image host with hostile answers, by path; it counts the GETs of each."""

    hits: dict[str, int] = {}
    png = png_bytes(4)

    def do_GET(self):  # noqa: N802 (the stdlib's name)
        Host.hits[self.path] = Host.hits.get(self.path, 0) + 1
        port = self.server.server_address[1]
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", f"http://localhost:{port}/page.png")
            self.end_headers()
        elif self.path == "/drip":
            self.send_response(200)
            self.end_headers()
            for _ in range(100):  # a byte a while, each within the per-read timeout
                self.wfile.write(b"\x89")
                self.wfile.flush()
                time.sleep(0.2)
        elif self.path == "/gzip":
            body = gzip.compress(bytes(4 * MEDIA_BYTES))
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path in ("/big", "/big-undeclared"):
            self.send_response(200)
            if self.path == "/big":
                self.send_header("Content-Length", str(2 * MEDIA_BYTES))
            self.end_headers()
            self.wfile.write(bytes(2 * MEDIA_BYTES))
        else:
            self.send_response(200 if self.path == "/page.png" else 404)
            self.end_headers()
            self.wfile.write(Host.png)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def image_host():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Host)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def remote(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def test_remote_fetches_are_bounded(env, image_host, monkeypatch):
    """From an allowed host: redirects are not followed (the target is never asked), a body
    that drips past the fetch deadline, one over the byte cap (declared or not) and a
    content-encoded one are refused; a URL whose parsers may disagree on its host is refused
    unfetched. The plain image is fetched."""
    monkeypatch.setattr(media_module, "FETCH_TIMEOUT_S", 1.0)
    assert post_chat(env, user(remote(image_host + "/page.png"), "hi")).status_code == 200
    refused(env, remote(image_host + "/redirect"), "invalid_media", "gave HTTP 302")
    assert Host.hits.get("/page.png") == 1  # only the direct fetch above
    start = time.monotonic()
    refused(env, remote(image_host + "/drip"), "invalid_media", "ReadTimeout")
    assert time.monotonic() - start < 8
    refused(env, remote(image_host + "/big"), "media_too_large", f"{2 * MEDIA_BYTES} bytes")
    refused(env, remote(image_host + "/big-undeclared"), "media_too_large", "at most 262144")
    refused(env, remote(image_host + "/gzip"), "invalid_media", "content-encoded")
    refused(env, remote(image_host + "/missing"), "invalid_media", "gave HTTP 404")
    port = image_host.rsplit(":", 1)[1]
    for url in (
        f"http://127.0.0.1:{port}@attacker.example/page.png",
        f"http://attacker.example\\@127.0.0.1:{port}/page.png",
        f"http://127.0.0.1:{port}/page.png\r\nHost: attacker.example",
    ):
        refused(env, remote(url), "remote_media_refused", "credentials, backslashes")
    refused(env, remote("http://[::1/page.png"), "invalid_media", "not a valid URL")
    refused(env, remote("http://localhost/page.png"), "remote_media_refused", '"localhost"')


def test_media_decodes_off_the_event_loop_in_bounded_threads(env, monkeypatch):
    """While `MEDIA_WORKERS` media requests are stuck decoding (and more wait for a thread), a
    text request is answered; no more than `MEDIA_WORKERS` ever decode at once."""
    decode, release = gateway_module.decode_media, threading.Event()
    state, lock = {"now": 0, "most": 0}, threading.Lock()

    def stuck_decode(*args, **kwargs):
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        release.wait(BOUNDED_S)  # blocking, as a hostile file's decode would be
        with lock:
            state["now"] -= 1
        return decode(*args, **kwargs)

    monkeypatch.setattr(gateway_module, "decode_media", stuck_decode)
    workers = media_module.MEDIA_WORKERS
    with ThreadPoolExecutor(workers + 2) as pool:
        futures = [
            pool.submit(post_chat, env, user(image_part(png_bytes(i)), "hi"))
            for i in range(workers + 2)
        ]
        deadline = time.monotonic() + BOUNDED_S
        while state["now"] < workers and time.monotonic() < deadline:
            time.sleep(0.02)
        assert state["now"] == workers  # all stuck at once: decoding is off the event loop
        still_answers(env)
        assert state["now"] == workers and not release.is_set()
        release.set()
        assert all(f.result().status_code == 200 for f in futures)
    assert state["most"] == workers


def test_the_body_scan_for_lone_surrogates_is_off_the_event_loop(env, monkeypatch):
    """A body with `\\u` in it (JSON escapes) is scanned for lone surrogates in a worker thread:
    while that scan is stuck, a text request is answered."""
    scan, release, stuck = requests_module.lone_surrogate_in_json, threading.Event(), []

    def stuck_scan(body: bytes):
        stuck.append(len(body))
        release.wait(BOUNDED_S)
        return scan(body)

    monkeypatch.setattr(requests_module, "lone_surrogate_in_json", stuck_scan)
    with ThreadPoolExecutor(1) as pool:
        escaped = pool.submit(post_chat, env, user(image_part(png_bytes(1)), "caf\\u00e9 " * 9))
        deadline = time.monotonic() + BOUNDED_S
        while not stuck and time.monotonic() < deadline:
            time.sleep(0.02)
        assert stuck
        still_answers(env)
        assert not release.is_set()
        release.set()
        assert escaped.result().status_code == 200


def test_refusals_are_audited_with_hashes_never_bytes(env):
    """A clip refused after parsing, and an image before a part that does not parse: each
    refusal's audit entry has the hashes of the parts read, and no base64 of them."""
    wav, png = clip(NAN, subtype="FLOAT"), png_bytes(7)
    refused(env, audio_part(wav), "invalid_media", "NaN or infinite")
    bad_base64 = {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@"}}
    r = post_chat(env, user(image_part(png), bad_base64, "hi"))
    assert r.status_code == 400 and "messages[0].content[1]" in r.json()["error"]["message"]
    log = env["audit"].read_text()
    entries = [json.loads(line) for line in log.splitlines()]
    hashes = [[m["sha256"] for m in e.get("media", [])] for e in entries if e.get("error")]
    assert [hashlib.sha256(wav).hexdigest()] in hashes
    assert [hashlib.sha256(png).hexdigest()] in hashes
    for data in (wav, png):
        b64 = base64.b64encode(data).decode()
        assert b64[:64] not in log and b64[-64:] not in log
    assert "x" * 100 not in log  # the long media type and file name above are not logged
