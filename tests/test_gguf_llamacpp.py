"""GGUF exports run by llama.cpp itself (llama-cpp-python): the same tokens, the same greedy
text (f16) or nearly the same next-token choices (q8_0), the chat template rendered the same,
generation stopping at `<|end|>`, MoE and LoRA adapters; on a random and a trained tiny model."""

from __future__ import annotations

import ctypes
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from forgeml.core.config import ModelConfig
from forgeml.models.gguf_io import write_gguf, write_gguf_lora
from forgeml.models.lora import apply_lora, lora_modules, save_adapter
from forgeml.models.registry import build_model
from forgeml.pipeline.gguf_export import export_model_gguf
from forgeml.tokenizer.chat import CHAT_TEMPLATE, EOS, render_chat
from forgeml.tokenizer.train import load_tokenizer, train_bpe_tokenizer

pytest.importorskip("gguf", reason="the gguf extra is not installed")
llama_cpp = pytest.importorskip(
    "llama_cpp", reason="llama-cpp-python is not installed (.ci/run builds and installs it)"
)

GREEDY_TOKENS = 40
SAMPLE_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "def f3(x):\n    return x * 3 + 4\n\n\nprint(f3(3))\n",
    "I'm sure they'll say we've DONE it; you'd agree, wouldn't you?",
    "caf\u00e9 cr\u00e8me, na\u00efve \u65e5\u672c\u8a9e \U0001f600 \u00e9t\u00e9 12345678",
    "tabs\t\tand   spaces \n\n\n  trailing   \r\n",
    "<|user|>\nWhat is 2 plus 3?<|end|>\n<|assistant|>\n",
    "x+=1;y<=2&&z!=3 // ops ...!?",
]


def qa_chat(a: int, b: int) -> list[dict]:
    return [
        {"role": "system", "content": "You add numbers."},
        {"role": "user", "content": f"What is {a} plus {b}?"},
        {"role": "assistant", "content": f"It is {a + b}."},
    ]


def corpus() -> list[str]:
    words = "the quick brown fox jumps over the lazy dog while the model learns".split()
    texts = [" ".join(words[(i + j) % len(words)] for j in range(60)) for i in range(20)]
    texts += [render_chat(qa_chat(a, b)) for a in range(10) for b in range(10)]
    return texts


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    return train_bpe_tokenizer(corpus(), vocab_size=400, out_dir=tmp_path_factory.mktemp("tok"))


def tiny(vocab: int, arch: str = "dense", **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    fields = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=128, vocab_size=vocab,
                  max_seq_len=256, arch=arch, n_experts=4, top_k=2, init_std=0.2)  # fmt: skip
    fields.update(overrides)
    return build_model(ModelConfig(**fields)).eval()


@pytest.fixture(scope="module")
def trained(tokenizer_dir) -> torch.nn.Module:
    """A few hundred AdamW steps on the corpus: peaked next-token choices, answers that end
    with `<|end|>`."""
    tok = load_tokenizer(tokenizer_dir)
    eos = tok.token_to_id(EOS)
    ids = [i for text in corpus() for i in [*tok.encode(text).ids, eos]]
    model = tiny(tok.get_vocab_size(), init_std=0.02).train()
    data = torch.tensor(ids)
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150):
        starts = torch.randint(0, len(data) - 65, (8,), generator=gen)
        batch = torch.stack([data[s : s + 65] for s in starts])
        loss = model(batch[:, :-1], batch[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 1.0
    return model.eval()


def load(path: Path, *, f32_cache: bool = False, **kwargs) -> llama_cpp.Llama:
    """llama.cpp on `path`; its kv cache is f16 unless `f32_cache` (to compare f32 logits)."""
    if f32_cache:
        kwargs.update(type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    return llama_cpp.Llama(
        model_path=str(path), n_ctx=256, n_threads=2, logits_all=True, verbose=False, **kwargs
    )


def llama_logits(llm: llama_cpp.Llama, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)])


def our_logits(model: torch.nn.Module, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids]))[0].numpy()


