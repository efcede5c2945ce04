"""Models and LoRA adapters as GGUF files (llama.cpp, Ollama, LM Studio): llama.cpp's `llama`
architecture with q/k rows permuted for its rotary layout, the BPE tokenizer as `gpt2` with
merges, specials and chat template; f32/f16/q8_0 written here, k-quants by llama.cpp."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from forgeml.core.config import GenerateConfig, ModelConfig
from forgeml.core.errors import ConfigError, DataError, ForgeError, NotFoundError
from forgeml.models.hf_io import _special_token_ids, _template
from forgeml.tokenizer.chat import END, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, SPECIAL_TOKENS
from forgeml.tokenizer.train import SPLIT_PATTERN

ARCH = "llama"
# Written by this module; every 1-D tensor (norms, biases) and the MoE router stay f32.
PYTHON_QUANTS = ("f32", "f16", "q8_0")
# Written by llama.cpp's quantizer from an f32 file (its names: `llama-quantize --help`).
LLAMA_CPP_QUANTS = {"q4_k_m": "Q4_K_M", "q5_k_m": "Q5_K_M", "q6_k": "Q6_K"}
QUANTS = (*PYTHON_QUANTS, *LLAMA_CPP_QUANTS)

# llama.cpp's pre-tokenizer names (src/llama-vocab.cpp) for a byte-level BPE split by forgeml's
# SPLIT_PATTERN (the cl100k / Llama 3 regex): "llama-bpe" for tokenizers with `ignore_merges`
# (a word that is a token is taken whole, Llama 3's tokenizer.json), "smaug-bpe" (same regex,
# merges always applied) for the others, forgeml's among them. llama.cpp spells the
# contractions ASCII-case-insensitively ('[sS]...); our `(?i:'s...)` also folds the long s
# U+017F, so "it'ſt" splits as "'ſ|t" here and "'ſt" there: the one difference.
PRE_TOKENIZERS = {True: "llama-bpe", False: "smaug-bpe"}
GPT2_PRE = "gpt-2"  # a ByteLevel pre-tokenizer with its own (GPT-2) regex

# Our parameter (layer {i}) -> the GGUF tensor(s) it becomes; a tuple splits a fused weight
# along its output rows (stacked experts: along dim 1).
TENSORS: dict[str, str | tuple[str, ...]] = {
    "tok_embeddings.weight": "token_embd.weight",
    "norm.weight": "output_norm.weight",
    "output.weight": "output.weight",
    "layers.{i}.attention_norm.weight": "blk.{i}.attn_norm.weight",
    "layers.{i}.ffn_norm.weight": "blk.{i}.ffn_norm.weight",
    "layers.{i}.attention.wqkv.weight": (
        "blk.{i}.attn_q.weight",
        "blk.{i}.attn_k.weight",
        "blk.{i}.attn_v.weight",
    ),
    "layers.{i}.attention.wqkv.bias": (
        "blk.{i}.attn_q.bias",
        "blk.{i}.attn_k.bias",
        "blk.{i}.attn_v.bias",
    ),
    "layers.{i}.attention.wo.weight": "blk.{i}.attn_output.weight",
    "layers.{i}.feed_forward.w13.weight": ("blk.{i}.ffn_gate.weight", "blk.{i}.ffn_up.weight"),
    "layers.{i}.feed_forward.w2.weight": "blk.{i}.ffn_down.weight",
    "layers.{i}.feed_forward.router.weight": "blk.{i}.ffn_gate_inp.weight",
    "layers.{i}.feed_forward.w13": ("blk.{i}.ffn_gate_exps.weight", "blk.{i}.ffn_up_exps.weight"),
    "layers.{i}.feed_forward.w2": "blk.{i}.ffn_down_exps.weight",
}
# A PEFT LoRA module (HF name) -> the GGUF weight it adapts.
LORA_TENSORS = {
    "self_attn.q_proj": "blk.{i}.attn_q.weight",
    "self_attn.k_proj": "blk.{i}.attn_k.weight",
    "self_attn.v_proj": "blk.{i}.attn_v.weight",
    "self_attn.o_proj": "blk.{i}.attn_output.weight",
    "mlp.gate_proj": "blk.{i}.ffn_gate.weight",
    "mlp.up_proj": "blk.{i}.ffn_up.weight",
    "mlp.down_proj": "blk.{i}.ffn_down.weight",
}


def gguf_library() -> Any:
    """The `gguf` package (llama.cpp's Python writer), or a one-line error saying how to get it."""
    try:
        import gguf
    except ImportError:
        raise ConfigError(
            "GGUF export needs the gguf package", hint="pip install 'forgeml[gguf]'"
        ) from None
    return gguf


def check_gguf_exportable(cfg: ModelConfig) -> None:
    """Refuse, in one line, a model llama.cpp's `llama` architecture would compute differently."""
    if cfg.arch not in ("dense", "moe"):
        raise ConfigError(
            f"a {cfg.arch} model has no GGUF export", hint="export it with --format hf"
        )
    if cfg.arch == "moe" and (cfg.gating != "softmax" or cfg.shared_expert):
        what = "a shared expert" if cfg.shared_expert else f"{cfg.gating} gating"
        raise ConfigError(
            f"this MoE uses {what}, which llama.cpp's llama (Mixtral) architecture cannot express",
            hint="only softmax-gated MoE without a shared expert exports to GGUF",
        )
    if cfg.sliding_window is not None and cfg.sliding_window < cfg.max_seq_len:
        raise ConfigError(
            f"sliding-window attention ({cfg.sliding_window} < context {cfg.max_seq_len}) has "
            "no equivalent in llama.cpp's llama architecture",
            hint="export with --format hf, or a model without model.sliding_window",
        )


def check_quant(quant: str) -> None:
    if quant not in QUANTS:
        raise ConfigError(f"unknown GGUF quantisation '{quant}'", hint=f"use {', '.join(QUANTS)}")


def rope_permute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of q or k (weight or bias) from the rotate-half layout to llama.cpp's interleaved
    pairs: in each head, rows j and j + D/2 become rows 2j and 2j + 1 (the permutation of
    llama.cpp's convert_hf_to_gguf.py, so its GPT-J style rotary computes RoFormer's)."""
    half = w.shape[0] // n_heads // 2
    return w.reshape(n_heads, 2, half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(model: nn.Module) -> Iterator[tuple[str, np.ndarray]]:
    """(GGUF name, fp32 array in PyTorch layout) for every weight, q/k rows permuted."""
    cfg = model.cfg
    head_dim = cfg.dim // cfg.n_heads
    heads = {"attn_q": cfg.n_heads, "attn_k": cfg.n_kv_heads}
    for key, tensor in model.state_dict().items():
        if key == "output.weight" and cfg.tie_embeddings:
            continue  # llama.cpp reuses token_embd when `output` is absent
        template, layer = _template(key)
        if template not in TENSORS:
            raise ConfigError(f"parameter {key} has no GGUF tensor", hint="export with --format hf")
        names = TENSORS[template]
        tensor = tensor.detach().float().cpu()
        if isinstance(names, str):
            yield names.format(i=layer), tensor.numpy()
            continue
        if ".wqkv." in key:
            sizes = [cfg.n_heads * head_dim, cfg.n_kv_heads * head_dim, cfg.n_kv_heads * head_dim]
            parts = tensor.split(sizes, dim=0)
        else:  # gate/up: halves of dim 0, or of dim 1 for stacked experts [E, 2H, D]
            parts = tensor.chunk(2, dim=1 if tensor.dim() == 3 else 0)
        for name, part in zip(names, parts, strict=True):
            name = name.format(i=layer)
            kind = name.split(".")[2]
            if kind in heads:
                part = rope_permute(part, heads[kind])
            yield name, part.contiguous().numpy()


def _tensor_type(name: str, data: np.ndarray, quant: str) -> Any:
    """The GGML type a tensor is stored in, as llama.cpp's converter picks it."""
    gguf = gguf_library()

    f32, f16 = gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16
    if quant == "f32" or data.ndim <= 1 or ".ffn_gate_inp." in name:
        return f32
    if (
        quant == "q8_0"
        and data.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0
    ):
        return gguf.GGMLQuantizationType.Q8_0
    return f16


def _add_tensor(writer: Any, name: str, data: np.ndarray, quant: str) -> None:
    gguf = gguf_library()

    qtype = _tensor_type(name, data, quant)
    if qtype == gguf.GGMLQuantizationType.F32:
        writer.add_tensor(name, data.astype(np.float32))
    elif qtype == gguf.GGMLQuantizationType.F16:
        writer.add_tensor(name, data.astype(np.float16))
    else:
        writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)


