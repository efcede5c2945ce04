"""Sampling from a registered model: the pipeline's closing samples and `forgeml generate`.

Not a stage (nothing is registered): it resolves the model asset, loads it with its
tokenizer and samples a continuation per the recipe's `generate` section.
"""

from __future__ import annotations

from pathlib import Path

from forgeml.core.config import GenerateConfig
from forgeml.core.errors import ForgeError
from forgeml.core.workspace import Workspace
from forgeml.pipeline.runtime import model_asset


def generate_text(ws: Workspace, model_ref: str, prompt: str, cfg: GenerateConfig) -> str:
    """Sample a continuation of `prompt` from a model asset (id, prefix, name or alias)."""
    from tokenizers import Tokenizer

    from forgeml.core.runtime import pick_device
    from forgeml.models.hf_io import load_model
    from forgeml.models.sampling import generate

    asset = model_asset(ws, model_ref)
    tok_file = Path(asset.path) / "tokenizer.json"
    if not tok_file.is_file():
        raise ForgeError(
            f"model {asset.id} has no tokenizer.json", hint="re-register it with its tokenizer"
        )
    tok = Tokenizer.from_file(str(tok_file))
    device = pick_device()
    model = load_model(asset.path, device=device)
    ids = tok.encode(prompt, add_special_tokens=False).ids
    if not ids:
        raise ForgeError("the prompt is empty", hint="pass some text to continue")
    eos = tok.token_to_id("<|eos|>")
    room = model.cfg.max_seq_len - len(ids)
    if room <= 0:
        raise ForgeError(
            f"prompt is {len(ids)} tokens; the model's context is {model.cfg.max_seq_len}",
            hint="shorten the prompt",
        )
    new = generate(
        model,
        ids,
        max_new_tokens=min(cfg.max_new_tokens, room),
        temperature=cfg.temperature,
        top_k=cfg.top_k,
        top_p=cfg.top_p,
        stop_ids={eos} if eos is not None else None,
        seed=cfg.seed,
        device=device,
    )
    text = tok.decode(new, skip_special_tokens=True)
    for stop in cfg.stop:
        if stop and stop in text:
            text = text[: text.index(stop)]
    return text
