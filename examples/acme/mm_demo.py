"""The ACME multimodal demo: make the page/diagram/speech data, a BPE tokenizer with image
and audio placeholders, and a small vision+audio LM; pretrain its encoders from scratch on
what the generators know (mm_pretrain), run projector alignment then joint SFT
(forgeml.train.multimodal_sft) and print held-out page CER, diagram QA accuracy and speech
WER before and after, with standard errors; also after with the media blanked (what the
language prior alone scores, with the paired gap) and Tesseract's page CER where installed:

    python examples/acme/mm_demo.py --out build/acme-mm-demo          # a few minutes, 2 cores
    python examples/acme/mm_demo.py --out build/acme-mm-demo --quick  # smoke run
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile
import torch
from acme_media import PAGE_SIZE, generate_media_data
from mm_pretrain import page_alphabet, pretrain_audio, pretrain_vision

from forgeml.core.config import ModelConfig, OptimConfig, TrainConfig
from forgeml.core.runtime import cpu_has_fast_bf16
from forgeml.eval.media_generate import run_media_task
from forgeml.eval.media_scoring import cer
from forgeml.eval.suite import DataSpec, TaskSpec
from forgeml.models.audio import AudioConfig, log_mel_windows
from forgeml.models.multimodal import MultimodalConfig, MultimodalLM
from forgeml.models.vision import VisionConfig
from forgeml.tokenizer.extend import extend_tokenizer
from forgeml.tokenizer.train import load_tokenizer, train_bpe_tokenizer
from forgeml.train.multimodal_sft import MultimodalSFTConfig, train_multimodal_sft

# size -> (media counts, encoder pretraining steps (vision, audio), align steps, joint steps,
# held-out examples scored per part)
SIZES = {
    "quick": (dict(pages=30, diagrams=30, speech=20), (6, 6), 4, 8, 4),
    "default": (dict(pages=1500, diagrams=400, speech=1500), (400, 600), 60, 1200, 60),
    "full": (dict(pages=2500, diagrams=600, speech=2500), (600, 1000), 100, 3000, 150),
}
PARTS = {  # part -> (metric name, scorer key, max answer tokens)
    "pages": ("CER", "cer", 40),
    "diagrams": ("accuracy", "normalized_exact_match", 6),
    "speech": ("WER", "wer", 24),
}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def build_tokenizer(data: Path, out: Path, vocab_size: int) -> tuple[Path, dict[str, int]]:
    """BPE on the training answers and prompts, plus <|image|> and <|audio|>. The digits are
    spaced apart in what BPE learns from, so it learns no multi-digit pieces and a number
    is one token a digit (read one glyph, write one token)."""
    texts = []
    for part in PARTS:
        if (data / part / "train.jsonl").is_file():
            texts += [
                re.sub(r"(\d)", r" \1", f"{r['prompt']}\n{r['answer']}")
                for r in read_jsonl(data / part / "train.jsonl")
            ]
    base = train_bpe_tokenizer(texts * 4, vocab_size=vocab_size, out_dir=out / "tokenizer-base")
    ids = extend_tokenizer(base, ["<|image|>", "<|audio|>"], out / "tokenizer")
    return out / "tokenizer", ids


def build_model(ids: dict[str, int], audio: bool, quick: bool) -> MultimodalLM:
    """A small dense LM with a ViT (192 px pages at full resolution, 16 px patches: 144 tokens
    an image, each a few characters wide) and a Whisper-style encoder (4 s windows, 50 tokens
    each)."""
    dim = 64 if quick else 128
    lm = ModelConfig(
        arch="dense", dim=dim, n_layers=2 if quick else 4, n_heads=4, n_kv_heads=2,
        ffn_hidden=dim * 3, vocab_size=max(ids.values()) + 1, max_seq_len=256,
    )  # fmt: skip
    vision = VisionConfig(
        image_size=PAGE_SIZE, patch_size=16, dim=96, n_layers=2, n_heads=4, ffn_hidden=192,
    )  # fmt: skip
    speech = AudioConfig(
        n_mels=40, window_frames=400, dim=64, n_layers=2, n_heads=4, ffn_hidden=128, stack=4
    )
    cfg = MultimodalConfig(
        lm=lm, vision=vision, audio=speech if audio else None,
        image_token_id=ids["<|image|>"], audio_token_id=ids["<|audio|>"] if audio else None,
    )  # fmt: skip
    torch.manual_seed(0)
    return MultimodalLM(cfg)


def blank_media(out: Path) -> dict[str, str]:
    """A white page and a second of silence: the media-blind control (what the trained model
    answers from the prompt and its language prior alone)."""
    import soundfile
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (192, 192), (250, 248, 240)).save(out / "blank.png")
    soundfile.write(out / "silence.wav", np.zeros(16000, dtype=np.float32), 16000)
    return {
        "image": str((out / "blank.png").resolve()),
        "audio": str((out / "silence.wav").resolve()),
    }


def evaluate(
    model: MultimodalLM, tokenizer, data: Path, parts: list[str], limit: int,
    blank: dict[str, str] | None = None,
) -> dict:  # fmt: skip
    """Held-out score per part through a suite generate task (forgeml.eval.media_generate):
    mean and standard error over examples; with `blank`, every image/clip is replaced."""
    out = {}
    for part in parts:
        name, scorer, max_new = PARTS[part]
        rows = [{"id": i, **r} for i, r in enumerate(read_jsonl(data / part / "heldout.jsonl"))]
        if blank:
            rows = [{**r, **{k: v for k, v in blank.items() if k in r}} for r in rows]
        task = TaskSpec(name=part, kind="generate", data=DataSpec(inline=rows[:limit]),
                        scorers=[scorer], stop=[], max_new_tokens=max_new)  # fmt: skip
        result = run_media_task(model, tokenizer, task, rows[:limit], data / part)
        scores = np.array([e["scores"][scorer] for e in result.examples])
        first = result.examples[0]
        out[part] = {
            "metric": name, "mean": float(scores.mean()), "n": len(scores),
            "se": float(scores.std(ddof=1) / np.sqrt(len(scores))) if len(scores) > 1 else 0.0,
            "scores": scores.tolist(),
            "example": {"reference": first["reference"], "output": first["output"]},
        }  # fmt: skip
    return out


def tesseract_baseline(data: Path, limit: int) -> dict | None:
    """CER of Tesseract's OCR text of each held-out page (the text-only pipeline's input)."""
    if shutil.which("tesseract") is None:
        return None
    rows = read_jsonl(data / "pages" / "heldout.jsonl")[:limit]
    scores = []
    for r in rows:
        run = subprocess.run(
            ["tesseract", str(data / "pages" / r["image"]), "stdout", "--psm", "6"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        scores.append(cer(run.stdout, r["answer"]))
    s = np.array(scores)
    return {"metric": "CER", "mean": float(s.mean()), "n": len(s),
            "se": float(s.std(ddof=1) / np.sqrt(len(s)))}  # fmt: skip


def stage(
    kind: str, steps: int, lr: float, dtype: str, train_encoders: bool = False
) -> MultimodalSFTConfig:
    """The LM stages; by default the pretrained encoders stay frozen (as LLaVA's tower)."""
    return MultimodalSFTConfig(
        stage=kind, train_encoders=kind == "joint" and train_encoders, heldout_fraction=0.05,
        optim=OptimConfig(lr=lr, warmup_steps=max(steps // 20, 1), weight_decay=0.0),
        train=TrainConfig(max_steps=steps, micro_batch_size=8, seq_len=224, dtype=dtype,
                          checkpoint_every=0, log_every=max(steps // 10, 1)),
    )  # fmt: skip


def pretrain_encoders(
    model: MultimodalLM, data: Path, parts: list[str], steps: dict[str, int], seed: int,
    dtype: str,
) -> dict[str, dict]:  # fmt: skip
    """Stage 0 (mm_pretrain): the ViT on freshly rendered pages, the audio encoder on the
    training clips (never the held-out ones)."""
    out = {}
    if "pages" in parts:
        texts = [r["answer"] for r in read_jsonl(data / "pages" / "train.jsonl")]
        out["vision"] = pretrain_vision(
            model, page_alphabet(texts), steps=steps["vision"], batch=16, lr=3e-3, seed=seed,
            dtype=dtype,
        )  # fmt: skip
    if "speech" in parts:
        cfg = model.cfg.audio
        clips = []
        for r in read_jsonl(data / "speech" / "train.jsonl"):
            audio, _ = soundfile.read(data / "speech" / r["audio"], dtype="float32")
            clips.append((log_mel_windows(audio, cfg), r["answer"].split()))
        out["audio"] = pretrain_audio(
            model, clips, steps=steps["audio"], batch=16, lr=3e-3, seed=seed, dtype=dtype
        )
    return out


def paired_gap(after: dict, blank: dict) -> dict[str, float]:
    """What the media add, per held-out example (the same examples with and without their
    media; positive when the media help): mean and standard error."""
    sign = 1.0 if after["metric"] in ("CER", "WER") else -1.0
    gap = sign * (np.array(blank["scores"]) - np.array(after["scores"]))
    se = float(gap.std(ddof=1) / np.sqrt(len(gap))) if len(gap) > 1 else 0.0
    return {"mean": float(gap.mean()), "se": se, "n": len(gap)}


def row(label: str, result: dict) -> str:
    cells = [f"{result[p]['mean']:.3f} ± {result[p]['se']:.3f}" if p in result else "–"
             for p in PARTS]  # fmt: skip
    return f"| {label} | " + " | ".join(cells) + " |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="work folder")
    ap.add_argument("--quick", action="store_true", help="tiny data, model and steps (smoke run)")
    ap.add_argument("--full", action="store_true", help="more data and steps (README numbers)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pretrain-steps", type=int, default=None, help="encoder pretraining")
    ap.add_argument("--align-steps", type=int, default=None)
    ap.add_argument("--joint-steps", type=int, default=None)
    ap.add_argument("--train-encoders", action="store_true", help="train them in joint SFT too")
    ap.add_argument("--eval-limit", type=int, default=None, help="held-out examples per part")
    ap.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="auto",
                    help="auto: bf16 where the CPU has fast bf16")  # fmt: skip
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (1 is fastest on a busy machine)")  # fmt: skip
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    size = "quick" if args.quick else "full" if args.full else "default"
    counts, pre, align, joint, limit = SIZES[size]
    pre = {"vision": args.pretrain_steps or pre[0], "audio": args.pretrain_steps or pre[1]}
    align, joint = args.align_steps or align, args.joint_steps or joint
    limit = args.eval_limit or limit
    dtype = args.dtype if args.dtype != "auto" else ("bf16" if cpu_has_fast_bf16() else "fp32")
    t0 = time.perf_counter()

    data = args.out / "data"
    manifest = generate_media_data(data, seed=args.seed, **counts)
    parts = [p for p in PARTS if isinstance(manifest.get(p), dict)]
    for p, v in manifest.items():
        if not isinstance(v, dict):
            print(f"{p}: {v}", file=sys.stderr)
    mixed = args.out / "train.jsonl"
    with mixed.open("w") as f:  # one mixed file; media paths relative to it
        for p in parts:
            for r in read_jsonl(data / p / "train.jsonl"):
                key = "image" if "image" in r else "audio"
                r = {key: f"data/{p}/{r[key]}", "prompt": r["prompt"], "answer": r["answer"]}
                f.write(json.dumps(r) + "\n")
    tok_dir, ids = build_tokenizer(data, args.out, 384 if args.quick else 768)
    tokenizer = load_tokenizer(tok_dir)
    model = build_model(ids, "speech" in parts, args.quick)
    print(f"model: {model.num_params() / 1e6:.2f}M parameters, dtype {dtype}; data {manifest}")
    print(f"data ready in {time.perf_counter() - t0:.0f} s", flush=True)

    results = {"before": evaluate(model, tokenizer, data, parts, limit)}
    s0 = pretrain_encoders(model, data, parts, pre, args.seed, dtype)
    print(f"encoder pretraining: {s0}", flush=True)
    s1 = train_multimodal_sft(
        model, tok_dir, mixed, args.out / "align", stage("align", align, 3e-3, dtype)
    )
    s2 = train_multimodal_sft(
        model,
        tok_dir,
        mixed,
        args.out / "joint",
        stage("joint", joint, 2e-3, dtype, args.train_encoders),
    )
    results["after"] = evaluate(model, tokenizer, data, parts, limit)
    blank = blank_media(args.out / "blank")
    results["after_blank_media"] = evaluate(model, tokenizer, data, parts, limit, blank)
    gaps = {p: paired_gap(results["after"][p], results["after_blank_media"][p]) for p in parts}
    baseline = tesseract_baseline(data, limit) if "pages" in parts else None
    seconds = time.perf_counter() - t0
    summary = {"pretrain": s0, "align": s1, "joint": s2, "results": results, "gaps": gaps,
               "tesseract": baseline, "seconds": seconds, "dtype": dtype,
               "params": model.num_params()}  # fmt: skip
    (args.out / "mm_demo.json").write_text(json.dumps(summary, indent=2) + "\n")

    print("\n| held-out (mean ± s.e.) | page CER ↓ | diagram QA accuracy ↑ | speech WER ↓ |")
    print("|---|---|---|---|")
    print(row("before training", results["before"]))
    print(row(f"after align {align} + joint {joint} steps", results["after"]))
    print(row("after, media blanked (prior only)", results["after_blank_media"]))
    print(row("gain from the media (paired: blanked − real; QA real − blanked)", gaps))
    if baseline:
        print(
            f"| Tesseract OCR text (no model) | {baseline['mean']:.3f} ± {baseline['se']:.3f} | – | – |"
        )
    n = {p: results["after"][p]["n"] for p in parts}
    print(f"\nn per part: {n}; total {seconds:.0f} s")
    for p in parts:
        ex = results["after"][p]["example"]
        print(f"{p}: reference {ex['reference']!r} -> output {ex['output']!r}")


if __name__ == "__main__":
    main()
