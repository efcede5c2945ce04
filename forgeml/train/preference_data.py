"""Preference pairs from JSONL for DPO and reward-model training: validation with line-numbered
errors, rendering through the chat template, tokenization with the prompt masked out, and a
report that accounts for every record (kept, or dropped and why).

A record: `prompt` (text, or a list of OpenAI messages) or `messages`, plus `chosen` and
`rejected` (text, an assistant message, or a one-message list); optional `margin` (number)
and `metadata` (object, handed to reward functions).
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from tokenizers import Tokenizer

from forgeml.core.errors import DataError
from forgeml.core.seeds import derive_seed
from forgeml.tokenizer.chat import END, render_chat
from forgeml.train.chat_data import RecordReport

ROLES = ("system", "user", "assistant", "tool")
MAX_ERRORS_SHOWN = 5


@dataclass
class PreferenceRecord:
    """One validated JSONL record, before tokenization."""

    line: int
    prompt: str  # the prompt as a reward function sees it (the last user message)
    messages: list[dict[str, Any]]  # the conversation the completions answer
    chosen: str
    rejected: str
    margin: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class PreferencePair:
    """A tokenized pair: shared prompt ids, and each completion's ids (ending in `<|end|>`)."""

    record: PreferenceRecord
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]

    @property
    def key(self) -> str:
        """Content hash of the pair (used for the held-out split and the reference cache)."""
        payload = json.dumps([self.prompt_ids, self.chosen_ids, self.rejected_ids])
        return hashlib.sha256(payload.encode()).hexdigest()


@dataclass
class PreferenceReport(RecordReport):
    """Every record of the file: kept + sum(dropped) == records."""

    records: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path, "records": self.records, "kept": self.kept,
            "truncated": self.truncated, "dropped": dict(self.dropped),
        }  # fmt: skip


def _text(value: Any) -> str | None:
    """Message content as text (a string, or OpenAI text parts); None when not text."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, Mapping) for p in value):
        return "".join(str(p.get("text", "")) for p in value if p.get("type") == "text")
    return None


def _messages(value: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}: expected a non-empty list of messages")
    for i, msg in enumerate(value):
        if not isinstance(msg, Mapping) or msg.get("role") not in ROLES:
            raise ValueError(f"{where}[{i}]: expected a message with role in {', '.join(ROLES)}")
        if _text(msg.get("content")) is None and not msg.get("tool_calls"):
            raise ValueError(f"{where}[{i}]: content must be text")
    return [dict(m) for m in value]


def _completion(value: Any, where: str) -> str:
    """`chosen`/`rejected`: text, an assistant message, or a list holding one."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, Mapping):
        if value.get("role", "assistant") != "assistant":
            raise ValueError(f"{where}: the message must have role 'assistant'")
        value = _text(value.get("content"))
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: expected non-empty text or one assistant message")
    return value


def _parse_prompt(raw: Any) -> tuple[str, list[dict[str, Any]]]:
    """(prompt text for reward functions, conversation) of a record; ValueError if invalid."""
    if not isinstance(raw, Mapping):
        raise ValueError(f"expected a JSON object, got {type(raw).__name__}")
    if "prompt" in raw and "messages" in raw:
        raise ValueError("give either 'prompt' or 'messages', not both")
    prompt = raw.get("prompt", raw.get("messages"))
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError("'prompt' is empty")
        return prompt, [{"role": "user", "content": prompt}]
    if prompt is None:
        raise ValueError("missing 'prompt' (text or messages) or 'messages'")
    messages = _messages(prompt, "'prompt'" if "prompt" in raw else "'messages'")
    if messages[-1]["role"] == "assistant":
        raise ValueError("the prompt conversation must not end with an assistant turn")
    users = [m for m in messages if m["role"] == "user"]
    return _text((users or messages)[-1].get("content")) or "", messages


def _metadata(raw: Mapping[str, Any]) -> dict[str, Any]:
    metadata = raw.get("metadata", {})
    if not isinstance(metadata, Mapping):
        raise ValueError("'metadata' must be an object")
    return dict(metadata)


