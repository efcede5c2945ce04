"""`train.compile` (torch.compile through `parallelize`) on CPU: dense and MoE models train
under it with the losses and gradients of eager mode. The MoE's grouped expert GEMMs run
eagerly inside the compiled graph (inductor's `_grouped_mm` rule takes only bf16)."""

from __future__ import annotations

import copy

import pytest
import torch

from forgeml.core.config import ModelConfig
from forgeml.models.registry import build_model
from forgeml.train.parallelize import parallelize

DENSE = ModelConfig(
    dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=160, vocab_size=300, max_seq_len=64
)  # fmt: skip
MOE = DENSE.model_copy(update={"arch": "moe", "n_experts": 4, "top_k": 2})


@pytest.mark.slow
@pytest.mark.parametrize("cfg", [DENSE, MOE], ids=["dense", "moe"])
def test_compiled_training_step_equals_eager(cfg):
    torch.manual_seed(0)
    eager = build_model(cfg).train()
    compiled = parallelize(copy.deepcopy(eager), compile=True, device="cpu")
    names = list(eager.state_dict())
    assert list(compiled.state_dict()) == names  # compiled in place: no _orig_mod. prefix
    gen = torch.Generator().manual_seed(1)
    for _ in range(2):  # the second call runs the cached graph
        x = torch.randint(0, cfg.vocab_size, (4, 48), generator=gen)
        y = torch.randint(0, cfg.vocab_size, (4, 48), generator=gen)
        losses = []
        for model in (eager, compiled):
            model.zero_grad(set_to_none=True)
            loss = model(x, y)
            loss.backward()
            losses.append(loss.item())
        assert losses[1] == pytest.approx(losses[0], abs=1e-5)
        for (name, a), b in zip(eager.named_parameters(), compiled.parameters(), strict=True):
            torch.testing.assert_close(b.grad, a.grad, atol=1e-5, rtol=1e-4, msg=name)
