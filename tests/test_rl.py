"""The GRPO loop on a tiny model: it raises a learnable reward, resumes exactly, and with
kl_coef 0 never loads a reference model."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch

import forgeml.train.rl as rl
from forgeml.core.config import ModelConfig, load_recipe
from forgeml.core.errors import ConfigError, DataError
from forgeml.models.dense import Transformer
from forgeml.models.hf_io import load_model, save_model
from forgeml.models.sampling import generate, sample_group, sample_groups
from forgeml.tokenizer.chat import EOS
from forgeml.tokenizer.train import load_tokenizer, train_bpe_tokenizer
from forgeml.train.metrics import read_metrics
from forgeml.train.rewards import RewardPlugin, per_sample
from forgeml.train.rl_losses import group_advantages

WORDS = "the factory builds models from documents alice bob carol ship parts to the lab".split()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models are all small kernels: one thread avoids OpenMP spin-waits on a busy
    2-core machine; every run in a test uses the same setting, so comparisons hold."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    """A saved tiny model (~60K parameters) with its BPE tokenizer, and a prompts file."""
    root = tmp_path_factory.mktemp("rl")
    texts = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(60)) for i in range(40)]
    tok_dir = train_bpe_tokenizer(texts, vocab_size=300, out_dir=root / "tok")
    torch.manual_seed(0)
    cfg = ModelConfig(
        dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=128,
        vocab_size=load_tokenizer(tok_dir).get_vocab_size(), max_seq_len=64,
    )  # fmt: skip
    base = save_model(Transformer(cfg), root / "model", tok_dir)
    prompts = root / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"prompt": f"the lab {w}", "w": w}) + "\n" for w in WORDS)
    )
    return base, prompts


def share_of_e(prompt: str, completion: str, meta: dict) -> float:
    """A reward a tiny model can learn in a few dozen steps: the share of 'e' characters."""
    return completion.count("e") / max(len(completion), 1)


E_REWARD = [RewardPlugin("e", 1.0, per_sample("e", share_of_e))]
FAST = [
    "rl.train.dtype=fp32", "rl.train.log_every=1", "rl.train.checkpoint_every=0",
    "rl.optim.lr=3e-3", "rl.optim.weight_decay=0.1", "rl.optim.warmup_steps=0",
    "rl.optim.schedule=constant", "rl.max_new_tokens=6", "rl.group_size=8", "rl.prompts_per_step=2",
]  # fmt: skip


def _count_model_loads(monkeypatch) -> list[Path]:
    loads: list[Path] = []

    def counting(path, device="cpu"):
        loads.append(Path(path))
        return load_model(path, device=device)

    monkeypatch.setattr(rl, "load_model", counting)
    return loads


def test_grpo_raises_a_learnable_reward_without_reference(tiny, tmp_path, monkeypatch):
    base, prompts = tiny
    loads = _count_model_loads(monkeypatch)
    recipe = load_recipe(None, [*FAST, "rl.train.max_steps=24", "rl.optim.lr=1e-2", "rl.kl_coef=0"])
    summary = rl.train_rl(
        recipe, base_model=base, prompts=prompts, out_dir=tmp_path / "run", rewards=E_REWARD,
        progress=False,
    )  # fmt: skip
    assert len(loads) == 1 and summary["reference"] is None  # kl_coef 0: no reference model
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 25))
    first = sum(r["reward_mean"] for r in records[:4]) / 4
    last = sum(r["reward_mean"] for r in records[-4:]) / 4
    assert last > first + 0.15, (first, last)
    assert all(r["kl"] is None for r in records)
    for key in ("reward_std", "reward/e", "clip_fraction", "completion_len", "loss", "grad_norm"):
        assert key in records[-1]
    # The trained model is a loadable model folder with its tokenizer.
    assert load_model(summary["model_dir"]).cfg.vocab_size == load_model(base).cfg.vocab_size
    assert (Path(summary["model_dir"]) / "tokenizer.json").is_file()


def e_share_on_half(prompt: str, completion: str, meta: dict) -> float:
    """share_of_e on the prompts of the first half of WORDS; a flat 0.5 on the rest (a group
    of those has equal rewards: no learning signal)."""
    return share_of_e(prompt, completion, meta) if meta["w"] in WORDS[:7] else 0.5


def test_dynamic_sampling_swaps_groups_without_signal(tiny, tmp_path, monkeypatch):
    base, prompts = tiny
    half = [RewardPlugin("e", 1.0, per_sample("e", e_share_on_half))]
    trained: dict[str, list[torch.Tensor]] = {"off": [], "on": []}
    runs = {}
    for name, extra in (("off", 0), ("on", 8)):

        def spy(rewards, group_size, scale, _name=name):
            trained[_name].append(rewards.view(-1, group_size))
            return group_advantages(rewards, group_size, scale)

        monkeypatch.setattr(rl, "group_advantages", spy)
        recipe = load_recipe(None, [
            *FAST, "rl.train.max_steps=4", "rl.kl_coef=0", "rl.prompts_per_step=4",
            f"rl.dynamic_sampling={extra}",
        ])  # fmt: skip
        rl.train_rl(recipe, base_model=base, prompts=prompts, out_dir=tmp_path / name,
                    rewards=half, progress=False)  # fmt: skip
        runs[name] = read_metrics(tmp_path / name / "metrics.jsonl")
    off, on = runs["off"], runs["on"]
    assert all(r["groups_resampled"] == 0 for r in off)
    assert sum(r["groups_resampled"] for r in on) > 0
    assert all(r["groups_resampled"] <= 8 for r in on)
    # Every step still trains on prompts_per_step groups; with swaps fewer of them are flat
    # (a flat one is kept only when the step's spares ran out).
    assert all(t.shape == (4, 8) for t in trained["off"] + trained["on"])

    def flat(name: str) -> int:
        return sum(int((t.max(1).values == t.min(1).values).sum()) for t in trained[name])

    assert flat("off") > 0 and flat("on") < flat("off")
    assert all(r["reward_mean_drawn"] == pytest.approx(r["reward_mean"]) for r in off)


def test_kl_to_the_reference_starts_at_zero_and_grows(tiny, tmp_path, monkeypatch):
    base, prompts = tiny
    loads = _count_model_loads(monkeypatch)
    recipe = load_recipe(
        None, [*FAST, "rl.train.max_steps=3", "rl.optim.lr=1e-2", "rl.kl_coef=0.1"]
    )
    summary = rl.train_rl(
        recipe, base_model=base, prompts=prompts, out_dir=tmp_path / "run", rewards=E_REWARD,
        progress=False,
    )  # fmt: skip
    assert len(loads) == 2 and summary["reference"] == "base model"
    kls = [r["kl"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")]
    assert kls[0] == 0.0  # before the first update the policy is the reference
    assert kls[-1] > 0.0


def test_resume_equals_uninterrupted_run(tiny, tmp_path):
    base, prompts = tiny
    recipe = load_recipe(None, [
        *FAST, "rl.train.max_steps=4", "rl.train.checkpoint_every=2", "rl.train.keep_checkpoints=3",
        "rl.kl_coef=0.05", "rl.inner_steps=2",
    ])  # fmt: skip
    full = tmp_path / "full"
    rl.train_rl(recipe, base_model=base, prompts=prompts, out_dir=full, rewards=E_REWARD,
                progress=False)  # fmt: skip
    # A run killed after its step-2 checkpoint: that checkpoint and its metrics, nothing else.
    split = tmp_path / "split"
    shutil.copytree(full / "checkpoints" / "step_00000002", split / "checkpoints" / "step_00000002")
    shutil.copy(full / "metrics.jsonl", split / "metrics.jsonl")
    rl.train_rl(recipe, base_model=base, prompts=prompts, out_dir=split, rewards=E_REWARD,
                resume=True, progress=False)  # fmt: skip
    a = load_model(full / "model").state_dict()
    b = load_model(split / "model").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["output.weight"], load_model(base).state_dict()["output.weight"])
    ra, rb = read_metrics(full / "metrics.jsonl"), read_metrics(split / "metrics.jsonl")
    assert [r["step"] for r in rb] == [1, 2, 3, 4]
    assert [r["reward_mean"] for r in ra] == [r["reward_mean"] for r in rb]
    assert [r["loss"] for r in ra] == [r["loss"] for r in rb]
    changed = load_recipe(None, [
        *FAST, "rl.train.max_steps=4", "rl.train.checkpoint_every=2", "rl.kl_coef=0.05",
        "rl.inner_steps=2", "rl.clip_eps=0.3",
    ])  # fmt: skip
    with pytest.raises(ConfigError, match="rl.clip_eps"):
        rl.train_rl(changed, base_model=base, prompts=prompts, out_dir=split, rewards=E_REWARD,
                    resume=True, progress=False)  # fmt: skip


@pytest.fixture
def peaked(tiny):
    """The tiny model with peaked next-token distributions (greedy is well defined), its
    tokenizer and EOS id."""
    base, _ = tiny
    model = load_model(base).eval()
    tok = load_tokenizer(base)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p, generator=torch.Generator().manual_seed(1)) * 0.3)
    return model, tok, tok.token_to_id(EOS)


def test_batched_group_sampling_is_the_kv_cache_sampler(peaked):
    model, tok, eos = peaked
    ids = tok.encode("the lab alice", add_special_tokens=False).ids
    greedy = generate(model, ids, max_new_tokens=12, temperature=0, stop_ids={eos})
    rows = sample_group(
        model, ids, 4, max_new_tokens=12, stop_ids={eos}, temperature=1e-6, top_k=None, top_p=None,
        generator=torch.Generator().manual_seed(0), device="cpu", dtype="fp32",
    )  # fmt: skip
    for row in rows:
        assert [t for t in row if t != eos] == greedy
    many = sample_group(
        model, ids, 16, max_new_tokens=12, stop_ids={eos}, temperature=3.0, top_k=None, top_p=None,
        generator=torch.Generator().manual_seed(0), device="cpu", dtype="fp32",
    )  # fmt: skip
    assert len({tuple(r) for r in many}) > 1  # rows are sampled independently
    # Any stop id ends a row, kept as its last token (a chat reply's <|end|>, say).
    cut = sample_group(
        model, ids, 2, max_new_tokens=12, stop_ids={eos, greedy[2]}, temperature=1e-6,
        top_k=None, top_p=None, generator=torch.Generator().manual_seed(0), device="cpu",
        dtype="fp32",
    )  # fmt: skip
    first = greedy.index(greedy[2])
    assert cut == [greedy[: first + 1]] * 2


def test_groups_of_prompts_of_different_lengths_sample_as_each_alone(peaked):
    model, tok, eos = peaked
    prompts = [
        tok.encode(t, add_special_tokens=False).ids
        for t in ("the lab", "alice wrote the lab report", "bob")
    ]
    assert len({len(p) for p in prompts}) == 3
    budgets = [12, 5, 9]
    # Stop ids early in some rows' greedy paths make rows leave the batch at different steps.
    greedy = [generate(model, p, max_new_tokens=12, temperature=0, stop_ids={eos}) for p in prompts]
    stop = {eos, greedy[0][3]}
    for max_new in budgets:
        together = sample_groups(
            model, prompts, 3, max_new_tokens=max_new, stop_ids=stop, temperature=1e-6,
            top_k=None, top_p=None, generator=torch.Generator().manual_seed(0), device="cpu",
            dtype="fp32",
        )  # fmt: skip
        for ids, rows in zip(prompts, together, strict=True):
            alone = sample_group(
                model, ids, 1, max_new_tokens=max_new, stop_ids=stop, temperature=1e-6,
                top_k=None, top_p=None, generator=torch.Generator().manual_seed(0),
                device="cpu", dtype="fp32",
            )[0]  # fmt: skip
            assert rows == [alone] * 3
            expect = generate(model, ids, max_new_tokens=max_new, temperature=0, stop_ids=stop)
            assert [t for t in alone if t not in stop] == [t for t in expect if t not in stop]
            assert len(alone) <= max_new


def test_prompts_file_errors_name_the_line(tmp_path):
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n')
    with pytest.raises(DataError, match=r"p.jsonl:2: a record needs a 'prompt'"):
        rl.load_prompts(bad)
    chat = tmp_path / "c.jsonl"
    chat.write_text(
        '{"messages": [{"role": "user", "content": "hi"}], "answer": 1}\n{"prompt": "yo"}\n'
    )
    first, second = rl.load_prompts(chat, "chat")
    assert first.text.endswith("<|assistant|>\n") and first.metadata["answer"] == 1
    assert "<|user|>\nyo" in second.text
    assert second.metadata["messages"] == [{"role": "user", "content": "yo"}]
    assert rl.load_prompts(chat)[1].text == "yo"  # raw format: the prompt as it is


def test_prompts_longer_than_the_context_are_refused_up_front(tiny, tmp_path):
    base, _ = tiny
    prompts = tmp_path / "long.jsonl"
    long_prompt = " ".join(WORDS * 10)
    prompts.write_text(
        json.dumps({"prompt": "the lab"}) + "\n" + json.dumps({"prompt": long_prompt}) + "\n"
    )
    recipe = load_recipe(None, [*FAST, "rl.train.max_steps=1"])
    with pytest.raises(DataError, match=r"1 of 2 prompts leave no room .* \(first: record 2\)"):
        rl.train_rl(recipe, base_model=base, prompts=prompts, out_dir=tmp_path / "run",
                    rewards=E_REWARD, progress=False)  # fmt: skip


def test_prompt_order_is_a_pure_function_of_the_step():
    seen = [rl.prompts_for_step(5, s, 2, seed=3) for s in range(5)]
    flat = [i for step in seen for i in step]
    assert sorted(flat[:5]) == list(range(5)) and sorted(flat[5:10]) == list(range(5))
    assert rl.prompts_for_step(5, 3, 2, seed=3) == seen[3]


# --- the ACME use case, the registered stage and the CLI -----------------------------


@pytest.fixture(scope="module")
def acme_prompts(tmp_path_factory) -> tuple[Path, dict]:
    from acme import generate_corpus
    from acme_rl import build_rl_prompts

    corpus = tmp_path_factory.mktemp("acme") / "corpus"
    generate_corpus(corpus, seed=0, scale=0.05)
    return corpus, build_rl_prompts(corpus)


def test_acme_translation_reward_runs_python_against_the_interpreter(acme_prompts):
    from acme_rl import python_compiles, python_runs, translation_reward

    corpus, splits = acme_prompts
    records = splits["train"] + splits["heldout"]
    assert len(records) == 21 and splits["heldout"]
    for rec in [*splits["train"][:2], splits["heldout"][0]]:
        test = json.loads((corpus / "programs" / "tests" / f"{rec['slug']}.json").read_text())
        reference = (corpus / test["python"]).read_text()  # held-out ones live under heldout/
        meta = {k: v for k, v in rec.items() if k != "messages"}
        assert translation_reward("p", f"```python\n{reference}```", meta) == 1.0
        # One wrong line in every output: no case passes, but the program still runs.
        wrong = reference.replace("def main() -> None:\n", "def main() -> None:\n    print('x')\n")
        assert translation_reward("p", wrong, meta) == 0.0
        assert python_runs("p", wrong, meta) == 1.0 == python_runs("p", reference, meta)
        undefined = reference.replace("def main() -> None:\n", "def main() -> None:\n    nope\n")
        assert python_runs("p", undefined, meta) == 0.0
        assert python_compiles("p", reference, meta) == 1.0
        assert python_compiles("p", "def (:", meta) == 0.0


def test_acme_translation_reward_fails_a_hanging_program_quickly(acme_prompts):
    from acme_rl import translation_reward

    rec = acme_prompts[1]["train"][0]
    meta = {k: v for k, v in rec.items() if k != "messages"}
    t0 = time.perf_counter()
    assert translation_reward("p", "while True:\n    pass", meta) == 0.0
    assert time.perf_counter() - t0 < 10  # one 2 s timeout, not one per test case


def test_acme_heldout_split_is_the_sft_split(acme_prompts):
    from acme_common import sft_is_heldout
    from acme_rl import is_heldout

    _, splits = acme_prompts
    for rec in splits["train"] + splits["heldout"]:
        assert is_heldout(rec["slug"]) == sft_is_heldout(f"translate-{rec['slug']}")


def test_acme_snippets_translate_exactly_and_split_as_the_sft_data(tmp_path):
    """The short programs: each kind's Python prints what the interpreter prints on every
    test case, a branch's cases take both ways, and the RL prompts are the SFT data's."""
    import random

    from acme_programs import generate_snippets
    from acme_rl import (
        output_similarity,
        shaped_translation_reward,
        translation_reward,
        write_rl_prompts,
    )
    from acme_sft import build_sft_records

    pairs = generate_snippets(random.Random("t"), 60)
    assert len({p["acl"] for p in pairs}) > 40  # varied, not one template
    seen = set()
    for p in pairs:
        kind = (p["acl"].count("ACCEPT"), "IF " in p["acl"], "VALUE" in p["acl"])
        if kind in seen:
            continue
        seen.add(kind)
        meta = {"acl": p["acl"], "inputs": [c["inputs"] for c in p["cases"]]}
        assert translation_reward("p", f"```python\n{p['python']}```", meta) == 1.0
        near_miss = p["python"].replace("print(", "print(1, ")
        assert translation_reward("p", near_miss, meta) == 0
        # the shaping reward gives a near miss partial credit, an exact translation full
        assert 0 < output_similarity("p", near_miss, meta) < 1
        assert output_similarity("p", p["python"], meta) == 1.0
        assert output_similarity("p", "print(", meta) == 0.0  # does not compile
        # the ranker: a near miss above code that does not compile, a pass above both
        shaped = [
            shaped_translation_reward("p", c, meta) for c in (p["python"], near_miss, "print(")
        ]
        assert shaped[0] == pytest.approx(1.1) and shaped[0] > shaped[1] > shaped[2] == 0.0
        if "IF " in p["acl"]:
            assert len({tuple(c["expected"]) for c in p["cases"]}) == 2
    assert len(seen) >= 4
    counts = write_rl_prompts(None, tmp_path / "rl", snippets=True)
    held = [json.loads(x) for x in (tmp_path / "rl" / "heldout.jsonl").read_text().splitlines()]
    sft = {
        r["metadata"]["slug"]: r["metadata"]["split"]
        for r in build_sft_records(seed=0)
        if r["metadata"]["task"] == "translate_snippet"
    }
    assert counts["train"] + counts["heldout"] == len(sft) and held
    assert all(sft[r["slug"]] == "heldout" for r in held)


REWARD_MODULE = """
def share_of_e(prompt, completion, metadata):
    return completion.count("e") / max(len(completion), 1)