def our_greedy(model: torch.nn.Module, ids: list[int], n: int) -> list[int]:
    out = list(ids)
    for _ in range(n):
        out.append(int(our_logits(model, out)[-1].argmax()))
    return out[len(ids) :]


def llama_greedy(llm: llama_cpp.Llama, ids: list[int], n: int) -> list[int]:
    """Greedy continuation through llama.cpp's kv cache, end-of-generation tokens ignored."""
    llm.reset()
    llm.eval(ids)
    out = []
    for _ in range(n):
        out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([out[-1]])
    return out


def prompt_ids(tokenizer_dir: Path) -> list[int]:
    return load_tokenizer(tokenizer_dir).encode("the lazy dog while the").ids


def test_tokenization_equals_ours(tmp_path, tokenizer_dir):
    tok = load_tokenizer(tokenizer_dir)
    llm = load(write_gguf(tiny(tok.get_vocab_size()), tmp_path / "m.gguf", tokenizer_dir))
    for text in SAMPLE_TEXTS:
        ours = tok.encode(text).ids
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == ours, text
        assert llm.detokenize(ours, special=True).decode() == text  # token by token


def test_random_model_f32_logits_and_f16_greedy_tokens(tmp_path, tokenizer_dir):
    vocab = load_tokenizer(tokenizer_dir).get_vocab_size()
    model = tiny(vocab)
    ids = prompt_ids(tokenizer_dir)
    f32 = load(write_gguf(model, tmp_path / "f32.gguf", tokenizer_dir, quant="f32"), f32_cache=True)
    np.testing.assert_allclose(llama_logits(f32, ids), our_logits(model, ids), atol=1e-4)
    f16 = load(write_gguf(model, tmp_path / "f16.gguf", tokenizer_dir, quant="f16"))
    assert llama_greedy(f16, ids, GREEDY_TOKENS) == our_greedy(model, ids, GREEDY_TOKENS)


@pytest.mark.slow  # trains a tiny model first
def test_trained_model_f16_greedy_and_q8_0_top1_agreement(tmp_path, tokenizer_dir, trained):
    ids = prompt_ids(tokenizer_dir)
    f16 = load(export_model_gguf(trained, tmp_path / "f16", tokenizer_dir, quant="f16"))
    assert llama_greedy(f16, ids, GREEDY_TOKENS) == our_greedy(trained, ids, GREEDY_TOKENS)
    # q8_0: the share of positions of held-out-ish text where llama.cpp's next-token argmax
    # equals ours (teacher forcing, so one early flip does not count twice).
    text = " ".join(corpus()[3:6]) + render_chat(qa_chat(7, 11))
    seq = load_tokenizer(tokenizer_dir).encode(text).ids[:250]
    q8 = load(write_gguf(trained, tmp_path / "q8.gguf", tokenizer_dir, quant="q8_0"))
    agree = (llama_logits(q8, seq).argmax(-1) == our_logits(trained, seq).argmax(-1)).mean()
    assert agree >= 0.95, f"q8_0 top-1 agreement {agree:.3f}"


