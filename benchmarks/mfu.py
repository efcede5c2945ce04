"""Model FLOPs utilisation (MFU) of a forgeml pre-training step: achieved FLOP/s over the peak.

FLOPs per token follow PaLM's appendix B (Chowdhery et al., arXiv:2204.02311) as nanoGPT's
`estimate_mfu` does: 6N + 12·L·d·T, with N the parameters a token is multiplied by (every
linear weight: attention, feed-forward or the routed experts it is sent to, the output head;
not the embedding lookup or the norm gains), L layers, d the attention width (heads x head
dim), T the context (the sliding window when smaller). The attention term counts the full
T x T scores, as PaLM does, though a causal kernel computes about half of them.

The peak is the GPU's dense bf16 datasheet figure (the table below; `--peak-tflops` for any
other), or on a CPU the matmul rate measured here, in the run's dtype, before and after the
run (the higher): the same MFU figure, against what this CPU can do.

    .venv/bin/python benchmarks/mfu.py                               # the 125M recipe
    .venv/bin/python benchmarks/mfu.py --preset tiny --steps 3       # seconds, on any CPU
    .venv/bin/python benchmarks/mfu.py --json out.json               # also write the figures
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from forgeml.core.config import ModelConfig, load_recipe
from forgeml.core.runtime import autocast, resolve_dtype
from forgeml.models.registry import build_model

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RECIPE = ROOT / "recipes" / "scale" / "mistral-125m.yaml"
# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, from NVIDIA's datasheets; the first
# name found in `torch.cuda.get_device_name()` wins, so longer names come first.
GPU_BF16_PEAK_TFLOPS = {
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.0,  # SXM
    "H200": 989.0,
    "GH200": 989.0,
    "B200": 2250.0,
    "A100": 312.0,
    "A10G": 70.0,
    "L40S": 362.0,
    "L4": 121.0,
}
# A 125M-class config when recipes/scale/ is not there; `tiny` for quick runs and tests.
PRESETS = {
    "125m": ModelConfig(
        dim=768, n_layers=12, n_heads=12, n_kv_heads=3, ffn_hidden=3072, vocab_size=32000,
        max_seq_len=2048,
    ),
    "tiny": ModelConfig(
        dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=160, vocab_size=512,
        max_seq_len=128,
    ),
}  # fmt: skip


def matmul_params(cfg: ModelConfig) -> int:
    """N: the weights one token is multiplied by in a forward pass (see the module docstring)."""
    d, heads, kv = cfg.dim, cfg.n_heads, cfg.n_kv_heads
    head_dim = d // heads
    attention = d * (heads + 2 * kv) * head_dim + heads * head_dim * d
    if cfg.qkv_bias:
        attention += (heads + 2 * kv) * head_dim
    if cfg.arch == "moe":
        hidden = cfg.moe_ffn_hidden or cfg.ffn_hidden
        ffn = cfg.top_k * 3 * d * hidden + d * cfg.n_experts
        if cfg.shared_expert:
            ffn += 3 * d * hidden
    else:
        ffn = 3 * d * cfg.ffn_hidden
    return cfg.n_layers * (attention + ffn) + d * cfg.vocab_size


def flops_per_token(cfg: ModelConfig, seq_len: int) -> int:
    """Training FLOPs per token: 6N (forward and backward of every weight) + 12·L·d·T."""
    context = min(seq_len, cfg.sliding_window or seq_len)
    attention_width = cfg.n_heads * (cfg.dim // cfg.n_heads)
    return 6 * matmul_params(cfg) + 12 * cfg.n_layers * attention_width * context


def gpu_peak_flops(name: str) -> float | None:
    """The dense bf16 peak of the GPU called `name`, FLOP/s; None when not in the table."""
    for key, tflops in GPU_BF16_PEAK_TFLOPS.items():
        if key in name:
            return tflops * 1e12
    return None


def measured_matmul_flops(
    device: str, dtype: torch.dtype, sizes: tuple[int, ...] = (1024, 2048), repeats: int = 3
) -> float:
    """The best rate (FLOP/s) of square matmuls of `sizes` in `dtype`: 2·n³ FLOPs each."""
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        a @ b  # warm-up: kernel selection, page faults
        for _ in range(repeats):
            _sync(device)
            start = time.perf_counter()
            a @ b
            _sync(device)
            best = max(best, 2 * n**3 / (time.perf_counter() - start))
    return best


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def training_tokens_per_s(
    cfg: ModelConfig,
    *,
    batch: int,
    seq_len: int,
    steps: int,
    warmup: int,
    device: str,
    dtype: str,
    compile_model: bool = False,
) -> tuple[float, int]:
    """Tokens a second of full training steps (forward, backward, AdamW) on random tokens,
    timed over `steps` steps after `warmup` untimed ones; and the model's parameter count."""
    torch.manual_seed(0)
    model = build_model(cfg).to(device).train()
    params = sum(p.numel() for p in model.parameters())
    if compile_model:
        model = torch.compile(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.startswith("cuda"))
    tokens = torch.randint(0, cfg.vocab_size, (batch, seq_len + 1), device=device)
    x, y = tokens[:, :-1], tokens[:, 1:]
    start = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            _sync(device)
            start = time.perf_counter()
        with autocast(device, dtype):
            loss = model(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    _sync(device)
    return batch * seq_len * steps / (time.perf_counter() - start), params


@dataclass
class MfuResult:
    device: str
    dtype: str
    params: int
    matmul_params: int
    flops_per_token: int
    tokens_per_s: float
    achieved_tflops: float
    peak_tflops: float
    peak_source: str
    mfu: float


def run_mfu(
    cfg: ModelConfig,
    *,
    batch: int,
    seq_len: int,
    steps: int,
    warmup: int,
    device: str,
    dtype: str = "auto",
    peak_tflops: float | None = None,
    compile_model: bool = False,
) -> MfuResult:
    """Measure one configuration's MFU on `device` (bf16 where the hardware has it)."""
    dtype = resolve_dtype(dtype, device)
    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    peak, source = None, ""
    if peak_tflops is not None:
        peak, source = peak_tflops * 1e12, "given (--peak-tflops)"
    elif device.startswith("cuda"):
        name = torch.cuda.get_device_name()
        peak, source = gpu_peak_flops(name), f"{name} {dtype} datasheet"
        if peak is None:
            raise SystemExit(f"no bf16 peak known for {name}: pass --peak-tflops")
    else:
        peak, source = measured_matmul_flops(device, torch_dtype), f"measured {dtype} matmul"
    rate, params = training_tokens_per_s(
        cfg, batch=batch, seq_len=seq_len, steps=steps, warmup=warmup, device=device,
        dtype=dtype, compile_model=compile_model,
    )  # fmt: skip
    if device == "cpu" and peak_tflops is None:
        peak = max(peak, measured_matmul_flops(device, torch_dtype))
    per_token = flops_per_token(cfg, seq_len)
    achieved = rate * per_token
    return MfuResult(
        device=torch.cuda.get_device_name() if device.startswith("cuda") else cpu_name(),
        dtype=dtype,
        params=params,
        matmul_params=matmul_params(cfg),
        flops_per_token=per_token,
        tokens_per_s=rate,
        achieved_tflops=achieved / 1e12,
        peak_tflops=peak / 1e12,
        peak_source=source,
        mfu=achieved / peak,
    )


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"


def model_config(args: argparse.Namespace) -> ModelConfig:
    if args.preset:
        return PRESETS[args.preset]
    recipe_path = Path(args.recipe) if args.recipe else DEFAULT_RECIPE
    if not recipe_path.is_file():
        print(f"{recipe_path} not found: using the built-in 125m preset", file=sys.stderr)
        return PRESETS["125m"]
    recipe = load_recipe(recipe_path, args.set or [])
    cfg = recipe.model
    if cfg.vocab_size is None:
        cfg = cfg.model_copy(update={"vocab_size": recipe.tokenizer.vocab_size})
    return cfg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", help=f"recipe whose model to measure ({DEFAULT_RECIPE.name})")
    parser.add_argument("--set", action="append", help="dotted recipe override (repeatable)")
    parser.add_argument("--preset", choices=sorted(PRESETS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 where fast), bf16 or fp32")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--seq-len", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--peak-tflops", type=float, help="the peak to divide by, TFLOP/s")
    parser.add_argument("--json", type=Path, help="also write the result as JSON here")
    args = parser.parse_args()
    cfg = model_config(args)
    on_gpu = args.device.startswith("cuda")
    seq_len = min(args.seq_len or (2048 if on_gpu else 256), cfg.max_seq_len)
    batch = args.batch or (8 if on_gpu else 2)
    steps = args.steps or (20 if on_gpu else 4)
    result = run_mfu(
        cfg, batch=batch, seq_len=seq_len, steps=steps, warmup=args.warmup, device=args.device,
        dtype=args.dtype, peak_tflops=args.peak_tflops, compile_model=args.compile,
    )  # fmt: skip
    print(f"device            {result.device} ({result.dtype})")
    print(f"model             {result.params / 1e6:.1f}M parameters, N={result.matmul_params:,}")
    print(f"shape             batch {batch} x {seq_len} tokens, {steps} timed steps")
    print(f"FLOPs/token       {result.flops_per_token:,} (6N + 12·L·d·T)")
    print(f"tokens/s          {result.tokens_per_s:,.0f}")
    print(f"achieved          {result.achieved_tflops:.4g} TFLOP/s")
    print(f"peak              {result.peak_tflops:.4g} TFLOP/s ({result.peak_source})")
    print(f"MFU               {result.mfu:.3f}")
    if args.json:
        args.json.write_text(json.dumps(asdict(result), indent=2) + "\n")


if __name__ == "__main__":
    main()
