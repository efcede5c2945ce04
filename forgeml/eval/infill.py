"""Fill-in-the-middle generation and its eval on the ACME damaged documents.

`infill` asks a FIM-trained model for the text between a prefix and a suffix (PSM or SPM
prompt, arXiv:2207.14255); `evaluate_infill` restores every `[...]` gap of `damaged/*.txt` and
scores exact and whitespace-normalised matches against `damaged/answers.json`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from tokenizers import Tokenizer
from torch import nn

from forgeml.core.config import GenerateConfig
from forgeml.core.errors import DataError, ForgeError, NotFoundError
from forgeml.tokenizer.chat import BOS, END, EOS
from forgeml.tokenizer.fim import FimTokens
from forgeml.tokenizer.train import load_tokenizer

FILL = "<FILL>"
GAP = "[...]"  # the gap marker of the ACME corpus (examples/acme)
Infiller = Callable[[str, str], str]
FimOrder = Literal["psm", "spm"]


def parse_infill_prompt(text: str) -> tuple[str, str]:
    """Split `"prefix<FILL>suffix"` (the `generate --infill` argument) into prefix and suffix."""
    count = text.count(FILL)
    if count != 1:
        raise ForgeError(
            f"an infill prompt needs exactly one {FILL} marker, found {count}",
            hint=f'write e.g. --infill "def add(a, b):\\n    {FILL}\\n"',
        )
    prefix, suffix = text.split(FILL)
    return prefix, suffix


def _encode(tok: Tokenizer, text: str) -> list[int]:
    # User text is plain text: a "<|fim_middle|>" inside it must not become the sentinel.
    before = tok.encode_special_tokens
    tok.encode_special_tokens = True
    try:
        return tok.encode(text, add_special_tokens=False).ids if text else []
    finally:
        tok.encode_special_tokens = before


def fim_prompt_ids(
    tok: Tokenizer, prefix: str, suffix: str, budget: int, order: FimOrder = "psm"
) -> list[int]:
    """PSM `<PRE> prefix <SUF> suffix <MID>` or SPM `<PRE> <SUF> suffix <MID> prefix` in at
    most `budget` tokens: exactly how `forgeml.tokenizer.fim.fim_assemble` lays out training
    examples, so the middle the model writes next is what it learned to write there.

    When too long, the prefix keeps its end and the suffix its start (the context nearest the
    gap); each side gets half the room plus whatever the other side does not use.
    """
    fim = FimTokens.from_tokenizer(tok)
    room = budget - 3
    if room < 0:
        raise ForgeError(f"no room for an infill prompt in {budget} tokens")
    pre, suf = _encode(tok, prefix), _encode(tok, suffix)
    if len(pre) + len(suf) > room:
        keep_suf = min(len(suf), max(room // 2, room - len(pre)))
        keep_pre = room - keep_suf
        pre, suf = pre[len(pre) - keep_pre :], suf[:keep_suf]
    if order == "spm":
        return [fim.prefix, fim.suffix, *suf, fim.middle, *pre]
    return [fim.prefix, *pre, fim.suffix, *suf, fim.middle]


def _stop_ids(tok: Tokenizer) -> set[int]:
    fim = FimTokens.from_tokenizer(tok)
    named = {tok.token_to_id(t) for t in (EOS, END, BOS)}
    return {i for i in named if i is not None} | {fim.prefix, fim.middle, fim.suffix}


def infill(
    model: nn.Module,
    tokenizer: Tokenizer | str | Path,
    prefix: str,
    suffix: str,
    *,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    device: str = "cpu",
    order: FimOrder = "psm",
) -> str:
    """The text a FIM-trained model puts between `prefix` and `suffix` (greedy by default),
    prompted in the order it was trained with (`fim.spm_rate`: SPM when most examples were).

    Generation stops at EOS (the end of a middle in training), `<|end|>` or any FIM sentinel.
    """
    from forgeml.models.sampling import generate

    tok = tokenizer if isinstance(tokenizer, Tokenizer) else load_tokenizer(tokenizer)
    context = model.cfg.max_seq_len
    new_tokens = max(1, min(max_new_tokens, context // 2))
    ids = fim_prompt_ids(tok, prefix, suffix, context - new_tokens, order)
    out = generate(
        model, ids, max_new_tokens=new_tokens, temperature=temperature, top_k=top_k,
        top_p=top_p, stop_ids=_stop_ids(tok), seed=seed, device=device,
    )  # fmt: skip
    return tok.decode(out, skip_special_tokens=True)


def infill_text(
    model_dir: str | Path, prompt: str, cfg: GenerateConfig, order: FimOrder = "psm"
) -> str:
    """`forgeml generate MODEL --infill "a<FILL>b"`: load a model folder and fill the gap."""
    from forgeml.core.runtime import pick_device
    from forgeml.models.hf_io import load_model

    prefix, suffix = parse_infill_prompt(prompt)
    model_dir = Path(model_dir)
    if not (model_dir / "tokenizer.json").is_file():
        raise NotFoundError(f"model folder {model_dir} has no tokenizer.json")
    device = pick_device()
    model = load_model(model_dir, device=device).eval()
    text = infill(
        model, model_dir, prefix, suffix, max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, seed=cfg.seed,
        device=device, order=order,
    )  # fmt: skip
    for stop in cfg.stop:
        if stop and stop in text:
            text = text[: text.index(stop)]
    return text


@dataclass(frozen=True)
class InfillExample:
    """One gap: the document with every other gap restored, cut at this one."""

    file: str
    gap: int
    prefix: str
    suffix: str
    answer: str


def load_damaged(damaged_dir: str | Path) -> list[InfillExample]:
    """Every gap of `damaged_dir/*.txt`, keyed by `damaged_dir/answers.json`.

    The other gaps of a document are filled with their answers, so each example tests one
    gap with clean context on both sides and examples do not depend on each other.
    """
    damaged_dir = Path(damaged_dir)
    key_file = damaged_dir / "answers.json"
    if not key_file.is_file():
        raise NotFoundError(
            f"no answers.json in {damaged_dir}", hint="point at the damaged/ folder of the corpus"
        )
    key = json.loads(key_file.read_text())
    examples = []
    for rel in sorted(key):
        path = damaged_dir / Path(rel).name
        if not path.is_file():
            raise NotFoundError(f"{key_file} names {rel}, but {path} does not exist")
        answers = key[rel]["answers"]
        pieces = path.read_text(encoding="utf-8").split(GAP)
        if len(pieces) != len(answers) + 1:
            raise DataError(
                f"{path} has {len(pieces) - 1} gaps but {key_file} gives {len(answers)} answers",
                hint="regenerate the corpus (python examples/acme/generate.py)",
            )
        for j, answer in enumerate(answers):
            before = "".join(p + a for p, a in zip(pieces[:j], answers[:j], strict=True))
            after = "".join(a + p for a, p in zip(answers[j + 1 :], pieces[j + 2 :], strict=True))
            examples.append(
                InfillExample(rel, j, before + pieces[j], pieces[j + 1] + after, answer)
            )
    return examples


def _normalise(text: str) -> str:
    return " ".join(text.split())


def score_infill(examples: list[InfillExample], fill: Infiller) -> dict[str, Any]:
    """Exact and whitespace-normalised match rate of `fill(prefix, suffix)` over `examples`."""
    if not examples:
        raise DataError("no infill examples to score")
    rows = []
    for ex in examples:
        output = fill(ex.prefix, ex.suffix)
        rows.append({
            "file": ex.file, "gap": ex.gap, "answer": ex.answer, "output": output,
            "exact": output == ex.answer,
            "normalized": _normalise(output) == _normalise(ex.answer),
        })  # fmt: skip
    n = len(rows)
    return {
        "suite": "infill",
        "n": n,
        "exact_match": sum(r["exact"] for r in rows) / n,
        "normalized_match": sum(r["normalized"] for r in rows) / n,
        "examples": rows,
    }


def evaluate_infill(
    model: nn.Module | Infiller,
    tokenizer_dir: str | Path | None,
    damaged_dir: str | Path,
    *,
    max_examples: int | None = None,
    max_new_tokens: int = 16,
    device: str = "cpu",
    order: FimOrder = "psm",
) -> dict[str, Any]:
    """Restore the gaps of the ACME damaged documents; exact-match scores and every output.

    `model` is a FIM-trained model (with `tokenizer_dir`), or any `(prefix, suffix) -> text`
    function (a baseline, another system). `max_examples` keeps the first gaps in file order.
    """
    examples = load_damaged(damaged_dir)[:max_examples]
    if isinstance(model, nn.Module):
        if tokenizer_dir is None:
            raise ForgeError("evaluating a model needs its tokenizer folder")
        tok = load_tokenizer(tokenizer_dir)
        model.eval()

        def fill(prefix: str, suffix: str) -> str:
            return infill(
                model, tok, prefix, suffix, max_new_tokens=max_new_tokens, device=device,
                order=order,
            )  # fmt: skip
    else:
        fill = model
    with torch.inference_mode():
        result = score_infill(examples, fill)
    return result