@pytest.mark.slow  # trains a tiny model first
def test_chat_template_renders_our_text_and_generation_stops_at_end(
    tmp_path, tokenizer_dir, trained
):
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    llm = load(write_gguf(trained, tmp_path / "m.gguf", tokenizer_dir, quant="f16"))
    template = llm.metadata["tokenizer.chat_template"]
    assert template == CHAT_TEMPLATE
    messages = qa_chat(4, 5)[:2]
    formatter = Jinja2ChatFormatter(template=template, eos_token=EOS, bos_token="<|bos|>")
    prompt = formatter(messages=messages).prompt
    assert prompt == render_chat(messages, add_generation_prompt=True)
    tok = load_tokenizer(tokenizer_dir)
    end = tok.token_to_id("<|end|>")
    vocab = llama_cpp.llama_model_get_vocab(llm._model.model)
    assert llama_cpp.llama_vocab_is_eog(vocab, end)
    # The model answers "It is <n>." (not always the right sum: it is tiny) and ends the
    # turn; llama.cpp stops there, with forgeml's greedy answer.
    ours = our_greedy(trained, tok.encode(prompt).ids, 32)
    assert end in ours, tok.decode(ours)
    answer = tok.decode(ours[: ours.index(end)])
    assert answer.startswith("It is ")
    out = llm.create_completion(prompt, max_tokens=64, temperature=0.0, top_k=1)
    choice = out["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["text"] == answer
    reply = llm.create_chat_completion(messages=messages, max_tokens=64, temperature=0.0, top_k=1)
    assert reply["choices"][0]["message"]["content"] == answer


def test_llama_cpp_builtin_chat_format_is_ours(tmp_path, tokenizer_dir):
    """Without `--jinja`, llama-cli/llama-server pick a built-in format from the template's
    markers: ours is detected as Phi-3's, which is the same text for plain messages."""
    vocab = load_tokenizer(tokenizer_dir).get_vocab_size()
    llm = load(write_gguf(tiny(vocab), tmp_path / "m.gguf", tokenizer_dir))
    messages = qa_chat(4, 5)
    chat = (llama_cpp.llama_chat_message * len(messages))(
        *[llama_cpp.llama_chat_message(m["role"].encode(), m["content"].encode()) for m in messages]
    )
    template = llama_cpp.llama_model_chat_template(llm._model.model, None)
    buf = ctypes.create_string_buffer(4096)
    n = llama_cpp.llama_chat_apply_template(template, chat, len(messages), True, buf, len(buf))
    assert buf.raw[:n].decode() == render_chat(messages, add_generation_prompt=True)


def test_moe_round_trip(tmp_path, tokenizer_dir):
    vocab = load_tokenizer(tokenizer_dir).get_vocab_size()
    model = tiny(vocab, "moe")
    ids = prompt_ids(tokenizer_dir)
    f32 = load(write_gguf(model, tmp_path / "f32.gguf", tokenizer_dir, quant="f32"), f32_cache=True)
    np.testing.assert_allclose(llama_logits(f32, ids), our_logits(model, ids), atol=1e-4)
    f16 = load(write_gguf(model, tmp_path / "f16.gguf", tokenizer_dir, quant="f16"))
    assert llama_greedy(f16, ids, GREEDY_TOKENS) == our_greedy(model, ids, GREEDY_TOKENS)


def test_lora_adapter_applied_by_llama_cpp(tmp_path, tokenizer_dir):
    vocab = load_tokenizer(tokenizer_dir).get_vocab_size()
    model = tiny(vocab, tie_embeddings=False)
    base = write_gguf(model, tmp_path / "base.gguf", tokenizer_dir, quant="f32")
    apply_lora(model, ["wqkv", "wo", "w13", "w2"], rank=4, alpha=8.0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for lora in lora_modules(model).values():
            lora.lora_B.copy_(torch.randn(lora.lora_B.shape, generator=gen) * 0.2)
    save_adapter(model, tmp_path / "adapter")
    adapter = write_gguf_lora(tmp_path / "adapter", tmp_path / "lora.gguf")
    ids = prompt_ids(tokenizer_dir)
    plain = llama_logits(load(base, f32_cache=True), ids)
    adapted = llama_logits(load(base, f32_cache=True, lora_path=str(adapter)), ids)
    ours = our_logits(model, ids)
    assert np.abs(plain - ours).max() > 0.1  # the adapter changes the function
    np.testing.assert_allclose(adapted, ours, atol=1e-4)


def test_q4_k_m_through_llama_cpp_quantizer(tmp_path, tokenizer_dir):
    vocab = load_tokenizer(tokenizer_dir).get_vocab_size()
    model = tiny(vocab, dim=256, n_heads=4, ffn_hidden=512, init_std=0.05)
    path = write_gguf(model, tmp_path / "q4.gguf", tokenizer_dir, quant="q4_k_m")
    f16 = write_gguf(model, tmp_path / "f16.gguf", tokenizer_dir, quant="f16")
    assert path.stat().st_size < 0.5 * f16.stat().st_size
    meta = load(path).metadata
    assert json.loads(meta["general.file_type"]) == llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    ids = prompt_ids(tokenizer_dir)
    agree = (llama_logits(load(path), ids).argmax(-1) == our_logits(model, ids).argmax(-1)).mean()
    assert agree >= 0.5
