"""`forgeml train {pretrain,cpt,preflight,dpo,rm,rl,sft,multimodal}`: one command per training
objective, each thin over its pipeline stage (a cached, registered run), and the memory
preflight."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from forgeml.cli.common import (
    console,
    current_workspace,
    format_value,
    notify,
    show_progress,
    state,
)
from forgeml.core.config import load_recipe
from forgeml.core.errors import ForgeError

train_app = typer.Typer(help="Training runs.", no_args_is_help=True)


@train_app.command(
    "pretrain", context_settings={"allow_extra_args": False, "ignore_unknown_options": False}
)
def train_pretrain(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML.")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="Dotted overrides, e.g. train.max_steps=200")
    ] = None,
    data: Annotated[
        str | None, typer.Option(help="Dataset asset to train on (default: ingest recipe data).")
    ] = None,
    tokenizer: Annotated[
        str | None, typer.Option(help="Tokenizer asset (default: train one per the recipe).")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue the last interrupted run.")] = False,
    auto_resume: Annotated[
        bool, typer.Option(help="Continue an interrupted run if there is one, else start.")
    ] = False,
    force: Annotated[bool, typer.Option(help="Re-run even if cached.")] = False,
    nproc_per_node: Annotated[
        int, typer.Option(help="Train with this many processes per node under torchrun.")
    ] = 0,
    nnodes: Annotated[int, typer.Option(help="Nodes of a multi-node torchrun job.")] = 1,
    node_rank: Annotated[
        int | None,
        typer.Option(help="This node's rank; 0 prepares the data and registers the model."),
    ] = None,
    rdzv_endpoint: Annotated[
        str | None, typer.Option(help="HOST:PORT of the c10d rendezvous (several nodes).")
    ] = None,
    rdzv_id: Annotated[str, typer.Option(help="Job id shared by all nodes.")] = "forgeml",
    max_restarts: Annotated[
        int, typer.Option(help="torchrun restarts after a failure (resumes from checkpoint).")
    ] = 0,
    join_timeout: Annotated[
        float, typer.Option(help="Seconds a node other than 0 waits for node 0 to start.")
    ] = 3600.0,
) -> None:
    """Pre-train a model from a recipe → model asset (packs the data first, cached).

    With --nproc-per-node N, N processes train under torchrun (DDP or FSDP, train.strategy)
    and this command registers their model as for one process. On several nodes, run it on
    every node with the same --rdzv-endpoint/--rdzv-id; node 0 prepares and registers, the
    others join its run."""
    from forgeml.pipeline.prepare import prepare_shards
    from forgeml.pipeline.pretrain_stage import pretrain_stage

    ws = current_workspace()
    rec = load_recipe(recipe, overrides or [])
    train_fn = None
    if nproc_per_node or nnodes > 1:
        from forgeml.launch.torchrun import TorchrunLaunch, join_pretrain, pretrain_under_torchrun

        launch = TorchrunLaunch(
            nproc_per_node=nproc_per_node or 1, nnodes=nnodes, node_rank=node_rank,
            rdzv_endpoint=rdzv_endpoint, rdzv_id=rdzv_id, max_restarts=max_restarts,
        )  # fmt: skip
        if not launch.coordinates:
            run_dir = join_pretrain(launch, ws.runs_dir, timeout_s=join_timeout)
            console.print(f"node {node_rank}: trained in {run_dir}", highlight=False)
            return
        train_fn = pretrain_under_torchrun(launch, ws.runs_dir)
    prepared = prepare_shards(
        ws, rec, data=data, tokenizer=tokenizer, progress=show_progress(), notify=notify
    )
    res = pretrain_stage(
        ws,
        rec,
        prepared.shards,
        prepared.tokenizer,
        resume=resume,
        auto_resume=auto_resume,
        force=force,
        progress=not state.quiet,
        notify=notify,
        train_fn=train_fn,
    )
    m = res.metrics
    console.print(
        f"model {res.output}: train loss {m.get('final_train_loss')}, "
        f"eval loss {m.get('final_eval_loss')}" + (" (cached)" if res.cached else "")
    )


@train_app.command("cpt")
def train_cpt(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML (its `cpt` section applies).")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="Dotted overrides, e.g. cpt.replay_fraction=0.25")
    ] = None,
    from_model: Annotated[
        str | None, typer.Option("--from", help="Base model (default: cpt.from_model).")
    ] = None,
    data: Annotated[str, typer.Option(help="Domain dataset asset.")] = "",
    replay: Annotated[str | None, typer.Option(help="General dataset mixed in as replay.")] = None,
    force: Annotated[bool, typer.Option(help="Re-run even if cached.")] = False,
) -> None:
    """Continued pre-training from an existing model: new domain tokens (mean-initialised
    embeddings) and replay of a general corpus to limit forgetting."""
    from forgeml.pipeline.cpt import continue_pretrain_stage

    if not data:
        raise ForgeError("--data DATASET is required", hint="the domain dataset to continue on")
    rec = load_recipe(recipe, overrides or [])
    res = continue_pretrain_stage(
        current_workspace(), rec, from_model, data, replay_ref=replay, force=force,
        progress=not state.quiet, notify=notify,
    )  # fmt: skip
    m = res.metrics
    console.print(f"model {res.output}" + (" (cached)" if res.cached else ""))
    for key, value in m.items():
        if "loss" in key:
            console.print(f"  {key}: {format_value(value)}")


@train_app.command("preflight")
def train_preflight(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML.")],
    overrides: Annotated[list[str] | None, typer.Argument(help="Dotted overrides.")] = None,
    vocab_size: Annotated[int, typer.Option(help="When model.vocab_size is unset.")] = 4096,
    world_size: Annotated[int, typer.Option(help="Processes (DDP/FSDP).")] = 1,
    strategy: Annotated[str, typer.Option(help="ddp or fsdp.")] = "ddp",
    measure: Annotated[
        bool, typer.Option(help="Also measure the peak of 2 real steps (world-size processes).")
    ] = False,
) -> None:
    """Estimate a run's memory (params, grads, AdamW, activations) and refuse one that won't
    fit, naming the setting to change."""
    from forgeml.core.runtime import pick_device
    from forgeml.train.preflight import (
        available_memory,
        check_fits,
        estimate_memory,
        measure_peak_memory,
    )

    rec = load_recipe(recipe, overrides or [])
    model_cfg = rec.model.model_copy(update={"vocab_size": rec.model.vocab_size or vocab_size})
    device = pick_device(rec.train.device)
    est = estimate_memory(
        model_cfg, rec.train, world_size=world_size, strategy=strategy, device=device
    )
    console.print(est.summary(), highlight=False)
    if measure:
        peak = measure_peak_memory(
            model_cfg, rec.train, device=device, world_size=world_size, strategy=strategy
        )
        console.print(f"measured peak: {peak / 2**20:,.0f} MiB", highlight=False)
    check_fits(est, available_memory(device), model_cfg=model_cfg, train_cfg=rec.train)
    console.print("fits")


Overrides = Annotated[
    list[str] | None,
    typer.Argument(help="Dotted overrides, e.g. dpo.beta=0.2 dpo.train.max_steps=50"),
]
Base = Annotated[str, typer.Option("--base", help="Policy / backbone model asset (id, alias).")]
Data = Annotated[str, typer.Option("--data", help="Preference JSONL file or its dataset asset.")]
Force = Annotated[bool, typer.Option(help="Re-run even if cached.")]


def _print(res, keys: list[str]) -> None:
    console.print(f"model {res.output}" + (" (cached)" if res.cached else ""))
    for key in keys:
        if res.metrics.get(key) is not None:
            console.print(f"  {key}: {format_value(res.metrics[key])}")


@train_app.command("dpo")
def train_dpo_cmd(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML (its `dpo` section applies).")],
    overrides: Overrides = None,
    base: Base = ...,
    data: Data = ...,
    force: Force = False,
) -> None:
    """DPO / IPO on preference pairs, or online DPO (dpo.online=true) → model asset."""
    from forgeml.pipeline.preference_stage import dpo_stage

    rec = load_recipe(recipe, overrides or [], objective="dpo")
    res = dpo_stage(
        current_workspace(), rec, base, data, force=force, progress=not state.quiet, notify=notify
    )
    _print(res, [
        "final_train_loss", "heldout_loss_before", "heldout_loss",
        "heldout_rewards_margins", "heldout_rewards_accuracies", "reward_before", "reward_after",
    ])  # fmt: skip


@train_app.command("rm")
def train_rm_cmd(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML (its `reward_model` section).")],
    overrides: Overrides = None,
    base: Base = ...,
    data: Data = ...,
    force: Force = False,
) -> None:
    """Reward model (Bradley-Terry) on preference pairs → model asset with task=reward."""
    from forgeml.pipeline.preference_stage import reward_model_stage

    rec = load_recipe(recipe, overrides or [], objective="reward_model")
    res = reward_model_stage(
        current_workspace(), rec, base, data, force=force, progress=not state.quiet, notify=notify
    )
    _print(
        res, ["final_train_loss", "heldout_accuracy_before", "heldout_accuracy", "heldout_margin"]
    )


@train_app.command("rl")
def train_rl_cmd(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML (its `rl` section applies).")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="Dotted overrides, e.g. rl.kl_coef=0")
    ] = None,
    base: Annotated[str, typer.Option(help="Model asset to start from (id, name or alias).")] = "",
    prompts: Annotated[
        str, typer.Option(help="Prompts JSONL ({prompt|messages, ...metadata}) or dataset asset.")
    ] = "",
    resume: Annotated[bool, typer.Option(help="Continue the interrupted run.")] = False,
    force: Annotated[bool, typer.Option(help="Re-run even if cached.")] = False,
) -> None:
    """GRPO: sample groups of completions, score them with the reward plugins (functions,
    regex/exact match, reward model, sandboxed execution), and update the model."""
    from forgeml.pipeline.rl_stage import rl_stage

    if not base or not prompts:
        raise ForgeError("--base MODEL and --prompts FILE are required", hint="see --help")
    rec = load_recipe(recipe, overrides or [], objective="rl")
    res = rl_stage(
        current_workspace(), rec, base, prompts, resume=resume, force=force,
        progress=not state.quiet, notify=notify,
    )  # fmt: skip
    m = res.metrics
    console.print(f"model {res.output}" + (" (cached)" if res.cached else ""))
    for key in ("final_reward_mean", "final_kl", "steps"):
        if m.get(key) is not None:
            console.print(f"  {key}: {m[key]:.4g}")


@train_app.command("sft")
def train_sft(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML (its `sft` section applies).")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="Dotted overrides, e.g. sft.method=lora")
    ] = None,
    base: Annotated[str, typer.Option("--base", help="Base model asset (id, name, alias).")] = "",
    data: Annotated[
        str | None, typer.Option(help="Chat JSONL file or chat dataset asset (default: sft.data).")
    ] = None,
    heldout: Annotated[
        str | None, typer.Option(help="Held-out chat JSONL for eval loss (default: sft.heldout).")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue the last interrupted run.")] = False,
    force: Annotated[bool, typer.Option(help="Re-run even if cached.")] = False,
) -> None:
    """Supervised fine-tuning on chat data (loss on assistant turns) → model asset (full) or
    adapter asset (sft.method=lora, PEFT format), with lineage to the base model and data."""
    from forgeml.pipeline.sft_stage import sft_stage

    if not base:
        raise ForgeError("--base MODEL is required", hint="the model to fine-tune (id or alias)")
    rec = load_recipe(recipe, overrides or [], objective="sft")
    res = sft_stage(
        current_workspace(), rec, base, data, heldout, resume=resume, force=force,
        progress=not state.quiet, notify=notify,
    )  # fmt: skip
    kind = "adapter" if res.output.startswith("adapter-") else "model"
    console.print(f"{kind} {res.output}" + (" (cached)" if res.cached else ""), highlight=False)
    m = res.metrics
    for key in ("final_train_loss", "final_eval_loss", "trainable_params", "tokens_per_s"):
        if key in m:
            console.print(f"  {key}: {format_value(m[key])}", highlight=False)
    report = m.get("data_report") or {}
    if report:
        console.print(
            f"  data: {report['total']} records, {report['kept']} kept, {report['truncated']} "
            f"truncated, {report['n_dropped']} dropped, {report['n_failed']} failed",
            highlight=False,
        )


@train_app.command("multimodal")
def train_multimodal(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML (its `multimodal` section).")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="e.g. multimodal.joint.train.max_steps=50")
    ] = None,
    base: Annotated[
        str | None, typer.Option(help="Text model asset to start from (multimodal.base_model).")
    ] = None,
    data: Annotated[
        str | None, typer.Option(help="Media JSONL or its dataset asset (multimodal.data).")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted phase.")] = False,
    force: Annotated[bool, typer.Option(help="Re-run even if cached.")] = False,
) -> None:
    """Vision/audio LM: a new model (encoders + projectors + LM), projector alignment, then
    joint SFT on media JSONL → model assets with lineage to the LM, tokenizer and data."""
    from forgeml.pipeline.multimodal_stage import multimodal_stages

    rec = load_recipe(recipe, overrides or [])
    results = multimodal_stages(
        current_workspace(), rec, base_model=base, data=data, resume=resume, force=force,
        progress=not state.quiet, notify=notify,
    )  # fmt: skip
    for res in results:
        console.print(f"{res.stage}: model {res.output}" + (" (cached)" if res.cached else ""))
        for key in ("final_train_loss", "heldout_loss_before", "heldout_loss"):
            if res.metrics.get(key) is not None:
                console.print(f"  {key}: {format_value(res.metrics[key])}", highlight=False)
