"""Seed derivation: every random stream a stage draws (epoch orders, sampling generators,
per-example seeds) gets its seed from the run's one seed through `derive_seed`.

Each stream is named in `SEED_STREAMS`, with the constants its call site used before this
helper existed, so a seeded run draws exactly the numbers it drew then.
"""

from __future__ import annotations

from typing import NamedTuple


class SeedStream(NamedTuple):
    """seed = base * base_factor + offset + index * index_factor."""

    base_factor: int
    offset: int = 0
    index_factor: int = 1


# Stream name -> its constants. The large factors are primes, so that streams of nearby base
# seeds (1337, 1338, ...) do not overlap for the first million indices; a new stream picks
# constants of its own rather than sharing a row.
SEED_STREAMS: dict[str, SeedStream] = {
    # the permutation of epoch `index` of pre-training windows / SFT rows
    "pretrain.epoch": SeedStream(1),
    "sft.epoch": SeedStream(1),
    # the permutation of epoch `index` of preference pairs (DPO, online DPO, reward model)
    "preference.epoch": SeedStream(100_003),
    # the shuffle of epoch `index` of RL prompts, and the spare prompts' own order
    "rl.prompt_epoch": SeedStream(1_000_003),
    "rl.spare_prompts": SeedStream(1, offset=7919, index_factor=0),
    # the sampling generator of optimizer step `index`
    "rl.sample_step": SeedStream(1_000_003),
    "online_dpo.sample_step": SeedStream(1_000_003, index_factor=10_007),
    # the before/after reward samples of online DPO, and their batches of prompts (`index`:
    # the first prompt of the batch)
    "online_dpo.eval": SeedStream(1, offset=7_000_000, index_factor=0),
    "sample.prompt_batch": SeedStream(1, index_factor=1000),
    # one process's sampling generator under torchrun: base = the step's sampling seed,
    # index = the rank (rank 0 keeps the step's seed, so one process draws as before)
    "sample.rank": SeedStream(1, index_factor=104_729),
    # one generator per evaluated example or prompt: samples do not depend on batching
    "eval.example": SeedStream(1_000_003),
    # one teacher request: 2 * i for the instruction, 2 * i + 1 for its answer
    "synth.teacher_request": SeedStream(100_003),
    # an HPO trial's sampler: base = trials already in the study, index = the job's offset
    "hpo.trial_sampler": SeedStream(1, index_factor=10_007),
    # multimodal SFT: the held-out split of the records, and the batch of optimizer step `index`
    "mm.heldout": SeedStream(15_485_863, index_factor=0),
    "mm.batch": SeedStream(15_485_863, offset=1, index_factor=7_919),
}


def derive_seed(base: int, stream: str, index: int = 0) -> int:
    """The seed of item `index` (a step, an epoch, an example) of the named random stream of
    a run seeded with `base`: `base * base_factor + offset + index * index_factor`."""
    try:
        factors = SEED_STREAMS[stream]
    except KeyError:
        raise ValueError(
            f"unknown seed stream {stream!r}; known: {', '.join(sorted(SEED_STREAMS))}"
        ) from None
    return base * factors.base_factor + factors.offset + index * factors.index_factor
