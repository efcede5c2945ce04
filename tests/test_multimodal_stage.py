"""The `multimodal` stage: a recipe section trains a tiny vision-LM as registered runs (media
dataset, new model, align, joint) with lineage to the tokenizer / base LM and the data, cached
by config; `forgeml train multimodal` and `pipeline run` run it; a text LM asset starts the
model with its weights and a tokenizer grown by the image placeholder, a SigLIP folder gives
its image encoder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from forgeml.core.config import validate_recipe
from forgeml.core.errors import ConfigError
from forgeml.core.workspace import init_workspace
from forgeml.pipeline.multimodal_stage import multimodal_init_stage, multimodal_stages
from forgeml.registry import open_registry

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
VISION = {"image_size": 32, "patch_size": 8, "dim": 32, "n_layers": 1, "n_heads": 2,
          "ffn_hidden": 48}  # fmt: skip
LM = {"dim": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "ffn_hidden": 48,
      "max_seq_len": 64}  # fmt: skip


def make_media(root: Path, n: int = 16) -> Path:
    """Colour squares (with noise) and the question of their colour; returns the JSONL."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        name = list(COLOURS)[i % 3]
        pixels = np.clip(np.array(COLOURS[name]) + rng.normal(0, 20, (32, 32, 3)), 0, 255)
        Image.fromarray(pixels.astype(np.uint8)).save(root / f"{i}.png")
        rows.append({"image": f"{i}.png", "prompt": "what colour?", "answer": f"it is {name}."})
    (root / "mm.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "mm.jsonl"


def make_tokenizer(out: Path) -> Path:
    from forgeml.tokenizer.train import train_bpe_tokenizer

    corpus = [f"what colour? it is {c}." for c in COLOURS] * 30
    return Path(train_bpe_tokenizer(corpus, vocab_size=280, out_dir=out))


def phase(steps: int, checkpoint_every: int = 0, lr: float = 3e-3) -> dict:
    return {
        "optim": {"lr": lr, "warmup_steps": 1, "weight_decay": 0.0},
        "train": {"max_steps": steps, "micro_batch_size": 4, "seq_len": 48, "dtype": "fp32",
                  "checkpoint_every": checkpoint_every, "log_every": 1, "seed": 3},
    }  # fmt: skip


def mm_recipe(data: Path, tokenizer: Path | None, align: int = 2, joint: int = 2, **kw) -> dict:
    section = {"data": str(data), "heldout_fraction": 0.25, "vision": VISION,
               "align": phase(align), "joint": phase(joint), **kw}  # fmt: skip
    if tokenizer is not None:
        section["tokenizer"] = str(tokenizer)
    return {"name": "tiny", "model": LM, "multimodal": section}


def parents(reg, asset_id: str) -> set[str]:
    """The assets `asset_id` was made from (one step up the lineage)."""
    edges = reg.lineage(asset_id, "up", max_depth=1).edges
    return {a for a, b in edges if b == asset_id and not a.startswith("run-")}


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("mmstage")
    return make_media(root / "data"), make_tokenizer(root / "tok")


def test_stages_register_models_with_lineage_and_are_cached(tmp_path, media):
    data, tok = media
    ws = init_workspace(tmp_path / "ws")
    recipe = validate_recipe(mm_recipe(data, tok))
    results = multimodal_stages(ws, recipe, progress=False)
    assert [r.stage for r in results] == ["mm-init", "mm-align", "mm-joint"]
    assert not any(r.cached for r in results)
    reg = open_registry(ws)
    init, align, joint = (reg.get_asset(r.output) for r in results)
    dataset = reg.get_asset(joint.metadata["data"])
    assert dataset.metadata["records"] == 16 and dataset.metadata["media_files"] == 16
    tokenizer = reg.get_asset(init.metadata["tokenizer"])
    assert parents(reg, init.id) == {tokenizer.id}
    assert parents(reg, align.id) == {init.id, dataset.id}
    assert parents(reg, joint.id) == {align.id, dataset.id}
    assert joint.metadata["format"] == "multimodal" and joint.metadata["stage"] == "joint"
    assert results[2].metrics["heldout_loss"] < results[1].metrics["heldout_loss_before"]

    again = multimodal_stages(ws, recipe, progress=False)
    assert all(r.cached for r in again) and [r.output for r in again] == [r.output for r in results]
    changed = validate_recipe(mm_recipe(data, tok, joint=3))
    third = multimodal_stages(ws, changed, progress=False)
    assert [r.cached for r in third] == [True, True, False]


def test_a_text_lm_asset_starts_the_model_with_its_weights(tmp_path, media):
    from forgeml.core.config import ModelConfig
    from forgeml.models.hf_io import save_model
    from forgeml.models.hf_multimodal_io import load_multimodal
    from forgeml.models.registry import build_model
    from forgeml.tokenizer.train import load_tokenizer

    data, tok = media
    ws = init_workspace(tmp_path / "ws")
    vocab = load_tokenizer(tok).get_vocab_size()
    torch.manual_seed(1)
    lm = build_model(ModelConfig(**LM, vocab_size=vocab))
    folder = save_model(lm, tmp_path / "lm", tokenizer_dir=tok)
    base = open_registry(ws).add_asset("model", "tiny-lm", folder)
    recipe = validate_recipe(mm_recipe(data, None))
    res = multimodal_init_stage(ws, recipe, base.id)
    asset = open_registry(ws).get_asset(res.output)
    assert parents(open_registry(ws), asset.id) == {base.id}
    model = load_multimodal(asset.path)
    assert model.cfg.lm.vocab_size == vocab + 1  # <|image|> added after the vocabulary
    assert load_tokenizer(asset.path).token_to_id("<|image|>") == vocab == model.cfg.image_token_id
    new, old = model.lm.state_dict(), lm.state_dict()
    assert torch.equal(new["tok_embeddings.weight"][:vocab], old["tok_embeddings.weight"])
    assert torch.equal(new["layers.0.attention.wo.weight"], old["layers.0.attention.wo.weight"])


def test_a_recipe_without_an_lm_or_encoder_is_refused(tmp_path, media):
    data, tok = media
    ws = init_workspace(tmp_path / "ws")
    with pytest.raises(ConfigError, match="no LM to start from"):
        multimodal_stages(ws, validate_recipe(mm_recipe(data, None)), progress=False)
    for vision, error in (
        ({"patch_size": 5}, "multimodal.vision: .* multiple of patch_size"),
        ({"pixel_shufle": 2}, "multimodal.vision.pixel_shufle: Extra"),
    ):
        with pytest.raises(ConfigError, match=error):
            recipe = mm_recipe(data, tok, vision={**VISION, **vision})
            multimodal_stages(ws, validate_recipe(recipe), progress=False)
    with pytest.raises(ConfigError, match="unknown key 'multimodal.align.optm'"):
        validate_recipe({"multimodal": {"align": {"optm": {}}}})


def test_the_cli_trains_the_recipe(tmp_path, media, monkeypatch):
    import yaml
    from typer.testing import CliRunner

    from forgeml.cli import app

    data, tok = media
    monkeypatch.setenv("FORGEML_WORKSPACE", str(tmp_path / "ws"))
    init_workspace(tmp_path / "ws")
    path = tmp_path / "mm.yaml"
    path.write_text(yaml.safe_dump(mm_recipe(data, tok, align=2, joint=2)))
    run = CliRunner().invoke(app, ["train", "multimodal", str(path), "multimodal.joint=null"])
    assert run.exit_code == 0, run.output
    assert "mm-align: model model-" in run.output and "mm-joint" not in run.output


@pytest.mark.slow
def test_pipeline_run_adds_the_multimodal_stages_on_the_pretrained_lm(tmp_path, media):
    from acme import generate_corpus
    from test_pipeline import TINY

    from forgeml.pipeline.run import run_pipeline

    corpus = tmp_path / "acme"
    generate_corpus(corpus, seed=0, scale=0.15)
    data, _ = media
    raw = {**TINY, "data": {**TINY["data"], "sources": [str(corpus)]},
           "train": {**TINY["train"], "max_steps": 4}, "generate": {"prompts": []},
           "multimodal": mm_recipe(data, None, align=1, joint=1)["multimodal"]}  # fmt: skip
    ws = init_workspace(tmp_path / "ws")
    result = run_pipeline(ws, validate_recipe(raw), progress=False)
    stages = [s.stage for s in result.stages]
    assert stages[-3:] == ["mm-init", "mm-align", "mm-joint"]
    reg = open_registry(ws)
    init = reg.get_asset(result.stage("mm-init").output)
    assert parents(reg, init.id) == {result.stage("pretrain").output}
    assert init.metadata["base_model"] == result.stage("pretrain").output


def test_a_siglip_tower_from_disk_is_the_image_encoder(tmp_path, media):
    transformers = pytest.importorskip("transformers")
    from forgeml.models.hf_multimodal_io import load_multimodal
    from forgeml.models.hf_towers import load_vision_tower

    torch.manual_seed(0)
    siglip = transformers.SiglipVisionModel(
        transformers.SiglipVisionConfig(
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        )  # fmt: skip
    )
    siglip.save_pretrained(tmp_path / "siglip")
    data, tok = media
    ws = init_workspace(tmp_path / "ws")
    raw = mm_recipe(data, tok, vision={"n_layers": 1}, vision_tower=str(tmp_path / "siglip"))
    res = multimodal_init_stage(ws, validate_recipe(raw))
    model = load_multimodal(open_registry(ws).get_asset(res.output).path)
    tower = load_vision_tower(tmp_path / "siglip", n_layers=1)  # the penultimate block
    assert model.cfg.vision == tower.cfg
    ours = model.vision.state_dict()
    for key, value in tower.state_dict().items():
        assert torch.equal(ours[key], value), key
