"""Write the ACME demo's chat SFT, preference, RL and multimodal data (the Makefile's
`acme-data` target; `mm` for the multimodal stage):

    python examples/acme/make_data.py sft --out build/acme-sft --seed 0
    python examples/acme/make_data.py prefs --out build/acme-prefs.jsonl --snippets --seed 0
    python examples/acme/make_data.py rl --out build/acme-rl --snippets
    python examples/acme/make_data.py mm --out build/acme-mm --seed 0

Deterministic; the held-out programs are the same in all three. See README.md next to this file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from forgeml.core.errors import ForgeError


def write_sft(args: argparse.Namespace) -> str:
    """Policy Q&A, ACME-CL -> Python translation requests and tool-use traces."""
    from acme_sft import generate_sft_data

    manifest = generate_sft_data(args.out, seed=args.seed, scale=args.scale)
    return f"wrote {args.out}: {json.dumps(manifest['records'])}"


def write_prefs(args: argparse.Namespace) -> str:
    """Preference pairs for DPO: the reference translation (chosen) and a mutation of it that
    fails a test case (rejected), both checked by running them."""
    from acme_prefs import write_translation_preferences

    count = 80 if args.count is None and not args.snippets else args.count
    report = write_translation_preferences(
        args.out, seed=args.seed, count=count, snippets=args.snippets
    )
    return (
        f"{report['pairs']} pairs from {report['programs']} programs in {args.out} "
        f"(skipped: {report['skipped']})"
    )


def write_rl(args: argparse.Namespace) -> str:
    """RL prompts for ACME-CL -> Python translation, the program and its test inputs riding
    along as metadata for the execution reward (acme_rl.py:translation_reward)."""
    from acme_rl import write_rl_prompts

    counts = write_rl_prompts(
        args.corpus, args.out, max_chars=args.max_chars, snippets=args.snippets, seed=args.seed
    )
    return f"{counts['train']} train and {counts['heldout']} held-out prompts in {args.out}"


def write_mm(args: argparse.Namespace) -> str:
    """Damaged form pages, plant diagrams with questions and spoken procedures (espeak-ng)."""
    from acme_media import generate_media_data

    manifest = generate_media_data(
        args.out, pages=args.pages, diagrams=args.diagrams, speech=args.speech, seed=args.seed
    )
    return f"wrote {args.out}: {json.dumps(manifest)}"


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(description="Write the ACME demo's SFT, preference or RL data.")
    kinds = top.add_subparsers(dest="kind", required=True)

    sft = kinds.add_parser("sft", help="chat SFT data: train.jsonl, heldout.jsonl, tools.json")
    sft.add_argument("--out", type=Path, required=True, help="folder to write")
    sft.add_argument("--seed", type=int, default=0, help="random seed (the corpus seed)")
    sft.add_argument("--scale", type=float, default=1.0, help="size factor, as for the corpus")
    sft.set_defaults(write=write_sft)

    prefs = kinds.add_parser("prefs", help="translation preference pairs (JSONL) for DPO")
    prefs.add_argument("--out", type=Path, required=True, help="preference JSONL file to write")
    prefs.add_argument(
        "--count", type=int, default=None,
        help="how many ACME programs to make pairs of (default: 80; all snippets)",
    )  # fmt: skip
    prefs.add_argument("--seed", type=int, default=0, help="corpus seed (the corpus's programs)")
    prefs.add_argument(
        "--snippets", action="store_true",
        help="the SFT data's short programs (as rl --snippets), not the corpus's",
    )  # fmt: skip
    prefs.set_defaults(write=write_prefs)

    rl = kinds.add_parser("rl", help="RL prompts: train.jsonl and heldout.jsonl")
    rl.add_argument("corpus", type=Path, nargs="?", default=None, help="an ACME corpus folder")
    rl.add_argument("--out", type=Path, required=True, help="folder for the prompts")
    rl.add_argument(
        "--max-chars", type=int, default=None,
        help="leave out programs longer than this (small contexts)",
    )  # fmt: skip
    rl.add_argument(
        "--snippets", action="store_true",
        help="the SFT data's short programs (2-4 statements), not the corpus's",
    )  # fmt: skip
    rl.add_argument("--seed", type=int, default=0, help="SFT data seed, with --snippets")
    rl.set_defaults(write=write_rl)

    mm = kinds.add_parser("mm", help="multimodal data: pages/, diagrams/, speech/ (JSONL + media)")
    mm.add_argument("--out", type=Path, required=True, help="folder to write")
    mm.add_argument("--seed", type=int, default=0, help="random seed")
    mm.add_argument("--pages", type=int, default=200, help="damaged form pages")
    mm.add_argument("--diagrams", type=int, default=200, help="plant diagrams with a question")
    mm.add_argument("--speech", type=int, default=150, help="spoken procedures (espeak-ng)")
    mm.set_defaults(write=write_mm)
    return top


def main() -> None:
    args = parser().parse_args()
    try:
        print(args.write(args))
    except ForgeError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
