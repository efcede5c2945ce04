"""The compiled decode step's own kernel choices (`forgeml.serve.step.add_step_kernels`): a
packed copy is kept only at row counts where it is within tolerance of the eager step and
faster; the static step with those kernels and with gathered rotary tables computes the
model's step; and inductor's graph of it stays within tolerance, guarded or not."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from forgeml.core.config import ModelConfig
from forgeml.core.runtime import cpu_has_fast_bf16
from forgeml.models.dense import KVCache, Transformer, rope_cos_sin
from forgeml.serve import step as step_module
from forgeml.serve.prepack import PrepackedLinear, prepack_linears
from forgeml.serve.step import CompiledDecodeStep, add_step_kernels, decode_step, logits_close

CFG = ModelConfig(
    dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=160, vocab_size=300, max_seq_len=128
)  # fmt: skip
BF16 = pytest.param(
    torch.bfloat16,
    marks=pytest.mark.skipif(
        not cpu_has_fast_bf16(),
        reason="no native bf16 on this CPU (AVX2 only): bf16 is emulated, the step is fp32",
    ),
    id="bf16",
)


def _model_and_cache(dtype: torch.dtype, rows: int = 8):
    torch.manual_seed(0)
    model = Transformer(CFG).to(dtype).eval()
    cache = model.new_kv_cache(rows, CFG.max_seq_len)
    gen = torch.Generator().manual_seed(1)
    cache.k.copy_(torch.randn(cache.k.shape, generator=gen))
    cache.v.copy_(torch.randn(cache.v.shape, generator=gen))
    return model, cache


def _always_faster(monkeypatch) -> None:
    """Every candidate copy times at half the eager kernel (`_linear`)."""
    monkeypatch.setattr(
        step_module, "_hot", lambda fn: 2.0 if fn.func is step_module._linear else 1.0
    )


def test_step_kernels_only_where_close_and_faster(monkeypatch):
    """A copy off by 1% is never used (fp32 tolerance); a close one is used where it is at
    least `STEP_KERNEL_GAIN` faster than the eager kernel, and the fastest close one wins."""
    layer = torch.nn.Sequential(torch.nn.Linear(32, 16))
    w = layer[0].weight.detach()
    good = ("transposed", w.t().contiguous(), 0)
    skewed = ("transposed", (w * 1.01).t().contiguous(), 0)
    monkeypatch.setattr(step_module, "_candidates", lambda module, max_rows: [skewed, good])
    # Per timed row count 1, 2, 4, 8: the eager kernel, then `good` (the skewed copy is not
    # timed): faster, barely faster, faster, slower.
    timings = iter([2.0, 1.0, 1.05, 1.0, 2.0, 1.0, 1.0, 2.0])
    monkeypatch.setattr(step_module, "_hot", lambda fn: next(timings))
    assert add_step_kernels(layer, max_rows=8) == 1
    assert sorted(layer[0]._step_kernels) == [1, 4]
    assert all(k is good for k in layer[0]._step_kernels.values())
    x = torch.randn(4, 32)
    with torch.inference_mode():
        torch.testing.assert_close(step_module._linear(layer[0], x), layer[0](x))


def test_step_kernels_skip_the_eager_steps_own_copy(monkeypatch):
    """A linear the eager step multiplies through a library's copy packed for `max_rows`
    gets no second one; MKL's one-row copy is tried at one row only; nothing is added where
    no candidate is faster."""
    _always_faster(monkeypatch)
    model, _ = _model_and_cache(torch.float32)
    prepack_linears(model, max_rows=8)
    assert add_step_kernels(model, max_rows=8) > 0
    for module in model.modules():
        for rows, (library, _, packed_rows) in getattr(module, "_step_kernels", {}).items():
            if type(module) is PrepackedLinear:
                assert (library, packed_rows) != (module._packer.name, 8)
            assert library != "mkl" or packed_rows == rows == 1
    monkeypatch.setattr(step_module, "_hot", lambda fn: 1.0)  # nothing is faster
    assert add_step_kernels(model, max_rows=8) == 0
    assert all(not getattr(m, "_step_kernels", {}) for m in model.modules())


def test_step_kernels_follow_weight_changes(monkeypatch):
    """After an in-place weight change the copies are made again from the new weights."""
    _always_faster(monkeypatch)
    model, _ = _model_and_cache(torch.float32)
    assert add_step_kernels(model, max_rows=4) > 0
    with torch.no_grad():
        model.output.weight.mul_(2)
    step_module._repack_step_kernels(model)
    with torch.inference_mode():
        for module in model.modules():
            if getattr(module, "_step_kernels", {}).get(1):
                x = torch.randn(1, module.in_features)
                ours = step_module._linear(module, x)
                torch.testing.assert_close(ours, F.linear(x, module.weight, module.bias))


@pytest.mark.parametrize("dtype", [torch.float32, BF16], ids=str)
def test_static_step_with_step_kernels_and_rope_tables_equals_decode_rows(monkeypatch, dtype):
    """Eagerly, the static step through the compiled path's packed copies (wherever a
    library packs this dtype here) and gathered rotary tables gives the model's logits
    within the dtype's tolerance."""
    _always_faster(monkeypatch)
    model, cache = _model_and_cache(dtype)
    prepack_linears(model, max_rows=8)
    assert add_step_kernels(model, max_rows=8) > 0  # the transposed copy, at least
    tokens, positions = torch.tensor([5, 17, 250]), torch.tensor([9, 30, 2])
    reference = model.decode_rows(tokens, KVCache(cache.k[:, :3], cache.v[:, :3]), positions)
    rope = rope_cos_sin(torch.arange(CFG.max_seq_len), CFG.dim // CFG.n_heads, CFG.rope_theta)
    with torch.inference_mode():
        ours = decode_step(model, tokens, positions, cache.k.clone(), cache.v.clone(), 64, rope)
    assert logits_close(ours, reference, dtype), (ours - reference).abs().max()
    if dtype == torch.float32:
        torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, BF16], ids=str)
def test_compiled_step_with_step_kernels_guarded_and_unguarded(monkeypatch, dtype):
    """inductor's graph with the step kernels: the probe keeps it only within tolerance of
    the eager step, and its unguarded fast path returns what the guarded graph returned."""
    _always_faster(monkeypatch)
    model, cache = _model_and_cache(dtype)
    prepack_linears(model, max_rows=8)
    stepper = CompiledDecodeStep(
        model, cache, lambda t, p, c: model.decode_rows(t, c, p), background=False
    )
    timings = iter([2.0, 1.0])  # eager, then the graph
    monkeypatch.setattr(step_module, "_fastest", lambda fn: next(timings))
    tokens, positions = torch.tensor([3, 4, 5]), torch.tensor([10, 70, 20])
    reference = stepper(tokens, positions)  # compiles, probes; the eager logits
    key = stepper.bucket_of(3, 71)
    assert stepper.buckets[key].state == "fast", stepper.buckets[key]
    with torch.inference_mode():
        guarded = stepper._run(key, tokens, positions, cache.k, cache.v, guards=True)
        fast = [stepper(tokens, positions) for _ in range(3)]
    assert logits_close(guarded, reference, dtype), (guarded - reference).abs().max()
    assert all(torch.equal(f, guarded) for f in fast)
