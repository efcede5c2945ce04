"""Images and audio in serving requests (issue 24): OpenAI `image_url` and `input_audio` content
parts checked against the policy and the request limits, decoded (Pillow, soundfile) into the
pixel values and log-mel windows a vision/audio LM prefills with, and their placeholders
expanded as multimodal SFT expands them. The audit gets each part's sha256, never its bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import torch

from forgeml.governance.policy import EffectiveRules, PolicyDecision, PolicyViolation
from forgeml.models.audio import AudioConfig, log_mel_windows
from forgeml.models.multimodal import MultimodalConfig, expand_placeholders
from forgeml.models.vision import VisionConfig, image_to_pixels
from forgeml.serve.engine import PrefillMedia
from forgeml.serve.requests import MEDIA_PART_TOWERS, ApiError, RequestLimits

# OpenAI content part type -> the kind of media it carries (the policy's name for it).
PART_KINDS = {"image_url": "image", "input_audio": "audio"}
# Image media types a data: URL may name -> the Pillow format it must decode as.
IMAGE_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/jpg": "JPEG", "image/webp": "WEBP"}
# `input_audio.format` -> soundfile's (libsndfile's) name of the container.
AUDIO_FORMATS = {"wav": "WAV", "flac": "FLAC", "ogg": "OGG", "mp3": "MP3"}
# Each container's first bytes: a clip is sniffed before libsndfile, which parses many more
# formats, sees it (an MP3 without an ID3 tag starts with a frame sync, 11 set bits).
AUDIO_MAGIC = {"WAV": (b"RIFF",), "FLAC": (b"fLaC",), "OGG": (b"OggS",), "MP3": (b"ID3", b"\xff")}
# Sample rates (Hz) a clip may have: outside them it is no recording, and resampling it to the
# encoder's rate would cost far more than its length says.
AUDIO_RATES = (1000, 192000)
# Samples (of all channels) a clip may decode to per second of `max_audio_seconds`: 48 kHz
# stereo. A few hundred kB of FLAC can hold minutes of 8-channel 192 kHz silence.
AUDIO_SAMPLES_PER_SECOND = 96000
# Frames read (and downmixed) at once: at most this many samples, whatever the channel count.
AUDIO_BLOCK_SAMPLES = 2**20
# Seconds to fetch a remote image a policy allows, all of it (not per read).
FETCH_TIMEOUT_S = 10.0
# Media requests parsed, fetched or decoded at once (in worker threads); the others wait, so
# text requests always find threads to tokenize in.
MEDIA_WORKERS = 4
# Characters of a client's own string (a media type, a file name) an error message repeats.
ECHO_CHARS = 40
# A data: URL's head, before the comma; matched alone (a regex over megabytes of a hostile
# URL could take seconds), and only when the comma comes within `DATA_URL_HEAD_CHARS`.
_DATA_URL = re.compile(r"data:(?P<type>[^;,]*)(?P<params>(?:;[^;,]*)*)")
DATA_URL_HEAD_CHARS = 256


@dataclass(frozen=True)
class MediaPart:
    """One media content part's bytes, with where it was in the request and where it came from
    ("data" inline, else the remote URL's host; for a remote image an upstream fetches, the
    bytes, and so the audited hash, are its URL's)."""

    kind: str  # "image" or "audio"
    data: bytes
    where: str  # e.g. "messages[1].content[0]"
    source: str  # "data" (inline) or the remote URL's host

    def audit_entry(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "sha256": hashlib.sha256(self.data).hexdigest(),
            "bytes": len(self.data),
            "source": self.source,
        }


@dataclass
class PromptMedia:
    """A request's decoded media: what the engine prefills with, and its token counts."""

    prefill: PrefillMedia
    image_tokens: int
    audio_tokens: int


def media_part_types(cfg: MultimodalConfig | None) -> dict[str, str] | None:
    """The media part types a served model reads, each with its tower ("image_url": "vision",
    "input_audio": "audio"); None for a text-only model (see `check_chat_messages`)."""
    if cfg is None:
        return None
    return {t: tower for t, tower in MEDIA_PART_TOWERS.items() if getattr(cfg, tower) is not None}


def placeholder_strings(cfg: MultimodalConfig, tokenizer: Any) -> dict[str, str]:
    """Kind -> the placeholder token's text (one per media part before expansion)."""
    ids = {"image": cfg.image_token_id, "audio": cfg.audio_token_id}
    return {k: tokenizer.id_to_token(t) for k, t in ids.items() if t is not None}


def _neutralised(text: str, placeholders: Sequence[str]) -> str:
    """Text with placeholder strings typed in it broken (a zero-width space after `<|`), so a
    user's text cannot claim media slots; as `render_chat` does for the chat markers."""
    for token in placeholders:
        text = text.replace(token, token[:2] + "\u200b" + token[2:])
    return text


def media_parts(
    messages: Sequence[Mapping[str, Any]],
    rules: EffectiveRules,
    limits: RequestLimits,
    *,
    fetch: bool = True,
    audit: list[dict[str, Any]] | None = None,
) -> list[MediaPart]:
    """The media content parts' bytes, in order. Refuses (400) malformed parts, too many of
    them, oversized ones, and remote URLs the policy does not allow; `PolicyViolation` for a
    kind of media the policy forbids this key. An allowed remote image is fetched here
    (blocking) or, with `fetch=False` (an upstream fetches it), stands for its URL. Each
    part's `audit_entry` goes to `audit` as it is read, so a refusal keeps those before it."""
    parts: list[MediaPart] = []
    for i, message in enumerate(messages):
        content = message.get("content")
        for j, part in enumerate(content if isinstance(content, list) else []):
            kind = PART_KINDS.get(part.get("type")) if isinstance(part, Mapping) else None
            if kind is None:
                continue
            where = f"messages[{i}].content[{j}]"
            if kind not in rules.media:
                raise PolicyViolation(
                    PolicyDecision(f"input.media.{kind}", "blocked"),
                    f"{where}: the policy does not allow {kind} input for this key",
                )
            if len(parts) >= limits.max_media_parts:
                raise ApiError(
                    400,
                    f"{where}: more than {limits.max_media_parts} images and audio clips in one "
                    "request; send fewer",
                    code="too_many_media_parts",
                )
            parts.append(_image_part(part, where, rules, limits, fetch) if kind == "image" else
                         _audio_part(part, where, limits))  # fmt: skip
            if audit is not None:
                audit.append(parts[-1].audit_entry())
    return parts


def media_messages(
    messages: Sequence[Mapping[str, Any]],
    placeholders: Mapping[str, str],
    rules: EffectiveRules,
    limits: RequestLimits,
    audit: list[dict[str, Any]] | None = None,
) -> tuple[list[dict[str, Any]], list[MediaPart]]:
    """`media_parts` of the messages (their audit entries to `audit`), and the messages with
    each content list flattened to text: one placeholder per media part, placeholder strings
    typed in the text broken."""
    parts = media_parts(messages, rules, limits, audit=audit)
    marks = list(placeholders.values())
    out = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(
                placeholders[PART_KINDS[p["type"]]]
                if p.get("type") in PART_KINDS
                else _neutralised(p["text"], marks)
                for p in content
            )
        elif isinstance(content, str):
            content = _neutralised(content, marks)
        out.append({**message, "content": content})
    return out, parts


def _image_part(
    part: Mapping[str, Any], where: str, rules: EffectiveRules, limits: RequestLimits, fetch: bool
) -> MediaPart:
    image_url = part.get("image_url")
    url = image_url.get("url") if isinstance(image_url, Mapping) else image_url
    if not isinstance(url, str):
        raise ApiError(400, f'{where}.image_url: give {{"url": "data:image/png;base64,..."}}')
    scheme = url[:8].lower()
    if scheme.startswith(("http://", "https://")):
        host = _allowed_host(url, where, rules)
        data = _fetched(url, where, limits) if fetch else url.encode()
        return MediaPart("image", data, where, host)
    comma = url.find(",", 0, DATA_URL_HEAD_CHARS)
    match = _DATA_URL.fullmatch(url, 0, comma) if comma > 0 else None
    if match is None or "base64" not in match["params"].lower().split(";"):
        raise ApiError(
            400,
            f"{where}.image_url.url: not a base64 data: URL; send "
            '"data:image/png;base64,<data>" (PNG, JPEG or WebP)',
            code="invalid_media",
        )
    media_type = match["type"].lower()
    if media_type not in IMAGE_TYPES:
        raise ApiError(
            400,
            f"{where}: image type {echo(media_type)} is not supported; send "
            f"{', '.join(sorted(IMAGE_TYPES))}",
            code="invalid_media",
        )
    return MediaPart(
        "image", _base64_bytes(url[comma + 1 :], f"{where}.image_url", limits), where, "data"
    )


def _audio_part(part: Mapping[str, Any], where: str, limits: RequestLimits) -> MediaPart:
    audio = part.get("input_audio")
    if not isinstance(audio, Mapping) or not isinstance(audio.get("data"), str):
        raise ApiError(400, f'{where}.input_audio: give {{"data": <base64>, "format": "wav"}}')
    fmt = audio.get("format")
    if fmt not in AUDIO_FORMATS:
        raise ApiError(
            400,
            f"{where}.input_audio.format: {echo(fmt)} is not supported; give one of "
            f"{', '.join(AUDIO_FORMATS)}",
            code="invalid_media",
        )
    return MediaPart("audio", _base64_bytes(audio["data"], f"{where}.input_audio", limits), where,
                     "data")  # fmt: skip


def echo(value: Any) -> str:
    """A client's value for an error message, as JSON, cut to `ECHO_CHARS` characters."""
    text = json.dumps(value)
    return text if len(text) <= ECHO_CHARS else text[:ECHO_CHARS] + "..."


def too_large(where: str, size: int, limits: RequestLimits) -> ApiError:
    return ApiError(
        400,
        f"{where}: {size} bytes of media; this server accepts at most {limits.max_media_bytes} "
        "per part",
        code="media_too_large",
    )


def _base64_bytes(data: str, where: str, limits: RequestLimits) -> bytes:
    """The bytes of base64 `data`, refused before decoding when they would be over the cap."""
    data = "".join(data.split())  # MIME base64 may wrap lines
    if len(data) // 4 * 3 > limits.max_media_bytes:
        raise too_large(where, len(data) // 4 * 3, limits)
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(
            400, f"{where}: the data is not valid base64", code="invalid_media"
        ) from None
    if not raw:
        raise ApiError(400, f"{where}: the media is empty", code="invalid_media")
    return raw


def _allowed_host(url: str, where: str, rules: EffectiveRules) -> str:
    """The URL's host when the policy lists it (`input.media_url_hosts`), else 400. A URL with
    credentials, backslashes, spaces or control characters is refused whatever its host: URL
    parsers read those differently, and the one that fetches must see the allowed host."""
    try:
        split = urlsplit(url)
        host = (split.hostname or "").lower()
    except ValueError:  # e.g. an unclosed [IPv6 bracket
        raise ApiError(400, f"{where}: not a valid URL", code="invalid_media") from None
    if "@" in split.netloc or re.search(r"[\\\s\x00-\x1f\x7f]", url):
        raise ApiError(
            400,
            f"{where}: remote image URLs may not hold credentials, backslashes, spaces or "
            "control characters",
            code="remote_media_refused",
        )
    if host not in {h.lower() for h in rules.media_url_hosts}:
        raise ApiError(
            400,
            f"{where}: remote image URLs are not fetched (host {echo(host)} is not allowed "
            "by the policy's input.media_url_hosts); send the image inline as a "
            "data:image/png;base64,... URL",
            code="remote_media_refused",
        )
    return host


def _fetched(url: str, where: str, limits: RequestLimits) -> bytes:
    """A remote image's bytes (its host checked by `_allowed_host`): no redirects (they could
    lead off the allowed hosts), no content encoding (a small gzip body may inflate to
    gigabytes), at most the media byte limit, in `FETCH_TIMEOUT_S` (and one read's wait)."""
    import httpx

    deadline = time.monotonic() + FETCH_TIMEOUT_S
    chunks, size = [], 0
    headers = {"Accept-Encoding": "identity"}
    try:
        with httpx.stream(
            "GET", url, headers=headers, timeout=FETCH_TIMEOUT_S, follow_redirects=False
        ) as r:
            if r.status_code != 200:
                raise ApiError(400, f"{where}: fetching the image gave HTTP {r.status_code}",
                               code="invalid_media")  # fmt: skip
            if r.headers.get("content-encoding", "identity").lower() != "identity":
                raise ApiError(400, f"{where}: the image was sent content-encoded; serve it as "
                               "is", code="invalid_media")  # fmt: skip
            declared = r.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limits.max_media_bytes:
                raise too_large(where, int(declared), limits)
            for chunk in r.iter_raw():
                size += len(chunk)
                if size > limits.max_media_bytes:
                    raise too_large(where, size, limits)
                if time.monotonic() > deadline:
                    raise httpx.ReadTimeout("the fetch took too long")
                chunks.append(chunk)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise ApiError(
            400, f"{where}: cannot fetch the image ({type(exc).__name__})", code="invalid_media"
        ) from None
    return b"".join(chunks)


def _decoder(module: str) -> Any:
    """Pillow or soundfile (the `multimodal` extra), or a 500 saying to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ApiError(
            500,
            f"this server cannot decode media: {module.split('.')[0]} is not installed (pip "
            "install 'forgeml[multimodal]')",
            "server_error",
            "missing_decoder",
        ) from None


def decode_image(part: MediaPart, cfg: VisionConfig, limits: RequestLimits) -> torch.Tensor:
    """pixel_values [C, H, W] of a PNG, JPEG or WebP part (an animation's first frame); 400 when
    it does not decode or has more pixels than the limit (checked from the header, before
    decompressing)."""
    Image = _decoder("PIL.Image")

    try:
        with Image.open(io.BytesIO(part.data), formats=sorted(set(IMAGE_TYPES.values()))) as image:
            width, height = image.size
            if width * height > limits.max_image_pixels:
                raise _too_many_pixels(part, width, height, limits)
            image.load()
            return image_to_pixels(image, cfg)
    except ApiError:
        raise
    except Image.DecompressionBombError:  # Pillow's own cap, met in the header
        raise _too_many_pixels(part, None, None, limits) from None
    except Exception as exc:  # a decoder may raise anything on hostile bytes: the client's
        raise ApiError(
            400,
            f"{part.where}: the image cannot be decoded as PNG, JPEG or WebP "
            f"({type(exc).__name__})",
            code="invalid_media",
        ) from None


def _too_many_pixels(
    part: MediaPart, width: int | None, height: int | None, limits: RequestLimits
) -> ApiError:
    size = f"is {width}x{height} pixels" if width is not None else "has too many pixels"
    return ApiError(
        400,
        f"{part.where}: the image {size}; this server accepts at most "
        f"{limits.max_image_pixels} pixels",
        code="media_too_large",
    )


def decode_audio(part: MediaPart, cfg: AudioConfig, limits: RequestLimits) -> np.ndarray:
    """Mono samples at the encoder's rate of a WAV, FLAC, OGG or MP3 part; 400 when it is no such
    container (sniffed before libsndfile reads it), does not decode, has a sample rate outside
    `AUDIO_RATES`, is longer than the limit or holds more samples than it allows (from the
    header, before decoding; a clip never decodes past its header's length) or holds NaN or
    infinite samples."""
    soundfile = _decoder("soundfile")

    if not any(part.data.startswith(m) for magic in AUDIO_MAGIC.values() for m in magic):
        raise _undecodable_audio(part, "not one of these containers")
    try:
        with soundfile.SoundFile(io.BytesIO(part.data)) as f:
            if f.format not in AUDIO_FORMATS.values():
                raise ValueError(f"container {f.format}")
            rate = f.samplerate
            if not AUDIO_RATES[0] <= rate <= AUDIO_RATES[1]:
                raise ApiError(
                    400,
                    f"{part.where}: the audio's sample rate is {rate} Hz; this server accepts "
                    f"{AUDIO_RATES[0]} to {AUDIO_RATES[1]} Hz",
                    code="invalid_media",
                )
            seconds = f.frames / rate
            if seconds > limits.max_audio_seconds:
                raise ApiError(
                    400,
                    f"{part.where}: the audio is {seconds:.1f} s long; this server accepts at "
                    f"most {limits.max_audio_seconds:g} s",
                    code="media_too_large",
                )
            budget = limits.max_audio_seconds * AUDIO_SAMPLES_PER_SECOND
            if f.frames * f.channels > budget:
                raise ApiError(
                    400,
                    f"{part.where}: the audio is {seconds:.1f} s of {f.channels} channels at "
                    f"{rate} Hz, more than the {budget:.0f} samples this server decodes; send "
                    "it at a lower rate or with fewer channels",
                    code="media_too_large",
                )
            samples = _mono(f)
    except ApiError:
        raise
    except Exception as exc:  # libsndfile errors on hostile bytes are the client's
        raise _undecodable_audio(part, type(exc).__name__) from None
    if samples.shape[0] == 0:
        raise ApiError(400, f"{part.where}: the audio has no samples", code="invalid_media")
    if not np.isfinite(samples).all():
        raise ApiError(
            400, f"{part.where}: the audio holds NaN or infinite samples", code="invalid_media"
        )
    return resampled(samples, rate, cfg.sample_rate)


def _mono(f: Any) -> np.ndarray:
    """A soundfile's samples (float32), its channels averaged block by block, so that a clip
    of many channels never needs them all in memory at once."""
    step = max(1, AUDIO_BLOCK_SAMPLES // f.channels)
    blocks = []
    while len(block := f.read(step, dtype="float32", always_2d=True)):
        blocks.append(block.mean(axis=1, dtype=np.float32))
    return np.concatenate(blocks) if blocks else np.zeros(0, np.float32)


def _undecodable_audio(part: MediaPart, why: str) -> ApiError:
    return ApiError(
        400,
        f"{part.where}: the audio cannot be decoded as WAV, FLAC, OGG or MP3 ({why})",
        code="invalid_media",
    )


def resampled(audio: np.ndarray, rate: int, target: int) -> np.ndarray:
    """`audio` at `target` Hz: polyphase resampling with scipy's anti-aliasing filter. The
    ratio is exact for the usual rates; for odd ones it is the nearest with a denominator of at
    most 1000, which bounds the filter's length (a prime rate would need millions of taps)."""
    if rate == target:
        return audio
    from scipy.signal import resample_poly

    ratio = Fraction(target, rate).limit_denominator(1000)
    return resample_poly(audio, ratio.numerator, ratio.denominator).astype(np.float32)


def decode_media(
    parts: Sequence[MediaPart], cfg: MultimodalConfig, limits: RequestLimits
) -> tuple[PromptMedia, list[int], list[int]]:
    """The parts decoded for the model, and each image's and each clip's placeholder count
    (`tokens_per_image`; `tokens_per_window` times the clip's windows)."""
    pixels, windows, image_counts, audio_counts = [], [], [], []
    for part in parts:
        if part.kind == "image":
            pixels.append(decode_image(part, cfg.vision, limits))
            image_counts.append(cfg.vision.tokens_per_image)
        else:
            mel = log_mel_windows(decode_audio(part, cfg.audio, limits), cfg.audio)
            windows.append(mel)
            audio_counts.append(cfg.audio.tokens_per_window * mel.shape[0])
    prefill = PrefillMedia(
        torch.stack(pixels) if pixels else None, torch.cat(windows) if windows else None
    )
    return PromptMedia(prefill, sum(image_counts), sum(audio_counts)), image_counts, audio_counts


def expanded_ids(
    ids: list[int], cfg: MultimodalConfig, image_counts: list[int], audio_counts: list[int]
) -> list[int]:
    """Prompt ids with each media placeholder repeated as many times as its media has
    features; 400 if the (governed) text lost or gained one."""
    for token, counts in ((cfg.image_token_id, image_counts), (cfg.audio_token_id, audio_counts)):
        if token is None:
            continue
        try:
            ids = expand_placeholders(ids, token, counts)
        except ValueError:
            raise ApiError(
                400,
                "the prompt's media placeholders do not match its media parts (did an input "
                "rule rewrite them?)",
                code="invalid_media",
            ) from None
    return ids


def refuse_placeholders(ids: Sequence[int], cfg: MultimodalConfig) -> None:
    """400 for a prompt without media that holds media placeholder ids (completion token ids,
    or text in a completion prompt): prefilled beside a request with media, they would take
    its features."""
    for kind, token in (("image", cfg.image_token_id), ("audio", cfg.audio_token_id)):
        if token is not None and token in ids:
            raise ApiError(
                400,
                f"prompt: token {token} is the {kind} placeholder; send {kind}s as content parts "
                "of /v1/chat/completions",
                code="invalid_media",
            )
