"""The curation report's numbers: `CurateReport` (every input accounted for) and the drops
by document type, with the warnings raised when one filter drops more than
`curate.warn_drop_share` of a type. forgeml.data.curate fills them; forgeml.data.report
renders them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class CurateReport:
    """What happened to every input record; `kept + dropped + failed == input`."""

    input_path: str
    out_path: str
    config_hash: str
    profile: str = "enterprise"
    input: int = 0
    kept: int = 0
    dropped: int = 0
    failed: int = 0
    dropped_by_reason: dict[str, int] = field(default_factory=dict)
    failed_by_reason: dict[str, int] = field(default_factory=dict)
    stages: list[dict[str, Any]] = field(default_factory=list)
    chars: dict[str, int] = field(default_factory=lambda: {"input": 0, "kept": 0})
    length_histogram: dict[str, list[int]] = field(default_factory=dict)
    languages: dict[str, dict[str, int]] = field(default_factory=dict)
    code_languages: dict[str, dict[str, int]] = field(default_factory=dict)
    redactions: dict[str, int] = field(default_factory=dict)
    records_redacted: int = 0
    boilerplate_lines_removed: int = 0
    duplicates: dict[str, Any] = field(default_factory=dict)
    # type -> {"input": n, "judged_as": {kind: n}, "dropped": {reason: n}, "examples": ...}
    by_type: dict[str, dict[str, Any]] = field(default_factory=dict)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    quality_model: dict[str, Any] = field(default_factory=dict)  # held-out agreement
    media: dict[str, Any] = field(default_factory=dict)  # forgeml.data.media_carry; {}: none

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if not out["media"]:  # a corpus without media: the report is as before media existed
            del out["media"]
        return out

    def summary(self) -> str:
        top = sorted(self.dropped_by_reason.items(), key=lambda kv: -kv[1])[:4]
        why = ", ".join(f"{n} {r}" for r, n in top)
        red = sum(self.redactions.values())
        return (
            f"input {self.input}, kept {self.kept}, dropped {self.dropped}"
            + (f" ({why}{', ...' if len(self.dropped_by_reason) > 4 else ''})" if why else "")
            + f", failed {self.failed}; {red} redactions in {self.records_redacted} records"
        )


@dataclass
class DropLedger:
    """Input and filter drops per document type, with the first document each reason
    dropped (its path and locator: never its text). Ledgers of batches add up."""

    inputs: Counter[str] = field(default_factory=Counter)
    kinds: Counter[tuple[str, str]] = field(default_factory=Counter)  # (type, kind)
    drops: Counter[tuple[str, str]] = field(default_factory=Counter)  # (type, reason)
    examples: dict[tuple[str, str], str] = field(default_factory=dict)

    def seen(self, doc_type: str, kind: str) -> None:
        self.inputs[doc_type] += 1
        self.kinds[(doc_type, kind)] += 1

    def dropped(self, doc_type: str, reason: str, where: str) -> None:
        self.drops[(doc_type, reason)] += 1
        self.examples.setdefault((doc_type, reason), where)

    def add(self, other: DropLedger) -> None:
        self.inputs.update(other.inputs)
        self.kinds.update(other.kinds)
        self.drops.update(other.drops)
        for key, where in other.examples.items():
            self.examples.setdefault(key, where)

    def by_type(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for doc_type, n in sorted(self.inputs.items()):
            reasons = {r: c for (t, r), c in sorted(self.drops.items()) if t == doc_type}
            out[doc_type] = {
                "input": n,
                "judged_as": {k: c for (t, k), c in sorted(self.kinds.items()) if t == doc_type},
                "dropped": reasons,
                "examples": {r: self.examples[(doc_type, r)] for r in reasons},
            }
        return out

    def warnings(self, share: float) -> list[dict[str, Any]]:
        """One warning per (filter, type) whose drops exceed `share` of the type's input,
        largest share first: the filter, the type, the counts, the share, the reason that
        filter gave most often and the first document it dropped for it."""
        per_filter: dict[tuple[str, str], Counter[str]] = {}
        for (doc_type, reason), n in self.drops.items():
            per_filter.setdefault((reason.split(":", 1)[0], doc_type), Counter())[reason] += n
        out = []
        for (flt, doc_type), reasons in per_filter.items():
            n, total = sum(reasons.values()), self.inputs[doc_type]
            if total and n / total > share:
                reason = reasons.most_common(1)[0][0]
                out.append(
                    {
                        "filter": flt,
                        "type": doc_type,
                        "dropped": n,
                        "of": total,
                        "share": round(n / total, 4),
                        "example_reason": reason,
                        "example": self.examples[(doc_type, reason)],
                    }
                )
        return sorted(out, key=lambda w: (-w["share"], w["filter"], w["type"]))


def warning_line(w: dict[str, Any]) -> str:
    """A warning as one sentence, for the CLI and the report."""
    return (
        f"filter {w['filter']} dropped {w['dropped']} of {w['of']} {w['type']} documents "
        f"({w['share']:.0%}), e.g. {w['example_reason']} on {w['example']}"
    )
