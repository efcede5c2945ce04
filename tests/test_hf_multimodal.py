"""HF interop of multimodal models: logits parity with transformers' Llava (SigLIP tower) and
Voxtral both ways, and the processor files AutoProcessor / AutoFeatureExtractor read offline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from forgeml.core.config import ModelConfig
from forgeml.core.errors import ConfigError
from forgeml.models.audio import AudioConfig, log_mel_windows
from forgeml.models.hf_multimodal_io import load_multimodal, save_multimodal
from forgeml.models.multimodal import MultimodalConfig, MultimodalLM
from forgeml.models.vision import VisionConfig, image_to_pixels

transformers = pytest.importorskip("transformers")

TOL = dict(atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """A forgeml BPE tokenizer extended with <|image|> and <|audio|> placeholders."""
    from forgeml.tokenizer.extend import extend_tokenizer
    from forgeml.tokenizer.train import train_bpe_tokenizer

    root = tmp_path_factory.mktemp("tok")
    corpus = [f"the pump {i} reads {i * 7} bar at the valve" for i in range(200)]
    base = train_bpe_tokenizer(corpus, vocab_size=300, out_dir=root / "base")
    ids = extend_tokenizer(base, ["<|image|>", "<|audio|>"], root / "mm")
    return root / "mm", ids


def lm_config(vocab: int, arch: str = "dense", **overrides) -> ModelConfig:
    fields = dict(
        arch=arch, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=48, vocab_size=vocab,
        max_seq_len=128, n_experts=4, top_k=2,
    )  # fmt: skip
    return ModelConfig(**{**fields, **overrides})


def perturbed(cfg: MultimodalConfig) -> MultimodalLM:
    torch.manual_seed(0)
    model = MultimodalLM(cfg)
    with torch.no_grad():  # biases and norms away from zero / one, so every mapping matters
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def with_placeholders(token_id: int, n: int, vocab: int) -> torch.Tensor:
    torch.manual_seed(3)
    text = torch.randint(20, vocab - 2, (10,))
    return torch.cat([text[:4], torch.full((n,), token_id), text[4:]])[None]


VISION = VisionConfig(image_size=32, patch_size=8, dim=32, n_layers=2, n_heads=2, ffn_hidden=48)


@pytest.mark.parametrize("arch", ["dense", "moe"])
def test_vision_lm_exports_to_llava_with_equal_logits(tmp_path, tokenizer_dir, arch):
    tok_dir, ids = tokenizer_dir
    vocab = max(ids.values()) + 1
    cfg = MultimodalConfig(
        lm=lm_config(vocab, arch), vision=VISION, image_token_id=ids["<|image|>"]
    )
    model = perturbed(cfg)
    out = save_multimodal(model, tmp_path / "llava", tok_dir)
    assert json.loads((out / "config.json").read_text())["model_type"] == "llava"
    theirs = transformers.LlavaForConditionalGeneration.from_pretrained(out).eval()
    idx = with_placeholders(cfg.image_token_id, VISION.tokens_per_image, vocab)
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        want = theirs(input_ids=idx, pixel_values=pixels).logits
        got = model(idx, pixel_values=pixels)
    torch.testing.assert_close(got, want, **TOL)
    # And back: the folder loads into an equal forgeml model.
    again = load_multimodal(out).eval()
    with torch.no_grad():
        assert torch.equal(again(idx, pixel_values=pixels), got)


def test_autoprocessor_offline_matches_our_preprocessing(tmp_path, tokenizer_dir):
    Image = pytest.importorskip("PIL.Image", reason="Pillow is not installed")

    tok_dir, ids = tokenizer_dir
    vocab = max(ids.values()) + 1
    cfg = MultimodalConfig(lm=lm_config(vocab), vision=VISION, image_token_id=ids["<|image|>"])
    model = perturbed(cfg)
    out = save_multimodal(model, tmp_path / "llava", tok_dir)
    processor = transformers.AutoProcessor.from_pretrained(out, local_files_only=True)
    assert type(processor).__name__ == "LlavaProcessor"
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (45, 60, 3), dtype=np.uint8))
    # The processor's chat template renders image parts as the placeholder it expands.
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "the pump"}]}
    ]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt == "<|user|>\n<|image|>the pump<|end|>\n<|assistant|>\n"
    batch = processor(text=prompt, images=image, return_tensors="pt")
    idx = batch["input_ids"]
    assert int((idx == cfg.image_token_id).sum()) == VISION.tokens_per_image
    ours = image_to_pixels(image, VISION)[None]
    torch.testing.assert_close(batch["pixel_values"], ours, atol=1e-5, rtol=0)
    theirs = transformers.LlavaForConditionalGeneration.from_pretrained(out).eval()
    with torch.no_grad():
        want = theirs(**batch).logits
        got = model(idx, pixel_values=ours)
    torch.testing.assert_close(got, want, **TOL)
    # Greedy decoding with the kv cache agrees with transformers' generate.
    generated = theirs.generate(**batch, max_new_tokens=6, do_sample=False, eos_token_id=None)
    tokens, cache = idx, model.new_kv_cache(1, idx.shape[1] + 6)
    with torch.inference_mode():
        logits = model(idx, pixel_values=ours, kv_cache=cache, logits_at=torch.tensor([-1]))
        for step in range(6):
            nxt = logits.argmax(-1)
            tokens = torch.cat([tokens, nxt[:, None]], dim=1)
            position = torch.tensor([idx.shape[1] + step])
            logits = model.decode_rows(nxt, cache, position)
    assert torch.equal(tokens, generated)

    with pytest.raises(ConfigError, match="no added token with id 250"):
        bad = cfg.model_copy(update={"image_token_id": 250})
        save_multimodal(perturbed(bad), tmp_path / "bad", tok_dir)


def test_random_hf_llava_imports_with_equal_logits(tmp_path):
    """A transformers-initialised Llava (SigLIP tower read at its penultimate layer, Qwen2
    text model with q/k/v biases) imported into forgeml."""
    vision = transformers.SiglipVisionConfig(
        hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=2,
        image_size=32, patch_size=8, vision_use_head=False,
    )  # fmt: skip
    text = transformers.Qwen2Config(
        vocab_size=90, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
    )  # fmt: skip
    config = transformers.LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=7, image_seq_length=16,
        vision_feature_layer=-2, vision_feature_select_strategy="full",
    )  # fmt: skip
    torch.manual_seed(0)
    theirs = transformers.LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    theirs.save_pretrained(tmp_path / "hf")
    ours = load_multimodal(tmp_path / "hf").eval()
    assert ours.cfg.vision.n_layers == 2 and ours.cfg.lm.qkv_bias
    idx = with_placeholders(7, 16, 90)
    pixels = torch.randn(2, 3, 32, 32)
    idx = torch.cat([idx, with_placeholders(7, 16, 90)])
    with torch.no_grad():
        want = theirs(input_ids=idx, pixel_values=pixels).logits
        got = ours(idx, pixel_values=pixels)
    torch.testing.assert_close(got, want, **TOL)


AUDIO = AudioConfig(
    n_mels=16, window_frames=200, dim=32, n_layers=2, n_heads=2, ffn_hidden=128, stack=4
)


def test_audio_lm_exports_to_voxtral_with_equal_logits(tmp_path, tokenizer_dir):
    tok_dir, ids = tokenizer_dir
    vocab = max(ids.values()) + 1
    cfg = MultimodalConfig(lm=lm_config(vocab), audio=AUDIO, audio_token_id=ids["<|audio|>"])
    model = perturbed(cfg)
    out = save_multimodal(model, tmp_path / "voxtral", tok_dir)
    assert json.loads((out / "config.json").read_text())["model_type"] == "voxtral"
    theirs = transformers.VoxtralForConditionalGeneration.from_pretrained(out).eval()
    # 3 s of audio: two 2-s windows of 25 tokens each, features from transformers' extractor.
    rng = np.random.default_rng(0)
    wave = (0.1 * rng.standard_normal(16000 * 3)).astype(np.float32)
    extractor = transformers.AutoFeatureExtractor.from_pretrained(out, local_files_only=True)
    ours_features = log_mel_windows(wave, AUDIO)
    first = extractor(wave[: AUDIO.window_samples], sampling_rate=16000, return_tensors="pt")
    torch.testing.assert_close(first.input_features, ours_features[:1], atol=1e-4, rtol=0)
    idx = with_placeholders(cfg.audio_token_id, 2 * AUDIO.tokens_per_window, vocab)
    with torch.no_grad():
        want = theirs(input_ids=idx, input_features=ours_features).logits
        got = model(idx, audio_features=ours_features)
    torch.testing.assert_close(got, want, **TOL)
    # Back: equal up to rounding (Whisper has no key bias: ours, which softmax ignores, is 0).
    again = load_multimodal(out).eval()
    assert not again.audio.layers[0].attention.wqkv.bias[32:64].any()
    with torch.no_grad():
        torch.testing.assert_close(again(idx, audio_features=ours_features), got, **TOL)


def test_random_hf_voxtral_imports_with_equal_logits(tmp_path):
    config = transformers.VoxtralConfig(
        audio_config=dict(
            hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
            num_mel_bins=16, max_source_positions=48,
        ),
        text_config=dict(
            model_type="llama", vocab_size=80, hidden_size=32, intermediate_size=48,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
            rope_theta=10000.0, max_position_embeddings=256,
        ),
        audio_token_id=5,
    )  # fmt: skip
    torch.manual_seed(0)
    theirs = transformers.VoxtralForConditionalGeneration(config).eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    theirs.save_pretrained(tmp_path / "hf")
    ours = load_multimodal(tmp_path / "hf").eval()
    assert ours.cfg.audio.stack == 4 and ours.cfg.audio.tokens_per_window == 12
    features = torch.randn(1, 16, 96)
    idx = with_placeholders(5, 12, 80)
    with torch.no_grad():
        want = theirs(input_ids=idx, input_features=features).logits
        got = ours(idx, audio_features=features)
    torch.testing.assert_close(got, want, **TOL)


def test_model_transformers_lacks_round_trips_and_is_refused_there(tmp_path):
    cfg = MultimodalConfig(
        lm=lm_config(64),
        vision=VISION.model_copy(update={"pixel_shuffle": 2}),
        audio=AUDIO,
        image_token_id=3,
        audio_token_id=4,
    )
    model = perturbed(cfg)
    out = save_multimodal(model, tmp_path / "both")
    assert json.loads((out / "config.json").read_text())["model_type"] == "forgeml_multimodal"
    with pytest.raises((ValueError, KeyError)):
        transformers.AutoConfig.from_pretrained(out)
    again = load_multimodal(out).eval()
    idx = torch.cat([with_placeholders(3, 4, 64), with_placeholders(4, 25, 64)], dim=1)
    pixels, mels = torch.randn(1, 3, 32, 32), torch.randn(1, 16, 200)
    with torch.no_grad():
        want = model(idx, pixel_values=pixels, audio_features=mels)
        got = again(idx, pixel_values=pixels, audio_features=mels)
    torch.testing.assert_close(got, want, **TOL)  # the audio key bias is dropped (see above)


def test_pretrained_towers_load_from_siglip_and_whisper_folders(tmp_path):
    from forgeml.models.hf_towers import load_audio_tower, load_vision_tower

    torch.manual_seed(0)
    siglip = transformers.SiglipVisionModel(
        transformers.SiglipVisionConfig(
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=3,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        )  # fmt: skip
    ).eval()
    siglip.save_pretrained(tmp_path / "siglip")
    tower = load_vision_tower(tmp_path / "siglip", n_layers=2).eval()  # the penultimate block
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = siglip(pixels, output_hidden_states=True).hidden_states[2]
        torch.testing.assert_close(tower(pixels), want, **TOL)

    whisper = transformers.WhisperForConditionalGeneration(
        transformers.WhisperConfig(
            d_model=32,
            encoder_layers=2,
            decoder_layers=1,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
            num_mel_bins=16,
            max_source_positions=24,
            vocab_size=100,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            decoder_start_token_id=1,
        )  # fmt: skip
    ).eval()
    whisper.save_pretrained(tmp_path / "whisper")
    audio = load_audio_tower(tmp_path / "whisper", stack=2).eval()
    assert audio.cfg.window_frames == 48 and audio.cfg.stack == 2
    mels = torch.randn(2, 16, 48)
    with torch.no_grad():
        want = whisper.model.encoder(mels).last_hidden_state
        torch.testing.assert_close(audio(mels), want, **TOL)


def test_llava_hf_hub_layout_names_import(tmp_path):
    """Checkpoints on the hub name the SigLIP tower `vision_tower.vision_model.*` and the text
    model `language_model.model.*` (older) or `model.language_model.*` (newer): all load."""
    from safetensors.torch import load_file, save_file

    cfg = MultimodalConfig(lm=lm_config(64), vision=VISION, image_token_id=3)
    model = perturbed(cfg)
    out = save_multimodal(model, tmp_path / "llava")
    (out / "forgeml_multimodal.json").unlink()  # read config.json, as for a foreign folder
    tensors = load_file(out / "model.safetensors")
    renamed = {}
    for key, tensor in tensors.items():
        key = key.replace("vision_tower.", "vision_tower.vision_model.")
        key = key.replace("language_model.model.", "model.language_model.")
        renamed[key] = tensor
    save_file(renamed, out / "model.safetensors")
    again = load_multimodal(out).eval()
    idx = with_placeholders(3, VISION.tokens_per_image, 64)
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(again(idx, pixel_values=pixels), model(idx, pixel_values=pixels))
