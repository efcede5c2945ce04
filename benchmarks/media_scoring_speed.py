"""CER/WER scoring speed on page-length transcripts: forgeml.eval.media_scoring (rapidfuzz's
Levenshtein) vs its pure-Python dynamic programme vs jiwer, in one run; all three must give
the same rates (asserted) before the milliseconds per pair are printed.

    .venv/bin/python benchmarks/media_scoring_speed.py [--pairs 40] [--words 100] [--noise 0.1]
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import time
from collections.abc import Callable, Sequence

import jiwer

from forgeml.eval.media_scoring import _error_rate, python_edit_distance

WORDS = "valve pump tank order unit red blue gauge pipe seal work 12 47 acme".split()


def transcripts(pairs: int, words: int, noise: float, seed: int = 0) -> list[tuple[str, str]]:
    """(hypothesis, reference) pairs: references of `words` words, hypotheses with a share
    `noise` of their characters replaced."""
    rng = random.Random(seed)
    refs = [" ".join(rng.choice(WORDS) for _ in range(words)) for _ in range(pairs)]
    noisy = ("".join(c if rng.random() > noise else rng.choice("abcxyz ") for c in r) for r in refs)
    return list(zip(noisy, refs, strict=True))


def dp_rate(hypothesis: Sequence, reference: Sequence) -> float:
    """The error rate by forgeml's pure-Python edit distance (its fallback without rapidfuzz)."""
    return python_edit_distance(hypothesis, reference) / len(reference)


def timed(fn: Callable, pairs: list[tuple]) -> tuple[list[float], float]:
    """The rates of `fn` over `pairs` and the milliseconds per pair."""
    start = time.perf_counter()
    rates = [fn(h, r) for h, r in pairs]
    return rates, (time.perf_counter() - start) * 1000 / len(pairs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=40, help="transcript pairs")
    ap.add_argument("--words", type=int, default=100, help="words per reference")
    ap.add_argument("--noise", type=float, default=0.1, help="share of characters corrupted")
    args = ap.parse_args()
    texts = transcripts(args.pairs, args.words, args.noise)
    chars = sum(len(r) for _, r in texts) / len(texts)
    engine = "rapidfuzz" if importlib.util.find_spec("rapidfuzz") else "pure Python (no rapidfuzz)"
    print(f"\n{len(texts)} pairs, references of {chars:.0f} characters / {args.words} words")
    print(f"forgeml's edit distance: {engine}")

    print(
        "\n| metric | forgeml ms/pair | pure-Python DP ms/pair | jiwer ms/pair "
        "| DP / forgeml | jiwer / forgeml |"
    )
    print("|---|---|---|---|---|---|")
    for name, split, peer in (("CER", False, jiwer.cer), ("WER", True, jiwer.wer)):
        pairs = [(h.split(), r.split()) if split else (h, r) for h, r in texts]
        ours, t_ours = timed(_error_rate, pairs)
        dp, t_dp = timed(dp_rate, pairs)
        theirs, t_peer = timed(lambda h, r, peer=peer: peer(r, h), texts)
        assert max(abs(a - b) for a, b in zip(ours, dp, strict=True)) < 1e-12, name
        assert max(abs(a - b) for a, b in zip(ours, theirs, strict=True)) < 1e-12, name
        print(
            f"| {name} | {t_ours:.3f} | {t_dp:.2f} | {t_peer:.3f} | "
            f"{t_dp / t_ours:.0f}x | {t_peer / t_ours:.1f}x |"
        )


if __name__ == "__main__":
    main()
