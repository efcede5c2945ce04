"""Synthetic records and their accounting: dedup (reusing forgeml.data.dedup), reward filter,
and the dataset folder every synth stage writes (chat JSONL that `forgeml train sft` reads).

Every generated record ends up in `records.jsonl` as kept or filtered with its reason; only the
kept ones go to `train.jsonl` (OpenAI `messages` format, the `chat-jsonl` dataset format).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from forgeml.core.io import atomic_write_text
from forgeml.data.dedup import deduplicate

CHAT_FORMAT = "chat-jsonl"  # the format of forgeml.pipeline.sft_stage's chat datasets


@dataclass
class SynthRecord:
    id: str
    task: str  # qa-heading, qa-definition, infill, translation, self-instruct
    prompt: str
    completion: str
    source: dict[str, Any] = field(default_factory=dict)  # document, seed tasks, teacher
    status: str = "kept"  # kept | filtered
    reason: str = ""
    score: float | None = None

    def filter(self, reason: str) -> None:
        if self.status == "kept":
            self.status, self.reason = "filtered", reason

    @property
    def text(self) -> str:
        return f"{self.prompt}\n{self.completion}"

    def chat(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "messages": [
                {"role": "user", "content": self.prompt},
                {"role": "assistant", "content": self.completion},
            ],
            "metadata": {"task": self.task, **self.source},
        }


def filter_duplicates(
    records: Sequence[SynthRecord],
    training_texts: Sequence[str] = (),
    *,
    threshold: float = 0.8,
    num_perm: int = 128,
    shingle_words: int = 3,
) -> None:
    """Mark exact and MinHash near duplicates (Broder 1997; Lee et al., arXiv:2107.06499):
    of a training text (`duplicate-of-training`) or of an earlier record (`duplicate`)."""
    alive = [r for r in records if r.status == "kept"]
    n_train = len(training_texts)
    texts = [*training_texts, *(r.text for r in alive)]
    if len(texts) < 2:
        return
    result = deduplicate(texts, threshold=threshold, num_perm=num_perm, shingle_words=shingle_words)
    parent: dict[int, int] = {}  # duplicate -> the text its cluster kept
    for group in result.exact_clusters + result.near_clusters:
        for i in group[1:]:
            parent[i] = group[0]
    for i, rec in enumerate(alive, start=n_train):
        if not result.keep[i]:
            root = i
            while root in parent:  # an exact copy of a near duplicate leads to its original
                root = parent[root]
            rec.filter("duplicate-of-training" if root < n_train else "duplicate")


def filter_by_reward(
    records: Sequence[SynthRecord],
    reward: Callable[[Sequence[str], Sequence[str], Sequence[dict]], Sequence[float]],
    threshold: float,
) -> None:
    """Score the kept records with `reward(prompts, completions, metadatas)` (a batch scorer,
    see forgeml.train.rewards.per_sample) and drop those below `threshold`."""
    alive = [r for r in records if r.status == "kept"]
    if not alive:
        return
    scores = reward(
        [r.prompt for r in alive],
        [r.completion for r in alive],
        [{"task": r.task, "id": r.id, **r.source} for r in alive],
    )
    for rec, score in zip(alive, scores, strict=True):
        rec.score = float(score)
        if rec.score < threshold:
            rec.filter("reward-below-threshold")


def write_synth_dataset(
    out: Path, records: Sequence[SynthRecord], extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Write `train.jsonl` (kept, chat format), `records.jsonl` (all, with status and reason)
    and `report.json`; return the report (kept + filtered == generated, by reason and task)."""
    out.mkdir(parents=True, exist_ok=True)
    kept = [r for r in records if r.status == "kept"]
    lines = (json.dumps(r.chat(), ensure_ascii=False) for r in kept)
    atomic_write_text(out / "train.jsonl", "".join(f"{line}\n" for line in lines))
    atomic_write_text(
        out / "records.jsonl",
        "".join(json.dumps(asdict(r), ensure_ascii=False) + "\n" for r in records),
    )
    report = {
        "generated": len(records),
        "kept": len(kept),
        "filtered": dict(sorted(Counter(r.reason for r in records if r.status != "kept").items())),
        "kept_by_task": dict(sorted(Counter(r.task for r in kept).items())),
        **(extra or {}),
    }
    assert report["kept"] + sum(report["filtered"].values()) == report["generated"]
    atomic_write_text(out / "report.json", json.dumps(report, indent=1))
    return report