def gguf_pre_tokenizer(tokenizer: dict[str, Any]) -> str:
    """llama.cpp's name for the pre-tokenizer of a byte-level BPE `tokenizer.json`; a
    tokenizer it has none for is refused (llama.cpp would split its text differently)."""
    model = tokenizer.get("model") or {}
    pre = tokenizer.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    byte_level = [s for s in steps if s.get("type") == "ByteLevel"]
    splits = [s for s in steps if s.get("type") == "Split"]
    if model.get("type") != "BPE" or len(byte_level) != 1 or len(steps) > 2:
        raise ConfigError(
            "the tokenizer is not a byte-level BPE that llama.cpp can read",
            hint="GGUF export supports forgeml's tokenizers and GPT-2/Llama 3 style ones",
        )
    if not splits and byte_level[0].get("use_regex", True):
        return GPT2_PRE
    pattern = splits[0].get("pattern", {}).get("Regex") if splits else None
    if pattern != SPLIT_PATTERN or splits[0].get("behavior") != "Isolated":
        raise ConfigError(
            f"the tokenizer's pre-tokenizer regex {pattern!r} has no llama.cpp equivalent",
            hint="GGUF export supports forgeml's split (the Llama 3 / cl100k regex) and GPT-2's",
        )
    return PRE_TOKENIZERS[bool(model.get("ignore_merges"))]


