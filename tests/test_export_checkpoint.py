"""`forgeml export` from a training checkpoint: a (sharded) DCP checkpoint becomes one HF
folder that transformers loads with our logits, written as one model.safetensors or as
size-capped shards with `model.safetensors.index.json`, as transformers writes them."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from forgeml.cli import app
from forgeml.core.config import ModelConfig, OptimConfig
from forgeml.core.errors import DataError, ForgeError
from forgeml.models.hf_io import load_model
from forgeml.models.registry import build_model
from forgeml.pipeline.interop import export_checkpoint
from forgeml.train.checkpoint import save_checkpoint
from forgeml.train.optim import build_optimizer

transformers = pytest.importorskip("transformers")

DENSE = ModelConfig(
    dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=96, vocab_size=97, max_seq_len=64,
    tie_embeddings=True,
)  # fmt: skip
MOE = DENSE.model_copy(
    update={
        "arch": "moe",
        "n_experts": 4,
        "top_k": 2,
        "moe_ffn_hidden": 48,
        "gating": "softmax",
        "tie_embeddings": False,
    }  # fmt: skip
)


def _trained(cfg: ModelConfig) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = build_model(cfg)
    optimizer = build_optimizer(model, OptimConfig(lr=1e-2), "cpu")
    x = torch.randint(0, cfg.vocab_size, (2, 16))
    model(x, x).backward()
    optimizer.step()
    return model.eval(), optimizer


def _logits(model: torch.nn.Module, hf_dir) -> tuple[torch.Tensor, torch.Tensor]:
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, attn_implementation="sdpa")
    x = torch.randint(0, model.cfg.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model(x), hf(x).logits


@pytest.mark.parametrize("cfg", [DENSE, MOE], ids=["dense-tied", "moe"])
def test_a_checkpoint_exports_to_one_file_or_to_indexed_shards(tmp_path, cfg):
    model, optimizer = _trained(cfg)
    ckpt = save_checkpoint(tmp_path / "run" / "checkpoints", 2, model=model, optimizer=optimizer,
                           data_state={})  # fmt: skip

    single = export_checkpoint(tmp_path / "run", tmp_path / "single")  # the run's latest
    assert sorted(p.name for p in single.glob("model*")) == ["model.safetensors"]
    ours, theirs = _logits(model, single)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)

    sharded = export_checkpoint(ckpt, tmp_path / "sharded", max_shard_size=60_000)
    shards = sorted(p.name for p in sharded.glob("model-*.safetensors"))
    assert len(shards) >= 2 and not (sharded / "model.safetensors").exists()
    assert all(s.endswith(f"-of-{len(shards):05d}.safetensors") for s in shards)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == shards
    assert index["metadata"]["total_size"] == sum(
        t.numel() * t.element_size()
        for k, t in model.state_dict().items()
        if not (cfg.tie_embeddings and k == "output.weight")
    )
    ours, theirs = _logits(model, sharded)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    again = load_model(sharded)  # and forgeml reads the shards back exactly
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())


def test_export_refuses_what_it_cannot_write_faithfully(tmp_path):
    model, optimizer = _trained(DENSE)
    model.layers[0].attention.register_parameter(
        "lora_a", torch.nn.Parameter(torch.zeros(4, DENSE.dim))
    )  # a LoRA run's checkpoint holds weights the base architecture has not
    ckpt = save_checkpoint(tmp_path / "ckpt", 1, model=model, optimizer=optimizer, data_state={})
    with pytest.raises(DataError, match=r"layers\.0\.attention\.lora_a"):
        export_checkpoint(ckpt, tmp_path / "out")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(ForgeError, match="not empty"):
        export_checkpoint(ckpt, tmp_path / "full")
    with pytest.raises(ForgeError, match="no checkpoint"):
        export_checkpoint(tmp_path / "full", tmp_path / "out")


def test_cli_exports_a_checkpoint_folder(tmp_path, monkeypatch):
    model, optimizer = _trained(DENSE)
    save_checkpoint(tmp_path / "ckpts", 3, model=model, optimizer=optimizer, data_state={})
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "hf"
    result = CliRunner().invoke(
        app, ["export", str(tmp_path / "ckpts"), "--out", str(out), "--max-shard-size", "60000"]
    )
    assert result.exit_code == 0, result.output
    assert "step_00000003" in result.output
    assert len(list(out.glob("model-*.safetensors"))) >= 2
    ours, theirs = _logits(model, out)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_a_workspace_checkpoint_exports_only_with_clearance_for_its_training_data(
    workspace, tmp_path
):
    from forgeml.governance.keys import create_api_key
    from forgeml.registry import open_registry

    reg = open_registry(workspace)
    (tmp_path / "hr").mkdir()
    (tmp_path / "hr" / "a.txt").write_text("payroll")
    data = reg.add_asset(
        "dataset", "hr", tmp_path / "hr", metadata={"classification": "confidential"}
    )
    run = reg.start_run("pretrain", {"steps": 3}, inputs=[data.id])
    model, optimizer = _trained(DENSE)
    ckpts = workspace.runs_dir / "pretrain" / run.id / "checkpoints"
    save_checkpoint(ckpts, 3, model=model, optimizer=optimizer, data_state={})
    export = ["-w", str(workspace.root), "export", str(ckpts), "--out", str(tmp_path / "hf")]
    runner = CliRunner()
    r = runner.invoke(app, export, env={"FORGEML_API_KEY": ""})
    assert isinstance(r.exception, ForgeError), r.output
    assert "labelled confidential" in str(r.exception) and data.id in str(r.exception)
    assert not (tmp_path / "hf").exists()
    key = create_api_key(workspace.root, "carol", clearance="confidential")[0]
    r = runner.invoke(app, export, env={"FORGEML_API_KEY": key})
    assert r.exit_code == 0, r.output
    assert (tmp_path / "hf" / "config.json").is_file()
