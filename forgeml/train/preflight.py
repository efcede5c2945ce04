"""Memory preflight: estimate a training run's peak memory per process before it starts, and
refuse a run that will not fit, naming the setting to change.

The activation term counts the tensors autograd keeps for the dense model's backward (RMSNorm
input/normalised/output, fused q/k/v, RoPE'd q/k, attention output and log-sum-exp, SwiGLU),
plus the fused cross-entropy's chunk buffers; `measure_peak_memory` checks it on a real step.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from forgeml.core.config import ModelConfig, TrainConfig
from forgeml.core.errors import ConfigError, ForgeError

GiB = 1024**3
# Memory a training process touches beyond its tensors once torch is imported: kernels'
# code pages, the autograd engine and optimizer kernels (measured ~90 MB on CPU), or cuBLAS
# workspaces and allocator slack on GPU.
RUNTIME_BYTES = {"cpu": 96 * 1024**2, "cuda": 256 * 1024**2}
CE_CHUNK = 1024  # rows per chunk of forgeml.models.dense.LinearCrossEntropy
HEADROOM = 0.9  # share of the free memory a run may plan to use

Strategy = Literal["ddp", "fsdp"]


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak bytes per process, by part; `total` is what must fit."""

    weights: int
    grads: int
    optimizer: int
    activations: int
    transient: int
    communication: int
    runtime: int
    total: int
    params: int
    micro_batch_size: int
    seq_len: int
    world_size: int
    strategy: str
    dtype: str
    device: str

    def to_dict(self) -> dict[str, int | str]:
        return asdict(self)

    def summary(self) -> str:
        parts = ("weights", "grads", "optimizer", "activations", "transient", "communication")
        body = ", ".join(f"{p} {getattr(self, p) / GiB:.2f}" for p in parts)
        return f"~{self.total / GiB:.2f} GiB per process ({body} GiB)"


def _param_counts(cfg: ModelConfig) -> tuple[int, int, int, int]:
    """(all parameters, the largest block's parameters, embedding rows x dim, parameters outside
    the blocks: embedding, output head, final norm), counted on a model built on the meta
    device, so every architecture is counted exactly for free."""
    import torch

    from forgeml.models.registry import build_model

    with torch.device("meta"):
        model = build_model(cfg)
    total = sum(p.numel() for p in model.parameters())
    blocks = [sum(p.numel() for p in layer.parameters()) for layer in model.layers]
    return total, max(blocks), cfg.vocab_size * cfg.dim, total - sum(blocks)


