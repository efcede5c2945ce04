"""Win-rate statistics of one model over another on the same prompts: the share of paired
samples the first wins (a tie counts 1/2) and its standard error clustered by prompt.

The sampling and judging live with the loop that needs them (forgeml.train.online_dpo).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def win_rate(
    scores: Sequence[float], baseline_scores: Sequence[float], per_prompt: int
) -> dict[str, float]:
    """Win-rate of `scores` over `baseline_scores` (paired samples, `per_prompt` consecutive
    samples of each prompt): a win counts 1, a tie 1/2; with its clustered standard error
    and both mean scores."""
    wins = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(scores, baseline_scores, strict=True)]  # fmt: skip
    n = max(len(wins), 1)
    return {
        "win_rate": sum(wins) / n,
        "win_rate_se": clustered_se(wins, per_prompt),
        "reward": sum(scores) / n,
        "baseline_reward": sum(baseline_scores) / n,
    }


def clustered_se(values: Sequence[float], per_cluster: int) -> float:
    """Standard error of the mean of `values` taken in consecutive clusters of `per_cluster`
    (the samples of one prompt are correlated, the prompts independent): the spread of the
    cluster means over the square root of their count; 0.0 with fewer than two clusters."""
    means = [
        statistics.fmean(values[i : i + per_cluster]) for i in range(0, len(values), per_cluster)
    ]
    return statistics.stdev(means) / len(means) ** 0.5 if len(means) > 1 else 0.0
