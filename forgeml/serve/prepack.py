"""Linears with their weights reordered once for the CPU's GEMM library, for the serving
engine's decode step.

On CPU a bf16 `F.linear` reorders its weight into oneDNN's blocked layout on every call, and an
fp32 one lets MKL pack it on every call; for a small model's decode step (a few rows) that
costs as much as the multiply. The engine applies `prepack_linears` to its model from outside,
as `parallelize` applies compile.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# Timed passes per path and row count when choosing a path (the fastest counts).
PROBE_REPEATS = 3


@dataclass(frozen=True)
class _Packer:
    """How one GEMM library packs a weight for at most `rows` rows and multiplies by it."""

    name: str
    pack: Callable[[torch.Tensor, int], torch.Tensor]
    apply: Callable[
        [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, int], torch.Tensor
    ]


def packed_linear(
    x: torch.Tensor,
    packed: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    library: str,
    max_rows: int,
) -> torch.Tensor:
    """`F.linear(x, weight, bias)` through `packed`, the copy of `weight` that `library`
    ("onednn" or "mkl") packed for `max_rows` rows (oneDNN's serves any row count up to it;
    MKL multiplies by its copy at exactly `max_rows` rows, other counts by `weight`)."""
    if library == "mkl":
        return torch.ops.mkl._mkl_linear(x, packed, weight, bias, max_rows)
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


@functools.cache
def _library(name: str) -> _Packer | None:
    """oneDNN's ("onednn") or MKL's ("mkl") weight-packing linear, if this torch has it."""
    if name == "onednn":
        ops, available = torch.ops.mkldnn, torch.backends.mkldnn.is_available()
        pack_op, linear_op = "_reorder_linear_weight", "_linear_pointwise"
    else:
        ops, available = torch.ops.mkl, torch.backends.mkl.is_available()
        pack_op, linear_op = "_mkl_reorder_linear_weight", "_mkl_linear"
    if not (available and hasattr(ops, pack_op) and hasattr(ops, linear_op)):
        return None

    def apply(x, packed, w, bias, rows):
        return packed_linear(x, packed, w, bias, name, rows)

    return _Packer(name, getattr(ops, pack_op), apply)


def packer_for(dtype: torch.dtype) -> _Packer | None:
    """The library that packs weights of `dtype`: MKL for fp32 (oneDNN's fp32 kernels are
    not bitwise those of `F.linear`), oneDNN for bf16 and fp16; None if torch has neither."""
    return _library("mkl" if dtype == torch.float32 else "onednn")


def _timed_rows(max_rows: int) -> set[int]:
    """The row counts whose speed the probe measures: the powers of two up to `max_rows`,
    and `max_rows` (timing every count would cost a large model seconds per linear)."""
    return {1 << i for i in range(max_rows.bit_length())} & set(range(1, max_rows)) | {max_rows}


def best_time(
    fn: Callable[[], object], repeats: int, clock: Callable[[], float] = time.perf_counter
) -> float:
    """The shortest of `repeats` calls of `fn`, timed by `clock`."""
    best = float("inf")
    for _ in range(repeats):
        start = clock()
        fn()
        best = min(best, clock() - start)
    return best


def _best_seconds(fn: Callable[[], torch.Tensor]) -> float:
    fn()  # warm-up: the library builds its kernel for the shape
    return best_time(fn, PROBE_REPEATS)


class PrepackedLinear(nn.Linear):
    """`nn.Linear` that, without autograd, multiplies by a prepacked copy of its weight at the
    row counts (1..`max_rows`) where that is both bitwise equal to `F.linear` and faster;
    anything else (training, prefill, other row counts, devices or dtypes) is `F.linear`.

    The copy is made, and each row count probed, again when a call at a packed row count finds
    the weight changed (its version counter, storage or dtype: `merge_lora`,
    `load_state_dict`, `.to`); the other row counts take `F.linear`, right for any weight.
    Outputs never change: a row count whose packed product differs from `F.linear` in any bit
    keeps `F.linear` (fp16 at one row on some CPUs). Which of the equal paths is used follows
    a timing probe, so it may differ between runs, the outputs do not. Parameters and
    `state_dict` are those of the `nn.Linear`; the copy costs its weight's memory.
    """

    max_rows: int
    _packed: torch.Tensor | None
    _packed_key: tuple | None
    _packer: _Packer | None
    _use_packed: tuple[bool, ...]

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
        self._use_packed = (False,) * self.max_rows
        packer = packer_for(self.weight.dtype)
        if key is None or packer is None:
            return
        with torch.no_grad():
            w = self.weight.detach()
            bias = None if self.bias is None else self.bias.detach()
            try:
                packed = packer.pack(w, self.max_rows)
                probe = torch.Generator().manual_seed(0)  # leaves the global RNG alone
                timed, use, faster = _timed_rows(self.max_rows), [], False
                for rows in range(1, self.max_rows + 1):
                    x = torch.randn(rows, self.in_features, generator=probe).to(w.dtype)
                    got = packer.apply(x, packed, w, bias, self.max_rows)
                    # An untimed row count takes the timing of the last timed one below it.
                    if rows in timed:
                        ours = _best_seconds(
                            lambda x=x: packer.apply(x, packed, w, bias, self.max_rows)
                        )
                        faster = ours < _best_seconds(lambda x=x: F.linear(x, w, bias))
                    use.append(faster and torch.equal(got, F.linear(x, w, bias)))
            except RuntimeError:  # a dtype or CPU the library does not pack
                return
        if any(use):
            self._packed, self._packer, self._use_packed = packed, packer, tuple(use)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The row counts that keep F.linear return at once: it is right in every case.
        rows = x.numel() // self.in_features
        if not 0 < rows <= self.max_rows or not self._use_packed[rows - 1]:
            return F.linear(x, self.weight, self.bias)
        w = self.weight
        if (
            (torch.is_grad_enabled() and (w.requires_grad or x.requires_grad))
            or x.dtype != w.dtype
            or x.device.type != "cpu"
        ):
            return F.linear(x, w, self.bias)
        key = self._weight_key()
        if key != self._packed_key:  # the weight changed: probe again
            self._repack(key)
            if not self._use_packed[rows - 1]:
                return F.linear(x, w, self.bias)
        return self._packer.apply(x, self._packed, w, self.bias, self.max_rows)


def prepack_linears(model: nn.Module, max_rows: int) -> int:
    """Turn the model's CPU `nn.Linear`s into `PrepackedLinear`s in place, where the probe
    finds a row count to pack; return how many now pack. A linear that packs at no row count
    stays (or becomes again) a plain `nn.Linear`: its checks would cost every call for nothing.

    `max_rows` is the most rows a packed call takes (the engine's batch: one token per row).
    Nothing changes off CPU or in a torch without oneDNN and MKL.
    """
    if _library("onednn") is None and _library("mkl") is None:
        return 0
    packed = 0
    for module in model.modules():
        plain = type(module) is nn.Linear or type(module) is PrepackedLinear
        if plain and module.weight.device.type == "cpu":
            module.__class__ = PrepackedLinear
            module.max_rows = max_rows
            module._repack(module._weight_key())
            if module._packed is None:
                module.__class__ = nn.Linear
            else:
                packed += 1
    return packed