def _chat_template(tokenizer_dir: Path) -> str | None:
    jinja = tokenizer_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    config = tokenizer_dir / "tokenizer_config.json"
    template = json.loads(config.read_text()).get("chat_template") if config.is_file() else None
    return template if isinstance(template, str) else None


def add_tokenizer(writer: Any, tokenizer_dir: Path, n_vocab: int) -> dict[str, int]:
    """The tokenizer's GGUF keys: tokens (padded to the model's `n_vocab` rows), types, merges,
    special ids (eos, and `<|end|>` as end-of-turn: llama.cpp stops at both), chat template.
    Returns the special ids written, by role."""
    gguf = gguf_library()

    path = tokenizer_dir / "tokenizer.json"
    if not path.is_file():
        raise NotFoundError(
            f"no tokenizer.json in {tokenizer_dir}", hint="GGUF needs the tokenizer"
        )
    tok = json.loads(path.read_text())
    pre = gguf_pre_tokenizer(tok)
    vocab: dict[str, int] = dict(tok["model"]["vocab"])
    added = {t["content"]: t for t in tok.get("added_tokens", [])}
    vocab.update({content: t["id"] for content, t in added.items()})
    if max(vocab.values()) >= n_vocab:
        raise DataError(
            f"{path}: token id {max(vocab.values())} does not fit the model's {n_vocab} rows",
            hint="the tokenizer does not belong to this model",
        )
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    types = [gguf.TokenType.UNUSED] * n_vocab
    for text, i in vocab.items():
        tokens[i] = text
        types[i] = gguf.TokenType.NORMAL
    for t in added.values():
        types[t["id"]] = gguf.TokenType.CONTROL if t.get("special") else gguf.TokenType.USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"].get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    ids = {k: v for k, v in _special_token_ids(tokenizer_dir).items() if v is not None}
    for role, add in (
        ("bos", writer.add_bos_token_id),
        ("eos", writer.add_eos_token_id),
        ("pad", writer.add_pad_token_id),
        ("end", writer.add_eot_token_id),
    ):
        if role in ids:
            add(ids[role])
    for token, key in (
        (FIM_PREFIX, gguf.Keys.Tokenizer.FIM_PRE_ID),
        (FIM_SUFFIX, gguf.Keys.Tokenizer.FIM_SUF_ID),
        (FIM_MIDDLE, gguf.Keys.Tokenizer.FIM_MID_ID),
    ):
        if token in added:
            writer.add_uint32(key, added[token]["id"])
    writer.add_add_bos_token(_tokenizer_flag(tokenizer_dir, "add_bos_token"))
    writer.add_add_eos_token(_tokenizer_flag(tokenizer_dir, "add_eos_token"))
    template = _chat_template(tokenizer_dir)
    if template is not None:
        writer.add_chat_template(template)
    return ids


def _tokenizer_flag(tokenizer_dir: Path, key: str) -> bool:
    config = tokenizer_dir / "tokenizer_config.json"
    return bool(config.is_file() and json.loads(config.read_text()).get(key, False))


