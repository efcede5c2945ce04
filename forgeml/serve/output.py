"""Policy applied to the texts of a serving request and of its answer: the chat messages
sent to an upstream (input rules on every text part), the streaming output filter (output
rules, holding back a tail so a redaction lands whole), and tool calls parsed from the output.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import replace
from typing import Any

from forgeml.governance.policy import EffectiveRules, Policy, PolicyDecision, PolicyViolation

# Characters of filtered output held back while streaming, so a redaction pattern that is still
# being generated is never sent half-way.
OUTPUT_HOLDBACK = 64
TOOL_CALL_RE = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


def parse_tool_calls(text: str) -> tuple[str | None, list[dict[str, Any]], list[dict[str, str]]]:
    """Split `<tool_call>{json}</tool_call>` blocks out of model output.

    Returns (content left, OpenAI `tool_calls`, errors); a block that is not a JSON object with
    a string `name` stays in the content and is reported in errors.
    """
    calls, errors = [], []

    def take(match: re.Match) -> str:
        raw = match.group(1).strip()
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            errors.append({"text": raw, "error": f"invalid JSON: {exc.msg}"})
            return match.group(0)
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            errors.append({"text": raw, "error": "a tool call needs a string 'name'"})
            return match.group(0)
        args = obj.get("arguments", {})
        calls.append(
            {
                "id": f"call_{secrets.token_hex(12)}",
                "type": "function",
                "function": {
                    "name": obj["name"],
                    "arguments": args if isinstance(args, str) else json.dumps(args),
                },
            }
        )
        return ""

    content = TOOL_CALL_RE.sub(take, text).strip()
    return (content or None) if calls else text, calls, errors


def governed_messages(
    policy: Policy, rules: EffectiveRules, messages: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], str, list[PolicyDecision]]:
    """Chat messages with the input rules applied to every text in them (upstream mode, where
    the gateway never renders a prompt), their joined text after the rules, and the decisions
    that fired.

    `max_prompt_chars` counts all texts together; redactions are summed per rule.
    """

    def texts_of(content: Any) -> list[str]:
        if isinstance(content, str):
            return [content]
        if isinstance(content, list):
            return [p["text"] for p in content if isinstance(p, dict) and _is_text(p)]
        return []

    joined = "\n".join(t for m in messages for t in texts_of(m.get("content")))
    if rules.max_prompt_chars is not None and len(joined) > rules.max_prompt_chars:
        raise PolicyViolation(
            PolicyDecision("input.max_prompt_chars", "blocked"),
            f"the prompt is longer than the {rules.max_prompt_chars} characters allowed",
        )
    per_text = replace(rules, max_prompt_chars=None)
    counts: dict[tuple[str, str], int] = {}

    def govern(text: str) -> str:
        text, fired = policy.apply_input(per_text, text)
        for d in fired:
            counts[d.rule, d.action] = counts.get((d.rule, d.action), 0) + d.count
        return text

    governed = []
    for message in messages:
        message = dict(message)
        content = message.get("content")
        if isinstance(content, str):
            message["content"] = govern(content)
        elif isinstance(content, list):
            message["content"] = [
                {**p, "text": govern(p["text"])} if isinstance(p, dict) and _is_text(p) else p
                for p in content
            ]
        governed.append(message)
    joined = "\n".join(t for m in governed for t in texts_of(m.get("content")))
    return governed, joined, [PolicyDecision(r, a, n) for (r, a), n in counts.items()]


def _is_text(part: dict[str, Any]) -> bool:
    return isinstance(part.get("text"), str)


class OutputFilter:
    """Applies output rules to streamed text: holds back a tail so redactions land whole."""

    def __init__(self, policy: Policy, rules: EffectiveRules | None) -> None:
        self.policy, self.rules = policy, rules
        self.raw, self.sent = "", 0
        self.decisions: list[PolicyDecision] = []
        self.blocked = False

    def feed(self, delta: str, final: bool = False) -> str:
        self.raw += delta
        if self.rules is None:
            return delta
        text, decisions, blocked = self.policy.apply_output(self.rules, self.raw)
        if blocked or final:
            self.blocked, self.decisions = blocked, decisions
            out = text[self.sent :]
            self.sent = len(text)
            return out
        safe = len(text) - OUTPUT_HOLDBACK
        if safe <= self.sent:
            return ""
        out = text[self.sent : safe]
        self.sent = safe
        return out
