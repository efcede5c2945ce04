"""Chat fine-tuning data: OpenAI-format JSONL conversations (with tools) and prompt/completion
pairs, validated, rendered through the tokenizer's chat template (`render_chat`), tokenized with
labels on assistant turns only, and packed into fixed-length rows with document boundaries.

Every record is accounted for in a `ChatDataReport`: kept, truncated, dropped (with the
reason) or failed (with file, line and field). `SFTBatches` serves the rows in a seeded,
resumable order, like `PretrainBatches` does for token shards.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from forgeml.core.errors import ConfigError, DataError
from forgeml.core.io import iter_jsonl
from forgeml.core.seeds import derive_seed
from forgeml.models.dense import IGNORE_INDEX
from forgeml.tokenizer.chat import ASSISTANT, END, PAD, render_chat

ROLES = ("system", "user", "assistant", "tool")
MESSAGE_KEYS = {"role", "content", "name", "tool_calls", "tool_call_id", "refusal"}
RECORD_KEYS = {"messages", "tools", "prompt", "completion", "id", "metadata"}
PAD_DOC = -1  # doc id of padding positions: they form their own block and carry no label
PACK_WINDOW = 64  # open rows searched when packing an example

Overlength = Literal["truncate", "drop"]


@dataclass
class ChatExample:
    """One tokenized conversation: `labels[i]` is `input_ids[i]` on assistant text (and its
    `<|end|>`), IGNORE_INDEX elsewhere."""

    input_ids: list[int]
    labels: list[int]
    where: str  # file:line, for reports

    @property
    def n_label_tokens(self) -> int:
        return sum(1 for t in self.labels[1:] if t != IGNORE_INDEX)


@dataclass
class RecordReport:
    """What happened to the records of one training file: how many were kept, truncated to
    fit, or dropped (counted by reason). The chat and preference readers extend it."""

    path: str
    kept: int = 0
    truncated: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1


@dataclass
class ChatDataReport(RecordReport):
    """Every record of one chat file: kept + truncated + dropped + failed = total."""

    total: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)
    tokens: int = 0
    label_tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path, "total": self.total, "kept": self.kept,
            "truncated": self.truncated, "dropped": dict(self.dropped),
            "n_dropped": sum(self.dropped.values()), "n_failed": len(self.failed),
            "failed": self.failed[:100], "tokens": self.tokens, "label_tokens": self.label_tokens,
        }  # fmt: skip


def _fail(where: str, field_path: str, problem: str, hint: str = "") -> DataError:
    return DataError(f"{where}: {field_path}: {problem}", hint=hint)


def _text(content: Any, where: str, path: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, Mapping) or "type" not in part:
                raise _fail(where, f"{path}[{j}]", "content part must be an object with 'type'")
            if part["type"] == "text":
                if not isinstance(part.get("text"), str):
                    raise _fail(where, f"{path}[{j}].text", "text part without a string 'text'")
                parts.append(part["text"])
        return "".join(parts)
    raise _fail(
        where,
        path,
        f"content must be a string, a list of parts or null, not {type(content).__name__}",
    )


def _check_tools(tools: Any, where: str) -> set[str]:
    if not isinstance(tools, list):
        raise _fail(where, "tools", "must be a list of {type: function, function: {...}}")
    names = set()
    for j, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, Mapping) else None
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise _fail(where, f"tools[{j}]", "needs function.name", "OpenAI tools format")
        names.add(fn["name"])
    return names


def _check_tool_calls(calls: Any, where: str, path: str, tool_names: set[str] | None) -> None:
    if not isinstance(calls, list) or not calls:
        raise _fail(where, path, "must be a non-empty list of tool calls")
    for j, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, Mapping) else None
        here = f"{path}[{j}].function"
        if not isinstance(fn, Mapping):
            raise _fail(where, here, "missing", 'write {"type": "function", "function": {...}}')
        if not isinstance(fn.get("name"), str) or not fn["name"]:
            raise _fail(where, f"{here}.name", "missing or empty")
        if tool_names is not None and fn["name"] not in tool_names:
            raise _fail(where, f"{here}.name", f"'{fn['name']}' is not one of the record's tools")
        args = fn.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError as exc:
                raise _fail(where, f"{here}.arguments", f"not valid JSON ({exc.msg})") from None
        if not isinstance(args, Mapping):
            raise _fail(where, f"{here}.arguments", "must be a JSON object")


def validate_messages(
    messages: Any, where: str, tools: Any = None, path: str = "messages"
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """Check one conversation; raise DataError naming the record and field on the first problem."""
    tool_names = _check_tools(tools, where) if tools is not None else None
    if not isinstance(messages, list) or not messages:
        raise _fail(where, path, "must be a non-empty list of messages")
    previous = None
    for i, msg in enumerate(messages):
        here = f"{path}[{i}]"
        if not isinstance(msg, Mapping):
            raise _fail(where, here, "must be an object with 'role' and 'content'")
        role = msg.get("role")
        if role is None:
            raise _fail(where, f"{here}.role", "missing", f"one of {', '.join(ROLES)}")
        if role not in ROLES:
            raise _fail(
                where, f"{here}.role", f"unknown role {role!r}", f"one of {', '.join(ROLES)}"
            )
        unknown = set(msg) - MESSAGE_KEYS
        if unknown:
            raise _fail(where, here, f"unknown field(s) {', '.join(sorted(unknown))}")
        text = _text(msg.get("content"), where, f"{here}.content")
        if role == "assistant" and msg.get("tool_calls") is not None:
            _check_tool_calls(msg["tool_calls"], where, f"{here}.tool_calls", tool_names)
        elif msg.get("tool_calls") is not None:
            raise _fail(
                where, f"{here}.tool_calls", f"only assistant messages make tool calls, not {role}"
            )
        elif not text.strip():
            raise _fail(where, f"{here}.content", f"empty {role} message")
        if role == "tool" and previous not in ("assistant-calls", "tool"):
            raise _fail(
                where, here, "a tool result must follow an assistant message with tool_calls"
            )
        previous = "assistant-calls" if role == "assistant" and msg.get("tool_calls") else role
    if not any(m["role"] == "assistant" for m in messages):
        raise _fail(where, path, "no assistant message: nothing to learn from")
    return [dict(m) for m in messages], tools


def record_messages(record: Any, where: str) -> tuple[list[dict[str, Any]], list | None]:
    """A JSONL record -> (messages, tools): `{"messages": [...], "tools": [...]}` or a
    prompt/completion pair (strings, or message lists in TRL's conversational form)."""
    if not isinstance(record, Mapping):
        raise _fail(where, "record", "must be a JSON object")
    unknown = set(record) - RECORD_KEYS
    if unknown:
        raise _fail(where, "record", f"unknown field(s) {', '.join(sorted(unknown))}",
                    "expected 'messages' (and 'tools') or 'prompt' and 'completion'")  # fmt: skip
    tools = record.get("tools")
    if "messages" in record:
        if "prompt" in record or "completion" in record:
            raise _fail(where, "record", "has both 'messages' and 'prompt'/'completion'")
        return validate_messages(record["messages"], where, tools)
    if "prompt" not in record or "completion" not in record:
        missing = "prompt" if "prompt" not in record else "completion"
        raise _fail(
            where, missing, "missing", "a record needs 'messages', or 'prompt' and 'completion'"
        )
    prompt, completion = record["prompt"], record["completion"]
    for name, value in (("prompt", prompt), ("completion", completion)):
        if isinstance(value, str) and not value.strip():
            raise _fail(where, name, "empty")
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    if isinstance(completion, str):
        completion = [{"role": "assistant", "content": completion}]
    if not isinstance(prompt, list) or not isinstance(completion, list):
        raise _fail(where, "prompt", "prompt and completion must be strings or message lists")
    if any(isinstance(m, Mapping) and m.get("role") == "assistant" for m in prompt):
        raise _fail(
            where, "prompt", "assistant turns in the prompt are not trained on; use 'messages'"
        )
    messages, tools = validate_messages(prompt + completion, where, tools)
    return messages, tools


def tokenize_conversation(
    tokenizer: Any, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping] | None = None
) -> tuple[list[int], list[int]]:
    """Render `messages` with `render_chat` and tokenize; labels are the token ids of each
    assistant turn's text and its `<|end|>`, IGNORE_INDEX elsewhere.

    The text is tokenized in segments cut right after `<|assistant|>\\n` and right after each
    assistant `<|end|>`, so the completion tokens are exactly what the model generates after
    the serving prompt (which ends in `<|assistant|>\\n`).
    """
    full = render_chat(messages, tools=tools)
    cuts: list[tuple[int, bool]] = []  # (end offset of a segment, segment is trained)
    head = len(ASSISTANT) + 1
    for i, msg in enumerate(messages):
        if msg.get("role") != "assistant":
            continue
        start = len(render_chat(messages[:i], tools=tools))
        end = len(render_chat(messages[: i + 1], tools=tools)) - 1  # drop the trailing newline
        if not full[start:end].endswith(END):
            raise AssertionError("chat template turn boundaries changed")  # a code bug, not data
        cuts += [(start + head, False), (end, True)]
    segments, begin = [], 0
    for end, trained in [*cuts, (len(full), False)]:
        if end > begin:
            segments.append((full[begin:end], trained))
        begin = end
    encoded = tokenizer.encode_batch([s for s, _ in segments], add_special_tokens=False)
    ids: list[int] = []
    labels: list[int] = []
    for (_, trained), enc in zip(segments, encoded, strict=True):
        ids += enc.ids
        labels += enc.ids if trained else [IGNORE_INDEX] * len(enc.ids)
    return ids, labels


