"""Held-out answer match of a chat model: what SFT should raise.

Every chat record whose `metadata.answer` is set (OpenAI `messages`, tools allowed; short
answers, not long generations) is rendered through the chat template up to its last assistant
turn, the model replies greedily, and the reply is compared with that reference turn: exact
(whitespace-trimmed) and normalised (case and runs of whitespace ignored), and whether the
answer itself appears in the reply. Tool-use records keep their tool calls and results in the prompt, so they
measure whether the model answers from what the tool returned.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from torch import nn

from forgeml.core.errors import DataError, ForgeError, NotFoundError
from forgeml.core.io import iter_jsonl
from forgeml.tokenizer.chat import END, EOS, render_chat


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def load_answer_records(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Records of a chat JSONL file that end in an assistant turn with a `metadata.answer`."""
    if not Path(path).is_file():
        raise NotFoundError(f"chat data not found: {path}", hint="pass a chat .jsonl file")
    out = []
    for n, record, error in iter_jsonl(Path(path)):
        if error is not None:
            raise DataError(f"{path}:{n}: {error}")
        if not isinstance(record, dict):
            continue
        messages = record.get("messages") or []
        answer = (record.get("metadata") or {}).get("answer")
        if answer is None or not messages or messages[-1].get("role") != "assistant":
            continue
        out.append(record)
    if not out:
        raise DataError(
            f"{path} has no records with metadata.answer and a final assistant turn",
            hint="the ACME SFT data has them: python examples/acme/make_data.py sft --out DIR",
        )
    return out[:limit]


def evaluate_chat_answers(
    model: nn.Module, tokenizer: Any, records: list[dict[str, Any]], *,
    max_new_tokens: int = 48, device: str = "cpu",
) -> dict[str, Any]:  # fmt: skip
    """Greedy replies to each record's conversation (its last assistant turn removed), scored
    against `metadata.answer`; overall and per `metadata.task` numbers plus the examples."""
    from forgeml.models.sampling import greedy_replies

    if tokenizer.token_to_id(END) is None and tokenizer.token_to_id(EOS) is None:
        raise ForgeError("the tokenizer has no end-of-turn token", hint="use a forgeml tokenizer")
    prompts = [
        render_chat(rec["messages"][:-1], add_generation_prompt=True, tools=rec.get("tools"))
        for rec in records
    ]
    replies = greedy_replies(
        model, tokenizer, prompts, max_new_tokens=max_new_tokens, device=device
    )
    examples = []
    for rec, generated in zip(records, replies, strict=True):
        reply = generated or ""  # a prompt that does not fit the context counts as a miss
        answer = str(rec["metadata"]["answer"])
        target = str(rec["messages"][-1].get("content") or "")
        examples.append({
            "id": rec.get("id"), "task": rec["metadata"].get("task", "chat"), "target": target,
            "answer": answer, "reply": reply, "exact": reply.strip() == target.strip(),
            "normalised": _normalise(reply) == _normalise(target),
            "answer_found": _normalise(answer) in _normalise(reply), "fits": generated is not None,
        })  # fmt: skip
    by_task: dict[str, dict[str, float]] = {}
    for task in sorted({e["task"] for e in examples}):
        rows = [e for e in examples if e["task"] == task]
        by_task[task] = {"n": len(rows), "exact_match": sum(e["exact"] for e in rows) / len(rows)}
    n = len(examples)
    return {
        "n": n,
        "exact_match": sum(e["exact"] for e in examples) / n if n else 0.0,
        "normalised_match": sum(e["normalised"] for e in examples) / n if n else 0.0,
        "answer_found": sum(e["answer_found"] for e in examples) / n if n else 0.0,
        "by_task": by_task,
        "examples": examples,
    }