def _activation_bytes(cfg: ModelConfig, tokens: int, seq_len: int, act: int) -> tuple[int, int]:
    """(bytes autograd keeps per block, bytes kept outside the blocks) for `tokens` tokens.

    `act` is 4 (fp32) or 2 (bf16 autocast). Per token and block: each RMSNorm keeps its fp32
    input, 1/rms and normalised input (4(2d+1)) and its output for the next matmul (act*d);
    attention keeps q/k after RoPE (d+kv), the fused qkv (for v, d+2kv), its output (d) and
    fp32 log-sum-exp per head; SwiGLU keeps gate|up (2F), silu (F) and the product (F).
    Measured for the dense model; the MoE feed-forward term is an approximation.
    """
    d, ffn, heads = cfg.dim, cfg.ffn_hidden, cfg.n_heads
    kv = cfg.n_kv_heads * (d // heads)
    if cfg.arch == "moe":
        # Approximate (not measured): each token's k expert rows keep the SwiGLU tensors of
        # the expert width plus their dispatched input and output, and the router keeps fp32
        # logits and probabilities.
        width = cfg.moe_ffn_hidden or ffn
        ffn_bytes = act * cfg.top_k * (4 * width + 2 * d) + 8 * cfg.n_experts
        ffn_bytes += act * 4 * ffn if cfg.shared_expert else 0
    else:
        ffn_bytes = act * 4 * ffn
    per_token = 2 * 4 * (2 * d + 1) + act * (2 * d + (d + kv) + (d + 2 * kv) + d) + ffn_bytes
    block = tokens * (per_token + 4 * heads)
    window = cfg.sliding_window
    if window is not None and seq_len > window:
        # A masked attention call runs the math kernel, which keeps the attention matrix.
        block += tokens * heads * seq_len * act
    # Final norm (input, 1/rms, normalised), the loss's fp32 grad w.r.t. hidden states, the
    # token ids, and its fp32 grad w.r.t. the output matrix (vocab x dim), computed in forward.
    outside = tokens * (4 * (2 * d + 1) + 4 * d + 8) + 4 * cfg.vocab_size * d
    return block, outside


def estimate_memory(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    *,
    world_size: int = 1,
    strategy: Strategy = "ddp",
    device: str = "cpu",
) -> MemoryEstimate:
    """Peak memory of one process of a pre-training run (fp32 master weights, AdamW).

    Peak = runtime + weights + optimizer state + the larger of the forward peak (activations
    of one micro-batch plus the cross-entropy chunk buffers; plus gradients when they are
    accumulated over micro-batches) and the backward peak (gradients plus one block's
    working set). DDP adds its gradient buckets (a copy of the gradients); FSDP shards
    weights, gradients and optimizer state over `world_size` and adds the gathered root
    (embedding, head), the gathered current and prefetched block and one unsharded gradient.
    """
    from forgeml.core.runtime import resolve_dtype

    if model_cfg.vocab_size is None:
        raise ConfigError("model.vocab_size must be known to estimate memory")
    if strategy not in ("ddp", "fsdp"):
        raise ConfigError(f"unknown strategy {strategy!r}", hint="use ddp or fsdp")
    if world_size < 1:
        raise ConfigError(f"world_size must be >= 1, got {world_size}")
    kind = "cuda" if device.startswith("cuda") else "cpu"
    dtype = resolve_dtype(train_cfg.dtype, device)
    act = 2 if dtype == "bf16" else 4
    params, block_params, emb, root_params = _param_counts(model_cfg)
    tokens = train_cfg.micro_batch_size * train_cfg.seq_len
    block_act, outside_act = _activation_bytes(model_cfg, tokens, train_cfg.seq_len, act)
    layers = model_cfg.n_layers
    # Activation checkpointing: each block keeps only its fp32 input, and one block's working
    # set exists at a time (its forward, or its recomputation in backward).
    kept_inputs = layers * tokens * 4 * model_cfg.dim if train_cfg.activation_checkpointing else 0
    if train_cfg.activation_checkpointing:
        activations = kept_inputs + block_act + outside_act
    else:
        activations = layers * block_act + outside_act
    sharded = strategy == "fsdp" and world_size > 1
    if act == 2 and not sharded:
        # Autocast keeps the bf16 copy of every block matrix for the backward pass (under
        # FSDP the gathered bf16 parameters are those copies: counted with the gathers).
        activations += 2 * (params - emb - (0 if model_cfg.tie_embeddings else emb))
    vocab, d = model_cfg.vocab_size, model_cfg.dim
    rows = min(tokens, CE_CHUNK)
    # Chunk logits plus logsumexp's temporary of the same size, and the vocab x dim product
    # added into the output-matrix gradient (and the bf16 copy of the matrix under autocast).
    transient = 8 * rows * vocab + (4 if act == 4 else 8) * vocab * d

    shards = world_size if sharded else 1
    weights, grads, optimizer = 4 * params // shards, 4 * params // shards, 8 * params // shards
    communication = 0
    if world_size > 1 and strategy == "ddp":
        communication = 4 * params
    elif sharded:
        # FSDP2 as `parallelize` applies it, in the compute dtype: the root (embedding, head,
        # final norm) stays gathered through the step; a block and the prefetched next one are
        # gathered at a time, plus one block's unsharded gradient before its reduce-scatter,
        # or, at the end of backward, the root's unsharded gradient.
        communication = act * root_params + max(3 * act * block_params, act * root_params)
    accumulating = train_cfg.grad_accum_steps > 1
    forward_peak = activations + transient + (grads if accumulating else 0)
    backward_peak = grads + block_act + kept_inputs
    runtime = RUNTIME_BYTES[kind]
    total = runtime + weights + optimizer + communication + max(forward_peak, backward_peak)
    return MemoryEstimate(
        weights=weights, grads=grads, optimizer=optimizer, activations=activations,
        transient=transient, communication=communication, runtime=runtime, total=total,
        params=params, micro_batch_size=train_cfg.micro_batch_size, seq_len=train_cfg.seq_len,
        world_size=world_size, strategy=strategy, dtype=dtype, device=device,
    )  # fmt: skip


def _fits(model_cfg: ModelConfig, train_cfg: TrainConfig, est: MemoryEstimate, limit: float):
    return (
        estimate_memory(
            model_cfg,
            train_cfg,
            world_size=est.world_size,
            strategy=est.strategy,
            device=est.device,
        ).total
        <= limit
    )


def check_fits(
    estimate: MemoryEstimate,
    available_bytes: int,
    *,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    headroom: float = HEADROOM,
) -> None:
    """Raise `ForgeError` when `estimate` exceeds `headroom` x `available_bytes`, naming the
    setting to change: the largest micro-batch that fits (with the grad_accum_steps that keeps
    the global batch), else a shorter sequence, else FSDP / a smaller model."""
    limit = headroom * available_bytes
    if estimate.total <= limit:
        return
    need = f"training needs {estimate.summary()}, but {available_bytes / GiB:.2f} GiB is free"
    micro = train_cfg.micro_batch_size

    def micro_fits(m: int) -> bool:
        return _fits(
            model_cfg, train_cfg.model_copy(update={"micro_batch_size": m}), estimate, limit
        )

    # Memory grows with the micro-batch, so bisect for the largest one that fits.
    lo, hi = 0, micro  # micro_fits(hi) is False; lo is 0 or fits
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if micro_fits(mid) else (lo, mid)
    if lo:
        accum = -(-micro * train_cfg.grad_accum_steps // lo)
        raise ForgeError(
            need,
            hint=f"lower train.micro_batch_size from {micro} to <= {lo} and raise "
            f"train.grad_accum_steps from {train_cfg.grad_accum_steps} to {accum} to keep "
            "the global batch",
        )
    one = train_cfg.model_copy(update={"micro_batch_size": 1})
    for seq in (s for s in (1024, 512, 256, 128, 64) if s < train_cfg.seq_len):
        if _fits(model_cfg, one.model_copy(update={"seq_len": seq}), estimate, limit):
            raise ForgeError(
                need,
                hint=f"set train.micro_batch_size=1 and lower train.seq_len from "
                f"{train_cfg.seq_len} to <= {seq}",
            )
    state = estimate.weights + estimate.grads + estimate.optimizer
    hint = (
        "use FSDP over more processes (strategy fsdp), or a smaller model (model.dim, "
        "model.n_layers, model.vocab_size)"
        if estimate.strategy == "ddp"
        else "add processes, or use a smaller model (model.dim, model.n_layers)"
    )
    raise ForgeError(
        f"{need}; the weights, gradients and AdamW state alone take {state / GiB:.2f} GiB",
        hint=hint,
    )


def available_memory(device: str = "cpu") -> int:
    """Bytes a new allocation can use now: free GPU memory, or on CPU the smaller of the
    kernel's MemAvailable and what is left under this cgroup's memory limit."""
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    avail = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        limit = open("/sys/fs/cgroup/memory.max").read().strip()
        used = int(open("/sys/fs/cgroup/memory.current").read())
        if limit != "max":
            room = int(limit) - used
            avail = room if avail is None else min(avail, room)
    except (OSError, ValueError):
        pass
    if avail is None:
        raise ForgeError("cannot read the free memory of this machine (/proc/meminfo)")
    return avail


def preflight(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    *,
    device: str = "cpu",
    world_size: int = 1,
    strategy: Literal["single", "ddp", "fsdp"] = "ddp",
    processes_per_device: int = 1,
) -> MemoryEstimate:
    """Estimate, and raise `ForgeError` if the run will not fit in the free memory of `device`
    (shared by `processes_per_device` processes, e.g. CPU DDP on one machine). `strategy`
    single (one process) is estimated as ddp, which then has nothing to communicate."""
    est = estimate_memory(
        model_cfg, train_cfg, world_size=world_size,
        strategy="ddp" if strategy == "single" else strategy, device=device,
    )  # fmt: skip
    free = available_memory(device) // max(1, processes_per_device)
    check_fits(est, free, model_cfg=model_cfg, train_cfg=train_cfg)
    return est


def placement(device: str, world_size: int) -> dict[str, Any]:
    """`choose_strategy`/`preflight` keywords for `world_size` training processes on `device`:
    CPU processes share one machine's memory, GPU processes have a device each."""
    return {
        "device": device, "world_size": world_size,
        "processes_per_device": world_size if device == "cpu" else 1,
    }  # fmt: skip


def choose_strategy(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    *,
    device: str = "cpu",
    world_size: int = 1,
    processes_per_device: int = 1,
) -> Literal["single", "ddp", "fsdp"]:
    """The parallel strategy of a run: `single` in one process, else `train.strategy`, where
    `auto` is ddp when a whole replica (weights, gradients, AdamW state, activations) fits each
    process's share of the free memory, and fsdp (sharded state) when it does not."""
    if world_size == 1:
        return "single"
    if train_cfg.strategy != "auto":
        return train_cfg.strategy
    replica = estimate_memory(
        model_cfg, train_cfg, world_size=world_size, strategy="ddp", device=device
    )
    free = available_memory(device) // max(1, processes_per_device)
    return "ddp" if replica.total <= HEADROOM * free else "fsdp"


_MEASURE = textwrap.dedent(
    """
    import json, os, sys
    import torch
    from forgeml.core.config import ModelConfig, OptimConfig, TrainConfig
    from forgeml.core.runtime import autocast
    from forgeml.train.optim import build_optimizer
    import forgeml.models.dense  # the model code's imports belong to the baseline

    spec = json.loads(sys.argv[1])
    mcfg, tcfg = ModelConfig(**spec["model"]), TrainConfig(**spec["train"])
    device = spec["device"]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    torch.manual_seed(0)
    n = tcfg.micro_batch_size * tcfg.grad_accum_steps
    x = torch.randint(0, mcfg.vocab_size, (n, tcfg.seq_len), device=device)
    y = torch.randint(0, mcfg.vocab_size, (n, tcfg.seq_len), device=device)

    def rss():
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def local_bytes(t):
        t = getattr(t, "_local_tensor", t)  # a DTensor's shard on this process
        return t.numel() * t.element_size()

    base = rss() if device == "cpu" else torch.cuda.memory_allocated()
    # What a training process loads beyond torch (the distributed runtime, the process
    # group's buffers) counts towards its peak, as in `RUNTIME_BYTES`.
    import torch.distributed as dist
    from forgeml.models.registry import build_model
    from forgeml.train.parallelize import gradient_sync, parallelize

    if world > 1:
        dist.init_process_group("gloo" if device == "cpu" else "nccl")
    model = build_model(mcfg)
    strategy = spec["strategy"] if world > 1 else "single"
    train_model = parallelize(
        model, device=device, strategy=strategy, dtype=tcfg.dtype,
        activation_checkpointing=tcfg.activation_checkpointing,
    )
    opt = build_optimizer(model, OptimConfig(), device)
    state = 0
    for _ in range(spec["steps"]):
        micro = list(zip(x.split(tcfg.micro_batch_size), y.split(tcfg.micro_batch_size)))
        for i, (xs, ys) in enumerate(micro):
            with gradient_sync(train_model, i == len(micro) - 1):
                with autocast(device, tcfg.dtype):
                    loss = train_model(xs, ys)
                (loss / tcfg.grad_accum_steps).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        # Weights, gradients and AdamW state held by this process after a step.
        state = sum(local_bytes(p) + local_bytes(p.grad) for p in model.parameters())
        state += sum(local_bytes(v) for s in opt.state.values() for v in s.values() if v.dim())
        opt.zero_grad(set_to_none=True)
    if device == "cpu":
        # VmHWM is this address space's own high-water mark; ru_maxrss is not: exec keeps
        # the launching process's peak in it (with vfork, the whole parent's RSS).
        with open("/proc/self/status") as fh:
            hwm = next(line for line in fh if line.startswith("VmHWM:"))
        peak = int(hwm.split()[1]) * 1024
    else:
        peak = torch.cuda.max_memory_allocated()
    rank = dist.get_rank() if world > 1 else 0
    result = {"rank": rank, "peak_bytes": peak - base, "state_bytes": state}
    with open(os.path.join(spec["out"], f"rank{rank}.json"), "w") as fh:
        json.dump(result, fh)
    if world > 1:
        dist.destroy_process_group()
    """
)


def measure_memory(
    model_cfg: ModelConfig, train_cfg: TrainConfig, *, device: str = "cpu", steps: int = 2,
    world_size: int = 1, strategy: Strategy = "ddp",
) -> list[dict[str, int]]:  # fmt: skip
    """Per process of a real `steps`-step training run (AdamW and `parallelize`, as in
    `pretrain`; `world_size` processes under torchrun with `strategy`), in fresh processes so
    nothing else shares the peak: `peak_bytes`, on CPU the peak RSS above the RSS after imports
    (and process-group setup), with glibc's mmap threshold fixed so freed tensors go back to
    the OS at once (RSS then tracks live memory), on CUDA the allocator's
    max_memory_allocated; and `state_bytes`, this process's weights, gradients and AdamW
    state after a step (its shards under FSDP)."""
    with tempfile.TemporaryDirectory(prefix="forgeml-memory-") as out:
        spec = {
            "model": model_cfg.model_dump(mode="json"),
            "train": train_cfg.model_dump(mode="json"),
            "device": device,
            "steps": steps,
            "strategy": strategy,
            "out": out,
        }
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1")
        cmd = [sys.executable, "-c", _MEASURE, json.dumps(spec)]
        if world_size > 1:
            run = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
            cmd = [*run, f"--nproc-per-node={world_size}", "--no-python", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if proc.returncode != 0:
            raise ForgeError(f"memory measurement failed: {proc.stderr.strip()[-2000:]}")
        files = sorted(Path(out).glob("rank*.json"), key=lambda p: int(p.stem[4:]))
        return [json.loads(f.read_text()) for f in files]


def measure_peak_memory(
    model_cfg: ModelConfig, train_cfg: TrainConfig, *, device: str = "cpu", steps: int = 2,
    world_size: int = 1, strategy: Strategy = "ddp",
) -> int:  # fmt: skip
    """The largest per-process peak of `measure_memory`: what each device must hold."""
    return max(
        r["peak_bytes"]
        for r in measure_memory(
            model_cfg,
            train_cfg,
            device=device,
            steps=steps,
            world_size=world_size,
            strategy=strategy,
        )  # fmt: skip
    )