def parse_record(raw: Any, line: int) -> PreferenceRecord:
    """Validate one decoded JSONL record; ValueError says which field is wrong."""
    prompt, messages = _parse_prompt(raw)
    for name in ("chosen", "rejected"):
        if name not in raw:
            raise ValueError(f"missing '{name}'")
    margin = raw.get("margin")
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, int | float)):
        raise ValueError("'margin' must be a number")
    return PreferenceRecord(
        line=line, prompt=prompt, messages=messages,
        chosen=_completion(raw["chosen"], "'chosen'"),
        rejected=_completion(raw["rejected"], "'rejected'"),
        margin=None if margin is None else float(margin), metadata=_metadata(raw),
    )  # fmt: skip


def parse_prompt_record(raw: Any, line: int) -> PreferenceRecord:
    """A record used only for its prompt (online DPO): chosen/rejected may be absent."""
    prompt, messages = _parse_prompt(raw)
    return PreferenceRecord(line, prompt, messages, "", "", metadata=_metadata(raw))


def read_preference_records(
    path: str | Path, parse: Callable[[Any, int], PreferenceRecord] = parse_record
) -> list[PreferenceRecord]:
    """Every record of a JSONL file, validated by `parse` (pairs by default; pass
    `parse_prompt_record` for prompts only); DataError lists the bad lines."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"preference file not found: {path}", hint="pass a .jsonl file")
    records, errors = [], []
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                records.append(parse(json.loads(line), line_no))
            except json.JSONDecodeError as exc:
                errors.append(f"{path}:{line_no}: not valid JSON ({exc.msg})")
            except ValueError as exc:
                errors.append(f"{path}:{line_no}: {exc}")
    if errors:
        shown = "; ".join(errors[:MAX_ERRORS_SHOWN])
        more = f" (and {len(errors) - MAX_ERRORS_SHOWN} more)" if len(errors) > 5 else ""
        raise DataError(
            f"{len(errors)} invalid preference record(s): {shown}{more}",
            hint="each line needs prompt (or messages), chosen and rejected",
        )
    if not records:
        raise DataError(f"{path} has no preference records", hint="one JSON object per line")
    return records


def prompt_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """The rendered prompt: the conversation plus the assistant header the model continues."""
    return render_chat(messages, add_generation_prompt=True)


def completion_text(messages: Sequence[Mapping[str, Any]], content: str) -> str:
    """What the chat template appends after `prompt_text` for an assistant reply `content`."""
    head = prompt_text(messages)
    full = render_chat([*messages, {"role": "assistant", "content": content}])
    if not full.startswith(head):  # the template renders each turn independently
        raise DataError("the chat template is not prefix-consistent for this conversation")
    return full[len(head) :]


def tokenize_records(
    records: Sequence[PreferenceRecord],
    tokenizer: Tokenizer,
    *,
    max_length: int,
    over_length: Literal["drop", "truncate"] = "drop",
    report: PreferenceReport | None = None,
) -> tuple[list[PreferencePair], PreferenceReport]:
    """Tokenize prompt and completions separately (the prompt is the shared, masked prefix).

    A pair longer than `max_length` (prompt + longer completion) is dropped, or with
    "truncate" its completions are cut to fit (dropped when the prompt alone does not fit).
    Pairs whose completions are identical after rendering teach nothing and are dropped.
    """
    report = report or PreferenceReport(path="")
    pairs = []
    for rec in records:
        report.records += 1
        encode = lambda text: tokenizer.encode(text, add_special_tokens=False).ids  # noqa: E731
        p_ids = encode(prompt_text(rec.messages))
        c_ids = encode(completion_text(rec.messages, rec.chosen))
        r_ids = encode(completion_text(rec.messages, rec.rejected))
        if c_ids == r_ids:
            report.drop("identical_completions")
            continue
        if len(p_ids) + max(len(c_ids), len(r_ids)) > max_length:
            room = max_length - len(p_ids)
            if over_length == "drop" or room < 1:
                report.drop("over_length" if over_length == "drop" else "prompt_over_length")
                continue
            c_ids, r_ids = c_ids[:room], r_ids[:room]
            if c_ids == r_ids:
                report.drop("identical_after_truncation")
                continue
            report.truncated += 1
        pairs.append(PreferencePair(rec, p_ids, c_ids, r_ids))
        report.kept += 1
    return pairs, report


def load_preference_pairs(
    path: str | Path,
    tokenizer: Tokenizer,
    *,
    max_length: int,
    over_length: Literal["drop", "truncate"] = "drop",
) -> tuple[list[PreferencePair], PreferenceReport]:
    """Read, validate and tokenize a JSONL preference file; raise when nothing is left."""
    records = read_preference_records(path)
    pairs, report = tokenize_records(
        records, tokenizer, max_length=max_length, over_length=over_length,
        report=PreferenceReport(path=str(path)),
    )  # fmt: skip
    if not pairs:
        raise DataError(
            f"no usable preference pairs in {path} (dropped: {report.dropped})",
            hint="raise max_length or set over_length=truncate",
        )
    return pairs, report


def split_heldout(
    pairs: Sequence[PreferencePair], fraction: float
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """Deterministic (train, held-out) split. When every record says `metadata.split`
    ("train"/"heldout", as the ACME data does) that split is kept, so the held-out items of
    every stage are the same; otherwise by content hash, at least one pair each side when
    there are two or more pairs and fraction > 0."""
    if pairs and all(p.record.metadata.get("split") in ("train", "heldout") for p in pairs):
        train = [p for p in pairs if p.record.metadata["split"] == "train"]
        if not train:
            raise DataError(
                "every pair is marked metadata.split=heldout: nothing to train on",
                hint="mark training pairs with split 'train' (or drop the split field)",
            )
        return train, [p for p in pairs if p.record.metadata["split"] == "heldout"]
    if fraction <= 0 or len(pairs) < 2:
        return list(pairs), []
    ranked = sorted(pairs, key=lambda p: hashlib.sha256(f"heldout:{p.key}".encode()).hexdigest())
    n = min(max(1, round(fraction * len(pairs))), len(pairs) - 1)
    held = {id(p) for p in ranked[:n]}
    return [p for p in pairs if id(p) not in held], [p for p in pairs if id(p) in held]


def end_of_turn_ids(tokenizer: Tokenizer) -> list[int]:
    """The ids the template puts after an assistant reply (`<|end|>` and a newline)."""
    return tokenizer.encode(f"{END}\n", add_special_tokens=False).ids


def collate_sequences(
    prompts: Sequence[list[int]], completions: Sequence[list[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded input_ids [N, T] of prompt + completion and a loss mask [N, T] that is 1
    on completion tokens only (prompt and padding are masked out)."""
    lengths = [len(p) + len(c) for p, c in zip(prompts, completions, strict=True)]
    ids = torch.full((len(lengths), max(lengths)), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        ids[row, : len(p) + len(c)] = torch.tensor(p + c, dtype=torch.long)
        mask[row, len(p) : len(p) + len(c)] = 1
    return ids, mask


def collate_pairs(
    pairs: Sequence[PreferencePair], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """[chosen rows; rejected rows] for a batch of pairs (see `collate_sequences`)."""
    prompts = [p.prompt_ids for p in pairs] * 2
    completions = [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs]
    return collate_sequences(prompts, completions, pad_id)


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> list[int]:
    """The pair indices of optimizer step `step`: epochs of seeded permutations walked in
    order, so the data position is a pure function of the step (exact resume, no state)."""
    out = []
    for pos in range(step * batch_size, (step + 1) * batch_size):
        epoch, i = divmod(pos, n)
        out.append(_epoch_order(n, seed, epoch)[i])
    return out


@functools.lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    generator = torch.Generator().manual_seed(derive_seed(seed, "preference.epoch", epoch))
    return tuple(torch.randperm(n, generator=generator).tolist())
