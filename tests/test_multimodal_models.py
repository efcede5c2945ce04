"""Vision/audio encoders joined to the LM: shapes, gradients, placeholder splicing, log-mel."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from forgeml.core.config import ModelConfig
from forgeml.models.audio import AudioConfig, AudioEncoder, log_mel_windows, stack_frames
from forgeml.models.multimodal import MultimodalConfig, MultimodalLM
from forgeml.models.vision import VisionConfig, VisionEncoder, image_to_pixels, pixel_shuffle

VOCAB = 61
IMAGE_ID, AUDIO_ID = 3, 4


def tiny_config(arch: str = "dense", shuffle: int = 1, audio: bool = True) -> MultimodalConfig:
    lm = ModelConfig(
        arch=arch, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=48,
        vocab_size=VOCAB, max_seq_len=128, n_experts=4, top_k=2,
    )  # fmt: skip
    vision = VisionConfig(
        image_size=32, patch_size=8, dim=32, n_layers=2, n_heads=2, ffn_hidden=48,
        pixel_shuffle=shuffle,
    )  # fmt: skip
    sound = AudioConfig(
        n_mels=16, window_frames=32, dim=32, n_layers=2, n_heads=2, ffn_hidden=128, stack=4
    )
    return MultimodalConfig(
        lm=lm,
        vision=vision,
        audio=sound if audio else None,
        image_token_id=IMAGE_ID,
        audio_token_id=AUDIO_ID if audio else None,
    )


def tiny_model(cfg: MultimodalConfig) -> MultimodalLM:
    torch.manual_seed(0)
    model = MultimodalLM(cfg)
    with torch.no_grad():  # away from the trivial init: unit norms, zero biases
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def sequence(n_image: int, n_audio: int, text: int = 5) -> torch.Tensor:
    """[1, T]: text, image placeholders, text, audio placeholders, text."""
    torch.manual_seed(1)
    words = lambda n: torch.randint(10, VOCAB, (n,))  # noqa: E731
    parts = [words(text), torch.full((n_image,), IMAGE_ID), words(text)]
    parts += [torch.full((n_audio,), AUDIO_ID), words(text)]
    return torch.cat(parts)[None]


def test_vision_encoder_shapes_and_pixel_shuffle():
    cfg = tiny_config().vision
    enc = VisionEncoder(cfg)
    out = enc(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, 16, 32) and cfg.tokens_per_image == 16
    shuffled = VisionConfig(**{**cfg.model_dump(), "pixel_shuffle": 2})
    assert shuffled.tokens_per_image == 4 and shuffled.feature_dim == 128
    # Pixel shuffle against a loop: token (r, c) of the 2x2 grid holds patches
    # (2r+i, 2c+j) for i, j in row-major order, side by side.
    x = torch.randn(2, 16, 5)
    y = pixel_shuffle(x, grid=4, factor=2)
    grid = x.view(2, 4, 4, 5)
    for r in range(2):
        for c in range(2):
            want = torch.cat(
                [grid[:, 2 * r + i, 2 * c + j] for i in range(2) for j in range(2)], -1
            )
            assert torch.equal(y[:, r * 2 + c], want)
    with pytest.raises(ValueError, match=r"takes \(32, 32\)"):
        enc(torch.randn(1, 3, 16, 16))


def test_audio_encoder_shapes():
    cfg = tiny_config().audio
    enc = AudioEncoder(cfg)
    out = enc(torch.randn(2, 16, 32))
    assert out.shape == (2, 16, 32)
    assert stack_frames(out, 4).shape == (2, 4, 128) and cfg.tokens_per_window == 4
    with pytest.raises(ValueError, match="windows"):
        enc(torch.randn(2, 16, 30))


@pytest.mark.parametrize("arch", ["dense", "moe"])
def test_inputs_embeds_is_the_token_embedding_path(arch):
    lm = tiny_model(tiny_config(arch)).lm.eval()
    idx = torch.randint(0, VOCAB, (2, 9))
    assert torch.equal(lm(idx), lm(idx, inputs_embeds=lm.tok_embeddings(idx)))


@pytest.mark.parametrize("arch", ["dense", "moe"])
def test_media_reach_only_later_positions_and_every_parameter_learns(arch):
    cfg = tiny_config(arch)
    model = tiny_model(cfg)
    n_img, n_aud = cfg.vision.tokens_per_image, cfg.audio.tokens_per_window
    idx = sequence(n_img, 2 * n_aud)
    torch.manual_seed(2)
    pixels, mels = torch.randn(1, 3, 32, 32), torch.randn(2, 16, 32)
    model.eval()
    logits = model(idx, pixel_values=pixels, audio_features=mels)
    assert logits.shape == (1, idx.shape[1], VOCAB)
    other = model(idx, pixel_values=pixels + 1, audio_features=mels)
    first_image = int((idx[0] == IMAGE_ID).nonzero()[0])
    first_audio = int((idx[0] == AUDIO_ID).nonzero()[0])
    # Causal: positions before the image do not see it; the image changes everything after.
    assert torch.equal(logits[:, :first_image], other[:, :first_image])
    assert not torch.allclose(logits[:, first_image:], other[:, first_image:])
    other = model(idx, pixel_values=pixels, audio_features=mels.flip(0))
    assert torch.equal(logits[:, :first_audio], other[:, :first_audio])
    assert not torch.allclose(logits[:, first_audio:], other[:, first_audio:])

    model.train()
    targets = torch.roll(idx, -1, dims=1)
    targets[(targets == IMAGE_ID) | (targets == AUDIO_ID)] = -100
    loss = model(idx, targets, pixel_values=pixels, audio_features=mels)
    loss.backward()
    no_grad = [
        n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0
    ]
    assert no_grad == []


def test_pixel_shuffle_model_and_placeholder_count_errors():
    cfg = tiny_config(shuffle=2, audio=False)
    model = tiny_model(cfg).eval()
    idx = sequence(cfg.vision.tokens_per_image * 2, 0)
    logits = model(idx, pixel_values=torch.randn(2, 3, 32, 32))
    assert logits.shape == (1, idx.shape[1], VOCAB)
    with pytest.raises(ValueError, match="8 image placeholder tokens for 4 image features"):
        model(idx, pixel_values=torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="needs audio_token_id"):
        MultimodalConfig(lm=cfg.lm, audio=AudioConfig(), image_token_id=IMAGE_ID)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        MultimodalConfig(lm=cfg.lm, vision=cfg.vision, image_token_id=VOCAB)


def test_prefill_with_image_then_decode_matches_full_forward():
    cfg = tiny_config(audio=False)
    model = tiny_model(cfg).eval()
    idx = sequence(cfg.vision.tokens_per_image, 0)
    pixels = torch.randn(1, 3, 32, 32)
    full = model(idx, pixel_values=pixels)
    cache = model.new_kv_cache(1, idx.shape[1])
    prefix = idx.shape[1] - 3
    with torch.inference_mode():
        pre = model(idx[:, :prefix], pixel_values=pixels, kv_cache=cache)
        steps = [
            model.decode_rows(idx[:, t], cache, torch.tensor([t]))
            for t in range(prefix, idx.shape[1])
        ]
    torch.testing.assert_close(pre, full[:, :prefix], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.stack(steps, 1), full[:, prefix:], atol=1e-5, rtol=1e-5)


def test_image_to_pixels_resizes_and_normalises():
    Image = pytest.importorskip("PIL.Image", reason="Pillow is not installed")

    cfg = tiny_config().vision
    image = Image.new("L", (50, 20), color=255)  # grey, not square: converted and resized
    pixels = image_to_pixels(image, cfg)
    assert pixels.shape == (3, 32, 32) and torch.allclose(pixels, torch.ones_like(pixels))


def test_log_mel_matches_whisper_feature_extractor():
    transformers = pytest.importorskip("transformers")
    cfg = AudioConfig(n_mels=80, window_frames=3000)
    rng = np.random.default_rng(0)
    t = np.arange(16000 * 3) / 16000
    wave = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)).astype(
        np.float32
    )
    ours = log_mel_windows(wave, cfg)
    theirs = transformers.WhisperFeatureExtractor(feature_size=80)(
        wave, sampling_rate=16000, return_tensors="pt"
    ).input_features
    assert ours.shape == theirs.shape == (1, 80, 3000)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
    # Longer than a window: zero-padded to two windows, each scaled on its own.
    assert log_mel_windows(np.zeros(16000 * 31, dtype=np.float32), cfg).shape == (2, 80, 3000)


def test_expand_placeholders_gives_each_medium_its_rows():
    from forgeml.models.multimodal import expand_placeholders

    cfg = tiny_config()
    ids = [9, IMAGE_ID, 10, IMAGE_ID, 11]
    out = expand_placeholders(ids, IMAGE_ID, [cfg.vision.tokens_per_image] * 2)
    assert out == [9] + [IMAGE_ID] * 16 + [10] + [IMAGE_ID] * 16 + [11]
    clip = cfg.audio.window_samples + 1  # just over one window: two windows
    n = cfg.audio.windows_for(clip) * cfg.audio.tokens_per_window
    assert expand_placeholders([AUDIO_ID, 12], AUDIO_ID, [n]) == [AUDIO_ID] * 8 + [12]
    with pytest.raises(ValueError, match="2 placeholders of id 3 for 1 media"):
        expand_placeholders(ids, IMAGE_ID, [16])
