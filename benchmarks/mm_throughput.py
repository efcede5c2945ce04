"""Vision-language training throughput: forgeml's `MultimodalLM` vs transformers'
`LlavaForConditionalGeneration` with the same config and the same weights.

The forgeml model (a SigLIP-style ViT, the LLaVA MLP projector and the PEERS.md tiny Mistral
LM) is written with `save_multimodal` and loaded by transformers from that folder, so both
start from equal weights; the first step's losses are compared before timing. Both train in
the same plain loop (forward with labels, backward, AdamW step) on the same batch of images
and text; image tokens count as tokens. Reported: median step time over several windows after
warm-up, the two models alternating window by window, and tokens per second.

    .venv/bin/python benchmarks/mm_throughput.py
    .venv/bin/python benchmarks/mm_throughput.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import transformers

from forgeml.core.config import ModelConfig
from forgeml.core.runtime import cpu_has_fast_bf16
from forgeml.models.hf_multimodal_io import save_multimodal
from forgeml.models.multimodal import MultimodalConfig, MultimodalLM
from forgeml.models.vision import VisionConfig

VOCAB = 8192
IMAGE_ID = VOCAB - 1


def build(image_size: int) -> MultimodalLM:
    lm = ModelConfig(
        arch="dense", dim=256, n_layers=6, n_heads=8, n_kv_heads=4, ffn_hidden=768,
        vocab_size=VOCAB, max_seq_len=1024, tie_embeddings=True,
    )  # fmt: skip
    vision = VisionConfig(
        image_size=image_size, patch_size=16, dim=256, n_layers=4, n_heads=4, ffn_hidden=1024
    )
    torch.manual_seed(0)
    return MultimodalLM(MultimodalConfig(lm=lm, vision=vision, image_token_id=IMAGE_ID))


def batch(model: MultimodalLM, rows: int, text: int) -> tuple[torch.Tensor, ...]:
    """input ids (image placeholders first), pixel values, HF labels (text positions only)."""
    n_image = model.cfg.vision.tokens_per_image
    g = torch.Generator().manual_seed(1)
    words = torch.randint(0, IMAGE_ID, (rows, text), generator=g)
    idx = torch.cat([torch.full((rows, n_image), IMAGE_ID), words], dim=1)
    size = model.cfg.vision.image_size
    pixels = torch.randn(rows, 3, size, size, generator=g)
    labels = idx.clone()
    labels[:, :n_image] = -100
    return idx, pixels, labels


def step_fns(ours: MultimodalLM, theirs: torch.nn.Module, data: tuple, dtype: str):
    idx, pixels, labels = data
    # forgeml's LM takes next-token targets; transformers shifts its labels itself.
    targets = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], dim=1)
    cast = (
        (lambda: torch.autocast("cpu", dtype=torch.bfloat16))
        if dtype == "bf16"
        else contextlib.nullcontext
    )
    opts = {
        "forgeml": torch.optim.AdamW(ours.parameters(), lr=1e-4),
        "transformers": torch.optim.AdamW(theirs.parameters(), lr=1e-4),
    }

    def ours_step() -> float:
        with cast():
            loss = ours(idx, targets, pixel_values=pixels)
        loss.backward()
        opts["forgeml"].step()
        opts["forgeml"].zero_grad(set_to_none=True)
        return loss.item()

    def theirs_step() -> float:
        with cast():
            loss = theirs(input_ids=idx, pixel_values=pixels, labels=labels).loss
        loss.backward()
        opts["transformers"].step()
        opts["transformers"].zero_grad(set_to_none=True)
        return loss.item()

    return {"forgeml": ours_step, "transformers": theirs_step}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run")
    ap.add_argument("--rows", type=int, default=4, help="sequences per batch")
    ap.add_argument("--text", type=int, default=192, help="text tokens per sequence")
    ap.add_argument("--image-size", type=int, default=128, help="pixels (patch 16)")
    ap.add_argument("--windows", type=int, default=5, help="timed windows per model")
    ap.add_argument("--steps", type=int, default=4, help="steps per window")
    ap.add_argument("--dtype", choices=["fp32", "bf16", "auto"], default="auto")
    args = ap.parse_args()
    if args.quick:
        args.windows, args.steps, args.rows, args.text = 2, 2, 2, 64
    dtypes = (
        [args.dtype]
        if args.dtype != "auto"
        else (["fp32", "bf16"] if cpu_has_fast_bf16() else ["fp32"])
    )
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")  # fmt: skip
    for dtype in dtypes:
        ours = build(args.image_size)
        with tempfile.TemporaryDirectory() as tmp:
            folder = save_multimodal(ours, Path(tmp) / "llava")
            theirs = transformers.LlavaForConditionalGeneration.from_pretrained(
                folder, attn_implementation="sdpa", dtype=torch.float32
            )
        ours.train()
        theirs.train()
        data = batch(ours, args.rows, args.text)
        tokens = data[0].numel()
        fns = step_fns(ours, theirs, data, dtype)
        first = {name: fn() for name, fn in fns.items()}  # equal weights: equal first loss
        gap = abs(first["forgeml"] - first["transformers"])
        assert gap < (5e-2 if dtype == "bf16" else 1e-3), f"first-step losses differ: {first}"
        for fn in fns.values():  # warm-up
            fn()
        times: dict[str, list[float]] = {name: [] for name in fns}
        for _ in range(args.windows):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    fn()
                times[name].append((time.perf_counter() - t0) / args.steps)
        med = {name: statistics.median(t) for name, t in times.items()}
        print(f"\n{dtype}: {args.rows} x {data[0].shape[1]} tokens a step "
              f"({ours.cfg.vision.tokens_per_image} image tokens a row), "
              f"{ours.num_params() / 1e6:.1f}M params, first loss {first['forgeml']:.4f} "
              f"vs {first['transformers']:.4f}")  # fmt: skip
        print("| model | step (ms, median) | tokens/s | vs transformers |")
        print("|---|---:|---:|---:|")
        for name in fns:
            ratio = med["transformers"] / med[name]
            print(f"| {name} | {med[name] * 1e3:.0f} | {tokens / med[name]:,.0f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
