"""The data-preparation chain, written once: ingest → [curate] → [mix] → tokenizer → pack.

`forgeml pipeline run`, `forgeml train pretrain` and `forgeml hpo` all prepare a recipe's
token shards here, so the same recipe trains on the same data whatever the entry point.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from forgeml.core.config import Recipe
from forgeml.core.errors import ConfigError
from forgeml.core.workspace import Workspace
from forgeml.pipeline.ingest_stage import ingest_stage
from forgeml.pipeline.pack_stage import pack_stage
from forgeml.pipeline.runtime import Notify, StageResult
from forgeml.pipeline.tokenizer_stage import tokenizer_stage


@dataclass
class PreparedShards:
    """The token shards and tokenizer assets, and the stages that made them (in order)."""

    shards: str
    tokenizer: str
    stages: list[StageResult] = field(default_factory=list)


def prepare_shards(
    ws: Workspace,
    recipe: Recipe,
    *,
    data: str | None = None,
    tokenizer: str | None = None,
    force: bool = False,
    progress: bool = False,
    notify: Notify | None = None,
) -> PreparedShards:
    """Token shards of the recipe's data, each step a cached stage.

    Without `data`, the recipe's `data.sources` are ingested, curated when `data.curate`
    (the `curate` section) and re-weighted by source when `data.mix`; a given `data` dataset
    asset is packed as it is. Without `tokenizer`, one is trained per the `tokenizer`
    section. Packing applies the `fim` section and `data.heldout_fraction`.
    """
    from forgeml.pipeline.curate_stage import curate_stage
    from forgeml.pipeline.mix_stage import mix_stage

    d = recipe.data
    stages: list[StageResult] = []
    if data is None:
        if not d.sources:
            raise ConfigError(
                "the recipe has no data.sources",
                hint="add folders under data.sources in the recipe, or pass a dataset asset",
            )
        ingest = ingest_stage(
            ws, [Path(s) for s in d.sources], name=d.name, include=d.include,
            exclude=d.exclude, max_file_bytes=d.max_file_bytes, text_fields=d.text_fields,
            ocr=d.ocr, media=d.media, force=force, progress=progress, notify=notify,
        )  # fmt: skip
        stages.append(ingest)
        if d.curate:
            curated = curate_stage(
                ws, ingest.output, recipe.curate, force=force, progress=progress, notify=notify
            )
            stages.append(curated)
        if d.mix is not None:  # re-weight the sources (data/mix.py) before tokenizer and pack
            stages.append(mix_stage(ws, stages[-1].output, d.mix, force=force, notify=notify))
        data = stages[-1].output
    if tokenizer is None:
        tok = tokenizer_stage(
            ws, data, recipe.tokenizer, heldout_fraction=d.heldout_fraction, force=force,
            progress=progress, notify=notify,
        )  # fmt: skip
        stages.append(tok)
        tokenizer = tok.output
    pack = pack_stage(
        ws, data, tokenizer, heldout_fraction=d.heldout_fraction, fim=recipe.fim, force=force,
        progress=progress, notify=notify,
    )  # fmt: skip
    stages.append(pack)
    return PreparedShards(pack.output, tokenizer, stages)
