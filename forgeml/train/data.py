"""Pre-training batches from packed token shards: a seeded, resumable order of windows.

The stream is cut into non-overlapping windows of seq_len+1 tokens (inputs and shifted
targets). Position is counted in global sequences, so a run can resume on a different
number of processes and still see exactly the sequences it has not seen yet.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from forgeml.core.errors import ConfigError, DataError
from forgeml.core.seeds import derive_seed
from forgeml.tokenizer.pack import TokenShards

Batch = tuple[torch.Tensor, torch.Tensor]


def _check_fits(shards: TokenShards, seq_len: int, what: str) -> None:
    if shards.n_tokens < seq_len + 1:
        raise DataError(
            f"{what} has {shards.n_tokens} tokens, fewer than one window of seq_len+1 = "
            f"{seq_len + 1}",
            hint="add more text or lower train.seq_len",
        )


def _split(tokens: torch.Tensor, micro_batch_size: int) -> list[Batch]:
    return [
        (chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous())
        for chunk in tokens.split(micro_batch_size)
    ]


class PretrainBatches:
    """Global batches of `global_batch_size` windows; rank r takes the r-th contiguous
    slice of each. Epoch e visits every window once, in the permutation seeded by seed+e."""

    def __init__(
        self,
        shards: TokenShards,
        *,
        seq_len: int,
        global_batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        _check_fits(shards, seq_len, "training data")
        if global_batch_size % world_size:
            raise ConfigError(
                f"global batch of {global_batch_size} sequences does not split over "
                f"{world_size} processes",
                hint="make micro_batch_size * grad_accum_steps * processes consistent",
            )
        self.shards, self.seq_len, self.seed = shards, seq_len, seed
        self.global_batch_size, self.rank, self.world_size = global_batch_size, rank, world_size
        self.n_windows = (shards.n_tokens - 1) // seq_len
        self.consumed = 0  # global sequences handed out so far, over all ranks
        self._perms: dict[int, np.ndarray] = {}

    @property
    def epoch(self) -> int:
        return self.consumed // self.n_windows

    def _window(self, g: int) -> int:
        epoch, i = divmod(g, self.n_windows)
        if epoch not in self._perms:
            if len(self._perms) > 1:
                self._perms.clear()
            rng = np.random.default_rng(derive_seed(self.seed, "pretrain.epoch", epoch))
            self._perms[epoch] = rng.permutation(self.n_windows)
        return int(self._perms[epoch][i])

    def next_micro_batches(self, micro_batch_size: int, grad_accum: int) -> list[Batch]:
        """This rank's share of the next global batch, as `grad_accum` (x, y) pairs."""
        per_rank = self.global_batch_size // self.world_size
        if micro_batch_size * grad_accum != per_rank:
            raise ConfigError(
                f"micro_batch_size {micro_batch_size} x grad_accum {grad_accum} != "
                f"{per_rank} sequences per process"
            )
        first = self.consumed + self.rank * per_rank
        rows = [
            self.shards.window(self._window(g) * self.seq_len, self.seq_len + 1)
            for g in range(first, first + per_rank)
        ]
        self.consumed += self.global_batch_size
        return _split(torch.from_numpy(np.stack(rows)).long(), micro_batch_size)

    def state_dict(self) -> dict[str, Any]:
        return {
            "consumed": self.consumed,
            "seed": self.seed,
            "seq_len": self.seq_len,
            "n_windows": self.n_windows,
            "global_batch_size": self.global_batch_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("seed", "seq_len", "n_windows"):
            if state[key] != getattr(self, key):
                raise DataError(
                    f"checkpoint data position was for {key}={state[key]}, "
                    f"this run has {key}={getattr(self, key)}",
                    hint="resume with the same training shards, seq_len and seed",
                )
        self.consumed = int(state["consumed"])


def eval_batches(
    shards: TokenShards, seq_len: int, batch_size: int, max_batches: int
) -> Iterator[Batch]:
    """Fixed contiguous windows from the start of the held-out stream (same every call)."""
    _check_fits(shards, seq_len, "eval data")
    n_windows = (shards.n_tokens - 1) // seq_len
    for b in range(min(max_batches, -(-n_windows // batch_size))):
        rows = [
            shards.window(w * seq_len, seq_len + 1)
            for w in range(b * batch_size, min(n_windows, (b + 1) * batch_size))
        ]
        (batch,) = _split(torch.from_numpy(np.stack(rows)).long(), len(rows))
        yield batch