def load_chat_examples(
    path: str | Path,
    tokenizer: Any,
    *,
    max_tokens: int,
    overlength: Overlength = "truncate",
    on_invalid: Literal["error", "skip"] = "error",
) -> tuple[list[ChatExample], ChatDataReport]:
    """Read, validate and tokenize a chat JSONL file.

    `max_tokens` is the longest example kept (seq_len + 1: inputs and shifted targets).
    Longer ones are cut to it (`truncate`; dropped if no assistant token is left) or dropped
    (`drop`). Invalid records raise the first DataError (`on_invalid="error"`) or are
    counted as failed (`skip`).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"chat data not found: {path}", hint="pass a .jsonl file of conversations")
    if overlength not in ("truncate", "drop"):
        raise ConfigError(f"unknown over-length policy {overlength!r}", hint="truncate or drop")
    report = ChatDataReport(str(path))
    examples: list[ChatExample] = []
    for number, record, json_error in iter_jsonl(path):
        where = f"{path.name}:{number}"
        report.total += 1
        try:
            if json_error is not None:
                raise DataError(f"{where}: {json_error}", hint="one JSON object per line")
            messages, tools = record_messages(record, where)
        except DataError as exc:
            if on_invalid == "error":
                raise
            report.failed.append({"line": number, "error": exc.message})
            continue
        ids, labels = tokenize_conversation(tokenizer, messages, tools)
        example = ChatExample(ids, labels, where)
        if len(ids) > max_tokens:
            if overlength == "drop":
                report.drop(f"longer than {max_tokens} tokens")
                continue
            example = ChatExample(ids[:max_tokens], labels[:max_tokens], where)
            if example.n_label_tokens == 0:
                report.drop(f"no assistant token within the first {max_tokens} tokens")
                continue
            report.truncated += 1
        else:
            report.kept += 1
        report.tokens += len(example.input_ids)
        report.label_tokens += example.n_label_tokens
        examples.append(example)
    if not examples:
        raise DataError(
            f"{path}: no usable conversations ({report.total} records)",
            hint=f"see the report: {json.dumps(report.to_dict())[:400]}",
        )
    return examples, report


@dataclass
class PackedRows:
    """Training rows [N, seq_len]: inputs, shifted targets, and the document of each position."""

    inputs: np.ndarray
    targets: np.ndarray
    doc_ids: np.ndarray

    def __len__(self) -> int:
        return self.inputs.shape[0]


def pack_examples(
    examples: Sequence[ChatExample], seq_len: int, pad_id: int, *, packing: bool = True
) -> PackedRows:
    """Lay examples into rows of `seq_len` positions (each example shifted on its own, so no
    target crosses an example). `packing`: first fit of examples, in data order, into the
    `PACK_WINDOW` most recently opened rows (linear time; older rows are nearly full anyway);
    else one example per row. Padding has target IGNORE_INDEX and doc id PAD_DOC."""
    rows: list[list[int]] = []  # example indices per row
    room: list[int] = []
    for i, ex in enumerate(examples):
        n = len(ex.input_ids) - 1
        if n > seq_len:
            raise DataError(f"{ex.where}: {n + 1} tokens do not fit seq_len {seq_len}")
        if packing:
            first = max(0, len(room) - PACK_WINDOW)
            slot = next((r for r in range(first, len(room)) if room[r] >= n), None)
            if slot is not None:
                rows[slot].append(i)
                room[slot] -= n
                continue
        rows.append([i])
        room.append(seq_len - n)
    inputs = np.full((len(rows), seq_len), pad_id, dtype=np.int64)
    targets = np.full((len(rows), seq_len), IGNORE_INDEX, dtype=np.int64)
    doc_ids = np.full((len(rows), seq_len), PAD_DOC, dtype=np.int64)
    for r, members in enumerate(rows):
        at = 0
        for doc, i in enumerate(members):
            ids, labels = examples[i].input_ids, examples[i].labels
            n = len(ids) - 1
            inputs[r, at : at + n] = ids[:-1]
            targets[r, at : at + n] = labels[1:]
            doc_ids[r, at : at + n] = doc
            at += n
    return PackedRows(inputs, targets, doc_ids)


Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def rows_to_batch(rows: PackedRows, index: Sequence[int] | np.ndarray) -> Batch:
    """(inputs, targets, doc_ids) tensors for the given rows, trailing all-padding columns cut."""
    idx = np.asarray(index)
    docs = rows.doc_ids[idx]
    used = np.nonzero((docs != PAD_DOC).any(axis=0))[0]
    width = int(used[-1]) + 1 if used.size else 1
    return (
        torch.from_numpy(rows.inputs[idx, :width]),
        torch.from_numpy(rows.targets[idx, :width]),
        torch.from_numpy(docs[:, :width]),
    )


class SFTBatches:
    """Global batches of rows; rank r takes the r-th contiguous slice of each. Epoch e visits
    every row once in the permutation seeded by seed+e; the position is counted in global
    rows, so a run resumes exactly (also on another number of processes)."""

    def __init__(
        self, rows: PackedRows, *, global_batch_size: int, seed: int, rank: int = 0,
        world_size: int = 1,
    ) -> None:  # fmt: skip
        if global_batch_size % world_size:
            raise ConfigError(
                f"global batch of {global_batch_size} rows does not split over {world_size} processes"
            )
        self.rows, self.seed, self.rank, self.world_size = rows, seed, rank, world_size
        self.global_batch_size = global_batch_size
        self.consumed = 0
        self._perms: dict[int, np.ndarray] = {}

    def _order(self, first: int, count: int) -> np.ndarray:
        n = len(self.rows)
        out = []
        for g in range(first, first + count):
            epoch, i = divmod(g, n)
            if epoch not in self._perms:
                rng = np.random.default_rng(derive_seed(self.seed, "sft.epoch", epoch))
                self._perms = {epoch: rng.permutation(n)}
            out.append(self._perms[epoch][i])
        return np.asarray(out)

    def next_micro_batches(self, micro_batch_size: int, grad_accum: int) -> list[Batch]:
        """This rank's share of the next global batch, as `grad_accum` micro-batches."""
        per_rank = self.global_batch_size // self.world_size
        if micro_batch_size * grad_accum != per_rank:
            raise ConfigError(
                f"micro_batch_size {micro_batch_size} x grad_accum {grad_accum} != {per_rank} rows per process"
            )
        order = self._order(self.consumed + self.rank * per_rank, per_rank)
        self.consumed += self.global_batch_size
        return [
            rows_to_batch(self.rows, order[i : i + micro_batch_size])
            for i in range(0, per_rank, micro_batch_size)
        ]

    def state_dict(self) -> dict[str, Any]:
        return {"consumed": self.consumed, "seed": self.seed, "n_rows": len(self.rows),
                "global_batch_size": self.global_batch_size}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["n_rows"] != len(self.rows) or state["seed"] != self.seed:
            raise DataError(
                f"checkpoint data position was for {state['n_rows']} rows and seed {state['seed']}, "
                f"this run has {len(self.rows)} rows and seed {self.seed}",
                hint="resume with the same data, seq_len, packing and seed",
            )
        self.consumed = int(state["consumed"])


def pad_token_id(tokenizer: Any) -> int:
    pad = tokenizer.token_to_id(PAD)
    if pad is None:
        raise DataError(f"the tokenizer has no {PAD} token", hint="use a forgeml tokenizer")
    return pad
