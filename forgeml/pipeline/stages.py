"""Every stage as a registered run: config hash + input assets in, output assets out.

`run_stage` is the one place that talks to the registry for a stage: it answers from the
cache when a finished run has the same config hash and inputs (like a build system),
records start/end/status/metrics otherwise, and registers the outputs with lineage.
The stage bodies are plain calls into forgeml.data / tokenizer / train / eval.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from forgeml.core.config import (
    EvalConfig,
    FimConfig,
    GenerateConfig,
    Recipe,
    TokenizerConfig,
    config_hash,
)
from forgeml.core.errors import DataError, ForgeError, NotFoundError
from forgeml.core.io import atomic_write_text, parquet_batches
from forgeml.core.workspace import Workspace
from forgeml.governance.labels import stamp_effective_label
from forgeml.registry import Registry


@dataclass
class Output:
    """An asset a stage body produced, to be registered by `run_stage`."""

    kind: str
    name: str
    path: Path
    metadata: dict[str, Any] = field(default_factory=dict)
    parents: list[str] = field(default_factory=list)


@dataclass
class StageResult:
    stage: str
    run_id: str
    outputs: list[str]
    metrics: dict[str, Any]
    cached: bool

    @property
    def output(self) -> str:
        return self.outputs[0]


Notify = Callable[[str], None]


def open_registry(ws: Workspace) -> Registry:
    return Registry(ws.registry_url, ws.artifacts_dir)


def run_stage(
    ws: Workspace,
    stage: str,
    config: dict[str, Any],
    inputs: list[str],
    body: Callable[[Path], tuple[list[Output], dict[str, Any]]],
    *,
    force: bool = False,
    seed: int | None = None,
    work_dir: Path | None = None,
    notify: Notify | None = None,
) -> StageResult:
    """Run `body(work_dir)` as a registered run, or return the cached run's outputs."""
    reg = open_registry(ws)
    digest = config_hash(config)
    if not force:
        hit = reg.find_cached_run(stage, digest, inputs)
        if hit is not None:
            if notify:
                notify(f"{stage}: cached ({', '.join(hit.outputs)})")
            return StageResult(stage, hit.id, list(hit.outputs), dict(hit.metrics), cached=True)
    run = reg.start_run(stage, config, inputs=inputs, seed=seed)
    work_dir = work_dir or ws.runs_dir / stage / run.id
    work_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        work_dir / "run.json",
        json.dumps(
            {"run_id": run.id, "stage": stage, "config_sha256": digest, "config": config},
            indent=1,
            default=str,
        ),
    )
    try:
        outputs, metrics = body(work_dir)
        ids = []
        for out in outputs:
            asset = reg.add_asset(
                out.kind,
                out.name,
                out.path,
                metadata=out.metadata,
                run_id=run.id,
                parents=out.parents,
            )
            stamp_effective_label(reg, asset.id)  # the most sensitive label upstream
            ids.append(asset.id)
    except BaseException as exc:
        reg.finish_run(run.id, status="failed", error=f"{type(exc).__name__}: {exc}"[:2000])
        raise
    reg.finish_run(run.id, status="succeeded", outputs=ids, metrics=metrics)
    if notify:
        notify(f"{stage}: done ({', '.join(ids)})")
    return StageResult(stage, run.id, ids, metrics, cached=False)


def _sources_fingerprint(sources: list[Path]) -> str:
    """Cheap change detector for ingest caching: every file's path, size and mtime."""
    h = hashlib.sha256()
    for src in sources:
        if not src.exists():
            raise DataError(f"source not found: {src}", hint="check the path")
        files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
        for path in files:
            st = path.stat()
            h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def ingest_stage(
    ws: Workspace,
    sources: list[str | Path],
    *,
    name: str,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    max_file_bytes: int = 16 * 1024 * 1024,
    text_fields: list[str] | None = None,
    force: bool = False,
    progress: bool = False,
    notify: Notify | None = None,
) -> StageResult:
    """Read files/folders into a raw dataset asset (`data.parquet` + `report.json`)."""
    from forgeml.data.ingest import ingest_files

    paths = [Path(s).expanduser().resolve() for s in sources]
    if not paths:
        raise DataError("no sources given", hint="pass one or more files or folders")
    config = {
        "sources": [str(p) for p in paths],
        "include": list(include or ["**/*"]),
        "exclude": list(exclude or []),
        "max_file_bytes": max_file_bytes,
        "fingerprint": _sources_fingerprint(paths),
        "text_fields": list(text_fields or []),
        "name": name,
    }

    def body(work: Path) -> tuple[list[Output], dict[str, Any]]:
        out = work / "dataset"
        report = ingest_files(
            paths,
            out / "data.parquet",
            include=config["include"],
            exclude=config["exclude"],
            max_file_bytes=max_file_bytes,
            text_fields=config["text_fields"],
            progress=progress,
        )
        summary = report.to_dict()
        atomic_write_text(out / "report.json", json.dumps(summary, indent=1))
        meta = {k: v for k, v in summary.items() if k != "files"}
        meta["format"] = "documents-parquet"
        metrics = {k: summary[k] for k in ("found", "kept", "skipped", "failed")}
        return [Output("dataset", name, out, meta)], metrics

    return run_stage(ws, "ingest", config, [], body, force=force, notify=notify)


