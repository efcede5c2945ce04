"""What the Slurm and Kubernetes launchers share: the job's shape, the command every node runs,
and the cluster preflight (per-GPU memory under FSDP and a tokens/s estimate) of a recipe.

Every node runs `forgeml train pretrain RECIPE --nproc-per-node G --nnodes N --rdzv-endpoint
HOST:PORT --auto-resume`: torchrun's c10d rendezvous on the first node joins them, and a
restarted or requeued job continues from its last checkpoint in the shared workspace.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from forgeml.core.config import ModelConfig, Recipe
from forgeml.core.errors import ConfigError, ForgeError
from forgeml.launch.torchrun import JOIN_TIMEOUT_S
from forgeml.train.preflight import GiB, MemoryEstimate, check_fits, estimate_memory

RDZV_PORT = 29500
# The planner's cost model (forgeml.control.plan): sustained bf16 FLOP/s of one datacenter GPU.
GPU_FLOPS = 1e14


@dataclass(frozen=True)
class ClusterJob:
    """One training job on `nodes` machines with `gpus_per_node` GPUs each.

    `recipe` and `workspace` are paths as the nodes see them (shared storage); `overrides`
    are dotted recipe overrides; `data`/`tokenizer` name registered assets to train on.
    """

    name: str
    recipe: str
    nodes: int
    gpus_per_node: int
    workspace: str
    overrides: list[str] = field(default_factory=list)
    data: str | None = None
    tokenizer: str | None = None
    max_restarts: int = 3
    rdzv_port: int = RDZV_PORT
    join_timeout: float = JOIN_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.nodes < 1 or self.gpus_per_node < 1:
            raise ConfigError(
                f"--nodes and --gpus-per-node must be at least 1 "
                f"(got {self.nodes} and {self.gpus_per_node})"
            )
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,40}[a-z0-9])?", self.name):
            raise ConfigError(
                f"job name {self.name!r} is not a valid cluster name",
                hint="use lower-case letters, digits and '-', at most 42 characters "
                "(Kubernetes DNS labels), e.g. --name scale-7b",
            )
        if self.max_restarts < 0:
            raise ConfigError(f"--max-restarts must be 0 or more (got {self.max_restarts})")
        if self.join_timeout <= 0:
            raise ConfigError(
                f"--join-timeout must be more than 0 seconds (got {self.join_timeout:g})"
            )


def job_name(recipe: Path | str) -> str:
    """A cluster-safe job name from a recipe file name (`mistral-7b.yaml` -> `mistral-7b`)."""
    stem = re.sub(r"[^a-z0-9-]+", "-", Path(recipe).stem.lower()).strip("-")
    return (stem or "forgeml")[:42].strip("-")


def node_command(job: ClusterJob, *, rdzv_host: str, node_rank: str, rdzv_id: str) -> str:
    """The shell command one node runs, in an environment where FORGEML_WORKSPACE names
    `job.workspace`. `rdzv_host`, `node_rank` and `rdzv_id` (the same on every node, unique to
    the job: node 0 tells the others where to train under that name) may be shell expansions,
    e.g. "$HEAD_NODE"; they are inserted as written, inside double quotes."""
    # not --quiet: the job's log shows the data preparation and a line per logged step
    argv = ["forgeml", "train", "pretrain", job.recipe, *job.overrides]
    if job.data:
        argv += ["--data", job.data]
    if job.tokenizer:
        argv += ["--tokenizer", job.tokenizer]
    argv += ["--nproc-per-node", str(job.gpus_per_node), "--nnodes", str(job.nodes)]
    words = [shlex.quote(a) for a in argv]
    words += [
        "--node-rank", f'"{node_rank}"', "--rdzv-endpoint", f'"{rdzv_host}:{job.rdzv_port}"',
        "--rdzv-id", f'"{rdzv_id}"', "--max-restarts", str(job.max_restarts), "--auto-resume",
    ]  # fmt: skip
    if job.nodes > 1:  # node 0 prepares the data meanwhile (a large corpus can take long)
        words += ["--join-timeout", f"{job.join_timeout:g}"]
    return " ".join(words)


@dataclass(frozen=True)
class ClusterPlan:
    """A recipe's preflight on a cluster shape: memory per GPU, whether it fits and why, and
    the planner's throughput estimate."""

    recipe: str
    gpus: int
    gpu_memory_gib: float
    estimate: MemoryEstimate
    params: int
    active_params: int
    fits: bool
    reason: str
    tokens_per_s: float
    train_tokens: int

    @property
    def days(self) -> float:
        return self.train_tokens / self.tokens_per_s / 86400