def _add_hparams(writer: Any, cfg: ModelConfig) -> None:
    writer.add_block_count(cfg.n_layers)
    writer.add_context_length(cfg.max_seq_len)
    writer.add_embedding_length(cfg.dim)
    writer.add_head_count(cfg.n_heads)
    writer.add_head_count_kv(cfg.n_kv_heads)
    writer.add_rope_dimension_count(cfg.dim // cfg.n_heads)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_layer_norm_rms_eps(cfg.norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    if cfg.arch == "moe":
        writer.add_feed_forward_length(cfg.moe_ffn_hidden or cfg.ffn_hidden)
        writer.add_expert_count(cfg.n_experts)
        writer.add_expert_used_count(cfg.top_k)
    else:
        writer.add_feed_forward_length(cfg.ffn_hidden)


def _file_type(quant: str) -> int:
    gguf = gguf_library()

    return {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }[quant]


def write_gguf(
    model: nn.Module,
    path: str | Path,
    tokenizer_dir: str | Path,
    *,
    quant: str = "f16",
    name: str | None = None,
) -> Path:
    """Write `model` (dense or MoE) and its tokenizer as one GGUF file at `path`, quantised
    as `quant` (f32, f16, q8_0 here; q4_k_m, q5_k_m, q6_k by llama.cpp's quantizer)."""
    check_quant(quant)
    cfg = model.cfg
    check_gguf_exportable(cfg)
    gguf = gguf_library()
    path = Path(path)
    if quant in LLAMA_CPP_QUANTS:
        llama_cpp_quantizer(quant)  # fail before writing the f32 file
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            source = write_gguf(
                model, Path(tmp) / "f32.gguf", tokenizer_dir, quant="f32", name=name
            )
            return quantize_gguf(source, path, quant)
    partial = path.with_name(path.name + ".partial")
    writer = gguf.GGUFWriter(partial, ARCH)
    try:
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name or "forgeml")
        _add_hparams(writer, cfg)
        writer.add_file_type(_file_type(quant))
        add_tokenizer(writer, Path(tokenizer_dir), cfg.vocab_size)
        for tensor_name, data in gguf_tensors(model):
            _add_tensor(writer, tensor_name, data, quant)
        _finish(writer, partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def _finish(writer: Any, partial: Path, path: Path) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(partial, path)


def llama_cpp_quantizer(quant: str) -> str | None:
    """The `llama-quantize` executable on PATH, else None when llama-cpp-python can do the
    same; neither present is a one-line error."""
    exe = shutil.which("llama-quantize")
    if exe is not None:
        return exe
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"--quant {quant} needs llama.cpp: llama-quantize on PATH or llama-cpp-python",
            hint=f"install one, or export {', '.join(PYTHON_QUANTS)} (written without llama.cpp)",
        ) from None
    return None


