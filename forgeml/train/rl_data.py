"""Prompts for RL (forgeml.train.rl): a JSONL of `{prompt | messages, ...metadata}` records,
and the seeded order in which the GRPO loop visits them (a pure function of the step).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from forgeml.core.errors import DataError, NotFoundError
from forgeml.core.seeds import derive_seed
from forgeml.tokenizer.chat import render_chat


@dataclass(frozen=True)
class RLPrompt:
    text: str  # what the model continues (chat-rendered when the record has messages)
    metadata: dict[str, Any]  # every other field of the record, passed to reward plugins


def load_prompts(path: Path, prompt_format: str = "raw") -> list[RLPrompt]:
    """Records `{"prompt": str, ...}` or `{"messages": [...], ...}` from a JSONL file."""
    if not Path(path).is_file():
        raise NotFoundError(f"prompts file not found: {path}", hint="pass a JSONL file")
    prompts = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict) or not ("prompt" in record or "messages" in record):
            raise DataError(
                f"{path}:{n}: a record needs a 'prompt' string or 'messages' list",
                hint='write e.g. {"prompt": "Translate ...", "tests": [...]}',
            )
        # Chat prompts keep their conversation in the metadata: a reward model scores the
        # reply in the same template it was trained on.
        meta = {k: v for k, v in record.items() if k != "prompt"}
        if "messages" not in record and prompt_format == "chat":
            meta["messages"] = [{"role": "user", "content": record["prompt"]}]
        if "messages" in meta:
            text = render_chat(meta["messages"], add_generation_prompt=True)
        else:
            text = record["prompt"]
        if not isinstance(text, str) or not text:
            raise DataError(f"{path}:{n}: the prompt is empty", hint="give every record a prompt")
        prompts.append(RLPrompt(text, meta))
    if not prompts:
        raise DataError(f"{path} has no prompts", hint="one JSON record per line")
    return prompts


def prompts_for_step(n_prompts: int, step: int, per_step: int, seed: int) -> list[int]:
    """Indices of step `step`'s prompts: a seeded shuffle per epoch, read in order. A pure
    function of the step, so a resumed run sees exactly the prompts it would have seen."""
    out = []
    for pos in range(step * per_step, (step + 1) * per_step):
        epoch, i = divmod(pos, n_prompts)
        gen = torch.Generator().manual_seed(derive_seed(seed, "rl.prompt_epoch", epoch))
        out.append(int(torch.randperm(n_prompts, generator=gen)[i]))
    return out
