"""FIM eval on the ACME damaged documents: the gaps are read correctly (an oracle working from
the original documents scores 1.0), wrong or misplaced answers score 0, whitespace is only
forgiven by the normalised match, and a tiny FIM-trained model runs through the pipeline."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from acme import generate_corpus

from forgeml.core.errors import DataError
from forgeml.eval.infill import evaluate_infill, load_damaged, score_infill

HEADER_END = "in brackets.\n\n"  # the damaged documents' fixed first line


@pytest.fixture(scope="module")
def acme(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("acme") / "acme"
    generate_corpus(root, seed=0, scale=0.02)
    return root


def source_oracle(root: Path):
    """Fills a gap by finding the surrounding text in the ORIGINAL manual/policy it came from,
    independently of how the eval builds its examples."""
    key = json.loads((root / "damaged" / "answers.json").read_text())
    sources = {(root / v["source"]).read_text() for v in key.values()}

    def fill(prefix: str, suffix: str) -> str:
        body = prefix.split(HEADER_END, 1)[-1]
        tail, head = body[-24:], suffix[:24].rstrip("\n")
        pattern = re.escape(tail) + r"([A-Za-z0-9-]+)" + re.escape(head)
        found = {m.group(1) for src in sources for m in re.finditer(pattern, src)}
        assert len(found) == 1, (tail, head, found)
        return found.pop()

    return fill


def test_examples_restore_the_other_gaps_and_cut_at_one(acme):
    examples = load_damaged(acme / "damaged")
    key = json.loads((acme / "damaged" / "answers.json").read_text())
    assert len(examples) == sum(len(v["answers"]) for v in key.values()) > 10
    for ex in examples:
        text = (acme / ex.file).read_text()
        assert "[...]" not in ex.prefix + ex.suffix
        assert len(ex.prefix) + len(ex.answer) + len(ex.suffix) == (
            len(text) - 5 * len(key[ex.file]["answers"]) + sum(map(len, key[ex.file]["answers"]))
        )
        assert ex.answer == key[ex.file]["answers"][ex.gap]


def test_scorer_perfect_wrong_shifted_and_whitespace(acme):
    damaged = acme / "damaged"
    oracle = source_oracle(acme)
    perfect = evaluate_infill(oracle, None, damaged)
    assert perfect["exact_match"] == perfect["normalized_match"] == 1.0
    assert perfect["n"] == len(perfect["examples"]) == len(load_damaged(damaged))
    assert all(r["output"] == r["answer"] for r in perfect["examples"])

    wrong = evaluate_infill(lambda p, s: "zzzz", None, damaged)
    assert wrong["exact_match"] == wrong["normalized_match"] == 0.0

    padded = evaluate_infill(lambda p, s: f" {oracle(p, s)}\n", None, damaged)
    assert padded["exact_match"] == 0.0 and padded["normalized_match"] == 1.0

    # The right words in the wrong gaps: each answer is shifted to the next gap.
    examples = load_damaged(damaged)
    rotated = examples[1:] + examples[:1]
    nxt = {(a.prefix, a.suffix): b.answer for a, b in zip(examples, rotated, strict=True)}
    shifted = score_infill(examples, lambda p, s: nxt[(p, s)])
    assert shifted["exact_match"] < 0.2

    limited = evaluate_infill(oracle, None, damaged, max_examples=4)
    assert limited["n"] == 4


def test_bad_damaged_folders_are_clear_errors(acme, tmp_path):
    bad = tmp_path / "damaged"
    bad.mkdir()
    (bad / "answers.json").write_text(json.dumps({"damaged/0001.txt": {"answers": ["a", "b"]}}))
    (bad / "0001.txt").write_text("one [...] gap only")
    with pytest.raises(DataError, match="1 gaps but"):
        load_damaged(bad)


def test_a_tiny_fim_trained_model_runs_through_the_eval(acme, tmp_path, workspace):
    from forgeml.core.config import FimConfig, ModelConfig, OptimConfig, Recipe, TrainConfig
    from forgeml.models.hf_io import load_model
    from forgeml.tokenizer.fim import pack_fim_shards
    from forgeml.tokenizer.train import load_tokenizer, train_bpe_tokenizer
    from forgeml.train.pretrain import pretrain

    examples = load_damaged(acme / "damaged")
    docs = sorted({e.file: e.prefix + e.answer + e.suffix for e in examples}.values())
    texts = docs * 10
    data = tmp_path / "d.parquet"
    pq.write_table(pa.table({"doc_id": [str(i) for i in range(len(texts))], "text": texts}), data)
    tok = train_bpe_tokenizer(docs, vocab_size=400, out_dir=tmp_path / "tok")
    index = pack_fim_shards([data], tok, tmp_path / "shards", FimConfig(rate=0.9, seed=0))
    assert index["fim"]["fim_docs"] > 0
    recipe = Recipe(
        model=ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=160,
                          max_seq_len=128),
        optim=OptimConfig(lr=5e-3, warmup_steps=5),
        train=TrainConfig(max_steps=12, micro_batch_size=4, seq_len=128, dtype="fp32",
                          device="cpu", eval_every=0, checkpoint_every=0),
    )  # fmt: skip
    run = pretrain(
        recipe, train_shards=tmp_path / "shards", out_dir=tmp_path / "run", tokenizer_dir=tok,
        progress=False,
    )  # fmt: skip
    model = load_model(run["model_dir"])
    result = evaluate_infill(model, run["model_dir"], acme / "damaged", max_examples=6,
                             max_new_tokens=4)  # fmt: skip
    assert result["n"] == 6 and 0.0 <= result["exact_match"] <= result["normalized_match"] <= 1
    tok = load_tokenizer(tok)
    for row in result["examples"]:
        assert isinstance(row["output"], str)
        assert len(tok.encode(row["output"], add_special_tokens=False).ids) <= 4
        assert row["exact"] == (row["output"] == row["answer"])

    # The CLI entry points: `generate --infill` and the registered, cached eval run.
    from forgeml.core.config import GenerateConfig
    from forgeml.eval.infill import infill_text
    from forgeml.pipeline.infill_stage import infill_eval_stage
    from forgeml.registry import open_registry

    text = infill_text(run["model_dir"], "Field: <FILL> ok", GenerateConfig(max_new_tokens=3))
    # At most 3 generated tokens; re-encoding their text may split one into pieces.
    longest = max(len(tok.id_to_token(i)) for i in range(tok.get_vocab_size()))
    assert isinstance(text, str) and len(text.encode()) <= 3 * longest
    reg = open_registry(workspace)
    asset = reg.add_asset("model", "tiny-fim", Path(run["model_dir"]))
    stage = infill_eval_stage(workspace, asset.id, acme / "damaged", max_examples=3,
                              max_new_tokens=2)  # fmt: skip
    record = json.loads((reg.get_asset(stage.output).path / "eval.json").read_text())
    assert record["n"] == stage.metrics["n"] == 3 and len(record["examples"]) == 3
    assert reg.get_asset(stage.output).metadata["suite"] == "infill"
    again = infill_eval_stage(workspace, asset.id, acme / "damaged", max_examples=3,
                              max_new_tokens=2)  # fmt: skip
    assert again.cached and again.outputs == stage.outputs


@pytest.mark.parametrize("order", ["psm", "spm"])
def test_eval_prompt_is_exactly_the_start_of_a_training_example(acme, tmp_path, order):
    """The infill prompt for a gap is token for token the training example whose word-span
    middle is that gap (same sentinels, order, whitespace and piecewise encoding), and the
    training example goes on with the answer's tokens then the document's EOS."""
    import numpy as np

    from forgeml.core.config import FimConfig
    from forgeml.eval.infill import fim_prompt_ids
    from forgeml.tokenizer.fim import fim_plan, pack_fim_shards
    from forgeml.tokenizer.pack import TokenShards
    from forgeml.tokenizer.train import load_tokenizer, train_bpe_tokenizer

    examples = load_damaged(acme / "damaged")[:40:8]
    texts = [e.prefix + e.answer + e.suffix for e in examples]
    tok_dir = train_bpe_tokenizer(texts, vocab_size=400, out_dir=tmp_path / "tok")
    tok = load_tokenizer(tok_dir)
    cfg = FimConfig(rate=1.0, spm_rate=float(order == "spm"), unit="word", max_span_words=1)
    for k, (ex, text) in enumerate(zip(examples, texts, strict=True)):
        # the seed whose word-span plan cuts exactly this gap (FimEncoder seeds doc 0 by [seed, 0])
        seed = next(
            s for s in range(20_000)
            if (p := fim_plan(text, np.random.default_rng([s, 0]), cfg)).lo == len(ex.prefix)
            and p.hi == len(ex.prefix) + len(ex.answer)
        )  # fmt: skip
        data = tmp_path / f"d{k}.parquet"
        pq.write_table(pa.table({"doc_id": ["0"], "text": [text]}), data)
        pack_fim_shards([data], tok_dir, tmp_path / f"s{k}", cfg.model_copy(update={"seed": seed}))
        shards = TokenShards(tmp_path / f"s{k}")
        trained = shards.window(0, shards.n_tokens).tolist()
        prompt = fim_prompt_ids(tok, ex.prefix, ex.suffix, 1 << 20, order)
        assert trained[: len(prompt)] == prompt
        middle = trained[len(prompt) :]
        assert middle[-1] == shards.eos_id and tok.decode(middle[:-1]) == ex.answer