def heldout_doc_ids(parquet: Path, fraction: float) -> set[str]:
    """Deterministic held-out split: the `fraction` of distinct documents with the smallest
    hash of their id (at least one when there are two or more documents)."""
    if fraction <= 0:
        return set()
    ids = sorted(set(pq.read_table(parquet, columns=["doc_id"]).column("doc_id").to_pylist()))
    if len(ids) < 2:
        return set()
    ranked = sorted(ids, key=lambda d: hashlib.sha256(f"heldout:{d}".encode()).hexdigest())
    n = max(1, round(fraction * len(ids)))
    return set(ranked[: min(n, len(ids) - 1)])


def _iter_texts(parquet: Path, skip: set[str]):
    for batch in parquet_batches(pq.ParquetFile(parquet), 1024, ["doc_id", "text"]):
        for doc_id, text in zip(
            batch.column(0).to_pylist(), batch.column(1).to_pylist(), strict=True
        ):
            if doc_id not in skip:
                yield text


def tokenizer_stage(
    ws: Workspace,
    dataset_ref: str,
    cfg: TokenizerConfig,
    *,
    heldout_fraction: float = 0.05,
    force: bool = False,
    progress: bool = False,
    notify: Notify | None = None,
) -> StageResult:
    """Train a byte-level BPE tokenizer on the dataset's training documents."""
    from forgeml.tokenizer.train import train_bpe_tokenizer

    reg = open_registry(ws)
    dataset = reg.get_asset(dataset_ref)
    parquet = _documents_parquet(dataset)
    config = {"tokenizer": cfg.model_dump(mode="json"), "heldout_fraction": heldout_fraction}

    def body(work: Path) -> tuple[list[Output], dict[str, Any]]:
        skip = heldout_doc_ids(parquet, heldout_fraction)
        out = train_bpe_tokenizer(
            _iter_texts(parquet, skip),
            vocab_size=cfg.vocab_size,
            out_dir=work / "tokenizer",
            min_frequency=cfg.min_frequency,
            max_bytes=cfg.max_train_bytes,
            progress=progress,
        )
        from tokenizers import Tokenizer

        size = Tokenizer.from_file(str(Path(out) / "tokenizer.json")).get_vocab_size()
        meta = {"vocab_size": size, "dataset": dataset.id}
        return [Output("tokenizer", f"{dataset.name}-bpe{cfg.vocab_size}", Path(out), meta)], {
            "vocab_size": size
        }

    return run_stage(ws, "tokenizer", config, [dataset.id], body, force=force, notify=notify)


def _documents_parquet(asset) -> Path:
    path = Path(asset.path) / "data.parquet"
    if asset.kind != "dataset" or not path.is_file():
        raise ForgeError(
            f"asset {asset.id} is a {asset.kind}, not a document dataset",
            hint="pass a dataset id from `forgeml data ingest` (see `forgeml assets list`)",
        )
    return path


