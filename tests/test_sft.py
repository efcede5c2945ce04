"""SFT loop and stage on a tiny model and the ACME chat data: loss goes down (tool-use turns
included), LoRA trains only the adapter, gradient accumulation and resume are invariant, and the
stage registers model/adapter assets with lineage; merge == adapter applied; the CLI runs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from acme_sft import build_sft_records, generate_sft_data
from typer.testing import CliRunner

from forgeml.core.config import ModelConfig, SFTConfig, validate_recipe
from forgeml.models.dense import Transformer
from forgeml.models.hf_io import load_model, save_model
from forgeml.models.lora import load_adapter
from forgeml.tokenizer.train import train_bpe_tokenizer
from forgeml.train.chat_data import load_chat_examples
from forgeml.train.metrics import read_metrics
from forgeml.train.sft import sft

TASKS = {"policy_qa", "tool_status"}


@pytest.fixture(scope="module")
def acme(tmp_path_factory) -> dict[str, Path]:
    """A tiny base model (with its tokenizer) and ACME chat data: policy Q&A and tool traces."""
    root = tmp_path_factory.mktemp("sft")
    records = [r for r in build_sft_records(seed=0, scale=0.1) if r["metadata"]["task"] in TASKS]
    for split in ("train", "heldout"):
        rows = [r for r in records if r["metadata"]["split"] == split]
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = train_bpe_tokenizer(
        [json.dumps(r) for r in records], vocab_size=2048, out_dir=root / "tok"
    )
    torch.manual_seed(0)
    cfg = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=128,
                      vocab_size=2048, max_seq_len=512, tie_embeddings=False)  # fmt: skip
    save_model(Transformer(cfg), root / "base", tokenizer_dir=tok)
    return {"root": root, "base": root / "base", "train": root / "train.jsonl",
            "heldout": root / "heldout.jsonl"}  # fmt: skip


def config(**train) -> SFTConfig:
    t = dict(max_steps=8, micro_batch_size=2, seq_len=512, dtype="fp32", eval_every=0,
             checkpoint_every=0, log_every=1, seed=3)  # fmt: skip
    t.update(train)
    return SFTConfig.model_validate({"optim": {"lr": 5e-3, "warmup_steps": 2}, "train": t})


def run(acme, out: Path, cfg: SFTConfig, heldout: bool = True, **kw) -> dict:
    return sft(cfg, base_model_dir=acme["base"], train_data=acme["train"], out_dir=out,
               heldout_data=acme["heldout"] if heldout else None, progress=False, **kw)  # fmt: skip


FULL = config(max_steps=14, checkpoint_every=7, keep_checkpoints=2)


@pytest.fixture(scope="module")
def full_run(acme, tmp_path_factory) -> tuple[Path, dict]:
    """One full fine-tune shared by the learning and the resume tests."""
    out = tmp_path_factory.mktemp("full")
    return out, run(acme, out, FULL)


def test_full_sft_learns_chat_and_tool_use(acme, full_run, tmp_path):
    out, summary = full_run
    losses = [r["loss"] for r in read_metrics(out / "metrics.jsonl")]
    assert losses[-1] < 0.75 * losses[0], losses
    assert summary["final_eval_loss"] < 0.85 * losses[0]
    assert summary["data"]["kept"] > 20 and summary["data"]["n_failed"] == 0
    assert summary["rows"] < summary["examples"]  # short Q&A turns were packed together
    # the tool-use conversations alone: their loss (assistant tool calls + answers) went down
    tools_only = tmp_path / "tools.jsonl"
    tools_only.write_text("".join(
        line + "\n" for line in acme["train"].read_text().splitlines() if '"tool_calls"' in line
    ))  # fmt: skip
    from forgeml.tokenizer.train import load_tokenizer
    from forgeml.train.chat_data import pack_examples, pad_token_id
    from forgeml.train.sft import evaluate_loss

    tok = load_tokenizer(acme["base"])
    examples, _ = load_chat_examples(tools_only, tok, max_tokens=513)
    rows = pack_examples(examples, 512, pad_token_id(tok))
    kw = dict(batch_size=4, device="cpu", dtype="fp32", packing=True)
    before = evaluate_loss(load_model(acme["base"]), rows, **kw)
    after = evaluate_loss(load_model(out / "model"), rows, **kw)
    assert after < 0.8 * before, (before, after)


def test_lora_trains_only_the_adapter(acme, tmp_path):
    cfg = config(max_steps=3).model_copy(update={"method": "lora"})
    summary = run(acme, tmp_path, cfg, heldout=False)
    assert summary["trainable_params"] < 0.2 * summary["params"]
    adapter = Path(summary["adapter_dir"])
    assert (adapter / "adapter_config.json").is_file() and (adapter / "tokenizer.json").is_file()
    base = load_model(acme["base"])
    tuned = load_adapter(load_model(acme["base"]), adapter)
    frozen = {k: v for k, v in tuned.state_dict().items() if "lora_" not in k}
    for key, value in base.state_dict().items():
        ours = key.replace(".wqkv.", ".wqkv.base_layer.").replace(".wo.", ".wo.base_layer.")
        ours = ours.replace(".w13.", ".w13.base_layer.").replace(".w2.", ".w2.base_layer.")
        assert torch.equal(frozen[ours], value), key  # base weights untouched
    assert all(m.lora_B.abs().sum() > 0 for n, m in tuned.named_modules() if hasattr(m, "lora_B"))


def _params(out: Path) -> dict[str, torch.Tensor]:
    return load_model(out / "model").state_dict()


def test_grad_accumulation_is_invariant(acme, tmp_path):
    """One batch of 2 rows == 2 micro-batches of 1 (token-weighted, rows hold unequal numbers
    of assistant tokens). Adam divides each gradient element by its own magnitude, which turns
    float rounding in elements with gradients near eps into visible differences: a larger eps
    keeps this comparison about the gradients."""

    def cfg(micro: int, accum: int) -> SFTConfig:
        c = config(max_steps=2, micro_batch_size=micro, grad_accum_steps=accum)
        return c.model_copy(update={"optim": c.optim.model_copy(update={"eps": 1e-4})})

    one = run(acme, tmp_path / "a", cfg(2, 1), heldout=False)
    four = run(acme, tmp_path / "b", cfg(1, 2), heldout=False)
    assert one["final_train_loss"] == pytest.approx(four["final_train_loss"], rel=1e-5)
    a, b = _params(tmp_path / "a"), _params(tmp_path / "b")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=2e-6, rtol=0)


def test_resume_equals_uninterrupted_run(acme, full_run, tmp_path):
    out, summary = full_run
    shutil.copytree(out / "checkpoints" / "step_00000007",
                    tmp_path / "checkpoints" / "step_00000007")  # fmt: skip
    with pytest.raises(Exception, match="recipe changed"):
        changed = FULL.model_copy(update={"optim": FULL.optim.model_copy(update={"lr": 1e-2})})
        run(acme, tmp_path, changed, resume=True)
    resumed = run(acme, tmp_path, FULL, resume=True)
    assert resumed["steps"] == 14 and resumed["final_eval_loss"] == summary["final_eval_loss"]
    a, b = _params(out), _params(tmp_path)
    assert all(torch.equal(a[k], b[k]) for k in a)  # bitwise on CPU


def test_stage_lineage_merge_and_cli(acme, tmp_path, workspace):
    from forgeml.cli import app
    from forgeml.pipeline.interop import import_hf_stage
    from forgeml.pipeline.sft_stage import merge_adapter_stage, sft_stage
    from forgeml.registry import open_registry

    base_id = import_hf_stage(workspace, acme["base"], name="tiny").output
    recipe = validate_recipe({"sft": {
        "method": "lora", "lora": {"rank": 4, "targets": ["wqkv", "w13"]},
        "optim": {"lr": 3e-3, "warmup_steps": 1}, "train": config(max_steps=3).train.model_dump(),
    }})  # fmt: skip
    res = sft_stage(workspace, recipe, base_id, str(acme["train"]), str(acme["heldout"]),
                    progress=False)  # fmt: skip
    reg = open_registry(workspace)
    adapter = reg.get_asset(res.output)
    assert adapter.kind == "adapter" and adapter.metadata["base_model"] == base_id
    up = {n["id"] for n in reg.lineage(adapter.id, "up").nodes}
    dataset = adapter.metadata["data"]
    assert {base_id, dataset} <= up and reg.get_asset(dataset).metadata["format"] == "chat-jsonl"
    again = sft_stage(workspace, recipe, base_id, str(acme["train"]), str(acme["heldout"]),
                      progress=False)  # fmt: skip
    assert again.cached and again.output == res.output

    merged = reg.get_asset(merge_adapter_stage(workspace, adapter.id).output)
    assert merged.kind == "model" and {base_id, adapter.id} <= {
        n["id"] for n in reg.lineage(merged.id, "up").nodes
    }
    x = torch.randint(11, 2048, (2, 20))
    with torch.no_grad():
        applied = load_adapter(load_model(acme["base"]), adapter.path)(x)
        torch.testing.assert_close(load_model(merged.path)(x), applied, atol=1e-5, rtol=0)

    # the CLI: full fine-tune of the same base on a chat dataset made by examples/acme/make_data.py
    runner = CliRunner()
    data = tmp_path / "acme-sft"
    ws = ["-w", str(workspace.root), "-q"]
    script = Path(__file__).resolve().parents[1] / "examples" / "acme" / "make_data.py"
    made = subprocess.run(
        [sys.executable, str(script), "sft", "--out", str(data), "--scale", "0.02"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert json.loads((data / "manifest.json").read_text())["records"]["train"] > 0
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text("sft:\n  train: {max_steps: 2, micro_batch_size: 2, seq_len: 512, "
                           "dtype: fp32, eval_every: 0, checkpoint_every: 0}\n")  # fmt: skip
    out = runner.invoke(app, [*ws, "train", "sft", str(recipe_file), "sft.overlength=drop",
                              "--base", base_id, "--data", str(acme["train"])])  # fmt: skip
    assert out.exit_code == 0, out.output
    assert "model model-" in out.output and "data:" in out.output
    out = runner.invoke(app, [*ws, "adapters", "merge", adapter.id])
    assert out.exit_code == 0 and "(cached)" in out.output, out.output


def test_acme_sft_data_is_deterministic_valid_and_split(tmp_path):
    a = generate_sft_data(tmp_path / "a", seed=0, scale=0.05)
    b = generate_sft_data(tmp_path / "b", seed=0, scale=0.05)
    for name in ("train.jsonl", "heldout.jsonl", "tools.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert a == b and a["records"]["heldout"] > 0
    assert set(a["by_task"]) == {
        "policy_qa", "tool_policy", "translate", "translate_snippet", "tool_run", "tool_status"
    }  # fmt: skip
    train = [json.loads(x) for x in (tmp_path / "a" / "train.jsonl").read_text().splitlines()]
    held = [json.loads(x) for x in (tmp_path / "a" / "heldout.jsonl").read_text().splitlines()]
    assert not {r["id"] for r in train} & {r["id"] for r in held}
    # every record validates and renders; tool traces call a tool the record offers
    from forgeml.train.chat_data import record_messages

    for i, r in enumerate(train + held):
        messages, tools = record_messages(r, f"acme:{i}")
        if r["metadata"]["task"].startswith("tool_"):
            call = messages[2]["tool_calls"][0]["function"]
            assert call["name"] == r["metadata"]["tool"]
            assert call["name"] in {t["function"]["name"] for t in tools}
    # translation requests carry their execution tests
    t = next(r for r in train if r["metadata"]["task"] == "translate")
    assert t["metadata"]["tests"][0]["expected"]


@pytest.mark.slow
def test_pipeline_runs_sft_after_pretraining(workspace, text_folder, tmp_path):
    from forgeml.pipeline.run import run_pipeline
    from forgeml.registry import open_registry

    records = [
        r for r in build_sft_records(seed=0, scale=0.05) if r["metadata"]["task"] == "policy_qa"
    ]
    chat = tmp_path / "qa.jsonl"
    chat.write_text("".join(json.dumps(r) + "\n" for r in records))
    recipe = validate_recipe({
        "data": {"sources": [str(text_folder)], "heldout_fraction": 0.1},
        "tokenizer": {"vocab_size": 400},
        "model": {"dim": 32, "n_layers": 1, "n_heads": 2, "n_kv_heads": 1, "ffn_hidden": 64,
                  "max_seq_len": 128},
        "train": {"max_steps": 5, "micro_batch_size": 4, "seq_len": 64, "eval_every": 0,
                  "checkpoint_every": 0, "dtype": "fp32"},
        "eval": {"max_batches": 1},
        "sft": {"data": str(chat), "train": {"max_steps": 3, "micro_batch_size": 2,
                "seq_len": 128, "checkpoint_every": 0, "dtype": "fp32"}},
    })  # fmt: skip
    result = run_pipeline(workspace, recipe, progress=False)
    stages = [s.stage for s in result.stages]
    assert stages[-1] == "sft" and "pretrain" in stages
    tuned = open_registry(workspace).get_asset(result.stage("sft").output)
    assert tuned.kind == "model" and tuned.metadata["base_model"] == result.stage("pretrain").output
    assert all(s.cached for s in run_pipeline(workspace, recipe, progress=False).stages)


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(acme, tmp_path):
    """torchrun with 2 processes x 1 row == 1 process x 2 micro-batches of 1 (token-weighted
    loss over the global batch, so rows with unequal assistant tokens weigh the same)."""
    import os
    import subprocess
    import sys

    import yaml

    cfg = config(max_steps=2, micro_batch_size=1, grad_accum_steps=1)
    cfg = cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"eps": 1e-4})})
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"sft": cfg.model_dump(mode="json")}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "forgeml.train.sft", "--recipe", str(recipe), "--base", str(acme["base"]),
           "--data", str(acme["train"]), "--out", str(tmp_path / "ddp"), "--quiet"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ddp = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    one_cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"grad_accum_steps": 2})})
    one = run(acme, tmp_path / "one", one_cfg, heldout=False)
    assert ddp["world_size"] == 2 and ddp["tokens"] == one["tokens"]
    assert ddp["final_train_loss"] == pytest.approx(one["final_train_loss"], rel=1e-5)
    a, b = _params(tmp_path / "ddp"), _params(tmp_path / "one")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=2e-6, rtol=0)
