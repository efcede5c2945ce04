"""Multimodal training as registered runs: media JSONL -> dataset asset (media files content-
addressed beside it); tokenizer + text LM (or the recipe's `model`) -> a new vision/audio LM
(mm-init); then projector alignment (mm-align) and joint SFT (mm-joint), each a model asset
with lineage to its inputs, cached by config and inputs and resumable after a kill.

`forgeml train multimodal` and `forgeml pipeline run` (recipes with a `multimodal` section)
call `multimodal_stages`.
"""

from __future__ import annotations

import json
import shutil
from functools import partial
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from forgeml.core.config import MultimodalStageConfig, Recipe
from forgeml.core.errors import ConfigError, DataError, ForgeError, NotFoundError
from forgeml.core.io import atomic_write_text, iter_jsonl, sha256_file
from forgeml.core.workspace import Workspace
from forgeml.pipeline.runtime import (
    Notify,
    Output,
    StageResult,
    model_asset,
    resumable_work_dir,
    run_stage,
)
from forgeml.registry import Asset, open_registry
from forgeml.train.distributed import file_fingerprint

MEDIA_FORMAT = "media-jsonl"
MODEL_FORMAT = "multimodal"
PLACEHOLDERS = {"vision": "<|image|>", "audio": "<|audio|>"}
_MEDIA_KEYS = ("image", "audio")


def _records(path: Path) -> list[dict[str, Any]]:
    rows = []
    for n, record, error in iter_jsonl(path):
        if error is not None:
            raise DataError(f"{path}:{n}: {error}")
        rows.append(record)
    return rows


def _media_files(record: dict[str, Any], root: Path, where: str) -> dict[str, list[Path]]:
    out = {}
    for key in _MEDIA_KEYS:
        value = record.get(key) or []
        paths = [root / v for v in ([value] if isinstance(value, str) else value)]
        for path in paths:
            if not path.is_file():
                raise DataError(f"{where}: {key} file not found: {path}")
        out[key] = paths
    return out


def media_dataset_stage(
    ws: Workspace, jsonl: str | Path, *, name: str | None = None, force: bool = False,
    notify: Notify | None = None,
) -> StageResult:  # fmt: skip
    """Register a media JSONL ({image|audio: path or list, prompt, answer}; paths relative to
    the file) as a dataset asset: `train.jsonl` whose media paths point into `media/`, where
    each file is stored once under its content hash (provenance: `sources.json`)."""
    path = Path(jsonl).expanduser().resolve()
    if not path.is_file():
        raise NotFoundError(f"media data not found: {path}", hint="pass a .jsonl file")
    records = _records(path)
    media = [_media_files(r, path.parent, f"{path}:{i}") for i, r in enumerate(records, 1)]
    digests = {p: sha256_file(p) for files in media for paths in files.values() for p in paths}
    config = {"jsonl": sha256_file(path), "media": sorted(set(digests.values()))}
    name = name or path.stem

    def body(work: Path) -> tuple[list[Output], dict[str, Any]]:
        out = work / "media-data"
        (out / "media").mkdir(parents=True, exist_ok=True)
        rows, sources = [], {}
        for record, files in zip(records, media, strict=True):
            row = dict(record)
            for key, paths in files.items():
                stored = [f"media/{digests[p][:24]}{p.suffix.lower()}" for p in paths]
                for src, rel in zip(paths, stored, strict=True):
                    if not (out / rel).exists():
                        shutil.copyfile(src, out / rel)
                    sources.setdefault(rel, str(src))
                if paths:
                    row[key] = stored[0] if isinstance(record[key], str) else stored
            rows.append(json.dumps(row, ensure_ascii=False) + "\n")
        atomic_write_text(out / "train.jsonl", "".join(rows))
        atomic_write_text(out / "sources.json", json.dumps(sources, indent=1, sort_keys=True))
        counts = {k: sum(bool(f[k]) for f in media) for k in _MEDIA_KEYS}
        meta = {"format": MEDIA_FORMAT, "records": len(rows), "media_files": len(sources),
                "with_media": counts, "source": str(path)}  # fmt: skip
        return [Output("dataset", name, out, meta)], {"records": len(rows), **counts}

    return run_stage(ws, "mm-data", config, [], body, force=force, notify=notify)


def _media_dataset(ws: Workspace, data: str, notify: Notify | None) -> Asset:
    """A media dataset asset from a JSONL path (registered on the fly) or an asset reference."""
    if Path(data).expanduser().is_file():
        return open_registry(ws).get_asset(media_dataset_stage(ws, data, notify=notify).output)
    asset = open_registry(ws).get_asset(data)
    if asset.kind != "dataset" or asset.metadata.get("format") != MEDIA_FORMAT:
        raise ForgeError(f"{asset.id} is not a media dataset", hint="pass a media .jsonl file")
    return asset


