"""The engine's prepacked linears: outputs equal `F.linear` bit for bit (or the layer keeps
`F.linear`), they follow in-place weight changes, and training goes around them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from forgeml.serve.prepack import PrepackedLinear, _mkldnn_ops, prepack_linears

pytestmark = pytest.mark.skipif(not _mkldnn_ops(), reason="no oneDNN linear ops in this torch")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_prepacked_equals_f_linear_and_follows_weight_changes(dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 96), nn.Linear(96, 32, bias=False)).to(dtype)
    state = torch.get_rng_state()
    prepack_linears(model, max_rows=8)
    assert torch.equal(state, torch.get_rng_state())  # the probe leaves the global RNG alone
    assert all(type(m) is PrepackedLinear for m in model)
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