def pack_stage(
    ws: Workspace,
    dataset_ref: str,
    tokenizer_ref: str,
    *,
    heldout_fraction: float = 0.05,
    fim: FimConfig | None = None,
    force: bool = False,
    progress: bool = False,
    notify: Notify | None = None,
) -> StageResult:
    """Tokenize a dataset into train/ and heldout/ token shards (one asset). With `fim.rate`
    > 0 the training split gets fill-in-the-middle examples; held-out stays plain text."""
    from forgeml.data.fim import pack_fim_shards
    from forgeml.tokenizer.pack import pack_token_shards

    reg = open_registry(ws)
    dataset, tok = reg.get_asset(dataset_ref), reg.get_asset(tokenizer_ref)
    parquet = _documents_parquet(dataset)
    use_fim = fim is not None and fim.rate > 0
    config: dict[str, Any] = {"heldout_fraction": heldout_fraction}
    if use_fim:
        config["fim"] = fim.model_dump(mode="json")

    def body(work: Path) -> tuple[list[Output], dict[str, Any]]:
        held = heldout_doc_ids(parquet, heldout_fraction)
        out = work / "shards"
        out.mkdir(parents=True, exist_ok=True)
        if use_fim:
            train = pack_fim_shards(
                [parquet], Path(tok.path), out / "train", fim,
                row_filter=lambda row: row["doc_id"] not in held,
            )  # fmt: skip
        else:
            train = pack_token_shards(
                [parquet],
                Path(tok.path),
                out / "train",
                progress=progress,
                row_filter=lambda row: row["doc_id"] not in held,
            )
        metrics = {"train_tokens": train["n_tokens"], "train_docs": train["n_docs"]}
        if held:
            heldout = pack_token_shards(
                [parquet],
                Path(tok.path),
                out / "heldout",
                progress=progress,
                row_filter=lambda row: row["doc_id"] in held,
            )
            metrics.update(heldout_tokens=heldout["n_tokens"], heldout_docs=heldout["n_docs"])
        meta = {"format": "token-shards", "dataset": dataset.id, "tokenizer": tok.id, **metrics}
        name = f"{dataset.name}-tokens"
        return [Output("dataset", name, out, meta, parents=[dataset.id, tok.id])], metrics

    return run_stage(ws, "pack", config, [dataset.id, tok.id], body, force=force, notify=notify)


def pretrain_stage(
    ws: Workspace,
    recipe: Recipe,
    shards_ref: str,
    tokenizer_ref: str,
    *,
    resume: bool = False,
    auto_resume: bool = False,
    force: bool = False,
    progress: bool = True,
    notify: Notify | None = None,
) -> StageResult:
    """Pre-train a model on packed shards → model asset (HF format + tokenizer files)."""
    from forgeml.train.pretrain import pretrain

    reg = open_registry(ws)
    shards, tok = reg.get_asset(shards_ref), reg.get_asset(tokenizer_ref)
    if shards.metadata.get("format") != "token-shards":
        raise ForgeError(
            f"asset {shards.id} is not a token-shards dataset",
            hint="pack the dataset first (forgeml train pretrain does it for you with --data)",
        )
    init = None
    if recipe.train.init_from:
        # Start from a registered (e.g. imported) model: an input of the run, and the
        # architecture trained is that model's.
        from forgeml.models.hf_io import read_model_config

        init = reg.get_asset(recipe.train.init_from)
        if init.kind != "model":
            raise ForgeError(
                f"train.init_from names {init.id}, a {init.kind}, not a model",
                hint="pass a model asset id, name or alias (see `forgeml assets list`)",
            )
        init_vocab = Path(init.path) / "tokenizer.json"
        if init_vocab.is_file() and (
            init_vocab.read_bytes() != (Path(tok.path) / "tokenizer.json").read_bytes()
        ):
            # Same ids must mean the same tokens, or the weights would be trained on noise.
            raise ForgeError(
                f"train.init_from model {init.id} has another tokenizer than {tok.id}",
                hint="pack the data with the model's own tokenizer, or use `forgeml train "
                "cpt`, which extends the model's tokenizer with new tokens",
            )
        recipe = recipe.model_copy(
            update={
                "model": read_model_config(init.path),
                "train": recipe.train.model_copy(update={"init_from": str(init.path)}),
            }
        )
    config = {
        "model": recipe.model.model_dump(mode="json"),
        "optim": recipe.optim.model_dump(mode="json"),
        "train": recipe.train.model_dump(mode="json"),
    }
    inputs = [shards.id, tok.id] + ([init.id] if init is not None else [])
    work_dir = None
    if auto_resume and not resume:
        # Resume when an interrupted run of this recipe left checkpoints, else start afresh
        # (what a retried job wants: it cannot know how far its last attempt got).
        try:
            work_dir = _resumable_dir(ws, reg, config_hash(config), inputs)
            resume = True
        except NotFoundError:
            work_dir = None
    elif resume:
        work_dir = _resumable_dir(ws, reg, config_hash(config), inputs)
    if resume:
        force = True
    heldout = Path(shards.path) / "heldout"

    def body(work: Path) -> tuple[list[Output], dict[str, Any]]:
        summary = pretrain(
            recipe,
            train_shards=Path(shards.path) / "train",
            eval_shards=heldout if heldout.is_dir() else None,
            out_dir=work,
            tokenizer_dir=Path(tok.path),
            resume=resume,
            progress=progress,
        )
        metrics = {k: v for k, v in summary.items() if isinstance(v, int | float) or v is None}
        meta = {"tokenizer": tok.id, "shards": shards.id, "arch": recipe.model.arch, **metrics}
        name = f"{recipe.name}-{recipe.model.arch}"
        model_dir = Path(summary["model_dir"])
        parents = [tok.id] + ([init.id] if init is not None else [])
        return [Output("model", name, model_dir, meta, parents=parents)], metrics

    return run_stage(
        ws,
        "pretrain",
        config,
        inputs,
        body,
        force=force,
        seed=recipe.train.seed,
        work_dir=work_dir,
        notify=notify,
    )


