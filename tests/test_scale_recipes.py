"""recipes/scale/: every recipe loads and trains a few steps here with its width and depth cut
down by dotted overrides (so a typo cannot ship), the 7B preflight says what fits on 8 x 80 GB
and why, and docs/SCALE.md's preflight table is what the preflight computes today."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_pretrain import make_data

from forgeml.core.config import load_recipe
from forgeml.core.errors import ForgeError
from forgeml.launch.cluster import plan_cluster, plan_table
from forgeml.train.preflight import GiB, check_fits, estimate_memory
from forgeml.train.pretrain import pretrain

ROOT = Path(__file__).resolve().parents[1]
SCALE = ROOT / "recipes" / "scale"
DOC = ROOT / "docs" / "SCALE.md"
FAMILIES = ["mistral-125m", "mistral-1b", "mistral-7b", "mixtral-8x7b"]
BEGIN, END = "<!-- preflight: begin -->", "<!-- preflight: end -->"


def scaled_down(path: Path, **extra: object) -> list[str]:
    """Overrides that keep a recipe's every setting but its size: 2 blocks of width 64, short
    sequences, 3 steps; a sliding window stays, at half the sequence."""
    raw = load_recipe(path)
    over = [
        "model.dim=64", "model.n_layers=2", "model.n_heads=4", "model.n_kv_heads=2",
        "model.ffn_hidden=96", "model.max_seq_len=64", "model.vocab_size=null",
        "train.seq_len=32", "train.micro_batch_size=2", "train.grad_accum_steps=2",
        "train.max_steps=3", "train.checkpoint_every=2", "train.eval_every=3",
        "train.eval_batches=2", "train.log_every=1", "train.device=cpu", "eval.batch_size=2",
    ]  # fmt: skip
    if raw.model.sliding_window:
        over.append("model.sliding_window=16")
    return over + [f"{k}={v}" for k, v in extra.items()]


def test_every_scale_recipe_is_listed_and_cited() -> None:
    names = sorted(p.stem for p in SCALE.glob("*.yaml"))
    assert names == sorted(FAMILIES + [f"{f}-cpt" for f in FAMILIES])
    for path in SCALE.glob("*.yaml"):
        recipe = load_recipe(path)
        assert recipe.name == path.stem
        assert recipe.train.strategy == "fsdp"
        assert "arXiv:" in path.read_text(), f"{path.name} cites no source"
        if path.stem.endswith("-cpt"):
            assert recipe.train.init_from and recipe.cpt.from_model == recipe.train.init_from


@pytest.mark.parametrize("family", FAMILIES)
def test_scaled_down_pretraining_and_continued_pretraining_run(tmp_path: Path, family: str):
    train, held = make_data(tmp_path, n_train=4000)
    base = pretrain(
        load_recipe(SCALE / f"{family}.yaml", scaled_down(SCALE / f"{family}.yaml")),
        train_shards=train, eval_shards=held, out_dir=tmp_path / "base", progress=False,
    )  # fmt: skip
    assert base["steps"] == 3 and base["final_eval_loss"] is not None
    cpt_path = SCALE / f"{family}-cpt.yaml"
    # continued pre-training starts from the scaled-down base (a model folder)
    cpt = load_recipe(cpt_path, scaled_down(cpt_path, **{"train.init_from": base["model_dir"]}))
    cont = pretrain(
        cpt, train_shards=train, eval_shards=held, out_dir=tmp_path / "cpt", progress=False
    )
    assert cont["steps"] == 3 and cont["params"] == base["params"]
    if family.startswith("mixtral"):
        assert load_recipe(cpt_path).model.arch == "moe"


def test_7b_preflight_says_what_fits_on_8x80gb_and_why() -> None:
    recipe = load_recipe(SCALE / "mistral-7b.yaml")
    plan = plan_cluster(recipe, nodes=1, gpus_per_node=8, gpu_memory_gib=80, name="mistral-7b")
    assert plan.fits and plan.reason.startswith("fits: ")
    assert "fsdp over 8 GPUs" in plan.reason and "micro-batch 2 x 4096" in plan.reason
    est = plan.estimate
    # FSDP shards the 16 bytes a parameter of fp32 weights, gradients and AdamW over 8 GPUs
    assert est.weights + est.grads + est.optimizer == pytest.approx(16 * plan.params / 8, rel=1e-6)
    assert 7.2e9 < plan.params < 7.3e9 and est.total < 0.9 * 80 * GiB

    # Why FSDP: one whole replica per GPU (DDP) needs its 16 bytes a parameter, ~108 GiB, alone.
    ddp = load_recipe(SCALE / "mistral-7b.yaml", ["train.strategy=ddp"])
    no = plan_cluster(ddp, nodes=1, gpus_per_node=8, gpu_memory_gib=80)
    assert not no.fits and "use FSDP" in no.reason
    assert (no.estimate.weights + no.estimate.grads + no.estimate.optimizer) / GiB > 100
    # And why activation checkpointing: without it the micro-batch must shrink.
    cfg = recipe.model.model_copy(update={"vocab_size": 32000})
    bare = recipe.train.model_copy(update={"activation_checkpointing": False, "dtype": "bf16"})
    est = estimate_memory(cfg, bare, world_size=8, strategy="fsdp", device="cuda")
    with pytest.raises(ForgeError, match="micro_batch_size"):
        check_fits(est, 80 * GiB, model_cfg=cfg, train_cfg=bare)


def scale_doc_section() -> str:
    """The generated part of docs/SCALE.md: each recipe's plan on one node of 8 x 80 GB, and
    for one that does not fit there, on the fewest nodes (up to 16) where it does."""
    plans, reasons = [], []
    for family in FAMILIES:
        for name in (family, f"{family}-cpt"):
            recipe = load_recipe(SCALE / f"{name}.yaml")
            plan = plan_cluster(recipe, nodes=1, gpus_per_node=8, name=name)
            plans.append(plan)
            reasons.append(f"- **{name}** on 8 x 80 GB: {plan.reason}")
            if not plan.fits:
                for nodes in (2, 4, 8, 16):
                    bigger = plan_cluster(recipe, nodes=nodes, gpus_per_node=8, name=name)
                    if bigger.fits:
                        plans.append(bigger)
                        reasons.append(f"- **{name}** on {nodes} x 8 x 80 GB: {bigger.reason}")
                        break
                else:
                    reasons.append(f"- **{name}**: does not fit on up to 16 nodes of 8 x 80 GB")
    return f"{BEGIN}\n{plan_table(plans)}\n" + "\n".join(reasons) + f"\n{END}"


def test_scale_doc_table_is_what_the_preflight_computes(monkeypatch) -> None:
    # The preflight counts parameters on a meta-device model per estimate; the table asks for
    # the same few architectures many times over, so count each once.
    from forgeml.train import preflight

    counted: dict[str, tuple[int, int, int]] = {}
    count = preflight._param_counts

    def cached(cfg):
        key = cfg.model_dump_json()
        if key not in counted:
            counted[key] = count(cfg)
        return counted[key]

    monkeypatch.setattr(preflight, "_param_counts", cached)
    section = scale_doc_section()
    text = DOC.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    if os.environ.get("FORGEML_UPDATE_GOLDEN") == "1":
        DOC.write_text(text[:start] + section + text[end:])
        text = DOC.read_text()
        start, end = text.index(BEGIN), text.index(END) + len(END)
    assert text[start:end] == section, (
        "docs/SCALE.md's preflight table is stale: rerun this test with FORGEML_UPDATE_GOLDEN=1"
    )
