"""Serving a mixture-of-experts model: the engine decodes it through the model's own
`decode_rows`, greedy output equals `sampling.generate`, batched equals alone, and the
OpenAI API serves an MoE asset by alias."""

from __future__ import annotations

import threading
from pathlib import Path

import openai
import pytest
import torch
from test_serve_api import running_server
from test_serve_engine import PROMPTS, WORDS

from forgeml.core.config import ModelConfig
from forgeml.models.dense import KVCache, Transformer
from forgeml.models.hf_io import load_model, save_model
from forgeml.models.moe import MoETransformer
from forgeml.models.sampling import generate
from forgeml.registry.store import Registry
from forgeml.serve.api import create_app
from forgeml.serve.engine import Engine, SamplingParams
from forgeml.serve.loading import load_served_models
from forgeml.tokenizer.train import load_tokenizer, train_bpe_tokenizer


def make_tiny_moe_dir(root: Path, **overrides) -> Path:
    """A saved tiny MoE model (4 experts, top-2, random sharpened weights) with a tokenizer."""
    texts = [" ".join(WORDS[(i * 5 + j) % len(WORDS)] for j in range(60)) for i in range(40)]
    tok_dir = train_bpe_tokenizer(texts, vocab_size=300, out_dir=root / "tok")
    vocab = load_tokenizer(tok_dir).get_vocab_size()
    torch.manual_seed(1)
    cfg = ModelConfig(
        arch="moe",
        dim=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        ffn_hidden=96,
        n_experts=4,
        top_k=2,
        vocab_size=vocab,
        max_seq_len=256,
        **overrides,
    )
    model = MoETransformer(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return save_model(model, root / "model", tok_dir)


@pytest.fixture(scope="module")
def moe_dir(tmp_path_factory):
    return make_tiny_moe_dir(tmp_path_factory.mktemp("moe"))


@pytest.fixture(scope="module")
def moe(moe_dir):
    model = load_model(moe_dir).eval()
    assert isinstance(model, MoETransformer)
    eng = Engine(model, load_tokenizer(moe_dir), max_batch=4, max_queue=32, stop_ids={1})
    yield model, eng
    eng.close()


def test_moe_greedy_equals_sampling_generate(moe):
    model, eng = moe
    for prompt in PROMPTS:
        got = eng.generate(prompt, SamplingParams(max_tokens=20, temperature=0))
        want = generate(model, prompt, max_new_tokens=20, temperature=0, stop_ids={1})
        assert got.token_ids == want
        assert len(want) > 3


def test_moe_seeded_sampling_equals_sampling_generate(moe):
    model, eng = moe
    params = SamplingParams(max_tokens=24, temperature=0.9, top_p=0.9, seed=11)
    got = eng.generate(PROMPTS[2], params)
    want = generate(
        model, PROMPTS[2], max_new_tokens=24, temperature=0.9, top_p=0.9, seed=11, stop_ids={1}
    )
    assert got.token_ids == want


def test_moe_batched_equals_alone(moe):
    """More concurrent requests than slots, finishing at different steps (slots compacted)."""
    _, eng = moe
    params = [SamplingParams(max_tokens=6 + 4 * i, temperature=1.0, seed=i) for i in range(9)]
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(9)]
    alone = [eng.generate(p, sp).token_ids for p, sp in zip(prompts, params, strict=True)]
    results: list = [None] * 9

    def run(i: int) -> None:
        results[i] = eng.generate(prompts[i], params[i]).token_ids

    threads = [threading.Thread(target=run, args=(i,)) for i in range(9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == alone
    assert len({tuple(a) for a in alone}) > 5


@pytest.mark.parametrize("arch", ["dense", "moe"])
def test_decode_rows_with_sliding_window(arch):
    """Rows at different positions past the window, decoded together, equal full forwards."""
    cfg = ModelConfig(
        arch=arch, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=64, n_experts=4,
        top_k=2, vocab_size=50, max_seq_len=64, sliding_window=4,
    )  # fmt: skip
    torch.manual_seed(0)
    model = (Transformer if arch == "dense" else MoETransformer)(cfg).eval()
    prompts = [list(range(3, 12)), [7, 8], list(range(20, 26))]
    cache = model.new_kv_cache(3, 32)
    with torch.inference_mode():
        for i, p in enumerate(prompts):
            row = KVCache(cache.k[:, i : i + 1], cache.v[:, i : i + 1])
            model(torch.tensor([p]), kv_cache=row, start_pos=0)
        nxt = [40, 41, 42]
        logits = model.decode_rows(
            torch.tensor(nxt), cache, torch.tensor([len(p) for p in prompts])
        )
        for i, p in enumerate(prompts):
            full = model(torch.tensor([p + [nxt[i]]]))[0, -1]
            torch.testing.assert_close(logits[i], full, atol=1e-4, rtol=1e-4)


def test_moe_served_by_alias_through_openai_client(tmp_path, moe_dir):
    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}", tmp_path / "artifacts")
    asset = registry.add_asset("model", "tiny-moe", moe_dir)
    registry.set_alias("champion", asset.id)
    models = load_served_models(registry, ["champion"], max_batch=2)
    model = models["champion"].engine.model
    assert isinstance(model, MoETransformer)
    try:
        with running_server(create_app(models, keys=None)) as url:
            client = openai.OpenAI(base_url=url + "/v1", api_key="-", max_retries=0)
            ids = PROMPTS[0]
            got = client.completions.create(
                model="champion", prompt=ids, max_tokens=12, temperature=0
            )
            eos = models["champion"].special_ids["eos"]
            want = generate(model, ids, max_new_tokens=12, temperature=0, stop_ids={eos})
            tok = models["champion"].tokenizer
            assert got.choices[0].text == tok.decode(want, skip_special_tokens=True)
            assert got.usage.completion_tokens == len(want)
    finally:
        for m in models.values():
            m.engine.close()
        registry.close()