def _tokenizer_asset(ws: Workspace, ref: str, notify: Notify | None) -> Asset:
    """A tokenizer asset, or a tokenizer folder on disk registered as one."""
    folder = Path(ref).expanduser()
    if not (folder / "tokenizer.json").is_file():
        asset = open_registry(ws).get_asset(ref)
        if asset.kind != "tokenizer":
            raise ForgeError(f"{asset.id} is a {asset.kind}, not a tokenizer")
        return asset
    folder = folder.resolve()

    def body(work: Path) -> tuple[list[Output], dict[str, Any]]:
        return [Output("tokenizer", folder.name, folder, {"source": str(folder)})], {}

    config = {"tokenizer_sha256": sha256_file(folder / "tokenizer.json")}
    res = run_stage(ws, "tokenizer-import", config, [], body, notify=notify)
    return open_registry(ws).get_asset(res.output)


def _validated(key: str, build: Any, fields: dict[str, Any]) -> Any:
    """`build(**fields)`, its validation error as a ConfigError naming the recipe key."""
    try:
        return build(**fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join([f"multimodal.{key}", *(str(p) for p in err["loc"])])
        raise ConfigError(f"{where}: {err['msg']}") from None


def _encoder_configs(section: MultimodalStageConfig) -> dict[str, Any]:
    """Each encoder's config, or the folder of its pretrained tower (read by `_towers`)."""
    from forgeml.models.audio import AudioConfig
    from forgeml.models.vision import VisionConfig

    out = {}
    for key, cls in (("vision", VisionConfig), ("audio", AudioConfig)):
        fields, tower = getattr(section, key), getattr(section, f"{key}_tower")
        if tower:
            out[key] = Path(tower).expanduser().resolve()
            if not out[key].is_dir():
                raise NotFoundError(f"multimodal.{key}_tower: no folder {out[key]}")
        else:
            out[key] = None if fields is None else _validated(key, cls, fields)
    if out["vision"] is None and out["audio"] is None:
        raise ConfigError("multimodal: no encoder", hint="set multimodal.vision and/or .audio")
    return out


def _towers(section: MultimodalStageConfig, encoders: dict[str, Any]) -> dict[str, Any]:
    """The pretrained encoders (SigLIP vision tower, Whisper encoder) `encoders` names by
    folder, `multimodal.vision`/`.audio` overriding their configs."""
    from forgeml.models.hf_towers import load_audio_tower, load_vision_tower

    loaders = {"vision": load_vision_tower, "audio": load_audio_tower}
    return {
        key: _validated(key, partial(load, encoders[key]), getattr(section, key) or {})
        for key, load in loaders.items()
        if isinstance(encoders[key], Path)
    }


def multimodal_init_stage(
    ws: Workspace, recipe: Recipe, base_model: str | None = None, *, force: bool = False,
    notify: Notify | None = None,
) -> StageResult:  # fmt: skip
    """A new vision/audio LM → model asset: the encoders of `multimodal.vision`/`.audio` and
    fresh projectors (seeded by `multimodal.seed`) joined to the LM of `base_model` (a text
    model asset, its tokenizer extended with the image/audio placeholders and its embeddings
    grown for them) or, without one, to a new LM of the recipe's `model` on
    `multimodal.tokenizer`."""
    section = recipe.multimodal or MultimodalStageConfig()
    encoders = _encoder_configs(section)
    base_model = base_model or section.base_model
    if base_model:
        source = model_asset(ws, base_model)
    elif section.tokenizer:
        source = _tokenizer_asset(ws, section.tokenizer, notify)
    else:
        raise ConfigError(
            "multimodal: no LM to start from",
            hint="set multimodal.base_model (a text model) or multimodal.tokenizer (new LM)",
        )
    placeholders = [PLACEHOLDERS[k] for k in ("vision", "audio") if encoders[k] is not None]
    config = {
        "vision": section.vision, "audio": section.audio, "seed": section.seed,
        "lm": None if base_model else recipe.model.model_dump(mode="json"),
        "towers": {k: file_fingerprint(v) for k, v in encoders.items() if isinstance(v, Path)},
    }  # fmt: skip

    def body(work: Path) -> tuple[list[Output], dict[str, Any]]:
        towers = _towers(section, encoders)
        configs = {**encoders, **{key: tower.cfg for key, tower in towers.items()}}
        model, tok_dir = _new_multimodal(source, recipe, configs, placeholders, section.seed, work)
        for key, tower in towers.items():
            getattr(model, key).load_state_dict(tower.state_dict())
        from forgeml.models.hf_multimodal_io import save_multimodal

        out = save_multimodal(model, work / "model", tok_dir)
        meta = {"format": MODEL_FORMAT, "params": model.num_params(), "arch": model.cfg.lm.arch,
                "base_model": source.id if base_model else None,
                "tokenizer": None if base_model else source.id,
                "towers": {k: str(encoders[k]) for k in towers}}  # fmt: skip
        name = f"{source.name}-mm" if base_model else f"{recipe.name}-mm"
        return [Output("model", name, out, meta, parents=[source.id])], {
            "params": model.num_params()
        }

    return run_stage(ws, "mm-init", config, [source.id], body, force=force, notify=notify)


def _new_multimodal(
    source: Asset, recipe: Recipe, encoders: dict[str, Any], placeholders: list[str],
    seed: int, work: Path,
) -> tuple[Any, Path]:  # fmt: skip
    """The MultimodalLM and its tokenizer folder (`source`'s, with the placeholders added)."""
    import torch

    from forgeml.models.multimodal import MultimodalConfig, MultimodalLM
    from forgeml.tokenizer.extend import extend_tokenizer
    from forgeml.tokenizer.train import load_tokenizer

    tok_dir = work / "tokenizer"
    extend_tokenizer(source.path, placeholders, tok_dir)
    tok = load_tokenizer(tok_dir)
    lm = None
    if source.kind == "model":
        from forgeml.models.hf_io import load_model
        from forgeml.models.resize import resize_embeddings_mean_init

        lm = resize_embeddings_mean_init(load_model(source.path), source.path, tok_dir)
        lm_cfg = lm.cfg
    else:
        vocab = tok.get_vocab_size(with_added_tokens=True)
        lm_cfg = recipe.model.model_copy(
            update={"vocab_size": max(recipe.model.vocab_size or 0, vocab)}
        )
    cfg = MultimodalConfig(
        lm=lm_cfg, vision=encoders["vision"], audio=encoders["audio"],
        image_token_id=tok.token_to_id(PLACEHOLDERS["vision"]) if encoders["vision"] else None,
        audio_token_id=tok.token_to_id(PLACEHOLDERS["audio"]) if encoders["audio"] else None,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = MultimodalLM(cfg)
    if lm is not None:
        model.lm.load_state_dict(lm.state_dict())
    return model, tok_dir


def multimodal_phase_stage(
    ws: Workspace, recipe: Recipe, phase: Literal["align", "joint"], model_ref: str,
    dataset: Asset, *, resume: bool = False, force: bool = False, progress: bool = True,
    notify: Notify | None = None,
) -> StageResult:  # fmt: skip
    """One phase (`multimodal.align` or `.joint`) from `model_ref` on `dataset` → model asset.
    With `resume`, an interrupted run of the same phase, model and data continues from its
    last checkpoint (a finished one is answered from the cache; none: it starts)."""
    from forgeml.models.hf_multimodal_io import load_multimodal
    from forgeml.train.multimodal_sft import MultimodalSFTConfig, train_multimodal_sft

    section = recipe.multimodal or MultimodalStageConfig()
    cfg = MultimodalSFTConfig.for_phase(phase, getattr(section, phase), section.heldout_fraction)
    start = model_asset(ws, model_ref)
    stage, inputs = f"mm-{phase}", [start.id, dataset.id]
    config = {"multimodal": cfg.model_dump(mode="json")}
    work_dir = None
    if resume:
        try:
            describe = f"multimodal {phase} run with this recipe, model and data"
            work_dir = resumable_work_dir(ws, stage, config, inputs, describe=describe)
        except NotFoundError:
            resume = False

    def body(work: Path) -> tuple[list[Output], dict[str, Any]]:
        summary = train_multimodal_sft(
            load_multimodal(start.path), start.path, Path(dataset.path) / "train.jsonl", work,
            cfg, resume=resume, progress=progress,
        )  # fmt: skip
        metrics = {k: v for k, v in summary.items() if isinstance(v, int | float) or v is None}
        meta = {"format": MODEL_FORMAT, "base_model": start.id, "data": dataset.id,
                "stage": phase, **metrics}  # fmt: skip
        name = f"{start.name.removesuffix('-align')}-{phase}"
        out = Output("model", name, Path(summary["model_dir"]), meta, parents=inputs)
        return [out], metrics

    return run_stage(
        ws, stage, config, inputs, body, force=force or resume, seed=cfg.train.seed,
        work_dir=work_dir, notify=notify,
    )  # fmt: skip


def multimodal_stages(
    ws: Workspace, recipe: Recipe, *, base_model: str | None = None, data: str | None = None,
    resume: bool = False, force: bool = False, progress: bool = True,
    notify: Notify | None = None,
) -> list[StageResult]:  # fmt: skip
    """The recipe's `multimodal` section as runs: the media dataset, the model to start from
    (`multimodal.init`, or a new one on `base_model`), then align and joint where set. The
    last result's output is the trained model."""
    section = recipe.multimodal
    if section is None:
        raise ConfigError("the recipe has no `multimodal` section")
    data = data or section.data
    if not data:
        raise ConfigError(
            "no multimodal data", hint="pass --data FILE.jsonl or set multimodal.data"
        )
    dataset = _media_dataset(ws, data, notify)
    results = []
    if section.init:
        model = model_asset(ws, section.init).id
    else:
        results.append(multimodal_init_stage(ws, recipe, base_model, force=force, notify=notify))
        model = results[-1].output
    for phase in ("align", "joint"):
        if getattr(section, phase) is not None:
            res = multimodal_phase_stage(
                ws, recipe, phase, model, dataset, resume=resume, force=force,
                progress=progress, notify=notify,
            )  # fmt: skip
            results.append(res)
            model = res.output
    return results
