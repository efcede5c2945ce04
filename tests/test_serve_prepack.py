"""The engine's prepacked linears: outputs equal `F.linear` bit for bit (a row count where the
packed product differs, or is slower, keeps `F.linear`), they follow in-place weight changes,
and training goes around them."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from forgeml.serve import prepack
from forgeml.serve.prepack import PrepackedLinear, packer_for, prepack_linears

pytestmark = pytest.mark.skipif(
    packer_for(torch.bfloat16) is None or packer_for(torch.float32) is None,
    reason="no oneDNN or MKL linear ops in this torch",
)


def _packs_on_this_cpu(dtype: torch.dtype) -> bool:
    """Whether the library for `dtype` packs a weight here: oneDNN packs bf16 only on CPUs
    with AVX-512 (BW/VL/DQ) or AVX-NE-CONVERT, so on an AVX2-only CPU bf16 stays `F.linear`."""
    try:
        packer_for(dtype).pack(torch.zeros(8, 8, dtype=dtype), 1)
    except RuntimeError:
        return False
    return True


# The probe's decisions (a differing row count keeps F.linear, a slower path is not used) do
# not depend on the dtype: each test runs on fp32 (MKL) everywhere and on bf16 (oneDNN) where
# this CPU packs it.
PACKED_DTYPES = [
    torch.float32,
    pytest.param(
        torch.bfloat16,
        marks=pytest.mark.skipif(
            not _packs_on_this_cpu(torch.bfloat16),
            reason="oneDNN does not pack bf16 weights on this CPU (needs AVX-512 BW/VL/DQ or "
            "AVX-NE-CONVERT); the fp32 case covers the same logic",
        ),
    ),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_prepacked_equals_f_linear_and_follows_weight_changes(dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 96), nn.Linear(96, 32, bias=False)).to(dtype)
    state = torch.get_rng_state()
    prepack_linears(model, max_rows=8)
    assert torch.equal(state, torch.get_rng_state())  # the probe leaves the global RNG alone
    # Each packs at some row count or stays a plain nn.Linear; outputs are F.linear's either way.
    assert all(type(m) in (PrepackedLinear, nn.Linear) for m in model)
    with torch.no_grad():
        for rows in (1, 3, 8, 20):  # 20 > max_rows: F.linear
            x = torch.randn(rows, 64).to(dtype)
            for m in model:
                assert torch.equal(m(x), F.linear(x, m.weight, m.bias))
                x = F.linear(x, m.weight, m.bias)
        model[0].weight.mul_(2)  # in place, as merge_lora does
        x = torch.randn(4, 64).to(dtype)
        assert torch.equal(model[0](x), F.linear(x, model[0].weight, model[0].bias))


def test_training_goes_around_the_packed_copy():
    torch.manual_seed(0)
    layer = nn.Linear(16, 8).to(torch.bfloat16)
    prepack_linears(layer, max_rows=4)
    x = torch.randn(2, 16).to(torch.bfloat16)
    layer(x).float().sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


def test_fp32_packs_with_mkl_and_matches_f_linear_at_every_row_count(monkeypatch):
    timings = itertools.cycle([1.0, 2.0])  # the packed path (timed first) looks faster
    monkeypatch.setattr(prepack, "_best_seconds", lambda fn: next(timings))
    torch.manual_seed(0)
    layer = nn.Linear(64, 128)
    prepack_linears(layer, max_rows=6)
    # Packed wherever MKL's product is F.linear's bit for bit (every count on the CPUs seen).
    assert type(layer) is nn.Linear or layer._packer.name == "mkl"
    with torch.no_grad():
        for rows in range(1, 7):
            x = torch.randn(rows, 1, 64)  # the engine's [rows, 1, dim]
            assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))


@pytest.mark.parametrize("dtype", PACKED_DTYPES)
def test_a_row_count_whose_packed_product_differs_keeps_f_linear(monkeypatch, dtype):
    real = packer_for(dtype)
    calls = []

    def off_by_a_bit_at_two_rows(x, packed, w, bias, max_rows):
        calls.append(x.numel() // x.shape[-1])
        out = real.apply(x, packed, w, bias, max_rows)
        return out * 1.01 if x.numel() // x.shape[-1] == 2 else out

    skewed = prepack._Packer("skewed", real.pack, off_by_a_bit_at_two_rows)
    monkeypatch.setattr(prepack, "packer_for", lambda dtype: skewed)
    # Each count times the packed path first, then F.linear: packed always looks faster.
    timings = itertools.cycle([1.0, 2.0])
    monkeypatch.setattr(prepack, "_best_seconds", lambda fn: next(timings))
    torch.manual_seed(0)
    layer = nn.Linear(32, 16).to(dtype)
    prepack_linears(layer, max_rows=4)
    assert layer._use_packed == (True, False, True, True)
    with torch.no_grad():
        for rows in range(1, 5):
            calls.clear()
            x = torch.randn(rows, 32).to(dtype)
            assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))
            assert calls == ([] if rows == 2 else [rows])


@pytest.mark.parametrize("dtype", PACKED_DTYPES)
def test_a_packed_path_slower_than_f_linear_is_not_used(monkeypatch, dtype):
    timings = iter(
        range(10_000)
    )  # every call later, so each timed path looks slower than the one before

    monkeypatch.setattr(prepack, "_best_seconds", lambda fn: next(timings))
    torch.manual_seed(0)
    layer = nn.Linear(32, 16).to(dtype)
    prepack_linears(layer, max_rows=4)  # packed timed first at each count, then F.linear
    assert layer._packed is not None and layer._use_packed == (True, True, True, True)
    timings = iter(range(10_000, 0, -1))  # now F.linear, timed second, always looks faster
    monkeypatch.setattr(prepack, "_best_seconds", lambda fn: next(timings))
    with torch.no_grad():
        layer.weight.mul_(2)  # a weight change: probed again
    x = torch.randn(3, 32).to(dtype)
    with torch.no_grad():
        assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))
    assert layer._packed is None
