"""Linears with their weights reordered once for oneDNN, for the serving engine's decode step.

On CPU a bf16 `F.linear` reorders its weight into oneDNN's blocked layout on every call; for a
small model's decode step (a few rows) that reorder costs more than the matmul. The engine
applies `prepack_linears` to its model from outside, as `parallelize` applies compile.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _mkldnn_ops() -> bool:
    ops = torch.ops.mkldnn
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(ops, "_reorder_linear_weight")
        and hasattr(ops, "_linear_pointwise")
    )


class PrepackedLinear(nn.Linear):
    """`nn.Linear` that, without autograd and for at most `max_rows` rows, multiplies by a
    prepacked copy of its weight; anything else (training, prefill, other dtypes) is `F.linear`.

    The copy is made, and checked bitwise against `F.linear` at every row count 1..max_rows,
    again whenever the weight changes (its version counter, storage or dtype: `merge_lora`,
    `load_state_dict`, `.to`). Where that check fails (fp32 and fp16 on some CPUs, where
    `F.linear` takes another kernel) the layer keeps `F.linear`, so outputs never change.
    Parameters and `state_dict` are those of the `nn.Linear`; the copy costs its weight's memory.
    """

    max_rows: int
    _packed: torch.Tensor | None
    _packed_key: tuple | None

    def _weight_key(self) -> tuple | None:
        w = self.weight
        if w.device.type != "cpu" or w.is_inference():  # an inference tensor has no version
            return None
        return (
            w.data_ptr(),
            w._version,
            w.dtype,
            None if self.bias is None else self.bias._version,
        )

    def _repack(self, key: tuple | None) -> None:
        self._packed, self._packed_key = None, key
        if key is None:
            return
        with torch.no_grad():
            w = self.weight.detach()
            bias = None if self.bias is None else self.bias.detach()
            try:
                packed = torch.ops.mkldnn._reorder_linear_weight(w, self.max_rows)
                probe = torch.Generator().manual_seed(0)  # leaves the global RNG alone
                for rows in range(1, self.max_rows + 1):
                    x = torch.randn(rows, self.in_features, generator=probe).to(w.dtype)
                    got = torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
                    if not torch.equal(got, F.linear(x, w, bias)):
                        return
            except RuntimeError:  # a dtype or CPU oneDNN does not pack
                return
        self._packed = packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if (
            (torch.is_grad_enabled() and (w.requires_grad or x.requires_grad))
            or x.dtype != w.dtype
            or x.device.type != "cpu"
            or x.numel() > self.max_rows * self.in_features
        ):
            return F.linear(x, w, self.bias)
        key = self._weight_key()
        if key != self._packed_key:
            self._repack(key)
        if self._packed is None:
            return F.linear(x, w, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self._packed, self.bias, "none", [], "")


def prepack_linears(model: nn.Module, max_rows: int) -> int:
    """Turn the model's CPU `nn.Linear`s into `PrepackedLinear`s in place; how many now pack.

    `max_rows` is the most rows a packed call takes (the engine's batch: one token per row).
    Nothing changes off CPU or without oneDNN.
    """
    if not _mkldnn_ops():
        return 0
    packed = 0
    for module in model.modules():
        plain = type(module) is nn.Linear or type(module) is PrepackedLinear
        if plain and module.weight.device.type == "cpu":
            module.__class__ = PrepackedLinear
            module.max_rows = max_rows
            module._repack(module._weight_key())
            packed += module._packed is not None
    return packed
