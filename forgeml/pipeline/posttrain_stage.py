"""Post-training in `pipeline run`, each stage measured on held-out data before and after.

After pre-training (and SFT, sft_stage.py) a recipe's `posttrain` section adds:
- the SFT lift: held-out answer exact match of the pre-trained vs the SFT model;
- DPO from the SFT model (`dpo` section and loop, `posttrain.dpo` data) and its sampled
  win-rate against the SFT model on the held-out prompts, ranked by a judge function;
- GRPO from the last model (`rl` section and loop, `posttrain.rl` prompts) and the reward of
  the model before and after on the held-out prompts: greedy, and with
  `posttrain.rl.eval_samples` also sampled (pass@1 estimated from n seeded samples per
  prompt at the policy's temperature, as GRPO samples, and pass@n).
Every eval is a cached, registered run with an eval asset, like every other stage.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forgeml.core.config import Recipe, RLConfig
from forgeml.core.io import atomic_write_text, sha256_file
from forgeml.core.workspace import Workspace
from forgeml.pipeline.preference_stage import _model_asset
from forgeml.pipeline.runtime import Notify, Output, StageResult, run_stage
from forgeml.registry import open_registry


@dataclass
class Lift:
    """One before/after number of a post-training stage (a row of the pipeline summary)."""

    stage: str
    metric: str
    before: float
    after: float
    n: int
    se: float | None = None  # the standard error of `after`, where the eval gives one

    def as_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "metric": self.metric, "before": self.before,
                "after": self.after, "n": self.n, "se": self.se}  # fmt: skip


def evaluate_greedy_rewards(
    model, tokenizer, prompts: list, plugins: list, *, max_new_tokens: int, device: str = "cpu"
) -> dict[str, Any]:
    """Greedy completions of `prompts` (RLPrompt records) scored by the reward plugins: the
    mean weighted reward, each plugin's mean, and `solved` (share where the first plugin
    gives its full reward of 1, e.g. every test case passed)."""
    from forgeml.models.sampling import greedy_replies
    from forgeml.train.rewards import score_completions

    replies = greedy_replies(
        model, tokenizer, [p.text for p in prompts], max_new_tokens=max_new_tokens, device=device
    )
    # a prompt that does not fit the context is scored as an empty reply
    completions = [reply or "" for reply in replies]
    total, each = score_completions(
        plugins, [p.text for p in prompts], completions, [p.metadata for p in prompts]
    )
    n = len(prompts)
    first = each[plugins[0].name]
    return {
        "n": n,
        "mean_reward": sum(total) / n,
        "solved": sum(v >= 1.0 for v in first) / n,
        **{f"mean_{name}": sum(v) / n for name, v in each.items()},
        "examples": [
            {"completion": c, "reward": r, **{k: v[i] for k, v in each.items()}}
            for i, (c, r) in enumerate(zip(completions, total, strict=True))
        ],
    }


def evaluate_sampled_rewards(
    model, tokenizer, prompts: list, plugins: list, rl: RLConfig, *, samples: int,
    seed: int = 0, device: str = "cpu",
) -> dict[str, Any]:  # fmt: skip
    """`samples` completions per prompt drawn as GRPO draws them (`rl`'s temperature, top-k,
    top-p, max_new_tokens; one seeded generator per prompt), scored by the reward plugins:
    `sampled_solved` is the share of all samples where the first plugin gives its full reward
    (the unbiased pass@1 estimate from n samples, Chen et al. arXiv:2107.03374),
    `pass_at_n` the share of prompts with at least one such sample, and the mean reward."""
    import torch

    from forgeml.core.seeds import derive_seed
    from forgeml.models.sampling import sample_group
    from forgeml.tokenizer.chat import END, EOS
    from forgeml.train.rewards import score_completions

    stops = {tokenizer.token_to_id(END), tokenizer.token_to_id(EOS)} - {None}
    texts, completions, metas, owner = [], [], [], []
    for i, prompt in enumerate(prompts):
        ids = tokenizer.encode(prompt.text, add_special_tokens=False).ids
        if len(ids) >= model.cfg.max_seq_len:  # no room: scored as empty replies
            rows: list[list[int]] = [[] for _ in range(samples)]
        else:
            gen = torch.Generator(device=device).manual_seed(derive_seed(seed, "eval.example", i))
            rows = sample_group(
                model, ids, samples, max_new_tokens=rl.max_new_tokens, stop_ids=stops,
                temperature=rl.temperature, top_k=rl.top_k, top_p=rl.top_p, generator=gen,
                device=device, dtype="fp32",
            )  # fmt: skip
        for row in rows:
            texts.append(prompt.text)
            completions.append(tokenizer.decode([t for t in row if t not in stops]))
            metas.append(prompt.metadata)
            owner.append(i)
    total, each = score_completions(plugins, texts, completions, metas)
    solved = [v >= 1.0 for v in each[plugins[0].name]]
    n = len(prompts)
    hit = {owner[j] for j, ok in enumerate(solved) if ok}
    return {
        "samples_per_prompt": samples,
        "sampled_solved": sum(solved) / len(solved) if solved else 0.0,
        "pass_at_n": len(hit) / n if n else 0.0,
        "sampled_mean_reward": sum(total) / len(total) if total else 0.0,
    }


def reward_eval_stage(
    ws: Workspace, model_ref: str, prompts_path: str | Path, rl: RLConfig, *,
    limit: int | None = None, samples: int = 0, force: bool = False,
    notify: Notify | None = None,
) -> StageResult:  # fmt: skip
    """Registered eval run of `evaluate_greedy_rewards` on a prompts JSONL file, and of
    `evaluate_sampled_rewards` with `samples` per prompt when that is above 0."""
    from forgeml.core.runtime import pick_device
    from forgeml.models.hf_io import load_model
    from forgeml.pipeline.rl_stage import reward_fingerprints
    from forgeml.tokenizer.train import load_tokenizer
    from forgeml.train.rewards import build_rewards
    from forgeml.train.rl_data import load_prompts

    asset = _model_asset(open_registry(ws), model_ref, "model")
    prompts_path = Path(prompts_path).expanduser().resolve()
    plugins = build_rewards(rl.rewards, ws)
    prompts = load_prompts(prompts_path, rl.prompt_format)[:limit]
    config = {
        "suite": "greedy-reward", "prompts_sha256": sha256_file(prompts_path), "limit": limit,
        "rewards": [r.model_dump(mode="json") for r in rl.rewards],
        "reward_sources": reward_fingerprints(list(rl.rewards)),
        "max_new_tokens": rl.max_new_tokens, "prompt_format": rl.prompt_format,
    }  # fmt: skip
    if samples:
        config["sampling"] = {"samples": samples, "temperature": rl.temperature,
                              "top_k": rl.top_k, "top_p": rl.top_p}  # fmt: skip

    def body(work: Path):
        device = pick_device()
        model = load_model(asset.path, device=device).eval()
        tokenizer = load_tokenizer(asset.path)
        result = evaluate_greedy_rewards(
            model, tokenizer, prompts, plugins, max_new_tokens=rl.max_new_tokens, device=device
        )
        if samples:
            result.update(evaluate_sampled_rewards(
                model, tokenizer, prompts, plugins, rl, samples=samples, device=device
            ))  # fmt: skip
        out = work / "eval"
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "eval.json", json.dumps({"model": asset.id, **result}, indent=1))
        metrics = {k: v for k, v in result.items() if k != "examples"}
        meta = {"suite": "greedy-reward", "model": asset.id, **metrics}
        return [Output("eval", f"{asset.name}-reward", out, meta, parents=[asset.id])], metrics

    return run_stage(ws, "eval", config, [asset.id], body, force=force, notify=notify)


def win_rate_stage(
    ws: Workspace, recipe: Recipe, policy_ref: str, baseline_ref: str, pairs_path: str | Path,
    judge: str, *, limit: int | None = None, samples: int | None = None, force: bool = False,
    notify: Notify | None = None,
) -> StageResult:  # fmt: skip
    """Registered eval run: sampled win-rate of `policy_ref` over `baseline_ref` on the held-out
    prompts of a preference file (`samples`, default `dpo.samples_per_prompt`, seeded samples
    each), ranked by the judge function 'pkg.module:function'; with its standard error."""
    from forgeml.core.runtime import pick_device
    from forgeml.train.online_dpo import heldout_prompt_records, model_win_rate

    reg = open_registry(ws)
    policy = _model_asset(reg, policy_ref, "policy")
    baseline = _model_asset(reg, baseline_ref, "baseline")
    pairs_path = Path(pairs_path).expanduser().resolve()
    dcfg = recipe.dpo.model_copy(
        update={"samples_per_prompt": samples or recipe.dpo.samples_per_prompt}
    )
    heldout = heldout_prompt_records(pairs_path, dcfg, limit)
    config = {
        "suite": "win-rate", "pairs_sha256": sha256_file(pairs_path), "judge": judge,
        "limit": limit, "samples_per_prompt": dcfg.samples_per_prompt,
        "max_new_tokens": dcfg.max_new_tokens, "temperature": dcfg.temperature,
        "top_k": dcfg.top_k, "seed": dcfg.train.seed,
    }  # fmt: skip

    def body(work: Path):
        metrics = model_win_rate(
            policy.path, baseline.path, heldout, dcfg, judge, seed=dcfg.train.seed,
            device=pick_device(),
        )  # fmt: skip
        out = work / "eval"
        out.mkdir(parents=True, exist_ok=True)
        body = {"policy": policy.id, "baseline": baseline.id, "judge": judge, **metrics}
        atomic_write_text(out / "eval.json", json.dumps(body, indent=1))
        meta = {"suite": "win-rate", "model": policy.id, "baseline": baseline.id, **metrics}
        name = f"{policy.name}-vs-{baseline.name}"
        return [Output("eval", name, out, meta, parents=[policy.id, baseline.id])], metrics

    inputs = [policy.id, baseline.id]
    return run_stage(ws, "eval", config, inputs, body, force=force, notify=notify)


def posttrain_stages(
    ws: Workspace, recipe: Recipe, pretrained_ref: str, sft_ref: str | None, *,
    force: bool = False, progress: bool = True, notify: Notify | None = None,
) -> tuple[list[StageResult], list[Lift]]:  # fmt: skip
    """The `posttrain` stages after SFT, in order, with their before/after numbers."""
    from forgeml.pipeline.chat_answers_stage import chat_answers_eval_stage
    from forgeml.pipeline.preference_stage import dpo_stage
    from forgeml.pipeline.rl_stage import rl_stage

    cfg = recipe.posttrain
    stages: list[StageResult] = []
    lifts: list[Lift] = []
    if cfg is None:
        return stages, lifts
    current = sft_ref or pretrained_ref
    if sft_ref is not None and recipe.sft is not None and recipe.sft.heldout:
        before, after = (
            chat_answers_eval_stage(
                ws, ref, recipe.sft.heldout, limit=cfg.eval_limit, force=force, notify=notify
            )  # fmt: skip
            for ref in (pretrained_ref, sft_ref)
        )
        stages += [before, after]
        lifts.append(Lift("sft", "held-out answer exact match", before.metrics["exact_match"],
                          after.metrics["exact_match"], after.metrics["n"]))  # fmt: skip
    if cfg.dpo is not None:
        dpo = dpo_stage(ws, recipe, current, cfg.dpo.data, force=force, progress=progress,
                        notify=notify)  # fmt: skip
        stages.append(dpo)
        m = dpo.metrics  # DPO's own held-out numbers: the start model is the reference
        if "heldout_rewards_accuracies" in m and "heldout_rewards_margins_before" in m:
            lifts.append(Lift("dpo", "held-out pairs ranked right (margin > 0)",
                              m["heldout_rewards_accuracies_before"],
                              m["heldout_rewards_accuracies"], m["heldout_pairs"]))  # fmt: skip
            lifts.append(Lift("dpo", "held-out reward margin (chosen - rejected)",
                              m["heldout_rewards_margins_before"], m["heldout_rewards_margins"],
                              m["heldout_pairs"]))  # fmt: skip
        if cfg.dpo.judge:
            wr = win_rate_stage(ws, recipe, dpo.output, current, cfg.dpo.data, cfg.dpo.judge,
                                limit=cfg.eval_limit, samples=cfg.dpo.eval_samples,
                                force=force, notify=notify)  # fmt: skip
            stages.append(wr)
            lifts.append(Lift("dpo", "held-out win-rate vs its start (0.5 = tie)", 0.5,
                              wr.metrics["win_rate"], wr.metrics["n"],
                              wr.metrics.get("win_rate_se")))  # fmt: skip
            lifts.append(Lift("dpo", "held-out judge score, sampled (mean)",
                              wr.metrics["baseline_reward"], wr.metrics["reward"],
                              wr.metrics["n"]))  # fmt: skip
        current = dpo.output
    if cfg.rl is not None:
        before = None
        if cfg.rl.heldout:
            before = reward_eval_stage(ws, current, cfg.rl.heldout, recipe.rl,
                                       limit=cfg.eval_limit, samples=cfg.rl.eval_samples,
                                       force=force, notify=notify)  # fmt: skip
            stages.append(before)
        rl = rl_stage(ws, recipe, current, cfg.rl.prompts, force=force, progress=progress,
                      notify=notify)  # fmt: skip
        stages.append(rl)
        if before is not None:
            after = reward_eval_stage(ws, rl.output, cfg.rl.heldout, recipe.rl,
                                      limit=cfg.eval_limit, samples=cfg.rl.eval_samples,
                                      force=force, notify=notify)  # fmt: skip
            stages.append(after)
            rows = [("solved", "held-out solved, greedy (reward 1)", 1),
                    ("mean_reward", "held-out mean reward, greedy", 1)]  # fmt: skip
            if cfg.rl.eval_samples:
                k = cfg.rl.eval_samples
                rows += [("sampled_solved", f"held-out solved, sampled pass@1 (n={k})", k),
                         ("pass_at_n", f"held-out pass@{k}", 1)]  # fmt: skip
            for key, label, per in rows:
                lifts.append(Lift("rl", label, before.metrics[key], after.metrics[key],
                                  after.metrics["n"] * per))  # fmt: skip
    return stages, lifts
