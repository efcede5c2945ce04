"""Multimodal SFT stages on a tiny vision/audio LM: projector alignment trains only the
projectors, joint training the LM too, an interrupted run resumes to the same weights, and the
trained model is written as an HF folder that loads back equal."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from forgeml.core.config import ModelConfig, OptimConfig, TrainConfig
from forgeml.core.errors import DataError
from forgeml.models.audio import AudioConfig
from forgeml.models.hf_multimodal_io import load_multimodal
from forgeml.models.multimodal import MultimodalConfig, MultimodalLM
from forgeml.models.vision import VisionConfig
from forgeml.train import multimodal_sft
from forgeml.train.multimodal_sft import MultimodalSFTConfig, train_multimodal_sft

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from forgeml.tokenizer.extend import extend_tokenizer
    from forgeml.tokenizer.train import train_bpe_tokenizer

    root = tmp_path_factory.mktemp("tok")
    corpus = [f"what colour is the square? it is {c}." for c in COLOURS] * 50
    base = train_bpe_tokenizer(corpus, vocab_size=300, out_dir=root / "base")
    ids = extend_tokenizer(base, ["<|image|>", "<|audio|>"], root / "mm")
    return root / "mm", ids


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Colour squares with a little noise, and short tones, each with its question/answer."""
    root = tmp_path_factory.mktemp("mm")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(24):
        name = list(COLOURS)[i % 3]
        pixels = np.clip(np.array(COLOURS[name]) + rng.normal(0, 20, (32, 32, 3)), 0, 255)
        Image.fromarray(pixels.astype(np.uint8)).save(root / f"{i}.png")
        rows.append({"image": f"{i}.png", "prompt": "what colour is the square?",
                     "answer": f"it is {name}."})  # fmt: skip
    (root / "images.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    import soundfile

    clips = []
    for i in range(6):
        t = np.arange(800) / 16000
        soundfile.write(root / f"{i}.wav", np.sin(2 * np.pi * (300 + 200 * (i % 2)) * t), 16000)
        clips.append(
            {"audio": f"{i}.wav", "prompt": "pitch?", "answer": "high" if i % 2 else "low"}
        )
    (root / "audio.jsonl").write_text("".join(json.dumps(r) + "\n" for r in clips))
    return root


def model_for(ids: dict[str, int], audio: bool = False) -> MultimodalLM:
    lm = ModelConfig(
        arch="dense", dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=48,
        vocab_size=max(ids.values()) + 1, max_seq_len=128,
    )  # fmt: skip
    cfg = MultimodalConfig(
        lm=lm,
        vision=VisionConfig(
            image_size=32, patch_size=8, dim=32, n_layers=2, n_heads=2, ffn_hidden=48
        ),  # fmt: skip
        audio=AudioConfig(
            n_mels=16, window_frames=32, dim=32, n_layers=1, n_heads=2, ffn_hidden=64, stack=4
        )
        if audio
        else None,  # fmt: skip
        image_token_id=ids["<|image|>"],
        audio_token_id=ids["<|audio|>"] if audio else None,
    )
    torch.manual_seed(0)
    return MultimodalLM(cfg)


def stage(kind: str, steps: int = 30) -> MultimodalSFTConfig:
    return MultimodalSFTConfig(
        stage=kind,
        heldout_fraction=0.25,
        optim=OptimConfig(lr=3e-3, warmup_steps=2, weight_decay=0.0),
        train=TrainConfig(
            max_steps=steps,
            micro_batch_size=4,
            seq_len=96,
            dtype="fp32",
            checkpoint_every=0,
            log_every=5,
        ),
    )


def snapshot(model: MultimodalLM) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(before: dict[str, torch.Tensor], model: MultimodalLM, prefix: str) -> bool:
    after = model.state_dict()
    return any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix))


def test_alignment_trains_only_the_projector_and_lowers_the_heldout_loss(tmp_path, tokenizer, data):
    tok_dir, ids = tokenizer
    model = model_for(ids)
    before = snapshot(model)
    summary = train_multimodal_sft(model, tok_dir, data / "images.jsonl", tmp_path, stage("align"))
    assert changed(before, model, "vision_projector.")
    assert not changed(before, model, "lm.") and not changed(before, model, "vision.")
    assert summary["heldout_loss"] < summary["heldout_loss_before"]
    again = load_multimodal(tmp_path / "model")
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key


def test_joint_stage_trains_the_lm_and_the_encoder_only_when_asked(tmp_path, tokenizer, data):
    tok_dir, ids = tokenizer
    model = model_for(ids)
    before = snapshot(model)
    train_multimodal_sft(model, tok_dir, data / "images.jsonl", tmp_path / "a", stage("joint", 4))
    assert changed(before, model, "lm.") and not changed(before, model, "vision.")
    cfg = stage("joint", 4).model_copy(update={"train_encoders": True})
    train_multimodal_sft(model, tok_dir, data / "images.jsonl", tmp_path / "b", cfg)
    assert changed(before, model, "vision.")


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path, tokenizer, data, monkeypatch):
    tok_dir, ids = tokenizer
    cfg = stage("joint", 6).model_copy(
        update={
            "train": TrainConfig(
                max_steps=6,
                micro_batch_size=4,
                seq_len=96,
                dtype="fp32",
                checkpoint_every=3,
                log_every=1,
            )
        }  # fmt: skip
    )
    straight = model_for(ids)
    train_multimodal_sft(straight, tok_dir, data / "images.jsonl", tmp_path / "straight", cfg)

    from forgeml.train.metrics import MetricsLogger

    real_log = MetricsLogger.log

    def dies_at_step_5(self, record):
        if record["step"] == 5:
            raise KeyboardInterrupt("killed")
        return real_log(self, record)

    monkeypatch.setattr(MetricsLogger, "log", dies_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        train_multimodal_sft(model_for(ids), tok_dir, data / "images.jsonl", tmp_path / "cut", cfg)
    monkeypatch.setattr(MetricsLogger, "log", real_log)
    resumed = model_for(ids)
    train_multimodal_sft(
        resumed, tok_dir, data / "images.jsonl", tmp_path / "cut", cfg, resume=True
    )
    for key, value in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key


def test_audio_records_train_the_audio_projector(tmp_path, tokenizer, data):
    tok_dir, ids = tokenizer
    model = model_for(ids, audio=True)
    before = snapshot(model)
    summary = train_multimodal_sft(
        model, tok_dir, data / "audio.jsonl", tmp_path, stage("align", 3)
    )
    assert changed(before, model, "audio_projector.") and not changed(before, model, "audio.")
    assert np.isfinite(summary["final_train_loss"])


def test_bad_records_are_refused_with_their_line(tmp_path, tokenizer, data):
    tok_dir, ids = tokenizer
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"image": "0.png", "prompt": "x <|image|>", "answer": "y"}) + "\n")
    (tmp_path / "0.png").write_bytes((data / "0.png").read_bytes())
    with pytest.raises(DataError, match="bad.jsonl:1: the prompt or answer holds"):
        train_multimodal_sft(model_for(ids), tok_dir, bad, tmp_path / "out", stage("align", 1))
    bad.write_text(json.dumps({"audio": "0.wav", "prompt": "x", "answer": "y"}) + "\n")
    with pytest.raises(DataError, match="no encoder"):
        train_multimodal_sft(model_for(ids), tok_dir, bad, tmp_path / "out", stage("align", 1))
    assert multimodal_sft.MultimodalSFTConfig().stage == "align"
