"""Chat data: labels on assistant turns only (tool calls included), validation errors that name
file, line and field, over-length policies that account for every record, and packing whose
attention boundaries keep examples apart (packed logits == each example alone)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from forgeml.core.config import ModelConfig
from forgeml.core.errors import DataError
from forgeml.models.dense import IGNORE_INDEX, Transformer
from forgeml.models.moe import MoETransformer
from forgeml.tokenizer.chat import render_chat
from forgeml.tokenizer.train import load_tokenizer, train_bpe_tokenizer
from forgeml.train.chat_data import (
    PAD_DOC,
    ChatExample,
    SFTBatches,
    load_chat_examples,
    pack_examples,
    rows_to_batch,
    tokenize_conversation,
)

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "system_status",
            "description": "Status of an ACME system.",
            "parameters": {"type": "object", "properties": {"system": {"type": "string"}}},
        },
    }
]
TOOL_CHAT = [
    {"role": "user", "content": "Is LEDGER-7 up?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "c1",
                "type": "function",
                "function": {"name": "system_status", "arguments": '{"system": "LEDGER-7"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "c1", "content": '{"status": "up"}'},
    {"role": "assistant", "content": "Yes, LEDGER-7 is up."},
]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    words = "the payroll ledger system is up down report policy ACME program display".split()
    texts = [" ".join(words[(i * 7 + j) % len(words)] for j in range(40)) for i in range(200)]
    out = train_bpe_tokenizer(texts, vocab_size=400, out_dir=tmp_path_factory.mktemp("tok"))
    return load_tokenizer(out)


def labelled_text(tok, ids, labels) -> list[str]:
    """Decode each run of labelled tokens."""
    runs, cur = [], []
    for i, lab in zip(ids, labels, strict=True):
        if lab != IGNORE_INDEX:
            assert lab == i
            cur.append(i)
        elif cur:
            runs.append(tok.decode(cur, skip_special_tokens=False))
            cur = []
    if cur:
        runs.append(tok.decode(cur, skip_special_tokens=False))
    return runs


def test_labels_cover_assistant_turns_only(tok):
    messages = [
        {"role": "system", "content": "You are ACME's assistant."},
        {"role": "user", "content": "What is the payroll system?"},
        {"role": "assistant", "content": "PAYMASTER."},
        {"role": "user", "content": "And the ledger?"},
        {"role": "assistant", "content": "LEDGER-7."},
    ]
    ids, labels = tokenize_conversation(tok, messages)
    assert tok.decode(ids, skip_special_tokens=False) == render_chat(messages)
    assert labelled_text(tok, ids, labels) == ["PAYMASTER.<|end|>", "LEDGER-7.<|end|>"]


def test_tool_use_conversation_trains_calls_and_answer(tok):
    ids, labels = tokenize_conversation(tok, TOOL_CHAT, TOOLS)
    full = render_chat(TOOL_CHAT, tools=TOOLS)
    assert tok.decode(ids, skip_special_tokens=False) == full
    assert "<tools>" in full  # the tools block is part of the (unlabelled) prompt
    assert labelled_text(tok, ids, labels) == [
        '<tool_call>{"name": "system_status", "arguments": {"system": "LEDGER-7"}}</tool_call><|end|>',
        "Yes, LEDGER-7 is up.<|end|>",
    ]


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


@pytest.mark.parametrize(
    ("record", "fragment"),
    [
        ({"messages": [{"content": "hi"}]}, "messages[0].role: missing"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role: unknown role 'robot'"),
        ({"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "x"}]},
         "messages[0].content: empty user message"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant message"),
        ({"messages": TOOL_CHAT[:1] + [{"role": "assistant", "tool_calls": [{"function": {"name": "system_status", "arguments": "{oops"}}]}]},
         "messages[1].tool_calls[0].function.arguments: not valid JSON"),
        ({"messages": TOOL_CHAT, "tools": [{"type": "function", "function": {"name": "other"}}]},
         "messages[1].tool_calls[0].function.name: 'system_status' is not one of the record's tools"),
        ({"messages": [TOOL_CHAT[0], TOOL_CHAT[2], TOOL_CHAT[3]]}, "messages[1]: a tool result must follow"),
        ({"prompt": "hi"}, "completion: missing"),
        ({"messages": [], "extra": 1}, "unknown field(s) extra"),
        ("{not json", "not valid JSON"),
    ],
)  # fmt: skip
def test_validation_errors_name_file_line_and_field(tok, tmp_path, record, fragment):
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]}
    path = write_jsonl(tmp_path / "chat.jsonl", [good, record])
    with pytest.raises(DataError) as info:
        load_chat_examples(path, tok, max_tokens=200)
    assert str(info.value).startswith("chat.jsonl:2: ")
    assert fragment in str(info.value)
    # skip mode: counted with the same message, the good record still kept
    examples, report = load_chat_examples(path, tok, max_tokens=200, on_invalid="skip")
    assert len(examples) == 1 and report.kept == 1
    assert report.failed[0]["line"] == 2 and fragment in report.failed[0]["error"]


def test_overlength_policies_account_for_every_record(tok, tmp_path):
    short = {"prompt": "hi", "completion": "ok"}
    long_answer = {"prompt": "hi", "completion": "payroll ledger " * 40}
    long_prompt = {"prompt": "payroll ledger " * 40, "completion": "ok"}
    pairs = [short, long_answer, long_prompt, short, "[]"]
    path = write_jsonl(tmp_path / "pc.jsonl", pairs)
    ex, rep = load_chat_examples(path, tok, max_tokens=32, on_invalid="skip")
    assert (rep.total, rep.kept, rep.truncated, len(rep.failed)) == (5, 2, 1, 1)
    assert rep.dropped == {"no assistant token within the first 32 tokens": 1}
    assert len(ex) == 3 and max(len(e.input_ids) for e in ex) == 32
    ex, rep = load_chat_examples(path, tok, max_tokens=32, overlength="drop", on_invalid="skip")
    assert (rep.kept, rep.truncated, rep.dropped) == (2, 0, {"longer than 32 tokens": 2})
    d = rep.to_dict()
    assert d["kept"] + d["truncated"] + d["n_dropped"] + d["n_failed"] == d["total"] == 5


def test_packing_rows_and_batches(tok):
    examples = [ChatExample(list(range(n)), list(range(n)), f"x:{n}") for n in (5, 9, 4, 7, 3)]
    rows = pack_examples(examples, seq_len=12, pad_id=2)
    # first fit in data order: [5,9->no], ... each example contributes len-1 positions
    assert rows.inputs.shape[1] == 12
    used = sorted(int((r != PAD_DOC).sum()) for r in rows.doc_ids)
    assert sum(used) == sum(n - 1 for n in (5, 9, 4, 7, 3)) and len(rows) < len(examples)
    for r in range(len(rows)):
        docs = rows.doc_ids[r]
        tgt = rows.targets[r]
        assert (tgt[docs == PAD_DOC] == IGNORE_INDEX).all()
    unpacked = pack_examples(examples, seq_len=12, pad_id=2, packing=False)
    assert len(unpacked) == 5
    x, y, d = rows_to_batch(unpacked, [0, 4])
    assert x.shape == (2, 4)  # trailing padding columns cut to the longest row
    batches = SFTBatches(rows, global_batch_size=2, seed=0)
    first = [b[0] for b in batches.next_micro_batches(1, 2)]
    again = SFTBatches(rows, global_batch_size=2, seed=0)
    again.load_state_dict({**batches.state_dict(), "consumed": 0})
    assert all(
        torch.equal(a[0], b) for a, b in zip(again.next_micro_batches(1, 2), first, strict=True)
    )


def model_of(arch: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(arch=arch, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=96,
                      vocab_size=101, max_seq_len=64, n_experts=4, top_k=2, **kw)  # fmt: skip
    return (MoETransformer if arch == "moe" else Transformer)(cfg).eval()


@pytest.mark.parametrize(("arch", "window"), [("dense", None), ("dense", 4), ("moe", None)])
def test_packed_examples_do_not_see_each_other(arch, window):
    """Logits of each example packed with others (and padding) == the example alone."""
    model = model_of(arch, sliding_window=window)
    gen = torch.Generator().manual_seed(0)
    lengths = [7, 12, 5]
    examples = [ChatExample(torch.randint(11, 101, (n + 1,), generator=gen).tolist(),
                            [IGNORE_INDEX] * (n + 1), "t") for n in lengths]  # fmt: skip
    rows = pack_examples(examples, seq_len=30, pad_id=2)
    assert len(rows) == 1
    x, _, docs = rows_to_batch(rows, [0])
    x, docs = torch.cat([x, torch.full((1, 3), 2)], 1), torch.cat([docs, torch.full((1, 3), -1)], 1)
    with torch.no_grad():
        packed = model(x, doc_ids=docs)[0]
        at = 0
        for ex, n in zip(examples, lengths, strict=True):
            alone = model(torch.tensor([ex.input_ids[:-1]]))[0]
            torch.testing.assert_close(packed[at : at + n], alone, atol=1e-5, rtol=0)
            at += n
        # without document boundaries the second example would see the first: it differs
        leaky = model(x)[0]
        assert (
            leaky[lengths[0] : lengths[0] + lengths[1]]
            - packed[lengths[0] : lengths[0] + lengths[1]]
        ).abs().max() > 1e-3


def test_doc_ids_loss_matches_and_gradients_flow():
    model = model_of("dense").train()
    x = torch.randint(11, 101, (2, 16))
    y = torch.randint(11, 101, (2, 16))
    one_doc = torch.zeros(2, 16, dtype=torch.long)
    # a single document per row is the plain causal model
    torch.testing.assert_close(model(x, y, doc_ids=one_doc), model(x, y), atol=1e-5, rtol=0)
    model(x, y, doc_ids=one_doc).backward()
    assert model.layers[0].attention.wqkv.weight.grad.abs().sum() > 0
