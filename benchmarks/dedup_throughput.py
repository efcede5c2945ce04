"""MinHash throughput and near-duplicate decisions: forgeml's vectorised MinHash vs datasketch.

Both hash the same documents (local Python standard library sources plus planted near-copies)
into 128-permutation signatures over word 5-grams, each with its own shingling, in the same
process, alternating rounds; forgeml's side is `MinHasher.sketch`, what curation runs (the
signatures plus the shingle hashes kept for verification). Then both cluster at the same
threshold (forgeml: LSH candidates verified on exact shingle sets, `DedupConfig`'s defaults;
datasketch: `MinHashLSH` + estimated Jaccard) and are scored against the planted copies.
`benchmarks/near_dup_recall.py` measures recall and precision on harder, real near-copies.

    .venv/bin/python benchmarks/dedup_throughput.py [--mb 8] [--rounds 5] [--record]
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import sysconfig
import time
from pathlib import Path

import numpy as np

from forgeml.core.config import DedupConfig
from forgeml.data.dedup import MinHasher, near_duplicate_clusters

CFG = DedupConfig()
THRESHOLD, NUM_PERM, NGRAM = CFG.threshold, CFG.num_perm, CFG.shingle_words


def build_corpus(target_mb: float, seed: int = 0) -> tuple[list[str], dict[int, int]]:
    rng = random.Random(seed)
    stdlib = sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py"))
    texts: list[str] = []
    size = 0
    for path in stdlib:
        text = path.read_text(errors="ignore")
        if len(text.split()) < 50:
            continue
        texts.append(text)
        size += len(text)
        if size > target_mb * 1e6 * 0.9:
            break
    truth = {}
    for _ in range(len(texts) // 10):  # 10% planted near-copies: 1% of words changed
        src = rng.randrange(len(texts))
        words = texts[src].split(" ")
        for i in rng.sample(range(len(words)), max(1, len(words) // 100)):
            words[i] = rng.choice(words)
        truth[len(texts)] = src
        texts.append(" ".join(words))
    return texts, truth


def datasketch_signatures(texts: list[str]) -> list:
    from datasketch import MinHash

    out = []
    for text in texts:
        words = re.findall(r"\w+", text.lower())
        grams = [" ".join(words[i : i + NGRAM]).encode() for i in range(len(words) - NGRAM + 1)]
        m = MinHash(num_perm=NUM_PERM, seed=1)
        m.update_batch(grams or [b""])
        out.append(m)
    return out


def datasketch_clusters(sigs: list) -> dict[int, int]:
    """Documents datasketch's MinHashLSH marks as duplicates of an earlier one -> that one."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
    removed = {}
    for i, m in enumerate(sigs):
        match = [j for j in lsh.query(m) if m.jaccard(sigs[j]) >= THRESHOLD]
        if match:
            removed[i] = min(match)
            continue
        lsh.insert(i, m)
    return removed


def shingles(text: str) -> set[str]:
    words = re.findall(r"\w+", text.lower())
    return {" ".join(words[i : i + NGRAM]) for i in range(len(words) - NGRAM + 1)}


def score(removed: dict[int, int], truth: dict[int, int], texts: list[str]) -> tuple[float, float]:
    """Recall on the planted copies; precision counts a removal right when it is a planted
    copy or truly similar to the document it was matched with (the standard library has
    genuine near-duplicate files of its own), by exact Jaccard >= threshold - 0.1."""
    found = set(removed) & set(truth)
    right = 0
    for doc, rep in removed.items():
        if doc in truth:
            right += 1
            continue
        a, b = shingles(texts[doc]), shingles(texts[rep])
        right += len(a & b) / max(1, len(a | b)) >= THRESHOLD - 0.1
    return len(found) / max(1, len(truth)), right / max(1, len(removed))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=8.0)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--record", action="store_true", help="append the result to BENCHMARKS.md")
    args = ap.parse_args()
    texts, truth = build_corpus(args.mb)
    mb = sum(len(t.encode()) for t in texts) / 1e6
    hasher = MinHasher(NUM_PERM, NGRAM, seed=1)
    hasher.signatures(texts[:50])
    datasketch_signatures(texts[:50])  # warm-up both
    ours_t, ds_t = [], []
    for _ in range(args.rounds):
        t = time.perf_counter()
        ours = hasher.sketch(texts)
        ours_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        theirs = datasketch_signatures(texts)
        ds_t.append(time.perf_counter() - t)
    ours_mbs, ds_mbs = mb / statistics.median(ours_t), mb / statistics.median(ds_t)
    removed_ours = {}
    t = time.perf_counter()
    clusters = near_duplicate_clusters(
        ours, THRESHOLD, candidate_threshold=CFG.candidate_threshold, containment=CFG.containment
    )
    ours_lsh_s = time.perf_counter() - t
    for cluster in clusters:
        removed_ours.update({doc: cluster[0] for doc in cluster[1:]})
    t = time.perf_counter()
    removed_ds = datasketch_clusters(theirs)
    ds_lsh_s = time.perf_counter() - t
    r_o, p_o = score(removed_ours, truth, texts)
    r_d, p_d = score(removed_ds, truth, texts)
    agree = len(set(removed_ours) & set(removed_ds)) / max(
        1, len(set(removed_ours) | set(removed_ds))
    )
    lines = [
        f"corpus: {len(texts)} docs, {mb:.1f} MB ({len(truth)} planted near-copies), "
        f"{NUM_PERM} perms, word {NGRAM}-grams, threshold {THRESHOLD}, {args.rounds} rounds",
        f"sketches    forgeml {ours_mbs:6.2f} MB/s   datasketch {ds_mbs:6.2f} MB/s   "
        f"ratio {ours_mbs / ds_mbs:.2f}x",
        f"near-dups   forgeml recall {r_o:.3f} precision {p_o:.3f}   "
        f"datasketch recall {r_d:.3f} precision {p_d:.3f}",
        f"same removals (Jaccard of the two removed sets) {agree:.3f}",
        f"(LSH + checks: forgeml {ours_lsh_s:.2f} s, datasketch MinHashLSH insert+query "
        f"{ds_lsh_s:.2f} s)",
    ]
    print("\n".join(lines))
    assert np.isfinite(ours_mbs)
    if args.record:
        bench = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
        cmd = f".venv/bin/python benchmarks/dedup_throughput.py --mb {args.mb:g} --rounds {args.rounds}"
        block = "\n".join(["", "```", cmd, *lines, "```", ""])
        bench.write_text(bench.read_text() + block)


if __name__ == "__main__":
    main()
