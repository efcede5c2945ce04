"""The ACME multimodal demo's encoder pretraining: the renderer's character centres lie on
the typed ink, each cell label goes to the image token the encoder puts that cell in, the
speech files do not depend on how many synthesise at once, and a short vision pretraining run
reads characters far above chance."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import pytest
import torch
from acme_media import (
    PAGE_SIZE,
    espeak_available,
    form_text,
    render_page_chars,
    write_speech,
)
from mm_pretrain import CELL, cell_targets, page_alphabet, pretrain_vision

from forgeml.core.config import ModelConfig
from forgeml.models.multimodal import MultimodalConfig, MultimodalLM
from forgeml.models.vision import VisionConfig, pixel_shuffle


def test_character_centres_lie_on_the_typed_ink():
    for seed in range(6):
        rng = random.Random(seed)
        text = form_text(rng)
        page, chars = render_page_chars(text, rng)
        ink = np.asarray(page.convert("L"), dtype=np.float32) < 120
        typed = sum(not c.isspace() for c in text)
        assert 0.6 * typed <= len(chars) <= typed  # only a torn strip hides any
        assert {c for c, _, _ in chars} <= set(text)
        near_ink = [
            ink[int(y) - 4 : int(y) + 5, int(x) - 4 : int(x) + 5].any() for _, x, y in chars
        ]
        assert np.mean(near_ink) > 0.95


@pytest.mark.parametrize("patch,shuffle", [(16, 2), (8, 4), (16, 1)])
def test_cell_labels_go_to_the_token_holding_that_cell(patch, shuffle):
    cfg = VisionConfig(image_size=PAGE_SIZE, patch_size=patch, dim=8, n_layers=1, n_heads=2,
                       ffn_hidden=8, pixel_shuffle=shuffle)  # fmt: skip
    alphabet = {"A": 1, "B": 2}
    x, y = 77.0, 141.0  # cell (row 17, col 9)
    targets = cell_targets([("B", x, y)], cfg, alphabet)
    assert targets.shape == (cfg.tokens_per_image, (patch * shuffle // CELL) ** 2)
    assert int((targets > 0).sum()) == 1 and int(targets.max()) == 2
    # the encoder's own layout: which token does the patch holding (x, y) end up in?
    grid = cfg.grid
    coords = torch.stack(torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij"))
    patches = coords.reshape(2, -1).T[None].float()  # [1, grid^2, (row, col)]
    tokens = pixel_shuffle(patches, grid, shuffle)[0].view(cfg.tokens_per_image, -1, 2)
    want = (int(y) // patch, int(x) // patch)
    holder = [t for t in range(len(tokens)) if want in {tuple(p) for p in tokens[t].int().tolist()}]
    assert holder == [int(targets.amax(1).argmax())]


@pytest.mark.skipif(not espeak_available(), reason="espeak-ng not installed")
def test_speech_files_do_not_depend_on_workers(tmp_path):
    for workers in (1, 2):
        (tmp_path / str(workers)).mkdir()
        write_speech(tmp_path / str(workers), 4, seed=2, workers=workers)
    for name in ("speech_0000.wav", "speech_0003.wav", "train.jsonl"):
        a, b = ((tmp_path / w / name).read_bytes() for w in ("1", "2"))
        assert hashlib.sha256(a).digest() == hashlib.sha256(b).digest()


@pytest.mark.slow
def test_vision_pretraining_reads_characters():
    rng = random.Random(0)
    alphabet = page_alphabet([form_text(rng) for _ in range(400)])
    vision = VisionConfig(image_size=PAGE_SIZE, patch_size=16, dim=64, n_layers=2, n_heads=4,
                          ffn_hidden=128, pixel_shuffle=2)  # fmt: skip
    lm = ModelConfig(arch="dense", dim=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_hidden=64,
                     vocab_size=64, max_seq_len=64)  # fmt: skip
    torch.manual_seed(0)
    model = MultimodalLM(MultimodalConfig(lm=lm, vision=vision, image_token_id=63))
    stats = pretrain_vision(model, alphabet, steps=80, batch=16, lr=3e-3, seed=0, dtype="fp32")
    # chance is 1 / len(alphabet) (about 0.02); reading gets most characters right
    assert stats["char_accuracy"] > 0.3, stats
