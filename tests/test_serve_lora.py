"""Serving a LoRA adapter asset: merged into its base at load, served by alias; its output is
the adapted model's (not the base's), batched equals alone, and a bad adapter fails clearly."""

from __future__ import annotations

import shutil
import threading

import openai
import pytest
import torch
from test_serve_api import running_server
from test_serve_engine import PROMPTS, make_tiny_model_dir

from forgeml.core.errors import DataError
from forgeml.models.hf_io import load_model
from forgeml.models.lora import apply_lora, load_adapter, lora_modules, save_adapter
from forgeml.models.sampling import generate
from forgeml.registry.store import Registry
from forgeml.serve.api import create_app
from forgeml.serve.engine import SamplingParams
from forgeml.serve.loading import load_served_models


@pytest.fixture(scope="module")
def reg(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    base_dir = make_tiny_model_dir(root)
    registry = Registry(f"sqlite:///{root / 'registry.db'}", root / "artifacts")
    base = registry.add_asset("model", "tiny", base_dir, metadata={"classification": "internal"})
    model = load_model(base_dir)
    apply_lora(model, ["wqkv", "wo", "w13", "w2"], rank=4, alpha=8)
    torch.manual_seed(2)
    with torch.no_grad():  # a trained-looking adapter: B away from its zero init
        for lora in lora_modules(model).values():
            lora.lora_B.normal_(std=0.5)
    adapter_dir = save_adapter(model, root / "adapter", base_model=base.id)
    adapter = registry.add_asset(
        "adapter", "tiny-lora", adapter_dir, metadata={"base_model": base.id}, parents=[base.id]
    )
    registry.set_alias("candidate", adapter.id)
    yield registry, base, adapter
    registry.close()


def test_adapter_served_by_alias_equals_the_adapted_model(reg):
    registry, base, adapter = reg
    models = load_served_models(registry, ["candidate", base.id], max_batch=3)
    try:
        served = models["candidate"]
        assert served.asset_id == adapter.id and served.label == "internal"
        assert not lora_modules(served.engine.model)  # merged: plain linear layers
        eos = served.special_ids["eos"]
        # The reference: base + adapter applied as LoRA layers (unmerged), as in training.
        adapted = load_adapter(load_model(base.path), adapter.path).eval()
        plain = models[base.id].engine
        differs = 0
        for prompt in PROMPTS:
            params = SamplingParams(max_tokens=16, temperature=0)
            got = served.engine.generate(prompt, params).token_ids
            want = generate(adapted, prompt, max_new_tokens=16, temperature=0, stop_ids={eos})
            assert got == want
            differs += got != plain.generate(prompt, params).token_ids
        assert differs >= 2  # the adapter changes the model's answers

        results: list = [None] * 6

        def run(i: int) -> None:
            p = SamplingParams(max_tokens=12, temperature=1.0, seed=i)
            results[i] = served.engine.generate(PROMPTS[i % 4], p).token_ids

        threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        alone = [
            served.engine.generate(
                PROMPTS[i % 4], SamplingParams(max_tokens=12, temperature=1.0, seed=i)
            ).token_ids
            for i in range(6)
        ]
        assert results == alone
        with running_server(create_app(models, keys=None)) as url:
            client = openai.OpenAI(base_url=url + "/v1", api_key="-", max_retries=0)
            assert {m.id for m in client.models.list().data} == {"candidate", base.id}
            out = client.completions.create(
                model="tiny-lora", prompt=PROMPTS[0], max_tokens=8, temperature=0
            )
            want = served.engine.generate(PROMPTS[0], SamplingParams(max_tokens=8, temperature=0))
            assert out.choices[0].text == want.text
    finally:
        for m in models.values():
            m.engine.close()


def test_adapter_without_base_fails_clearly(reg, tmp_path):
    registry, _base, adapter = reg
    copy = tmp_path / "orphan"
    shutil.copytree(adapter.path, copy)
    (copy / "README.md").write_text("an adapter registered by hand, without its base\n")
    orphan = registry.add_asset("adapter", "orphan", copy, metadata={})
    with pytest.raises(DataError, match="base model"):
        load_served_models(registry, [orphan.id])