def active_params(cfg: ModelConfig, total: int) -> int:
    """Parameters one token passes through: all of a dense model; for a mixture of experts,
    all but the (n_experts - top_k) routed experts it skips in every layer."""
    if cfg.arch != "moe":
        return total
    expert = 3 * cfg.dim * (cfg.moe_ffn_hidden or cfg.ffn_hidden)
    return total - cfg.n_layers * (cfg.n_experts - cfg.top_k) * expert


def plan_cluster(
    recipe: Recipe,
    *,
    nodes: int,
    gpus_per_node: int,
    gpu_memory_gib: float = 80.0,
    name: str = "recipe",
) -> ClusterPlan:
    """Preflight `recipe` on `nodes` x `gpus_per_node` GPUs of `gpu_memory_gib` each.

    Memory is forgeml.train.preflight's per-process estimate at the recipe's strategy (FSDP
    unless it says ddp) in bf16 ('auto' on a datacenter GPU); the reason is the preflight's
    own verdict (what to change when it does not fit). Throughput is the planner's model:
    6·N_active + 12·L·d·T FLOPs per token (Kaplan et al., arXiv:2001.08361) at GPU_FLOPS.
    """
    cfg = recipe.model
    if cfg.vocab_size is None:
        cfg = cfg.model_copy(update={"vocab_size": recipe.tokenizer.vocab_size})
    tcfg = recipe.train
    if tcfg.dtype == "auto":
        tcfg = tcfg.model_copy(update={"dtype": "bf16"})
    strategy = "ddp" if getattr(tcfg, "strategy", "fsdp") == "ddp" else "fsdp"
    gpus = nodes * gpus_per_node
    est = estimate_memory(cfg, tcfg, world_size=gpus, strategy=strategy, device="cuda")
    available = int(gpu_memory_gib * GiB)
    try:
        check_fits(est, available, model_cfg=cfg, train_cfg=tcfg)
        fits = True
        reason = (
            f"fits: {est.summary()} of {gpu_memory_gib:g} GiB "
            f"({strategy} over {gpus} GPUs, micro-batch {tcfg.micro_batch_size} x "
            f"{tcfg.seq_len} tokens)"
        )
    except ForgeError as exc:
        fits = False
        reason = f"does not fit: {exc}"
    active = active_params(cfg, est.params)
    per_token = 6 * active + 12 * cfg.n_layers * cfg.dim * tcfg.seq_len
    global_tokens = tcfg.micro_batch_size * tcfg.grad_accum_steps * tcfg.seq_len
    return ClusterPlan(
        recipe=name, gpus=gpus, gpu_memory_gib=gpu_memory_gib, estimate=est, params=est.params,
        active_params=active, fits=fits, reason=reason, tokens_per_s=gpus * GPU_FLOPS / per_token,
        train_tokens=tcfg.max_steps * global_tokens * gpus,
    )  # fmt: skip


def _duration(days: float) -> str:
    return f"{days * 24:.1f} h" if days < 2 else f"{days:,.0f} days"


def plan_table(plans: list[ClusterPlan]) -> str:
    """A Markdown table of cluster plans (docs/SCALE.md is made of these)."""
    rows = [
        "| recipe | parameters (active) | GPUs | weights+grads+AdamW | activations | total per GPU "
        "| fits | tokens/s (est.) | tokens | time (est.) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in plans:
        e = p.estimate
        state = (e.weights + e.grads + e.optimizer) / GiB
        rows.append(
            f"| {p.recipe} | {p.params / 1e9:.2f}B ({p.active_params / 1e9:.2f}B) | {p.gpus} x "
            f"{p.gpu_memory_gib:g} GB | {state:.1f} GiB | {e.activations / GiB:.1f} GiB | "
            f"{e.total / GiB:.1f} GiB | {'yes' if p.fits else 'no'} | {p.tokens_per_s:,.0f} | "
            f"{p.train_tokens / 1e9:,.1f}B | {_duration(p.days)} |"
        )
    return "\n".join(rows) + "\n"
