"""The models a server answers for: model and adapter assets loaded from the registry into
engines, or an upstream's models (upstream mode), each under every name that refers to it,
with the classification label read fresh from the registry as requests come in.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import anyio
from tokenizers import Tokenizer
from torch import nn

from forgeml.core.errors import ConfigError, DataError
from forgeml.governance.labels import effective_label, most_sensitive
from forgeml.models.multimodal import MultimodalConfig
from forgeml.registry.store import Asset, Registry
from forgeml.serve.engine import Engine
from forgeml.serve.upstream import ReplicaPool, Upstream, UpstreamError
from forgeml.tokenizer.train import load_tokenizer, special_token_ids

# Seconds a served model's label read from the registry is trusted: a relabel (`forgeml assets
# label`) reaches the running server within this time, at one lineage walk per model per period.
LABEL_TTL_S = 2.0


class CurrentLabel:
    """A served model's effective label, recomputed from the registry (the most sensitive of
    its assets' labels, each inherited along the lineage) when the last read is older than
    `ttl` seconds; the read runs off the event loop."""

    def __init__(self, registry: Registry, asset_ids: list[str], ttl: float = LABEL_TTL_S) -> None:
        self.registry, self.asset_ids, self.ttl = registry, asset_ids, ttl
        self.latest = self.read()
        self._read_at = time.monotonic()

    def read(self) -> str | None:
        """The label now, from the registry (blocking)."""
        assets = [self.registry.get_asset(a, deleted_ok=True) for a in self.asset_ids]
        return most_sensitive([effective_label(self.registry, a) for a in assets])

    async def current(self) -> str | None:
        """The label, at most `ttl` seconds old."""
        if time.monotonic() - self._read_at >= self.ttl:
            read_at = time.monotonic()
            self.latest = await anyio.to_thread.run_sync(self.read)
            self._read_at = read_at
        return self.latest


@dataclass
class ServedModel:
    """A served model: the name clients use, every name that refers to it, and its engine, or
    (upstream mode) the upstream, or pool of replicas, that generates for it under
    `upstream_model`. `label` is its classification when loaded; `current_label`, where set,
    keeps it fresh. `multimodal` is the config of a vision/audio LM (None: text only)."""

    name: str
    asset_id: str
    names: set[str]
    engine: Engine | None
    tokenizer: Tokenizer | None
    special_ids: dict[str, int]
    label: str | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    upstream: Upstream | ReplicaPool | None = None
    upstream_model: str | None = None
    current_label: CurrentLabel | None = None
    multimodal: MultimodalConfig | None = None


def upstream_served_models(
    upstream: Upstream | ReplicaPool, refs: list[str] | None
) -> dict[str, ServedModel]:
    """The upstream's models (all, or those named in `refs`), served under their own ids.

    Their classification label comes from the policy's `models:` section (default: the lowest
    level), as the gateway cannot read the upstream's training data.
    """
    try:
        available = upstream.list_models()
    except UpstreamError as exc:
        raise ConfigError(
            f"cannot list the upstream's models at {upstream.base_url}: {exc.message}",
            hint="check --upstream and --upstream-key, and that the upstream is running",
        ) from None
    missing = [r for r in refs or [] if r not in available]
    if missing:
        raise ConfigError(
            f"the upstream does not serve {', '.join(missing)}",
            hint=f"it serves: {', '.join(available) or 'nothing'}",
        )
    return {
        ref: ServedModel(
            name=ref,
            asset_id=f"upstream:{ref}",
            names={ref},
            engine=None,
            tokenizer=None,
            special_ids={},
            upstream=upstream,
            upstream_model=ref,
        )
        for ref in refs or available
    }


def load_served_models(
    registry: Registry,
    refs: list[str],
    *,
    max_batch: int = 8,
    max_queue: int = 64,
    device: str = "cpu",
    compile_step: bool = False,
) -> dict[str, ServedModel]:
    """Load model assets by alias, id or name; each is served under the ref it was asked by.

    An adapter asset (LoRA, PEFT layout) is merged into the base model its metadata names at
    load time, so it is served at the base model's speed. A model's label is its effective
    label (the most sensitive upstream of it; an adapter's includes its base's), re-read from
    `registry` while serving, which must stay open as long as the models are served.
    """
    from forgeml.eval.media_suite import is_multimodal_dir
    from forgeml.models.hf_io import load_model
    from forgeml.models.hf_multimodal_io import load_multimodal

    served = {}
    for ref in refs:
        asset = registry.get_asset(ref)
        if asset.kind == "adapter":
            base = adapter_base(registry, asset)
            model = _merged_adapter(load_model(base.path, device=device), asset.path)
            tokenizer_dir = base.path
            labelled = [asset.id, base.id]
        elif asset.kind == "model":
            load = load_multimodal if is_multimodal_dir(asset.path) else load_model
            model, tokenizer_dir = load(asset.path, device=device), asset.path
            labelled = [asset.id]
        else:
            raise DataError(
                f"{ref} is a {asset.kind}, not a model", "serve a model or adapter asset"
            )
        label = CurrentLabel(registry, labelled)  # inherited from its data, by lineage
        tokenizer = load_tokenizer(tokenizer_dir)
        special = special_token_ids(tokenizer)
        engine = Engine(
            model,
            tokenizer,
            max_batch=max_batch,
            max_queue=max_queue,
            device=device,
            stop_ids=frozenset({special["eos"]}),
            compile_step=compile_step,
        )
        served[ref] = ServedModel(
            name=ref,
            asset_id=asset.id,
            names={ref, asset.id, asset.name},
            engine=engine,
            tokenizer=tokenizer,
            special_ids=special,
            label=label.latest,
            current_label=label,
            multimodal=model.cfg if isinstance(model.cfg, MultimodalConfig) else None,
        )
    return served


def served_under_alias(models: dict[str, ServedModel], alias: str) -> dict[str, ServedModel]:
    """The one model in `models` served as `alias` (`forgeml serve MODEL --alias NAME`):
    listed and answered under the alias, and still called by its ref, id and name."""
    if len(models) != 1:
        raise ConfigError(
            f"--alias {alias} names one served model, but {len(models)} are served",
            hint="serve one model with --alias, or leave --alias out",
        )
    (model,) = models.values()
    return {alias: replace(model, name=alias, names=model.names | {alias})}


def adapter_base(registry: Registry, adapter: Asset) -> Asset:
    """The base model asset an adapter asset was trained on (`metadata.base_model`)."""
    base_id = adapter.metadata.get("base_model")
    if not base_id:
        raise DataError(
            f"adapter {adapter.id} does not record its base model",
            "register adapters through `forgeml train sft` (metadata.base_model)",
        )
    base = registry.get_asset(base_id)
    if base.kind != "model":
        raise DataError(f"the base of adapter {adapter.id} is a {base.kind}, not a model")
    return base


def _merged_adapter(model: nn.Module, adapter_dir: str | Path) -> nn.Module:
    """The base model with the PEFT LoRA adapter folded into its weights (`merge_lora`)."""
    from forgeml.models.lora import load_adapter, merge_lora

    return merge_lora(load_adapter(model, adapter_dir)).eval()
