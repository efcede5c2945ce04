"""Continued pre-training: replay mixing, and a tiny model pre-trained on general text (then
saved as a plain transformers checkpoint, i.e. imported) continued on domain text with new
tokens and replay: domain loss goes down, general loss does not blow up."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from acme import build_corpus

from forgeml.core.config import (
    ContinueConfig,
    DataConfig,
    EvalConfig,
    ModelConfig,
    OptimConfig,
    Recipe,
    TrainConfig,
)
from forgeml.core.errors import ConfigError, ForgeError
from forgeml.pipeline.cpt import continue_pretrain_stage, replay_mix
from forgeml.registry import open_registry


def write_docs(path: Path, texts: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = [hashlib.sha256(t.encode()).hexdigest() for t in texts]
    pq.write_table(pa.table({"doc_id": ids, "text": texts, "source": ["t"] * len(texts)}), path)
    return path


def test_replay_mix_is_deterministic_and_hits_the_fraction(tmp_path):
    domain = write_docs(tmp_path / "d.parquet", [f"domain doc {i} " * 20 for i in range(40)])
    general = write_docs(tmp_path / "g.parquet", [f"general text {i} " * 10 for i in range(300)])
    a = replay_mix(domain, general, 0.25, 7, tmp_path / "a.parquet")
    b = replay_mix(domain, general, 0.25, 7, tmp_path / "b.parquet")
    replay_mix(domain, general, 0.25, 8, tmp_path / "c.parquet")
    assert a == b and (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    assert a["domain_docs"] == 40 and abs(a["replay_fraction"] - 0.25) < 0.01
    ta, tc = pq.read_table(tmp_path / "a.parquet"), pq.read_table(tmp_path / "c.parquet")
    assert ta.column_names == ["doc_id", "text", "source", "mix"]
    assert ta["mix"].to_pylist().count("replay") == a["replay_docs"] > 0
    assert ta["text"].to_pylist() != tc["text"].to_pylist()
    # Shuffled: replay documents are spread through the file, not appended at the end.
    assert "replay" in ta["mix"].to_pylist()[: ta.num_rows // 2]
    held = set(pq.read_table(general)["doc_id"].to_pylist()[:100])
    d = replay_mix(domain, general, 0.5, 7, tmp_path / "d.parquet", exclude_ids=held)
    assert not held & set(pq.read_table(tmp_path / "d.parquet")["doc_id"].to_pylist())
    assert abs(d["replay_fraction"] - 0.5) < 0.01
    none = replay_mix(domain, general, 0.0, 7, tmp_path / "e.parquet")
    assert none["replay_docs"] == 0 and none["replay_fraction"] == 0.0
    with pytest.raises(ConfigError):
        replay_mix(domain, general, 1.0, 7, tmp_path / "f.parquet")


TINY = ModelConfig(
    dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=160, max_seq_len=128
)  # fmt: skip


def recipe(steps: int, **cpt) -> Recipe:
    return Recipe(
        name="tiny",
        data=DataConfig(heldout_fraction=0.15),
        model=TINY,
        optim=OptimConfig(lr=3e-3, warmup_steps=5, min_lr_ratio=0.3),
        train=TrainConfig(
            max_steps=steps,
            micro_batch_size=8,
            seq_len=64,
            dtype="fp32",
            device="cpu",
            eval_every=0,
            checkpoint_every=0,
            log_every=20,
            seed=3,
        ),  # fmt: skip
        eval=EvalConfig(batch_size=8, max_batches=8),
        cpt=ContinueConfig(**cpt),
    )


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> dict[str, Path]:
    """General text (memos), domain text (ACME-CL programs) and a base model pre-trained on
    the general text only, with a tokenizer that has never seen the domain."""
    from forgeml.tokenizer.pack import pack_token_shards
    from forgeml.tokenizer.train import train_bpe_tokenizer
    from forgeml.train.pretrain import pretrain

    root = tmp_path_factory.mktemp("cpt")
    files, _ = build_corpus(0, 0.12)
    general = [b.decode() for p, b in sorted(files.items()) if p.startswith("memos/")]
    domain = [b.decode() for p, b in sorted(files.items()) if p.endswith(".acl")]
    gen_parquet = write_docs(root / "general" / "data.parquet", general)
    dom_parquet = write_docs(root / "domain" / "data.parquet", domain)
    tok = train_bpe_tokenizer(general, vocab_size=400, out_dir=root / "tok")
    pack_token_shards([gen_parquet], tok, root / "gen_shards")
    base = pretrain(
        recipe(30), train_shards=root / "gen_shards", out_dir=root / "base",
        tokenizer_dir=tok, progress=False,
    )  # fmt: skip
    return {"general": gen_parquet, "domain": dom_parquet, "base": Path(base["model_dir"])}


NEW_TOKENS = ["DECLARE", "DISPLAY", "END-IF", "NUMBER", "ACCEPT"]


def check_losses(m: dict) -> None:
    # Domain text was new to the model: its loss must fall a lot; the replayed general text
    # must not be forgotten wholesale.
    assert m["domain_loss_after"] < m["domain_loss_before"] - 1.0
    assert m["general_loss_after"] < m["general_loss_before"] + 0.5


def test_cpt_stage_extends_tokenizer_replays_and_registers(workspace, corpora):
    from forgeml.models.hf_io import load_model
    from forgeml.tokenizer.train import load_tokenizer

    reg = open_registry(workspace)
    base_asset = reg.add_asset("model", "base", corpora["base"], metadata={"arch": "dense"})
    gen_asset = reg.add_asset("dataset", "memos", corpora["general"].parent)
    dom_asset = reg.add_asset("dataset", "acl", corpora["domain"].parent)
    cfg = recipe(25, new_tokens=NEW_TOKENS, replay_fraction=0.25, from_model=base_asset.id)
    result = continue_pretrain_stage(
        workspace, cfg, None, dom_asset.id, replay_ref=gen_asset.id, progress=False
    )
    check_losses(result.metrics)
    model_asset = reg.get_asset(result.output)
    assert model_asset.kind == "model"
    upstream = {n["id"] for n in reg.lineage(model_asset.id, "up").nodes}
    assert {base_asset.id, dom_asset.id, gen_asset.id} <= upstream
    trained = load_model(model_asset.path)
    new_tok = load_tokenizer(model_asset.path)
    assert trained.cfg.vocab_size == new_tok.get_vocab_size(with_added_tokens=True) == 405
    assert new_tok.token_to_id("DECLARE") == 400
    kinds = sorted(reg.get_asset(i).kind for i in result.outputs)
    assert kinds == ["dataset", "model", "tokenizer"]

    again = continue_pretrain_stage(
        workspace, cfg, None, dom_asset.id, replay_ref=gen_asset.id, progress=False
    )
    assert again.cached and again.outputs == result.outputs
    with pytest.raises(ConfigError, match="replay"):
        continue_pretrain_stage(
            workspace, recipe(5, replay_fraction=0.2), base_asset.id, dom_asset.id,
            progress=False,
        )  # fmt: skip


@pytest.mark.slow
def test_cpt_from_a_plain_transformers_checkpoint(corpora, tmp_path):
    """The base is re-saved by `transformers` (no forgeml files): an imported HF model."""
    from transformers import MistralForCausalLM

    from forgeml.pipeline.cpt import continue_pretrain
    from forgeml.tokenizer.train import TOKENIZER_FILES

    hf_dir = tmp_path / "hf_base"
    MistralForCausalLM.from_pretrained(corpora["base"]).save_pretrained(hf_dir)
    for name in TOKENIZER_FILES:
        if (corpora["base"] / name).is_file():
            shutil.copyfile(corpora["base"] / name, hf_dir / name)
    assert not (hf_dir / "forgeml_model.json").exists()
    result = continue_pretrain(
        recipe(25, new_tokens=NEW_TOKENS, replay_fraction=0.25), base_model_dir=hf_dir,
        domain_parquet=corpora["domain"], general_parquet=corpora["general"],
        out_dir=tmp_path / "out",
    )  # fmt: skip
    check_losses(result)
    assert result["mix"]["replay_docs"] > 0 and len(result["added_tokens"]) == 5


def test_pretrain_stage_continues_from_an_imported_transformers_model(workspace, corpora, tmp_path):
    """`forgeml import hf` of a checkpoint written by `transformers`, then the pretrain stage
    with `train.init_from` set to the imported asset: step 1 starts from exactly those
    weights, and the domain loss falls."""
    import json

    import torch
    from transformers import MistralForCausalLM

    from forgeml.models.hf_io import load_model
    from forgeml.pipeline.interop import import_hf_stage
    from forgeml.pipeline.pack_stage import pack_stage
    from forgeml.pipeline.pretrain_stage import pretrain_stage
    from forgeml.tokenizer.pack import TokenShards
    from forgeml.tokenizer.train import TOKENIZER_FILES
    from forgeml.train.data import PretrainBatches
    from forgeml.train.pretrain import evaluate_loss

    hf_dir = tmp_path / "hf_base"
    MistralForCausalLM.from_pretrained(corpora["base"]).save_pretrained(hf_dir)
    for name in TOKENIZER_FILES:
        if (corpora["base"] / name).is_file():
            shutil.copyfile(corpora["base"] / name, hf_dir / name)
    assert not (hf_dir / "forgeml_model.json").exists()
    imported = import_hf_stage(workspace, hf_dir, "hf-base")
    reg = open_registry(workspace)
    dom = reg.add_asset("dataset", "acl", corpora["domain"].parent)
    shards = pack_stage(workspace, dom.id, imported.metrics["tokenizer"], heldout_fraction=0.15)
    shards_dir = Path(reg.get_asset(shards.output).path)

    cfg = recipe(25)
    cfg = cfg.model_copy(
        update={
            # the recipe's own model section is ignored: the imported model's is used
            "model": TINY.model_copy(update={"dim": 32, "n_heads": 2, "n_kv_heads": 1}),
            "train": cfg.train.model_copy(update={"init_from": "hf-base", "log_every": 1}),
        }
    )
    result = pretrain_stage(
        workspace, cfg, shards.output, imported.metrics["tokenizer"], progress=False
    )
    base = load_model(reg.get_asset(imported.output).path)
    trained_asset = reg.get_asset(result.output)
    trained = load_model(trained_asset.path)
    assert trained.cfg == base.cfg
    assert imported.output in {n["id"] for n in reg.lineage(trained_asset.id, "up").nodes}

    # Step 1's logged loss is the imported weights' loss on the first batch.
    batches = PretrainBatches(
        TokenShards(shards_dir / "train"), seq_len=64, global_batch_size=8, seed=3
    )
    ((x, y),) = batches.next_micro_batches(8, 1)
    metrics = workspace.runs_dir / "pretrain" / result.run_id / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.open()]
    with torch.no_grad():
        assert rows[0]["step"] == 1 and abs(rows[0]["loss"] - base(x, y).item()) < 1e-4

    held = TokenShards(shards_dir / "heldout")
    kw = dict(seq_len=64, batch_size=8, max_batches=8, device="cpu", dtype="fp32")
    before, after = evaluate_loss(base, held, **kw), evaluate_loss(trained, held, **kw)
    assert after < before - 1.0, (before, after)

    # Shards made with another tokenizer would train the weights on the wrong ids: refused.
    from forgeml.tokenizer.train import train_bpe_tokenizer

    domain_texts = pq.read_table(corpora["domain"])["text"].to_pylist()
    other = train_bpe_tokenizer(domain_texts, vocab_size=400, out_dir=tmp_path / "other_tok")
    other_tok = reg.add_asset("tokenizer", "other", other)
    with pytest.raises(ForgeError, match="another tokenizer"):
        pretrain_stage(workspace, cfg, shards.output, other_tok.id, progress=False)
