"""benchmarks/mfu.py: the FLOP counter against a hand count, the GPU peak table, a CPU run whose
MFU lies in (0, 1]; and benchmarks/gpu_smoke.sh, which runs here in its dry-run mode."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from torch import nn

from forgeml.core.config import ModelConfig
from forgeml.models.registry import build_model

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "mfu.py"
SMOKE = ROOT / "benchmarks" / "gpu_smoke.sh"
TINY = ModelConfig(
    dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=160, vocab_size=512, max_seq_len=128
)


def _bench():
    if "bench_mfu" in sys.modules:
        return sys.modules["bench_mfu"]
    spec = importlib.util.spec_from_file_location("bench_mfu", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_mfu"] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def test_flops_per_token_by_hand():
    mfu = _bench()
    # head dim 16; attention q 64x64 + k, v 64x32 each + o 64x64 = 12288; SwiGLU 3x64x160 =
    # 30720; two layers = 86016; the output head 64x512 = 32768.
    assert mfu.matmul_params(TINY) == 86016 + 32768 == 118784
    # 6N + 12·L·d·T at T = 128, and the sliding window caps T.
    assert mfu.flops_per_token(TINY, 128) == 6 * 118784 + 12 * 2 * 64 * 128
    windowed = TINY.model_copy(update={"sliding_window": 32})
    assert mfu.flops_per_token(windowed, 128) == 6 * 118784 + 12 * 2 * 64 * 32
    # The same N from the built model: every linear weight, a tied head once.
    model = build_model(TINY)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    assert mfu.matmul_params(TINY) == linear
    untied = TINY.model_copy(update={"tie_embeddings": False})
    assert mfu.matmul_params(untied) == mfu.matmul_params(TINY)  # a lookup multiplies nothing


def test_moe_counts_the_experts_a_token_visits():
    mfu = _bench()
    moe = TINY.model_copy(update={"arch": "moe", "n_experts": 4, "top_k": 2})
    model = build_model(moe)
    experts = sum(
        p.numel() for n, p in model.named_parameters() if n.endswith(("w13", "w2"))
    )  # every expert of every layer
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    # Linear weights (attention, routers, head) + the top_k of n_experts experts.
    assert mfu.matmul_params(moe) == linear + experts * 2 // 4


def test_gpu_peaks():
    mfu = _bench()
    assert mfu.gpu_peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert mfu.gpu_peak_flops("NVIDIA H100 PCIe") == 756e12
    assert mfu.gpu_peak_flops("NVIDIA H200") == 989e12
    assert mfu.gpu_peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert mfu.gpu_peak_flops("Some Future GPU") is None


def test_cpu_run_prints_mfu_in_unit_interval(tmp_path):
    out = tmp_path / "mfu.json"
    cmd = [sys.executable, str(BENCH), "--preset", "tiny", "--steps", "3", "--warmup", "1"]
    cmd += ["--seq-len", "64", "--device", "cpu", "--json", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True)
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith("MFU"))
    printed = float(line.split()[1])
    figures = json.loads(out.read_text())
    assert 0 < figures["mfu"] <= 1 and printed == round(figures["mfu"], 3)
    assert "measured" in figures["peak_source"]
    assert figures["achieved_tflops"] == pytest.approx(
        figures["tokens_per_s"] * figures["flops_per_token"] / 1e12
    )


def test_gpu_smoke_script_parses_and_dry_runs(tmp_path):
    subprocess.run(["bash", "-n", str(SMOKE)], check=True)
    env = {**os.environ, "GPU_SMOKE_DRY_RUN": "1", "GPU_SMOKE_OUT": str(tmp_path)}
    result = subprocess.run(
        ["bash", str(SMOKE)], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    steps = ["install", "gpu tests", "mfu", "serve throughput", "vllm serve"]
    recipe = ROOT / "recipes" / "scale" / "mistral-125m.yaml"
    steps += ["fsdp pretrain"] if recipe.is_file() else []
    for step in steps:
        assert f"[dry-run] {step}:" in out, step
    assert "pytest -m gpu" in out and "benchmarks/mfu.py" in out and "--dtype bf16" in out
    if recipe.is_file():
        assert "train pretrain recipes/scale/mistral-125m.yaml" in out
        assert "--nproc-per-node 1" in out and "train.strategy=fsdp" in out
    summary = out[out.index("gpu smoke summary") :].splitlines()[2:]
    assert [line.split()[-2] for line in summary] == ["dry-run"] * len(summary)
    assert {" ".join(line.split()[:-2]) for line in summary} >= set(steps)
    assert not (tmp_path / "workspace").exists()  # nothing ran
