"""The training kit in one namespace: what every loop in forgeml.train uses to place a model,
start or resume a run, step the optimizer, synchronise ranks and checkpoint. Loops write
`kit.open_run(...)`, `kit.clip_and_step(...)`, so a reader sees at a glance what is shared.
"""

from forgeml.train.distributed import (
    DistInfo,
    all_reduce_mean,
    all_reduce_sum,
    check_inputs_agree,
    cleanup,
    concat_over_ranks,
    init_distributed,
    rank_share,
)
from forgeml.train.metrics import MetricsLogger
from forgeml.train.optim import build_optimizer, clip_and_step, set_lr
from forgeml.train.parallelize import (
    Strategy,
    full_weights,
    gathered_model,
    gradient_sync,
    is_fsdp,
    parallelize,
    parallelize_for_sampling,
    parallelize_for_training,
)
from forgeml.train.preflight import choose_strategy, placement, preflight
from forgeml.train.resume import (
    BATCH_SPLIT_FIELDS,
    RESULT_NEUTRAL_TRAIN_FIELDS,
    checkpoint_if_due,
    deterministic,
    eval_due,
    finish_run,
    global_batch_split,
    open_run,
    resume_or_start,
)

__all__ = [
    "BATCH_SPLIT_FIELDS",
    "RESULT_NEUTRAL_TRAIN_FIELDS",
    "DistInfo",
    "MetricsLogger",
    "Strategy",
    "all_reduce_mean",
    "all_reduce_sum",
    "build_optimizer",
    "check_inputs_agree",
    "checkpoint_if_due",
    "clip_and_step",
    "choose_strategy",
    "cleanup",
    "concat_over_ranks",
    "deterministic",
    "eval_due",
    "finish_run",
    "global_batch_split",
    "full_weights",
    "gathered_model",
    "gradient_sync",
    "init_distributed",
    "is_fsdp",
    "open_run",
    "parallelize",
    "parallelize_for_sampling",
    "parallelize_for_training",
    "placement",
    "preflight",
    "rank_share",
    "resume_or_start",
    "set_lr",
]