def _resumable_dir(ws: Workspace, reg: Registry, digest: str, inputs: list[str]) -> Path:
    """The work folder of the latest unfinished run with this config and inputs."""
    for run in sorted(reg.list_runs(stage="pretrain"), key=lambda r: r.started_at, reverse=True):
        if run.config_hash == digest and sorted(run.inputs) == sorted(inputs):
            path = ws.runs_dir / "pretrain" / run.id
            if run.status != "succeeded" and (path / "checkpoints").is_dir():
                return path
    raise NotFoundError(
        "no interrupted pre-training run with this recipe and data to resume",
        hint="run without --resume to start one",
    )


def eval_stage(
    ws: Workspace,
    model_ref: str,
    cfg: EvalConfig,
    *,
    shards_ref: str | None = None,
    seq_len: int = 256,
    dtype: str = "auto",
    force: bool = False,
    notify: Notify | None = None,
) -> StageResult:
    """Held-out loss, perplexity and bits-per-byte → eval asset linked to the model."""
    from forgeml.eval.perplexity import evaluate_perplexity, token_byte_lengths, unigram_counts
    from forgeml.models.hf_io import load_model
    from forgeml.tokenizer.pack import TokenShards

    reg = open_registry(ws)
    model_asset = reg.get_asset(model_ref)
    if model_asset.kind != "model":
        raise ForgeError(f"{model_asset.id} is a {model_asset.kind}, not a model")
    shards_ref = shards_ref or model_asset.metadata.get("shards")
    if not shards_ref:
        raise ForgeError(
            f"model {model_asset.id} has no recorded evaluation data", hint="pass --data SHARDS"
        )
    shards = reg.get_asset(shards_ref)
    heldout = Path(shards.path) / "heldout"
    if not heldout.is_dir():
        raise DataError(
            f"{shards.id} has no held-out split", hint="re-pack with data.heldout_fraction > 0"
        )
    seq = cfg.seq_len or seq_len
    config = {
        "eval": cfg.model_dump(mode="json"),
        "seq_len": seq,
        "dtype": dtype,
        "suite": "perplexity",
    }

    def body(work: Path) -> tuple[list[Output], dict[str, Any]]:
        from forgeml.core.runtime import pick_device

        device = pick_device()
        model = load_model(model_asset.path, device=device)
        held = TokenShards(heldout)
        train = Path(shards.path) / "train"
        result = evaluate_perplexity(
            model,
            held,
            byte_lengths=token_byte_lengths(Path(model_asset.path), held.vocab_size),
            seq_len=min(seq, model.cfg.max_seq_len),
            batch_size=cfg.batch_size,
            max_batches=cfg.max_batches,
            device=device,
            dtype=dtype,
            unigram=unigram_counts(TokenShards(train)) if train.is_dir() else None,
        )
        out = work / "eval"
        out.mkdir(parents=True, exist_ok=True)
        record = {
            "suite": "perplexity",
            "model": model_asset.id,
            "data": shards.id,
            **result.to_dict(),
        }
        atomic_write_text(out / "eval.json", json.dumps(record, indent=1))
        meta = {
            "suite": "perplexity",
            "model": model_asset.id,
            "data": shards.id,
            **result.to_dict(),
        }
        name = f"{model_asset.name}-perplexity"
        return [Output("eval", name, out, meta, parents=[model_asset.id])], result.to_dict()

    return run_stage(
        ws, "eval", config, [model_asset.id, shards.id], body, force=force, notify=notify
    )


def generate_text(ws: Workspace, model_ref: str, prompt: str, cfg: GenerateConfig) -> str:
    """Sample a continuation of `prompt` from a model asset (id, prefix, name or alias)."""
    from tokenizers import Tokenizer

    from forgeml.core.runtime import pick_device
    from forgeml.models.hf_io import load_model
    from forgeml.models.sampling import generate

    reg = open_registry(ws)
    asset = reg.get_asset(model_ref)
    if asset.kind != "model":
        raise ForgeError(f"{asset.id} is a {asset.kind}, not a model")
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
