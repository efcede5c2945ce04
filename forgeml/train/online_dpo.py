"""Online DPO (Guo et al., "Direct Language Model Alignment from Online AI Feedback",
arXiv:2402.04792): every step the current policy samples several completions per prompt with
the KV-cache sampler, a ranker scores them (a reward function or a reward model), and the DPO
loss is applied to the best vs the worst against a frozen reference.

The pairs are new every step, so reference log-probs are computed per step, not cached.
out_dir: checkpoints/, metrics.jsonl, model/, summary.json (mean sampled reward before/after).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from forgeml.core.config import DPOConfig, Recipe
from forgeml.core.errors import ConfigError, DataError
from forgeml.core.plugins import load_plugin
from forgeml.core.runtime import seed_everything
from forgeml.core.seeds import derive_seed
from forgeml.core.workspace import Workspace
from forgeml.eval.win_rate import win_rate
from forgeml.models.hf_io import load_model, save_model
from forgeml.models.registry import build_model
from forgeml.models.sampling import sample_groups
from forgeml.tokenizer.chat import END
from forgeml.tokenizer.train import load_tokenizer, special_token_ids
from forgeml.train import kit
from forgeml.train.dpo import pair_logps, results_config
from forgeml.train.losses import PairLogps, preference_loss
from forgeml.train.preference_data import (
    PreferencePair,
    PreferenceRecord,
    batch_indices,
    end_of_turn_ids,
    parse_prompt_record,
    prompt_text,
    read_preference_records,
)

# (prompts, completions, metadatas) -> one reward per completion.
Ranker = Callable[[list[str], list[str], list[dict[str, Any]]], list[float]]


def load_reward_function(path: str) -> Callable[[str, str, dict[str, Any]], float]:
    """The `(prompt, completion, metadata) -> float` plugin 'pkg.module:function' or
    'path/to/file.py:function' names (forgeml.core.plugins)."""
    try:
        fn = load_plugin(path)
    except ConfigError as exc:
        raise ConfigError(
            f"cannot import reward function '{path}': {exc.message}", exc.hint
        ) from None
    if not callable(fn):
        raise ConfigError(f"reward function '{path}' is not callable")
    return fn


def build_ranker(cfg: DPOConfig, ws: Workspace | None = None) -> Ranker:
    """The ranker a recipe names: `dpo.reward_function` or `dpo.reward_model` (an asset in
    `ws`, or a reward-model folder when `ws` is None)."""
    if cfg.reward_function:
        fn = load_reward_function(cfg.reward_function)
        return lambda ps, cs, ms: [float(fn(p, c, m)) for p, c, m in zip(ps, cs, ms, strict=True)]
    if cfg.reward_model:
        from forgeml.train.reward_model import RewardScorer

        scorer = RewardScorer(ws, cfg.reward_model)
        return lambda ps, cs, ms: scorer(ps, cs)
    raise ConfigError(
        "online DPO needs a ranker", hint="set dpo.reward_function or dpo.reward_model"
    )


def sample_completions(
    policy: nn.Module, prompts: list[list[int]], k: int, cfg: DPOConfig, *, stop_id: int,
    seed: int, device: str, dtype: str = "fp32",
) -> list[list[tuple[list[int], bool]]]:  # fmt: skip
    """k sampled completions of each prompt, decoded together as one kv-cache batch
    (`sample_groups`, as GRPO): per prompt, k (new token ids without the stop id, stopped?)."""
    groups = sample_groups(
        policy, prompts, k, max_new_tokens=cfg.max_new_tokens, stop_ids={stop_id},
        temperature=cfg.temperature, top_k=cfg.top_k, top_p=None,
        generator=torch.Generator(device=device).manual_seed(seed), device=device, dtype=dtype,
        reserve=2,  # keep space for `<|end|>\n`
    )  # fmt: skip
    return [
        [(ids[:-1], True) if ids and ids[-1] == stop_id else (ids, False) for ids in group]
        for group in groups
    ]


def rank_pairs(scores: Sequence[float], limit: int) -> list[tuple[int, int]]:
    """Up to `limit` disjoint (chosen, rejected) index pairs of one prompt's samples: the best
    with the worst, the second best with the second worst, and so on while the chosen scores
    strictly higher (a tie teaches nothing). Equal scores keep their sample order."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    pairs = []
    for i in range(min(limit, len(scores) // 2)):
        best, worst = order[i], order[-1 - i]
        if scores[best] <= scores[worst]:
            break
        pairs.append((best, worst))
    return pairs


def _prompt_split(records: list[PreferenceRecord], fraction: float) -> tuple[list, list]:
    """As `split_heldout`: the records' own metadata.split when all have one, else by hash."""
    if records and all(r.metadata.get("split") in ("train", "heldout") for r in records):
        return (
            [r for r in records if r.metadata["split"] == "train"],
            [r for r in records if r.metadata["split"] == "heldout"],
        )
    if fraction <= 0 or len(records) < 2:
        return records, []
    rank = lambda r: hashlib.sha256(f"heldout:{r.prompt}:{r.line}".encode()).hexdigest()  # noqa: E731
    n = min(max(1, round(fraction * len(records))), len(records) - 1)
    held = {id(r) for r in sorted(records, key=rank)[:n]}
    return [r for r in records if id(r) not in held], [r for r in records if id(r) in held]


def mean_sampled_reward(
    policy: nn.Module, prompts: Sequence[tuple[PreferenceRecord, list[int]]], ranker: Ranker,
    decode: Callable[[list[int]], str], cfg: DPOConfig, *, stop_id: int, seed: int, device: str,
    dtype: str = "fp32",
) -> float:  # fmt: skip
    """Mean reward of `samples_per_prompt` seeded samples per prompt (the before/after metric).
    Under torchrun each process samples and scores a share of the prompt batches; each batch
    has its own seed, so the samples are those of one process."""
    share = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    with kit.full_weights(policy):
        texts, recs = _sample_texts(
            policy, prompts, decode, cfg, stop_id=stop_id, seed=seed, device=device,
            dtype=dtype, share=share,
        )  # fmt: skip
    rewards = ranker([r.prompt for r in recs], texts, [r.metadata for r in recs])
    total = kit.all_reduce_sum({"reward": sum(rewards), "n": len(rewards)})
    return total["reward"] / max(total["n"], 1)


def _sample_texts(
    model: nn.Module, prompts: Sequence[tuple[PreferenceRecord, list[int]]],
    decode: Callable[[list[int]], str], cfg: DPOConfig, *, stop_id: int, seed: int, device: str,
    dtype: str, chunk: int = 16, share: tuple[int, int] = (0, 1),
) -> tuple[list[str], list[PreferenceRecord]]:  # fmt: skip
    """`samples_per_prompt` decoded samples per prompt (batched `chunk` prompts at a time, each
    chunk seeded from `seed`), with the record of each sample. `share` (rank, processes): only
    every processes-th chunk from the rank-th."""
    texts, recs = [], []
    rank, world = share
    for start in range(rank * chunk, len(prompts), chunk * world):
        part = prompts[start : start + chunk]
        groups = sample_completions(
            model, [ids for _, ids in part], cfg.samples_per_prompt, cfg, stop_id=stop_id,
            seed=derive_seed(seed, "sample.prompt_batch", start), device=device, dtype=dtype,
        )  # fmt: skip
        for (rec, _), group in zip(part, groups, strict=True):
            texts += [decode(gen) for gen, _ in group]
            recs += [rec] * len(group)
    return texts, recs


def train_online_dpo(
    recipe: Recipe,
    *,
    base_model_dir: str | Path,
    prompts_path: str | Path,
    out_dir: str | Path,
    ws: Workspace | None = None,
    ranker: Ranker | None = None,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Online DPO from the model in `base_model_dir` (also the frozen reference) on the
    prompts of `prompts_path` (JSONL with prompt/messages; chosen/rejected are ignored).

    Under torchrun (`dpo.train.strategy` ddp/fsdp) a step's prompts are micro x accum x
    processes; each process samples (from its own generator, `sample.rank`), ranks and trains
    on its share, the loss weighted over every process's pairs. N processes sample other
    completions than one: equal at any N are the update on the same samples, and the
    before/after reward (seeded per batch of prompts)."""
    dcfg, tcfg, ocfg = recipe.dpo, recipe.dpo.train, recipe.dpo.optim
    base_dir, out_dir = Path(base_model_dir), Path(out_dir)
    procs = kit.init_distributed(tcfg.device)
    device, world = procs.device, procs.world_size
    kit.check_inputs_agree(recipe, base=base_dir, prompts=prompts_path)
    ranker = ranker or build_ranker(dcfg, ws)
    tok = load_tokenizer(base_dir)
    pad_id, stop_id, tail = (
        special_token_ids(tok)["pad"],
        tok.token_to_id(END),
        end_of_turn_ids(tok),
    )
    decode = lambda ids: tok.decode(ids, skip_special_tokens=True)  # noqa: E731
    seed_everything(tcfg.seed)
    policy = load_model(base_dir, device=device)
    ref = load_model(base_dir, device=device).eval().requires_grad_(False)
    limit = min(dcfg.max_length, policy.cfg.max_seq_len) - 3
    records = read_preference_records(prompts_path, parse_prompt_record)
    encoded = [(r, tok.encode(prompt_text(r.messages), add_special_tokens=False).ids) for r in records]  # fmt: skip
    usable = [(r, ids) for r, ids in encoded if len(ids) < limit]
    if not usable:
        raise DataError(f"every prompt in {prompts_path} is too long for max_length {limit + 3}")
    train_recs, held_recs = _prompt_split([r for r, _ in usable], dcfg.heldout_fraction)
    ids_of = {id(r): ids for r, ids in usable}
    train = [(r, ids_of[id(r)]) for r in train_recs]
    evaluation = [(r, ids_of[id(r)]) for r in held_recs] or train[:8]
    eval_kw = dict(
        stop_id=stop_id, seed=derive_seed(tcfg.seed, "online_dpo.eval"), device=device,
        dtype=tcfg.dtype,
    )  # fmt: skip
    strategy = kit.choose_strategy(policy.cfg, tcfg, **kit.placement(device, world))
    train_policy, ref = kit.parallelize_for_sampling(
        policy, ref, tcfg, device=device, strategy=strategy
    )
    reward_before = mean_sampled_reward(policy, evaluation, ranker, decode, dcfg, **eval_kw)
    run_config = results_config(recipe)
    optimizer, ckpt_dir, start, metrics = kit.open_run(
        out_dir, run_config, model=policy, optim=ocfg, device=device, resume=resume,
        max_steps=tcfg.max_steps, progress=progress, is_main=procs.is_main,
    )  # fmt: skip
    k = dcfg.samples_per_prompt
    micro, accum = tcfg.micro_batch_size, tcfg.grad_accum_steps
    t_start = time.perf_counter()
    record: dict[str, Any] = {}
    for step in range(start.step, tcfg.max_steps):
        lr = kit.set_lr(optimizer, step, tcfg.max_steps, ocfg)
        # 1. Sample k completions per prompt from the current policy and rank them.
        #    Each process takes its slice of the step's prompts and its own generator (rank
        #    0's is the one of a single process).
        policy.eval()
        order = batch_indices(len(train), micro * accum * world, step, tcfg.seed)
        batch = [train[i] for i in order[procs.rank * micro * accum :][: micro * accum]]
        seed = derive_seed(tcfg.seed, "online_dpo.sample_step", step)
        with kit.full_weights(policy):
            samples = sample_completions(
                policy, [ids for _, ids in batch], k, dcfg, stop_id=stop_id, device=device,
                seed=derive_seed(seed, "sample.rank", procs.rank), dtype=tcfg.dtype,
            )  # fmt: skip
        texts = [decode(gen) for group in samples for gen, _ in group]
        recs = [rec for rec, _ in batch for _ in range(k)]
        rewards = ranker([r.prompt for r in recs], texts, [r.metadata for r in recs])
        # 2. Best vs worst of each prompt becomes a preference pair (`pairs_per_prompt` > 1:
        #    also 2nd best vs 2nd worst, ...; ties teach nothing).
        pairs, ties = [], 0
        for n, (rec, ids) in enumerate(batch):
            full = [gen + tail if stopped else gen for gen, stopped in samples[n]]
            ranked = rank_pairs(rewards[n * k : (n + 1) * k], dcfg.pairs_per_prompt)
            pairs += [PreferencePair(rec, ids, full[b], full[w]) for b, w in ranked]
            ties += not ranked
        # 3. The DPO loss on those pairs, reference log-probs from the frozen copy. Every
        #    process runs as many micro-batches as the most (a forward is a collective under
        #    FSDP): the extra ones, on a stand-in pair, count nothing.
        policy.train()
        sums: dict[str, float] = {}
        n_pairs = int(kit.all_reduce_sum({"pairs": len(pairs)})["pairs"])  # every process's
        chunks = [(pairs[i : i + micro], True) for i in range(0, len(pairs), micro)]
        rounds = max(kit.concat_over_ranks({"chunks": [len(chunks)]})["chunks"])
        stand_in = PreferencePair(batch[0][0], batch[0][1], tail, tail)
        chunks += [([stand_in], False)] * (rounds - len(chunks))
        for j, (chunk, counted) in enumerate(chunks):
            with kit.gradient_sync(train_policy, j == len(chunks) - 1):
                with torch.no_grad():
                    ref_sums, _ = pair_logps(ref, chunk, pad_id, device, tcfg.dtype)
                pol_sums, counts = pair_logps(train_policy, chunk, pad_id, device, tcfg.dtype)
                (pc, pr), (nc, nr) = pol_sums.chunk(2), counts.chunk(2)
                rc, rr = ref_sums.chunk(2)
                loss, m = preference_loss(PairLogps(pc, pr, rc, rr, nc, nr), dcfg)
                # DDP and FSDP average the processes' gradients, hence x world
                (loss * len(chunk) * counted / n_pairs * world).backward()
            for key, value in {"loss": loss.detach(), **m}.items():
                sums[key] = sums.get(key, 0.0) + value.item() * len(chunk) * counted / n_pairs
        sums = kit.all_reduce_sum(sums)
        grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), ocfg.grad_clip or float("inf"))  # fmt: skip
        if n_pairs:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        every = kit.concat_over_ranks({"rewards": rewards, "ties": [ties]})
        record = {
            "step": done, "lr": lr, "grad_norm": grad_norm.item(), **sums, "pairs": n_pairs,
            "ties": sum(every["ties"]),
            "reward_mean": sum(every["rewards"]) / len(every["rewards"]),
            "reward_best": max(every["rewards"]), "elapsed": time.perf_counter() - t_start,
        }  # fmt: skip
        if done % tcfg.log_every == 0 or done == tcfg.max_steps:
            metrics.log(record)
        kit.checkpoint_if_due(ckpt_dir, done, tcfg, run_config, model=policy, optimizer=optimizer)
    metrics.close()
    reward_after = mean_sampled_reward(policy, evaluation, ranker, decode, dcfg, **eval_kw)
    final_policy = kit.gathered_model(
        policy, lambda: build_model(policy.cfg)
    )  # every rank: gathers
    if procs.is_main:
        save_model(final_policy, out_dir / "model", base_dir)
    summary = {
        "loss": dcfg.loss, "online": True, "steps": tcfg.max_steps,
        "final_train_loss": record.get("loss"), "prompts": len(train),
        "eval_prompts": len(evaluation), "dropped_long_prompts": len(encoded) - len(usable),
        "reward_before": reward_before, "reward_after": reward_after,
        "seconds": time.perf_counter() - t_start, "model_dir": str(out_dir / "model"),
        "world_size": world, "strategy": strategy,
    }  # fmt: skip
    kit.finish_run(out_dir, summary, is_main=procs.is_main, recipe=recipe)
    return summary


@torch.no_grad()
def sampled_win_rate(
    policy: nn.Module, baseline: nn.Module, prompts: Sequence[tuple[PreferenceRecord, list[int]]],
    ranker: Ranker, decode: Callable[[list[int]], str], cfg: DPOConfig, *, stop_id: int,
    seed: int = 0, device: str = "cpu", dtype: str = "fp32",
) -> dict[str, float]:  # fmt: skip
    """Win-rate of `policy` over `baseline` (e.g. the DPO model vs its SFT start): each samples
    `samples_per_prompt` completions per prompt with the same seeds, the ranker scores them,
    and `forgeml.eval.win_rate.win_rate` compares them (a win counts 1, a tie 1/2; with both
    mean rewards and the standard error clustered by prompt)."""
    scores = []
    for model in (policy, baseline):
        model.eval()
        texts, recs = _sample_texts(model, prompts, decode, cfg, stop_id=stop_id, seed=seed, device=device, dtype=dtype)  # fmt: skip
        scores.append(ranker([r.prompt for r in recs], texts, [r.metadata for r in recs]))
    return win_rate(*scores, cfg.samples_per_prompt)


def heldout_prompt_records(pairs_path: str | Path, cfg: DPOConfig, limit: int | None = None) -> list[PreferenceRecord]:  # fmt: skip
    """The first `limit` held-out records of a preference/prompt file (`_prompt_split`), the
    prompts a win-rate compares two models on; a ConfigError when there are none."""
    _, heldout = _prompt_split(read_preference_records(pairs_path, parse_prompt_record), cfg.heldout_fraction)  # fmt: skip
    if not heldout:
        raise ConfigError(
            f"{pairs_path} has no held-out prompts to compare the models on",
            hint="mark some records metadata.split=heldout or set dpo.heldout_fraction",
        )
    return heldout[:limit]


def model_win_rate(
    policy_dir: str | Path, baseline_dir: str | Path, records: Sequence[PreferenceRecord],
    cfg: DPOConfig, judge: str, *, seed: int, device: str, dtype: str = "fp32",
) -> dict[str, float]:  # fmt: skip
    """`sampled_win_rate` of the model folder `policy_dir` over `baseline_dir` on `records`,
    ranked by the judge function 'pkg.module:function', with `n` (samples compared)."""
    ranker = build_ranker(cfg.model_copy(update={"reward_function": judge, "reward_model": None}))
    tok = load_tokenizer(policy_dir)
    prompts = [(r, tok.encode(prompt_text(r.messages), add_special_tokens=False).ids) for r in records]  # fmt: skip
    result = sampled_win_rate(
        load_model(policy_dir, device=device), load_model(baseline_dir, device=device), prompts,
        ranker, lambda ids: tok.decode(ids, skip_special_tokens=True), cfg,
        stop_id=tok.token_to_id(END), seed=seed, device=device, dtype=dtype,
    )  # fmt: skip
    return {"n": len(prompts) * cfg.samples_per_prompt, **result}
