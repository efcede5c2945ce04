"""`forgeml launch {slurm,k8s,plan}`: run a recipe's pre-training on a cluster — an sbatch
script (optionally submitted), Kubernetes manifests, or the cluster preflight on its own."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from forgeml.cli.common import console, err, state
from forgeml.core.config import load_recipe
from forgeml.core.errors import ForgeError

launch_app = typer.Typer(
    help="Cluster launchers: Slurm batch scripts and Kubernetes manifests.", no_args_is_help=True
)

Recipe = Annotated[Path, typer.Argument(help="Recipe YAML (pre-training or continued).")]
Overrides = Annotated[
    list[str] | None, typer.Argument(help="Dotted overrides, e.g. train.max_steps=1000")
]
Nodes = Annotated[int, typer.Option(help="Machines.")]
Gpus = Annotated[int, typer.Option(help="GPUs (training processes) per machine.")]
Name = Annotated[str | None, typer.Option(help="Job name (default: the recipe's file name).")]
Data = Annotated[str | None, typer.Option(help="Dataset asset (default: the recipe's data).")]
Tokenizer = Annotated[str | None, typer.Option(help="Tokenizer asset (default: trained).")]
MaxRestarts = Annotated[
    int, typer.Option(help="torchrun restarts of the whole group after a failure.")
]
RdzvPort = Annotated[int, typer.Option(help="Port of the c10d rendezvous on the first node.")]
JoinTimeout = Annotated[
    float, typer.Option(help="Seconds the other nodes wait while the first prepares the data.")
]
GpuMemory = Annotated[float, typer.Option(help="GiB of memory per GPU, for the preflight.")]
Preflight = Annotated[
    bool, typer.Option(help="Refuse a recipe whose preflight says it will not fit.")
]


def _checked_recipe(
    recipe: Path, overrides: list[str], *, nodes: int, gpus: int, gpu_memory: float, check: bool
) -> None:
    """Validate the recipe here, before a cluster spends anything on it, and print (or enforce)
    its preflight on the requested shape."""
    from forgeml.launch.cluster import plan_cluster

    rec = load_recipe(recipe, overrides)
    plan = plan_cluster(
        rec, nodes=nodes, gpus_per_node=gpus, gpu_memory_gib=gpu_memory, name=recipe.name
    )
    if not plan.fits and check:
        raise ForgeError(
            f"{recipe}: {plan.reason}",
            hint="change the recipe or the shape (--nodes/--gpus-per-node), or pass "
            "--no-preflight to write the job anyway",
        )
    if not state.quiet:
        err.print(f"preflight: {plan.reason}", highlight=False, soft_wrap=True)


def _checked_job(
    recipe_file: Path, overrides: list[str] | None, name: str | None, *, gpu_memory: float,
    preflight: bool, **kw: Any,
):  # fmt: skip
    """The cluster job for `recipe_file`, after its preflight on the job's shape (`kw`: the
    `ClusterJob` fields the launcher sets)."""
    from forgeml.launch.cluster import ClusterJob, job_name

    overrides = overrides or []
    _checked_recipe(
        recipe_file, overrides, nodes=kw["nodes"], gpus=kw["gpus_per_node"],
        gpu_memory=gpu_memory, check=preflight,
    )  # fmt: skip
    return ClusterJob(name=name or job_name(recipe_file), overrides=overrides, **kw)


@launch_app.command("slurm")
def slurm_cmd(
    recipe: Recipe,
    overrides: Overrides = None,
    nodes: Nodes = 1,
    gpus_per_node: Gpus = 8,
    partition: Annotated[str | None, typer.Option(help="Slurm partition.")] = None,
    time: Annotated[str | None, typer.Option(help="Time limit per attempt, [D-]HH:MM:SS.")] = None,
    account: Annotated[str | None, typer.Option(help="Slurm account to charge.")] = None,
    workspace: Annotated[
        Path | None,
        typer.Option("--workspace", help="Workspace on shared storage (default: -w or .)."),
    ] = None,
    setup: Annotated[
        str | None, typer.Option(help="Shell line run first, e.g. 'source /opt/venv/bin/activate'.")
    ] = None,
    name: Name = None,
    data: Data = None,
    tokenizer: Tokenizer = None,
    max_restarts: MaxRestarts = 3,
    rdzv_port: RdzvPort = 29500,
    join_timeout: JoinTimeout = 3600.0,
    gpu_memory: GpuMemory = 80.0,
    preflight: Preflight = True,
    out: Annotated[Path | None, typer.Option(help="Script path (default: NAME.sbatch).")] = None,
    submit: Annotated[bool, typer.Option(help="Submit it with sbatch; print the job id.")] = False,
) -> None:
    """Write a requeueable sbatch script that runs the recipe's pre-training with torchrun on
    every node (c10d rendezvous on the first), resuming from the last checkpoint."""
    from forgeml.core.workspace import default_workspace_dir
    from forgeml.launch import slurm

    ws = Path(workspace) if workspace else default_workspace_dir(state.workspace)
    job = _checked_job(
        recipe, overrides, name, gpu_memory=gpu_memory, preflight=preflight,
        recipe=str(recipe.resolve()), workspace=str(ws.resolve()), nodes=nodes,
        gpus_per_node=gpus_per_node, data=data, tokenizer=tokenizer, max_restarts=max_restarts,
        rdzv_port=rdzv_port, join_timeout=join_timeout,
    )  # fmt: skip
    script = slurm.sbatch_script(job, partition=partition, time=time, account=account, setup=setup)
    path = slurm.write_sbatch(out or Path(f"{job.name}.sbatch"), script)
    console.print(f"wrote {path}", highlight=False)
    if submit:
        console.print(f"submitted batch job {slurm.submit(path)}", highlight=False)


@launch_app.command("k8s")
def k8s_cmd(
    recipe: Recipe,
    overrides: Overrides = None,
    nodes: Nodes = 1,
    gpus_per_node: Gpus = 8,
    image: Annotated[str, typer.Option(help="Container image with forgeml installed.")] = "",
    pvc: Annotated[
        str, typer.Option(help="PersistentVolumeClaim (ReadWriteMany) holding the workspace.")
    ] = "forgeml-workspace",
    kind: Annotated[
        str, typer.Option(help="pytorchjob (Kubeflow training operator) or indexed-job.")
    ] = "pytorchjob",
    name: Name = None,
    data: Data = None,
    tokenizer: Tokenizer = None,
    max_restarts: MaxRestarts = 3,
    rdzv_port: RdzvPort = 29500,
    join_timeout: JoinTimeout = 3600.0,
    gpu_memory: GpuMemory = 80.0,
    preflight: Preflight = True,
    out: Annotated[Path | None, typer.Option(help="Manifest file (default: stdout).")] = None,
) -> None:
    """Write Kubernetes manifests (`kubectl apply -f`) running the recipe's pre-training on
    NODES pods: a Kubeflow PyTorchJob, or an indexed Job with a headless Service."""
    from forgeml.launch import k8s

    k8s.check_options(kind=kind, image=image)
    job = _checked_job(
        recipe, overrides, name, gpu_memory=gpu_memory, preflight=preflight,
        recipe=f"{k8s.RECIPE_MOUNT}/recipe.yaml", workspace=k8s.WORKSPACE_MOUNT, nodes=nodes,
        gpus_per_node=gpus_per_node, data=data, tokenizer=tokenizer, max_restarts=max_restarts,
        rdzv_port=rdzv_port, join_timeout=join_timeout,
    )  # fmt: skip
    objects = k8s.k8s_manifests(
        job,
        image=image,
        recipe_text=recipe.read_text(),
        pvc=pvc,
        kind=kind,  # type: ignore[arg-type]
    )
    text = k8s.render_manifests(objects)
    if out is None:
        sys.stdout.write(text)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    console.print(f"wrote {out}", highlight=False)


@launch_app.command("plan")
def plan_cmd(
    recipe: Recipe,
    overrides: Overrides = None,
    nodes: Nodes = 1,
    gpus_per_node: Gpus = 8,
    gpu_memory: GpuMemory = 80.0,
) -> None:
    """The recipe's preflight on a cluster: memory per GPU, whether it fits and why, and the
    planner's tokens/s and days to train."""
    from forgeml.launch.cluster import plan_cluster

    rec = load_recipe(recipe, overrides or [])
    plan = plan_cluster(
        rec, nodes=nodes, gpus_per_node=gpus_per_node, gpu_memory_gib=gpu_memory, name=recipe.name
    )
    console.print(
        f"{recipe.name}: {plan.params / 1e9:.2f}B parameters ({plan.active_params / 1e9:.2f}B "
        f"active), {plan.gpus} GPUs of {gpu_memory:g} GiB",
        highlight=False,
    )
    console.print(plan.reason, highlight=False, soft_wrap=True)
    console.print(
        f"~{plan.tokens_per_s:,.0f} tokens/s (planner estimate); {plan.train_tokens / 1e9:,.1f}B "
        f"tokens in ~{plan.days:,.1f} days",
        highlight=False,
    )
