"""Shared by the DPO and reward-model tests: a tiny tokenizer + model folder and toy
preference files where the preferred completion is learnable (it says 'yes', not 'no')."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from forgeml.core.config import ModelConfig
from forgeml.models.dense import Transformer
from forgeml.models.hf_io import save_model
from forgeml.tokenizer.train import train_bpe_tokenizer

WORDS = "apple river stone cloud green seven table quiet north paper".split()


def make_base_model(root: Path, *, seed: int = 0, max_seq_len: int = 96) -> Path:
    """A tokenizer trained on the toy vocabulary and a ~60k-parameter model, saved as one folder."""
    corpus = [" ".join(random.Random(i).choices(WORDS + ["yes", "no"], k=30)) for i in range(50)]
    tok_dir = train_bpe_tokenizer(corpus, vocab_size=300, out_dir=root / "tok")
    from forgeml.tokenizer.train import load_tokenizer

    vocab = load_tokenizer(tok_dir).get_vocab_size()
    torch.manual_seed(seed)
    cfg = ModelConfig(
        dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=64, vocab_size=vocab,
        max_seq_len=max_seq_len,
    )  # fmt: skip
    return save_model(Transformer(cfg), root / "base", tok_dir)


def write_pairs(path: Path, n: int, *, seed: int = 0) -> Path:
    """Prompts of random words; chosen answers 'yes <word>', rejected 'no <word>'."""
    rng = random.Random(seed)
    with open(path, "w") as fh:
        for _ in range(n):
            prompt = " ".join(rng.choices(WORDS, k=4))
            word = rng.choice(WORDS)
            record = {"prompt": prompt, "chosen": f"yes {word}", "rejected": f"no {word}"}
            fh.write(json.dumps(record) + "\n")
    return path


def count_e(prompt: str, completion: str, metadata: dict) -> float:
    """A trivially learnable reward for online DPO: how many letters 'e' the completion has."""
    return float(completion.count("e"))
