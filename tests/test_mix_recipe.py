"""Weighted data mixing from a recipe: `data.mix.weights` re-weights the sources between
ingest/curation and the tokenizer, and the packed data follows the weights."""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from forgeml.core.config import load_recipe, validate_recipe
from forgeml.core.errors import ConfigError, DataError
from forgeml.data.mix import mix_by_source
from forgeml.pipeline.ingest_stage import ingest_stage
from forgeml.pipeline.run import run_pipeline
from forgeml.registry import open_registry

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda sigma".split()


def source_folder(root: Path, name: str, docs: int) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    for i in range(docs):
        body = " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(60))
        (folder / f"{name}_{i:02d}.txt").write_text(f"{name} {i}: {body}\n")
    return folder


def write_recipe(tmp_path: Path, weights: dict[str, float]) -> Path:
    recipe = {
        "name": "mix",
        "data": {
            "name": "mixed",
            "sources": ["corpus/big", "corpus/small"],  # relative to the recipe file
            "heldout_fraction": 0.0,
            "mix": {"weights": weights, "seed": 1},
        },
        "tokenizer": {"vocab_size": 300},
        "model": {"dim": 32, "n_layers": 1, "n_heads": 2, "n_kv_heads": 2, "ffn_hidden": 64},
        "train": {
            "max_steps": 1, "micro_batch_size": 2, "seq_len": 32, "eval_every": 0,
            "checkpoint_every": 0, "dtype": "fp32", "log_every": 1,
        },
    }  # fmt: skip
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_recipe_weights_set_the_source_proportions_of_the_packed_data(workspace, tmp_path):
    # 30 documents in big/, 10 in small/: unmixed, big/ is 3/4 of the data; the weights turn
    # that around to 1:3, up-sampling small/ and sampling big/ down.
    source_folder(tmp_path / "corpus", "big", 30)
    source_folder(tmp_path / "corpus", "small", 10)
    rec = load_recipe(write_recipe(tmp_path, {"corpus/big": 1, "corpus/small": 3}))
    big, small = (str((tmp_path / "corpus" / n).resolve()) for n in ("big", "small"))
    assert rec.data.mix.weights == {big: 1, small: 3}

    result = run_pipeline(workspace, rec, progress=False)
    assert [s.stage for s in result.stages][:4] == ["ingest", "mix", "tokenizer", "pack"]
    mixed = result.stage("mix")
    reg = open_registry(workspace)
    assert (result.stage("ingest").output, mixed.output) in reg.lineage(mixed.output, "up").edges
    pack = result.stage("pack").output
    assert (mixed.output, pack) in reg.lineage(pack, "up").edges  # the mixture was packed

    table = pq.read_table(Path(reg.get_asset(mixed.output).path) / "data.parquet")
    chars = pc.utf8_length(table.column("text")).to_numpy()
    source = table.column("source").to_numpy(zero_copy_only=False)
    share_small = chars[source == small].sum() / chars.sum()
    assert share_small == pytest.approx(0.75, abs=0.03)
    assert mixed.metrics["share:small"] == pytest.approx(0.75, abs=0.03)
    # small/ was repeated to reach its share: more rows than its 10 documents
    assert (source == small).sum() > 10 and (source == big).sum() < 30

    again = run_pipeline(workspace, rec, progress=False)
    assert again.stage("mix").cached and again.stage("mix").output == mixed.output


def test_mix_weights_must_name_every_source_and_be_positive(tmp_path):
    data = {"sources": ["/data/a", "/data/b"]}
    with pytest.raises(ConfigError, match="no weight for data.sources entry /data/b"):
        validate_recipe({"data": {**data, "mix": {"weights": {"/data/a": 1}}}})
    with pytest.raises(ConfigError, match="/data/c, which is not in data.sources"):
        validate_recipe({"data": {**data, "mix": {"weights": {"/data/a": 1, "/data/c": 1}}}})
    with pytest.raises(ConfigError, match="weights must be > 0"):
        validate_recipe({"data": {**data, "mix": {"weights": {"/data/a": 1, "/data/b": 0}}}})


def test_mixing_a_source_without_documents_says_which(workspace, tmp_path):
    a = source_folder(tmp_path, "a", 3)
    ds = ingest_stage(workspace, [a], name="a")
    parquet = Path(open_registry(workspace).get_asset(ds.output).path) / "data.parquet"
    with pytest.raises(DataError, match="no documents from it"):
        mix_by_source(parquet, {str(a): 1, str(tmp_path / "b"): 1}, tmp_path / "out.parquet")
    with pytest.raises(DataError, match="have no mix weight"):
        mix_by_source(parquet, {}, tmp_path / "out.parquet")
