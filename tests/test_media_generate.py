"""Greedy generation for vision/audio LMs: the prompt is tokenized exactly as multimodal SFT
tokenizes its prompt side, and kv-cache decoding gives the same tokens as re-running the
full forward (with the media) at every step."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from forgeml.core.config import ModelConfig
from forgeml.eval.media_generate import (
    encode_media_prompt,
    generate_media_answers,
    greedy_media_tokens,
    media_prompt,
)
from forgeml.models.audio import AudioConfig
from forgeml.models.dense import IGNORE_INDEX
from forgeml.models.multimodal import MultimodalConfig, MultimodalLM
from forgeml.models.vision import VisionConfig


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import soundfile

    from forgeml.tokenizer.extend import extend_tokenizer
    from forgeml.tokenizer.train import load_tokenizer, train_bpe_tokenizer

    root = tmp_path_factory.mktemp("mmgen")
    corpus = ["transcribe the page: work order 12 at the pump", "which unit feeds the tank?"] * 40
    base = train_bpe_tokenizer(corpus, vocab_size=300, out_dir=root / "base")
    ids = extend_tokenizer(base, ["<|image|>", "<|audio|>"], root / "mm")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / "p.png")
    soundfile.write(root / "c.wav", rng.normal(0, 0.1, 6000).astype(np.float32), 16000)
    cfg = MultimodalConfig(
        lm=ModelConfig(arch="dense", dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=48,
                       vocab_size=max(ids.values()) + 1, max_seq_len=160),
        vision=VisionConfig(image_size=32, patch_size=8, dim=32, n_layers=1, n_heads=2,
                            ffn_hidden=48),
        audio=AudioConfig(n_mels=16, window_frames=200, dim=32, n_layers=1, n_heads=2,
                          ffn_hidden=48, stack=4),
        image_token_id=ids["<|image|>"], audio_token_id=ids["<|audio|>"],
    )  # fmt: skip
    torch.manual_seed(0)
    model = MultimodalLM(cfg).eval()
    with torch.no_grad():  # weights far from init, so greedy tokens vary step to step
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.5)
    return root, load_tokenizer(root / "mm"), model


def test_prompt_matches_the_sft_tokenization(setup):
    from forgeml.train.multimodal_sft import load_media_examples

    root, tokenizer, model = setup
    record = {"image": "p.png", "audio": "c.wav", "prompt": "which unit feeds the tank?",
              "answer": "the pump"}  # fmt: skip
    (root / "r.jsonl").write_text(json.dumps(record) + "\n")
    (example,) = load_media_examples(root / "r.jsonl", tokenizer, model, 200)
    ids, pixels, audio = encode_media_prompt(model, tokenizer, media_prompt(record, root))
    first_label = next(i for i, t in enumerate(example.labels) if t != IGNORE_INDEX)
    assert ids == example.ids[:first_label]
    assert torch.equal(pixels, example.pixels) and torch.equal(audio, example.audio)
    assert ids.count(model.cfg.image_token_id) == model.cfg.vision.tokens_per_image


def test_kv_cache_decoding_equals_full_forward_greedy(setup):
    root, tokenizer, model = setup
    item = media_prompt({"image": "p.png", "audio": ["c.wav"], "prompt": "transcribe"}, root)
    ids, pixels, audio = encode_media_prompt(model, tokenizer, item)
    got = greedy_media_tokens(model, ids, pixels, audio, max_new_tokens=12)
    want, seq = [], list(ids)
    with torch.no_grad():
        for _ in range(12):
            logits = model(torch.tensor([seq]), pixel_values=pixels, audio_features=audio)
            want.append(int(logits[0, -1].argmax()))
            seq.append(want[-1])
    assert got == want and len(set(want)) > 2
    # a stop id ends the answer before it; the text is the decode of the tokens before it
    stopped = greedy_media_tokens(model, ids, pixels, audio, 12, frozenset({want[3]}))
    assert stopped == want[: want.index(want[3])]
    (text,) = generate_media_answers(model, tokenizer, [item], max_new_tokens=12)
    assert isinstance(text, str) and model.training is False


def test_media_task_scores_each_example_and_gates_lower_is_better(setup):
    from forgeml.eval.media_generate import run_media_task
    from forgeml.eval.media_scoring import cer
    from forgeml.eval.suite import DataSpec, TaskSpec
    from forgeml.eval.tasks import kpis_of

    root, tokenizer, model = setup
    records = [{"id": i, "image": "p.png", "q": "transcribe the page", "answer": a}
               for i, a in enumerate(["work order 12", "the pump"])]  # fmt: skip
    task = TaskSpec(name="pages", kind="generate", data=DataSpec(inline=records), prompt="{q}",
                    scorers=["cer", "wer"], stop=[], max_new_tokens=6)  # fmt: skip
    result = run_media_task(model, tokenizer, task, records, root)
    assert [e["id"] for e in result.examples] == [0, 1]
    for e, r in zip(result.examples, records, strict=True):
        assert e["reference"] == r["answer"] and e["scores"]["cer"] == cer(e["output"], r["answer"])
    assert result.metrics["cer"] == pytest.approx(
        np.mean([e["scores"]["cer"] for e in result.examples])
    )
    assert result.primary == "cer" and kpis_of(task, result)[0]["higher_is_better"] is False
