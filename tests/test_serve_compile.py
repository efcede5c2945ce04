"""The engine's compiled decode step (`forgeml.serve.step`): its static-shape step equals the
model's `decode_rows` (eagerly, and compiled within the dtype's tolerance), a bucket's graph is
used only where the probe finds it close and faster, and an engine serving through it produces
the eager engine's greedy tokens."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models

from forgeml.core.config import ModelConfig
from forgeml.core.runtime import cpu_has_fast_bf16
from forgeml.models.dense import KVCache, Transformer
from forgeml.models.registry import build_model
from forgeml.serve import step as step_module
from forgeml.serve.engine import Engine, SamplingParams
from forgeml.serve.prepack import prepack_linears
from forgeml.serve.step import (
    CompiledDecodeStep,
    bucket,
    compilable,
    decode_step,
    logits_close,
)

CFG = ModelConfig(
    dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=160, vocab_size=300, max_seq_len=128
)  # fmt: skip
DTYPES = [torch.float32] + ([torch.bfloat16] if cpu_has_fast_bf16() else [])


def _model_and_cache(dtype: torch.dtype, rows: int = 8, cfg: ModelConfig = CFG):
    torch.manual_seed(0)
    model = Transformer(cfg).to(dtype).eval()
    cache = model.new_kv_cache(rows, cfg.max_seq_len)
    gen = torch.Generator().manual_seed(1)
    cache.k.copy_(torch.randn(cache.k.shape, generator=gen))
    cache.v.copy_(torch.randn(cache.v.shape, generator=gen))
    return model, cache


def _eager(model):
    return lambda tokens, positions, rows: model.decode_rows(tokens, rows, positions)


def test_bucket_is_the_next_power_of_two_within_bounds():
    assert [bucket(n, 1, 16) for n in (1, 2, 3, 5, 9, 16, 17)] == [1, 2, 4, 8, 16, 16, 16]
    assert [bucket(n, 64, 128) for n in (1, 64, 65, 200)] == [64, 64, 128, 128]


@pytest.mark.parametrize("window", [None, 5])
@pytest.mark.parametrize("prepack", [False, True], ids=["plain", "prepacked"])
def test_static_step_equals_decode_rows(window, prepack):
    """Eagerly, the static-shape step (keys past the longest row, masked) computes the
    model's step: the same logits and the same keys and values written to the cache."""
    cfg = CFG.model_copy(update={"sliding_window": window})
    model, cache = _model_and_cache(torch.float32, cfg=cfg)
    if prepack:
        prepack_linears(model, max_rows=8)
    tokens = torch.tensor([5, 17, 250])
    positions = torch.tensor([9, 30, 2])
    ours_cache = KVCache(cache.k.clone(), cache.v.clone())
    reference = model.decode_rows(tokens, KVCache(cache.k[:, :3], cache.v[:, :3]), positions)
    with torch.inference_mode():
        ours = decode_step(model, tokens, positions, ours_cache.k, ours_cache.v, 64)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    # The first layer writes the same bits; later ones differ by the attention's rounding.
    assert torch.equal(ours_cache.k[0], cache.k[0]) and torch.equal(ours_cache.v[0], cache.v[0])
    torch.testing.assert_close(ours_cache.k, cache.k, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours_cache.v, cache.v, atol=1e-5, rtol=1e-5)


def test_logits_close_bounds_the_difference_by_the_dtype():
    ref = torch.tensor([[4.0, -2.0, 0.5]])
    assert logits_close(ref + 1e-5, ref, torch.float32)
    assert not logits_close(ref + 1e-2, ref, torch.float32)
    assert logits_close(ref + 1e-2, ref, torch.bfloat16)
    assert not logits_close(ref + 0.5, ref, torch.bfloat16)
    assert not logits_close(ref * float("nan"), ref, torch.bfloat16)


def _uncompiled(monkeypatch, offset: float = 0.0):
    """Make `CompiledDecodeStep` "compile" to the plain static step (+ offset): the bucket
    and probe logic, without inductor's compile time."""

    def fake_compile(fn, **kwargs):
        return lambda *args: fn(*args) + offset

    monkeypatch.setattr(step_module.torch, "compile", fake_compile)


@pytest.mark.parametrize(
    ("offset", "faster", "state"),
    [(0.0, True, "fast"), (0.0, False, "eager"), (1.0, True, "eager")],
    ids=["close-and-faster", "not-faster", "logits-differ"],
)
def test_probe_keeps_a_graph_only_where_close_and_faster(monkeypatch, offset, faster, state):
    _uncompiled(monkeypatch, offset)
    # Each probe times eager first, then the graph: fake CPU times make one of them faster.
    times = iter([0.0, 2.0, 0.0, 1.0] if faster else [0.0, 1.0, 0.0, 2.0])
    monkeypatch.setattr(step_module, "PROBE_STEPS", 1)
    monkeypatch.setattr(step_module.time, "thread_time", lambda: next(times))
    model, cache = _model_and_cache(torch.float32)
    stepper = CompiledDecodeStep(model, cache, _eager(model), background=False)
    tokens, positions = torch.tensor([3, 4, 5]), torch.tensor([10, 70, 20])
    reference = model.decode_rows(tokens, KVCache(cache.k[:, :3], cache.v[:, :3]), positions)
    probed = stepper(tokens, positions)  # compiles, probes, answers with the eager logits
    torch.testing.assert_close(probed, reference, atol=0, rtol=0)
    assert stepper.buckets[(4, 128)].state == state, stepper.buckets
    monkeypatch.setattr(step_module.time, "thread_time", time_never_asked)
    again = stepper(tokens, positions)
    if state == "fast":  # rows padded to 4, keys to 128: the eager logits again
        torch.testing.assert_close(again, reference, atol=1e-5, rtol=1e-5)
    else:
        assert again is None  # the engine's eager step runs


