"""Continued pre-training: a registered (or imported) model goes on learning from domain text.

The tokenizer may gain domain tokens (new embedding rows = mean of their old sub-token rows),
general text is replayed into the mix to limit forgetting, and held-out loss on both the
domain and the general text is measured before and after (`forgeml train cpt`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from forgeml.core.config import Recipe
from forgeml.core.errors import ConfigError, DataError, ForgeError
from forgeml.core.io import atomic_open, atomic_write_text
from forgeml.core.workspace import Workspace
from forgeml.pipeline.datasets import documents_parquet, heldout_doc_ids
from forgeml.pipeline.runtime import Notify, Output, StageResult, run_stage
from forgeml.registry import open_registry


def replay_mix(
    domain_parquet: str | Path,
    general_parquet: str | Path,
    replay_fraction: float,
    seed: int,
    out: str | Path,
    *,
    exclude_ids: Collection[str] = (),
) -> dict[str, Any]:
    """Write `out`: every domain document plus whole general documents making up about
    `replay_fraction` of the mixed text (UTF-8 bytes), in a seeded order; return the counts.

    Replaying a few percent of the original pre-training data is the cheap, strong baseline
    against forgetting in continual pre-training (Ibrahim et al., "Simple and Scalable
    Strategies to Continually Pre-train Large Language Models", arXiv:2403.08763). General
    documents are drawn in a permutation seeded by `seed` until the share is reached;
    `exclude_ids` (e.g. held-out documents of either corpus) never enter the mix. The output
    keeps the columns both inputs share, plus `mix` ("domain" or "replay").
    """
    if not 0 <= replay_fraction < 1:
        raise ConfigError(f"replay_fraction must be in [0, 1), got {replay_fraction}")
    tables = []
    for path in (domain_parquet, general_parquet):
        table = pq.read_table(path)
        if not {"doc_id", "text"} <= set(table.column_names):
            raise DataError(f"{path} has no doc_id/text columns", hint="pass a document dataset")
        keep = pc.invert(pc.is_in(table["doc_id"], pa.array(list(exclude_ids), pa.string())))
        tables.append(table.filter(keep))
    domain, general = tables
    common = [c for c in domain.column_names if c in general.column_names]
    domain, general = domain.select(common), general.select(common)
    nbytes = [pc.fill_null(pc.binary_length(t["text"]), 0).to_numpy() for t in (domain, general)]
    domain_bytes = int(nbytes[0].sum())
    target = replay_fraction / (1 - replay_fraction) * domain_bytes
    rng = np.random.default_rng(seed)
    order = rng.permutation(general.num_rows)
    cum = np.cumsum(nbytes[1][order])
    # The smallest prefix of the permutation that reaches the target, or one fewer document
    # when that lands closer to it.
    k = int(np.searchsorted(cum, target)) + 1 if target > 0 else 0
    k = min(k, general.num_rows)
    if k > 0 and (cum[k - 1] - target) > (target - (cum[k - 2] if k > 1 else 0)):
        k -= 1
    replay = general.take(pa.array(np.sort(order[:k])))
    mixed = pa.concat_tables(
        [
            domain.append_column("mix", pa.array(["domain"] * domain.num_rows)),
            replay.append_column("mix", pa.array(["replay"] * replay.num_rows)),
        ],
        promote_options="permissive",
    )
    mixed = mixed.take(pa.array(rng.permutation(mixed.num_rows)))
    out = Path(out)
    with atomic_open(out, "wb") as fh:
        pq.write_table(mixed, fh)
    replay_bytes = int(cum[k - 1]) if k else 0
    total = domain_bytes + replay_bytes
    return {
        "domain_docs": domain.num_rows,
        "replay_docs": replay.num_rows,
        "domain_bytes": domain_bytes,
        "replay_bytes": replay_bytes,
        "replay_fraction": replay_bytes / total if total else 0.0,
    }


def _copy_tokenizer(src: Path, dst: Path) -> None:
    from forgeml.tokenizer.train import TOKENIZER_FILES

    dst.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)


def continue_pretrain(
    recipe: Recipe,
    *,
    base_model_dir: str | Path,
    domain_parquet: str | Path,
    out_dir: str | Path,
    general_parquet: str | Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Continue training the model in `base_model_dir` (forgeml or plain HF format, with its
    tokenizer files) on `domain_parquet`, replaying `general_parquet` per `recipe.cpt`.

    `recipe.model` is ignored (the architecture is the base model's); `recipe.train`,
    `recipe.optim` and `recipe.fim` apply. Writes out_dir/{tokenizer, shards, train, init}
    and returns held-out losses before and after on the domain and general text.
    """
    from forgeml.models.hf_io import load_model, save_model
    from forgeml.models.resize import resize_embeddings_mean_init
    from forgeml.tokenizer.extend import extend_tokenizer
    from forgeml.tokenizer.fim import pack_fim_shards
    from forgeml.tokenizer.pack import TokenShards, pack_token_shards
    from forgeml.train.pretrain import evaluate_loss, pretrain

    base_dir, out_dir = Path(base_model_dir), Path(out_dir)
    if not (base_dir / "tokenizer.json").is_file():
        raise ForgeError(
            f"base model {base_dir} has no tokenizer.json",
            hint="continued pre-training needs the model's own tokenizer next to its weights",
        )
    cpt, tcfg = recipe.cpt, recipe.train
    if cpt.replay_fraction > 0 and general_parquet is None:
        raise ConfigError(
            f"cpt.replay_fraction is {cpt.replay_fraction} but no general text was given",
            hint="set cpt.replay_data (or pass --replay DATASET), or cpt.replay_fraction=0",
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    tok_dir = out_dir / "tokenizer"
    added = extend_tokenizer(base_dir, cpt.new_tokens, tok_dir) if cpt.new_tokens else {}
    if not cpt.new_tokens:
        _copy_tokenizer(base_dir, tok_dir)
    model = load_model(base_dir)
    if added:
        model = resize_embeddings_mean_init(model, base_dir, tok_dir)
    if tcfg.seq_len > model.cfg.max_seq_len:
        raise ConfigError(
            f"train.seq_len {tcfg.seq_len} > the base model's context {model.cfg.max_seq_len}",
            hint=f"set train.seq_len={model.cfg.max_seq_len} or lower",
        )

    # Held-out documents of both corpora are kept out of training and give the two losses.
    frac = recipe.data.heldout_fraction
    held_domain = heldout_doc_ids(Path(domain_parquet), frac)
    held_general = heldout_doc_ids(Path(general_parquet), frac) if general_parquet else set()
    if not held_domain:
        raise DataError(
            "no held-out domain documents to measure the domain loss on",
            hint="set data.heldout_fraction > 0 and give at least two domain documents",
        )
    shards = out_dir / "shards"
    mix: dict[str, Any] = {}
    if general_parquet is not None and cpt.replay_fraction > 0:
        train_parquet = out_dir / "data" / "mix.parquet"
        mix = replay_mix(
            domain_parquet, general_parquet, cpt.replay_fraction, tcfg.seed, train_parquet,
            exclude_ids=held_domain | held_general,
        )  # fmt: skip
        train_filter = None
    else:
        train_parquet = Path(domain_parquet)
        train_filter = lambda row: row["doc_id"] not in held_domain  # noqa: E731
    if recipe.fim.rate > 0:
        pack_fim_shards(
            [train_parquet], tok_dir, shards / "train", recipe.fim, row_filter=train_filter
        )
    else:
        pack_token_shards([train_parquet], tok_dir, shards / "train", row_filter=train_filter)
    pack_token_shards(
        [Path(domain_parquet)], tok_dir, shards / "heldout",
        row_filter=lambda row: row["doc_id"] in held_domain,
    )  # fmt: skip
    held = {"domain": TokenShards(shards / "heldout")}
    if held_general:
        pack_token_shards(
            [Path(general_parquet)], tok_dir, shards / "general_heldout",
            row_filter=lambda row: row["doc_id"] in held_general,
        )  # fmt: skip
        held["general"] = TokenShards(shards / "general_heldout")

    eval_kw = dict(
        seq_len=min(recipe.eval.seq_len or tcfg.seq_len, model.cfg.max_seq_len),
        batch_size=recipe.eval.batch_size, max_batches=recipe.eval.max_batches,
        device="cpu", dtype=tcfg.dtype,
    )  # fmt: skip
    before = {name: evaluate_loss(model, s, **eval_kw) for name, s in held.items()}

    # The (resized) base model is the run's starting point: `train.init_from` loads it.
    init_dir = save_model(model, out_dir / "init", tok_dir)
    train = tcfg.model_copy(update={"init_from": str(init_dir)})
    run_recipe = recipe.model_copy(update={"model": model.cfg, "train": train})
    summary = pretrain(
        run_recipe, train_shards=shards / "train", out_dir=out_dir / "train",
        eval_shards=shards / "heldout", tokenizer_dir=tok_dir, progress=progress,
    )  # fmt: skip
    trained = load_model(summary["model_dir"])
    eval_kw["device"] = "cpu"
    after = {name: evaluate_loss(trained, s, **eval_kw) for name, s in held.items()}
    result = {
        **{f"{name}_loss_before": v for name, v in before.items()},
        **{f"{name}_loss_after": v for name, v in after.items()},
        "added_tokens": added, "mix": mix, "steps": summary["steps"],
        "tokens": summary["tokens"], "final_train_loss": summary["final_train_loss"],
        "params": summary["params"], "model_dir": summary["model_dir"],
        "tokenizer_dir": str(tok_dir), "shards_dir": str(shards),
    }  # fmt: skip
    atomic_write_text(out_dir / "cpt_summary.json", json.dumps(result, indent=1) + "\n")
    return result


def continue_pretrain_stage(
    ws: Workspace,
    recipe: Recipe,
    base_model_ref: str | None,
    dataset_ref: str,
    *,
    replay_ref: str | None = None,
    force: bool = False,
    progress: bool = True,
    notify: Notify | None = None,
) -> StageResult:
    """`forgeml train cpt RECIPE --from MODEL --data DATASET [--replay DATASET]` as a cached,
    registered run → model asset (+ the extended tokenizer and the packed shards)."""
    reg = open_registry(ws)
    base_ref = base_model_ref or recipe.cpt.from_model
    if not base_ref:
        raise ConfigError(
            "no model to continue from", hint="pass --from MODEL or set cpt.from_model"
        )
    base = reg.get_asset(base_ref)
    if base.kind != "model":
        raise ForgeError(f"{base.id} is a {base.kind}, not a model", hint="pass a model asset")
    domain = reg.get_asset(dataset_ref)
    domain_parquet = documents_parquet(domain)
    replay_ref = replay_ref or recipe.cpt.replay_data
    replay = reg.get_asset(replay_ref) if replay_ref else None
    general_parquet = documents_parquet(replay) if replay is not None else None
    inputs = [base.id, domain.id] + ([replay.id] if replay is not None else [])
    config = {
        "cpt": recipe.cpt.model_dump(mode="json", exclude={"from_model", "replay_data"}),
        "fim": recipe.fim.model_dump(mode="json"),
        "optim": recipe.optim.model_dump(mode="json"),
        "train": recipe.train.model_dump(mode="json"),
        "eval": recipe.eval.model_dump(mode="json"),
        "heldout_fraction": recipe.data.heldout_fraction,
    }

    def body(work: Path) -> tuple[list[Output], dict[str, Any]]:
        result = continue_pretrain(
            recipe, base_model_dir=base.path, domain_parquet=domain_parquet, out_dir=work,
            general_parquet=general_parquet, progress=progress,
        )  # fmt: skip
        metrics = {k: v for k, v in result.items() if isinstance(v, int | float)}
        meta = {"arch": base.metadata.get("arch", "dense"), "base_model": base.id, **metrics}
        # The model first: it is the stage's `output`.
        outputs = [
            Output("model", f"{recipe.name}-cpt", Path(result["model_dir"]), meta, parents=inputs)
        ]
        shards_meta = {"format": "token-shards", "dataset": domain.id, "fim": recipe.fim.rate}
        outputs.append(
            Output(
                "dataset",
                f"{domain.name}-cpt-tokens",
                Path(result["shards_dir"]),
                shards_meta,
                parents=inputs[1:],
            )  # fmt: skip
        )
        if result["added_tokens"]:
            outputs.append(
                Output(
                    "tokenizer",
                    f"{base.name}-extended",
                    Path(result["tokenizer_dir"]),
                    {"added_tokens": result["added_tokens"]},
                    parents=[base.id],
                )  # fmt: skip
            )
        return outputs, metrics

    return run_stage(
        ws, "cpt", config, inputs, body, force=force, seed=recipe.train.seed, notify=notify
    )
