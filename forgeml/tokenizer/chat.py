"""Special tokens and the chat template shared by training and serving.

`CHAT_TEMPLATE` (Jinja, run by `transformers`' `apply_chat_template`) is the single source of
truth for the conversation format; `render_chat` is the same format in plain Python, tested equal.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from forgeml.core.errors import DataError

BOS = "<|bos|>"
EOS = "<|eos|>"
PAD = "<|pad|>"
SYSTEM = "<|system|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
TOOL = "<|tool|>"
END = "<|end|>"
FIM_PREFIX = "<|fim_prefix|>"
FIM_MIDDLE = "<|fim_middle|>"
FIM_SUFFIX = "<|fim_suffix|>"

# Role -> token. The order is the id order in every forgeml tokenizer (ids 0..10), so a model's
# special ids never depend on the corpus.
SPECIAL_TOKENS: dict[str, str] = {
    "bos": BOS,
    "eos": EOS,
    "pad": PAD,
    "system": SYSTEM,
    "user": USER,
    "assistant": ASSISTANT,
    "tool": TOOL,
    "end": END,
    "fim_prefix": FIM_PREFIX,
    "fim_middle": FIM_MIDDLE,
    "fim_suffix": FIM_SUFFIX,
}

# Text put after the system prompt when tools are offered. Tool calls are plain text lines
# `<tool_call>{"name": ..., "arguments": ...}</tool_call>` (the Hermes/Qwen convention), so a
# server parses them with one regex and the tokenizer needs no extra special token.
TOOLS_PREAMBLE = (
    "# Tools\n\n"
    "You may call the functions below. For each call, write one line:\n"
    '<tool_call>{"name": <function name>, "arguments": <JSON object>}</tool_call>\n\n'
    "<tools>"
)
TOOLS_END = "</tools>"

# The format, for one turn of each role (every turn ends with `<|end|>` and a newline):
#
#   <|system|>\n{system prompt}\n\n{tools block, only when tools are given}<|end|>\n
#   <|user|>\n{text}<|end|>\n
#   <|assistant|>\n{text}\n<tool_call>{...}</tool_call><|end|>\n
#   <|tool|>\n{result}<|end|>\n
#
# and `<|assistant|>\n` when `add_generation_prompt` is set; generation stops at `<|end|>`.
# No BOS is emitted: pre-training documents are separated by EOS only (see pack.py).
# Content may be a string, None, or a list of OpenAI content parts (only "text" parts are kept).
# The tools block is the preamble, one JSON object per tool, and `</tools>`. When tools are given
# and the first message is not a system message, a system turn holding only the tools is added.
CHAT_TEMPLATE = (
    """\
{#- forgeml chat template; the same format as forgeml.tokenizer.chat.render_chat. -#}
{%- macro text_of(content) -%}
    {%- if content is string -%}
        {{- content -}}
    {%- elif content is iterable and content is not mapping -%}
        {%- for part in content -%}
            {%- if part.type == 'text' -%}{{- part.text -}}{%- endif -%}
        {%- endfor -%}
    {%- endif -%}
{%- endmacro -%}
{%- macro tools_block() -%}
    {{- '"""
    + TOOLS_PREAMBLE.replace("\n", "\\n")
    + """' -}}
    {%- for tool in tools -%}{{- '\\n' ~ (tool | tojson) -}}{%- endfor -%}
    {{- '\\n"""
    + TOOLS_END
    + """' -}}
{%- endmacro -%}
{%- if tools and not (messages and messages[0].role == 'system') -%}
    {{- '<|system|>\\n' ~ tools_block() ~ '<|end|>\\n' -}}
{%- endif -%}
{%- for message in messages -%}
    {%- set text = text_of(message.content) if message.content is defined else '' -%}
    {%- if message.role == 'system' -%}
        {{- '<|system|>\\n' ~ text -}}
        {%- if loop.first and tools -%}
            {{- ('\\n\\n' if text else '') ~ tools_block() -}}
        {%- endif -%}
    {%- elif message.role == 'user' -%}
        {{- '<|user|>\\n' ~ text -}}
    {%- elif message.role == 'assistant' -%}
        {{- '<|assistant|>\\n' ~ text -}}
        {%- if message.tool_calls is defined and message.tool_calls -%}
            {%- for call in message.tool_calls -%}
                {%- set fn = call.function if call.function is defined else call -%}
                {%- set args = fn.arguments if fn.arguments is defined else {} -%}
                {%- if text or not loop.first -%}{{- '\\n' -}}{%- endif -%}
                {{- '<tool_call>{"name": ' ~ (fn.name | tojson) ~ ', "arguments": ' -}}
                {{- (args if args is string else (args | tojson)) ~ '}</tool_call>' -}}
            {%- endfor -%}
        {%- endif -%}
    {%- elif message.role == 'tool' -%}
        {{- '<|tool|>\\n' ~ text -}}
    {%- else -%}
        {{- raise_exception('unknown chat role ' ~ (message.role | tojson)) -}}
    {%- endif -%}
    {{- '<|end|>\\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|assistant|>\\n' -}}
{%- endif -%}
"""
)


def _text_of(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Mapping):
        return ""
    return "".join(str(part.get("text", "")) for part in content if part.get("type") == "text")


def _tools_block(tools: Sequence[Mapping[str, Any]]) -> str:
    lines = [TOOLS_PREAMBLE] + [json.dumps(tool, ensure_ascii=False) for tool in tools]
    return "\n".join(lines) + "\n" + TOOLS_END


def _tool_call_line(call: Any, where: str) -> str:
    fn = call.get("function", call) if isinstance(call, Mapping) else None
    if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise DataError(
            f"{where}: a tool call needs a function name",
            'give {"type": "function", "function": {"name": ..., "arguments": ...}}',
        )
    args = fn.get("arguments", {})
    # OpenAI sends `arguments` as a JSON string; it is emitted verbatim, a mapping is serialised.
    args_json = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
    name_json = json.dumps(fn["name"], ensure_ascii=False)
    return f'<tool_call>{{"name": {name_json}, "arguments": {args_json}}}</tool_call>'


def neutralise_special_tokens(text: str) -> str:
    """Break special-token strings typed inside message text (a zero-width space after `<|`),
    so a user cannot inject `<|end|>`/`<|assistant|>` turns: only the template's own markers
    become special ids. The text reads the same; its tokens are ordinary bytes."""
    if "<|" not in text:
        return text
    for token in SPECIAL_TOKENS.values():
        text = text.replace(token, token[:2] + "\u200b" + token[2:])
    return text


def render_chat(
    messages: Sequence[Mapping[str, Any]],
    add_generation_prompt: bool = False,
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    """Render OpenAI-format `messages` as `CHAT_TEMPLATE` does, without Jinja; special-token
    strings inside message text are neutralised (`neutralise_special_tokens`)."""
    out: list[str] = []
    if tools and not (messages and messages[0].get("role") == "system"):
        out.append(f"{SYSTEM}\n{neutralise_special_tokens(_tools_block(tools))}{END}\n")
    for i, message in enumerate(messages):
        role = message.get("role")
        text = _text_of(message.get("content"))
        if role == "system":
            body = text
            if i == 0 and tools:
                body += ("\n\n" if text else "") + _tools_block(tools)
        elif role == "user" or role == "tool":
            body = text
        elif role == "assistant":
            lines = [text] if text else []
            lines += [
                _tool_call_line(call, f"messages[{i}].tool_calls[{j}]")
                for j, call in enumerate(message.get("tool_calls") or [])
            ]
            body = "\n".join(lines)
        else:
            raise DataError(
                f"unknown chat role {json.dumps(role)} in message {i}",
                "use one of system, user, assistant, tool",
            )
        out.append(f"{SPECIAL_TOKENS[role]}\n{neutralise_special_tokens(body)}{END}\n")
    if add_generation_prompt:
        out.append(f"{ASSISTANT}\n")
    return "".join(out)