def time_never_asked():
    raise AssertionError("a probed bucket was timed again")


def test_graph_budget_and_weight_changes(monkeypatch):
    _uncompiled(monkeypatch)
    model, cache = _model_and_cache(torch.float32)
    stepper = CompiledDecodeStep(model, cache, _eager(model), max_graphs=2, background=False)
    probes = []

    def probe(key, tokens, positions):
        probes.append(key)
        stepper.buckets[key].state = "fast"
        return tokens.float()

    monkeypatch.setattr(stepper, "_probe", probe)
    one = torch.tensor([1])
    for pos in (3, 100, 3):
        stepper(one, torch.tensor([pos]))
    stepper(torch.tensor([1, 2]), torch.tensor([3, 3]))  # a third bucket: past the budget
    assert probes == [(1, 64), (1, 128)]
    assert stepper.buckets[(2, 64)].state == "eager"
    with torch.no_grad():
        model.output.weight.mul_(2)  # e.g. merge_lora: every compiled bucket is probed again
    stepper(one, torch.tensor([3]))
    assert probes[-1] == (1, 64) and stepper.buckets[(1, 128)].state == "compiled"


def test_moe_models_keep_the_eager_step(tmp_path):
    moe = build_model(CFG.model_copy(update={"arch": "moe", "n_experts": 4, "top_k": 2}))
    assert not compilable(moe) and compilable(Transformer(CFG))


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_compiled_step_within_tolerance_of_eager(dtype):
    """inductor's graph (static shapes) against `decode_rows`: logits within the dtype's
    tolerance at rows and keys padded to their buckets, with prepacked linears."""
    model, cache = _model_and_cache(dtype)
    prepack_linears(model, max_rows=8)
    stepper = CompiledDecodeStep(model, cache, _eager(model), background=False)
    tokens, positions = torch.tensor([3, 4, 5]), torch.tensor([10, 70, 20])
    live = KVCache(cache.k[:, :3], cache.v[:, :3])
    reference = model.decode_rows(tokens, live, positions)
    with torch.inference_mode():
        stepper._compile((4, 128))
        ours = stepper._run((4, 128), tokens, positions, cache.k, cache.v)
    assert logits_close(ours, reference, dtype), (ours - reference).abs().max()
    if dtype == torch.float32:
        torch.testing.assert_close(ours, reference, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_engine_with_compiled_step_gives_eager_greedy_tokens():
    """fp32: the compiled engine's greedy tokens are the eager engine's, before and after
    its bucket compiled (in the background) and was probed."""
    model, _ = _model_and_cache(torch.float32)
    with torch.no_grad():  # peaked distributions: no near-ties for a rounding to flip
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(300)}, unk_token="t0"))
    prompts = [[1, 2, 3, 4], [7, 8], [9, 10, 11, 12, 13, 14]]
    params = SamplingParams(max_tokens=12, temperature=0)
    eager = Engine(model, tok, max_batch=4, compile_step=False)
    compiled = Engine(model, tok, max_batch=4, compile_step=True)
    try:
        expected = [h.result().token_ids for h in [eager.submit(p, params) for p in prompts]]
        first = [h.result().token_ids for h in [compiled.submit(p, params) for p in prompts]]
        assert compiled.compiled_step.wait(timeout=600)
        later = [h.result().token_ids for h in [compiled.submit(p, params) for p in prompts]]
    finally:
        eager.close()
        compiled.close()
    assert first == expected and later == expected
    states = {b.state for b in compiled.compiled_step.buckets.values()}
    assert states <= {"fast", "eager"} and states, compiled.compiled_step.buckets


def test_serve_compile_step_reaches_the_engine(tmp_path, monkeypatch):
    """`forgeml serve --compile-step` is passed down to every engine it loads."""
    from typer.testing import CliRunner

    import forgeml.serve.api
    import forgeml.serve.loading
    from forgeml.cli import app
    from forgeml.core.workspace import init_workspace

    ws = init_workspace(tmp_path / "ws")
    seen = {}

    def fake_load(registry, refs, **kwargs):
        seen.update(kwargs)
        return {}

    monkeypatch.setattr(forgeml.serve.api, "load_served_models", fake_load)
    monkeypatch.setattr(forgeml.serve.api, "run_server", lambda *a, **k: None)
    result = CliRunner().invoke(app, ["-w", str(ws.root), "serve", "m", "--compile-step"])
    assert result.exit_code == 0, result.output
    assert seen["compile_step"] is True
    assert forgeml.serve.loading.load_served_models.__kwdefaults__["compile_step"] is False
