"""The OpenAI request bodies the serving API accepts (`/v1/chat/completions`, `/v1/completions`),
as pydantic models that FastAPI validates before any route runs.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from forgeml.serve.requests import MAX_MESSAGES, MAX_PROMPT_ITEMS


class _Body(BaseModel):
    # Unknown OpenAI fields (logprobs, user, ...) are accepted and ignored.
    model_config = ConfigDict(extra="allow")


class ChatMessage(_Body):
    role: Literal["system", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    name: str | None = None


class StreamOptions(_Body):
    include_usage: bool = False


class GenerationRequest(_Body):
    """What chat and completion requests share: the model and how to sample."""

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    # torch generators take seeds in [-2**63, 2**64).
    seed: int | None = Field(default=None, ge=-(2**63), le=2**64 - 1)
    n: int = Field(default=1, ge=1, le=1)
    stream: bool = False
    stream_options: StreamOptions | None = None


class ChatRequest(GenerationRequest):
    # Capped here, so a body of 100k messages is refused before they are all validated.
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None


class CompletionRequest(GenerationRequest):
    # Lists capped, so a body of millions of items is refused before they are all validated.
    prompt: (
        str
        | Annotated[list[str], Field(max_length=MAX_PROMPT_ITEMS)]
        | Annotated[list[int], Field(max_length=MAX_PROMPT_ITEMS)]
    ) = ""