def quantize_gguf(source: str | Path, path: str | Path, quant: str) -> Path:
    """Quantise a GGUF file with llama.cpp: its `llama-quantize` on PATH, else the same
    library function through llama-cpp-python."""
    check_quant(quant)
    if quant not in LLAMA_CPP_QUANTS:
        raise ConfigError(f"{quant} is written directly", hint="call write_gguf(quant=...)")
    exe = llama_cpp_quantizer(quant)
    if exe is not None:
        done = subprocess.run(
            [exe, str(source), str(path), LLAMA_CPP_QUANTS[quant]],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise ForgeError(f"llama-quantize failed: {last[0]}")
        return Path(path)
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{LLAMA_CPP_QUANTS[quant]}")
    params.nthread = os.cpu_count() or 1
    rc = llama_cpp.llama_model_quantize(
        str(source).encode(), str(path).encode(), ctypes.byref(params)
    )
    if rc != 0:
        raise ForgeError(f"llama.cpp could not quantise {source} to {quant} (code {rc})")
    return Path(path)


def write_gguf_lora(adapter_dir: str | Path, path: str | Path, *, quant: str = "f32") -> Path:
    """A PEFT LoRA adapter folder (forgeml's `save_adapter`) as a GGUF LoRA adapter for
    llama.cpp (`--lora`): `general.type = adapter`, `adapter.lora.alpha`, and per adapted
    weight `<name>.lora_a` [r, in] and `<name>.lora_b` [out, r] (q/k rows permuted)."""
    if quant not in PYTHON_QUANTS:
        raise ConfigError(f"a LoRA adapter exports as {', '.join(PYTHON_QUANTS)}, not {quant}")
    adapter_dir = Path(adapter_dir)
    ours = adapter_dir / "forgeml_adapter.json"
    if not ours.is_file():
        raise NotFoundError(f"no forgeml_adapter.json in {adapter_dir}", hint="is it an adapter?")
    cfg = ModelConfig.model_validate(json.loads(ours.read_text())["model"])
    check_gguf_exportable(cfg)
    gguf = gguf_library()
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    tensors = load_file(adapter_dir / "adapter_model.safetensors")
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    writer = gguf.GGUFWriter(partial, ARCH)
    try:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(config["lora_alpha"]))
        for name, a, b in _lora_pairs(tensors, cfg):
            _add_tensor(writer, f"{name}.lora_a", a.contiguous().numpy(), quant)
            _add_tensor(writer, f"{name}.lora_b", b.contiguous().numpy(), quant)
        _finish(writer, partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def _lora_pairs(
    tensors: dict[str, torch.Tensor], cfg: ModelConfig
) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
    """(GGUF weight name, A, B) per PEFT module, B's q/k rows permuted as the weight's are."""
    heads = {"attn_q": cfg.n_heads, "attn_k": cfg.n_kv_heads}
    for key in sorted(tensors):
        if ".lora_A." not in key:
            continue
        module = key.split(".lora_A.")[0]
        layer, leaf = module.split("model.layers.")[-1].split(".", 1)
        if leaf not in LORA_TENSORS:
            raise ConfigError(f"LoRA on {module} has no GGUF equivalent")
        name = LORA_TENSORS[leaf].format(i=layer)
        b = tensors[key.replace(".lora_A.", ".lora_B.")].float()
        kind = name.split(".")[2]
        if kind in heads:
            b = rope_permute(b, heads[kind])
        yield name, tensors[key].float(), b


# Ollama's TEMPLATE (Go text/template over .Messages and .Tools) for forgeml's chat format:
# the same turns as CHAT_TEMPLATE; tool JSON is Go's compact encoding.
_TOOLS_GO = (
    "# Tools\n\nYou may call the functions below. For each call, write one line:\n"
    '<tool_call>{"name": <function name>, "arguments": <JSON object>}</tool_call>\n\n'
    "<tools>{{ range .Tools }}\n{{ json . }}{{ end }}\n</tools>"
)
OLLAMA_TEMPLATE = (
    '{{- if and .Tools (or (not .Messages) (ne (index .Messages 0).Role "system")) }}'
    "<|system|>\n" + _TOOLS_GO + "<|end|>\n{{ end }}"
    "{{- range $i, $m := .Messages }}<|{{ $m.Role }}|>\n{{ $m.Content }}"
    '{{- if and (eq $i 0) (eq $m.Role "system") $.Tools }}'
    "{{ if $m.Content }}\n\n{{ end }}" + _TOOLS_GO.replace(".Tools", "$.Tools") + "{{ end }}"
    "{{- range $j, $c := $m.ToolCalls }}{{ if or $m.Content $j }}\n{{ end }}"
    '<tool_call>{"name": {{ json $c.Function.Name }}, "arguments": '
    "{{ json $c.Function.Arguments }}}</tool_call>{{ end }}<|end|>\n{{ end }}<|assistant|>\n"
)


def ollama_modelfile(gguf_name: str, cfg: ModelConfig, stop_ids: dict[str, int]) -> str:
    """An Ollama `Modelfile` for a GGUF beside it: FROM, TEMPLATE (forgeml's chat format),
    a stop for each end-of-generation token, forgeml's sampling defaults and context."""
    defaults = GenerateConfig()
    stops = [
        tok for role, tok in SPECIAL_TOKENS.items() if role in ("end", "eos") and role in stop_ids
    ]
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{OLLAMA_TEMPLATE}"""']
    lines += [f'PARAMETER stop "{tok}"' for tok in stops or [END]]
    lines += [
        f"PARAMETER temperature {defaults.temperature}",
        f"PARAMETER top_k {defaults.top_k}",
        f"PARAMETER top_p {defaults.top_p}",
        f"PARAMETER num_ctx {cfg.max_seq_len}",
    ]
    return "\n".join(lines) + "\n"