"""


def test_rl_stage_lineage_cache_and_cli(tiny, workspace, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from forgeml.cli import app
    from forgeml.pipeline.rl_stage import rl_stage
    from forgeml.registry import open_registry

    base_dir, prompts = tiny
    (tmp_path / "rl_stage_reward.py").write_text(REWARD_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = open_registry(workspace)
    base = reg.add_asset("model", "tiny", base_dir, metadata={"arch": "dense"})
    overrides = [*FAST, "rl.train.max_steps=2", "rl.rewards=[{kind: 'rl_stage_reward:share_of_e'}]"]
    recipe = load_recipe(None, overrides)
    res = rl_stage(workspace, recipe, base.id, str(prompts), progress=False)
    model = reg.get_asset(res.output)
    assert model.kind == "model" and model.metadata["base_model"] == base.id
    prompts_asset = reg.get_asset(model.metadata["prompts"])
    assert (
        prompts_asset.kind == "dataset" and prompts_asset.metadata["format"] == "rl-prompts-jsonl"
    )
    assert model.metadata["rewards"][0]["kind"] == "rl_stage_reward:share_of_e"
    assert sorted(reg.get_run(res.run_id).inputs) == sorted([base.id, prompts_asset.id])
    assert rl_stage(workspace, recipe, base.id, str(prompts), progress=False).cached
    # Editing the reward function's code is a different run, not a cache hit.
    (tmp_path / "rl_stage_reward.py").write_text(REWARD_MODULE + "\n# tweaked\n")
    assert not rl_stage(workspace, recipe, base.id, str(prompts), progress=False).cached

    recipe_file = tmp_path / "rl.yaml"
    recipe_file.write_text("rl:\n  rewards:\n    - kind: regex\n      pattern: e\n")
    result = CliRunner().invoke(app, [
        "-w", str(workspace.root), "-q", "train", "rl", str(recipe_file), *FAST,
        "rl.train.max_steps=1", "--base", base.id, "--prompts", prompts_asset.id,
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "model model-" in result.output and "final_reward_mean" in result.output
