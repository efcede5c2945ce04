"""Near-duplicate recall and precision on real documents: forgeml's verified LSH vs datasketch.

Real text read offline (Debian copyright files and common licenses, man pages, the Python
standard library) is cleared of its own near duplicates, then gets planted near-copies at
exact Jaccard 0.6-0.8 on word 5-gram shingles (word edits, reordered sections, boilerplate
added, all combined; plus copies whose boilerplate is about as long as the text) and hard
negatives (distinct documents sharing a template or a long passage, and real pairs that
overlap). forgeml (MinHash + LSH candidates + exact verification, `DedupConfig`'s defaults)
runs beside datasketch's `MinHashLSH` at the same threshold and num_perm, in one process.

    .venv/bin/python benchmarks/near_dup_recall.py [--docs 1500] [--copies 60] [--record] [--explain]
"""

from __future__ import annotations

import argparse
import glob
import gzip
import random
import re
import subprocess
import sysconfig
import time
from collections import Counter
from pathlib import Path

from forgeml.core.config import DedupConfig
from forgeml.data.dedup import MinHasher, lsh_candidate_pairs, near_duplicate_clusters

CFG = DedupConfig()
NGRAM, NUM_PERM = CFG.shingle_words, CFG.num_perm
KINDS = ("words", "reorder", "boilerplate", "combined")
_WORD = re.compile(r"\w+")


def shingles(text: str) -> set[str]:
    w = _WORD.findall(text.lower())
    return {" ".join(w[i : i + NGRAM]) for i in range(len(w) - NGRAM + 1)}


def overlap(a: set[str], b: set[str]) -> tuple[float, float]:
    """(Jaccard, containment of the smaller set in the larger)."""
    common = len(a & b)
    return common / max(1, len(a | b)), common / max(1, min(len(a), len(b)))


def real_documents(limit: int, seed: int) -> list[tuple[str, str]]:
    """(source, text) of real documents of 150-6000 words, shuffled."""
    paths = sorted(glob.glob("/usr/share/doc/*/copyright")) + sorted(
        glob.glob("/usr/share/common-licenses/*")
    )
    docs = [(p, Path(p).read_text(errors="ignore")) for p in paths]
    for p in sorted(glob.glob("/usr/share/man/man1/*.gz"))[::12]:
        with gzip.open(p, "rt", errors="ignore") as fh:  # roff source: macros are text too
            docs.append((p, fh.read()))
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    docs += [(str(p), p.read_text(errors="ignore")) for p in sorted(stdlib.glob("*.py"))]
    docs = [(p, t) for p, t in docs if 150 <= len(t.split()) <= 6000]
    random.Random(seed).shuffle(docs)
    return docs[:limit]


def distinct_pool(docs: list[tuple[str, str]]) -> tuple[list, list[tuple[int, int]], int]:
    """Drop every document with an earlier one at Jaccard >= 0.5 or containment >= 0.8
    (exact, among MinHash candidates at 0.3), so planted copies are the only near
    duplicates; real pairs at Jaccard 0.25-0.5 are returned as natural hard negatives."""
    sketches = MinHasher(NUM_PERM, NGRAM, seed=7).sketch([t for _, t in docs])
    sets = [shingles(t) for _, t in docs]
    drop, natural = set(), []
    for a, b in lsh_candidate_pairs(sketches.signatures, 0.3, seed=7).tolist():
        if a in drop or b in drop:
            continue
        j, c = overlap(sets[a], sets[b])
        if j >= 0.5 or c >= 0.8:
            drop.add(b)
        elif j >= 0.25:
            natural.append((a, b))
    keep = [i for i in range(len(docs)) if i not in drop]
    index = {old: new for new, old in enumerate(keep)}
    pairs = [(index[a], index[b]) for a, b in natural if a in index and b in index]
    return [docs[i] for i in keep], pairs, len(drop)


def word_edits(text: str, rate: float, rng: random.Random, vocab: list[str]) -> str:
    """Substitutions, insertions and deletions, each at rate/3 per word; layout kept."""
    parts = re.split(r"(\s+)", text)
    for i in range(0, len(parts), 2):
        r = rng.random()
        if r < rate / 3:
            parts[i] = rng.choice(vocab)
        elif r < 2 * rate / 3:
            parts[i] = f"{parts[i]} {rng.choice(vocab)}"
        elif r < rate:
            parts[i] = ""
    return "".join(parts)


def reordered(text: str, chunk_lines: int, rng: random.Random) -> str:
    lines = text.splitlines()
    chunks = [lines[i : i + chunk_lines] for i in range(0, len(lines), chunk_lines)]
    rng.shuffle(chunks)
    return "\n".join(line for c in chunks for line in c)


def with_boilerplate(text: str, share: float, source: str) -> str:
    """A header and a footer cut from `source`, together `share` of the text's words."""
    words = source.split()
    n = int(len(text.split()) * share)
    return " ".join(words[: n // 2]) + "\n\n" + text + "\n\n" + " ".join(words[n // 2 : n])


def planted_copy(
    kind: str, text: str, target: float, rng: random.Random, vocab: list[str], plate: str
) -> str:
    """A copy of `text` of the given kind, its one free parameter set by bisection so that
    the exact Jaccard with `text` comes as close as it can to `target`."""
    base = shingles(text)
    seed = rng.randrange(1 << 30)
    words = plate.split()
    turn = rng.randrange(len(words) // 2)  # a different stretch of the plate each time
    plate = " ".join(words[turn:] + words[:turn])

    def make(x: float) -> str:
        r = random.Random(seed)
        if kind == "words":
            return word_edits(text, x, r, vocab)
        if kind == "reorder":  # x: share of lines that start a moved section
            return reordered(text, max(1, round(1 / max(x, 1e-3))), r)
        if kind in ("boilerplate", "heavy-boilerplate"):
            return with_boilerplate(text, x * 4, plate)
        return word_edits(with_boilerplate(reordered(text, 12, r), 0.1, plate), x, r, vocab)

    lo, hi, best, best_j = 0.0, 1.0, text, 1.0
    for _ in range(10):
        mid = (lo + hi) / 2
        copy = make(mid)
        j = overlap(base, shingles(copy))[0]
        if abs(j - target) < abs(best_j - target):
            best, best_j = copy, j
        lo, hi = (mid, hi) if j > target else (lo, mid)
    return best


def template_negative(
    a: str, b: str, plate: str, target: float, middle: bool, rng: random.Random
) -> tuple[str, str]:
    """Two distinct documents wrapped in one template (header + footer) or sharing one long
    passage in the middle, sized for Jaccard `target` between them."""
    na, nb = len(a.split()), len(b.split())
    n = int(target * (na + nb) / (1 - target))
    words = plate.split()
    turn = rng.randrange(len(words))
    words = (words[turn:] + words[:turn])[:n]
    if middle:
        ha, hb = a.split(), b.split()
        shared = " ".join(words)
        return (
            " ".join(ha[: na // 2]) + f"\n{shared}\n" + " ".join(ha[na // 2 :]),
            " ".join(hb[: nb // 2]) + f"\n{shared}\n" + " ".join(hb[nb // 2 :]),
        )
    head, foot = " ".join(words[: n // 2]), " ".join(words[n // 2 :])
    return f"{head}\n{a}\n{foot}", f"{head}\n{b}\n{foot}"


def build_corpus(n_docs: int, copies: int, seed: int) -> dict:
    rng = random.Random(seed)
    pool, natural, n_dropped = distinct_pool(real_documents(n_docs, seed))
    plates = [t for p, t in pool if "common-licenses" in p and len(t.split()) > 2500]
    if not plates:
        raise SystemExit("needs Debian's /usr/share/common-licenses (long licenses as boilerplate)")
    vocab = sorted({w for _, t in pool[:200] for w in t.split() if w.isalpha()})
    # Copies and negatives are made of documents of at most 1,200 words and plates of over
    # 2,500: a plate's stretch never approaches a whole license, which is itself in the corpus.
    n_neg = copies  # pairs of each of the two made kinds
    short = [i for i, (_, t) in enumerate(pool) if len(t.split()) <= 800]
    neg_ids = sorted(rng.sample(short, 4 * n_neg), key=lambda i: len(pool[i][1].split()))
    neg_bodies = [pool[i][1] for i in neg_ids]  # in negatives only, paired by length
    rest = [i for i in range(len(pool)) if i not in set(neg_ids)]
    index = {old: new for new, old in enumerate(rest)}
    texts = [pool[i][1] for i in rest]
    natural = [(index[a], index[b]) for a, b in natural if a in index and b in index]
    truth: dict[int, tuple[str, int, float]] = {}  # copy -> (kind, source, Jaccard)
    eligible = [i for i, t in enumerate(texts) if len(t.split()) <= 1200]
    candidates = iter(rng.sample(eligible, len(eligible)))
    for kind in (*KINDS, "heavy-boilerplate"):
        low, high = (0.5, 0.6) if kind == "heavy-boilerplate" else (0.6, 0.8)
        planted = 0
        while planted < copies:  # a source whose copy misses the band is passed over
            src = next(candidates)
            copy = planted_copy(
                kind,
                texts[src],
                rng.uniform(low + 0.01, high - 0.01),
                rng,
                vocab,
                rng.choice(plates),
            )
            j = overlap(shingles(texts[src]), shingles(copy))[0]
            if low <= j < high:
                truth[len(texts)] = (kind, src, j)
                texts.append(copy)
                planted += 1
    negatives: list[tuple[str, int, int, float]] = []
    for i in range(2 * n_neg):
        a, b = neg_bodies[2 * i], neg_bodies[2 * i + 1]
        kind = "template" if i % 2 else "shared-passage"
        for _ in range(20):  # sized for a Jaccard of 0.3-0.58 at containment < 0.8
            target = rng.uniform(0.35, 0.57)
            na, nb = template_negative(a, b, rng.choice(plates), target, i % 2 == 0, rng)
            j, c = overlap(shingles(na), shingles(nb))
            if 0.3 <= j < 0.58 and c < 0.8:
                break
        else:
            continue
        negatives.append((kind, len(texts), len(texts) + 1, j))
        texts += [na, nb]
    for a, b in natural:  # real pairs of the corpus that overlap
        negatives.append(("natural", a, b, overlap(shingles(texts[a]), shingles(texts[b]))[0]))
    order = list(range(len(texts)))  # copies and negatives interleaved with the originals
    rng.shuffle(order)
    position = {old: new for new, old in enumerate(order)}
    return {
        "texts": [texts[i] for i in order],
        "truth": {position[c]: (k, position[s], j) for c, (k, s, j) in truth.items()},
        "negatives": [(k, position[a], position[b], j) for k, a, b, j in negatives],
        "dropped_natural": n_dropped,
    }


def forgeml_clusters(texts: list[str], verified: bool, threshold: float) -> list[list[int]]:
    hasher = MinHasher(NUM_PERM, NGRAM, CFG.seed)
    if verified:
        return near_duplicate_clusters(
            hasher.sketch(texts),
            threshold,
            candidate_threshold=CFG.candidate_threshold,
            containment=CFG.containment,
            seed=CFG.seed,
        )
    return near_duplicate_clusters(hasher.signatures(texts), threshold, seed=CFG.seed)


def datasketch_clusters(texts: list[str], threshold: float) -> list[list[int]]:
    """datasketch MinHashLSH at `threshold`: a document whose query finds an earlier one at
    estimated Jaccard >= threshold joins it; the others are inserted."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
    sigs, clusters = [], {}
    for i, text in enumerate(texts):
        m = MinHash(num_perm=NUM_PERM, seed=1)
        m.update_batch([s.encode() for s in shingles(text)] or [b""])
        sigs.append(m)
        match = [j for j in lsh.query(m) if m.jaccard(sigs[j]) >= threshold]
        if match:
            clusters.setdefault(min(match), [min(match)]).append(i)
        else:
            lsh.insert(i, m)
    return sorted(clusters.values())


def score(clusters: list[list[int]], corpus: dict) -> dict:
    """A removal (every member but a cluster's first) is right when it and the cluster's
    first document are one planted family (a source and its copy)."""
    family = {c: s for c, (_, s, _) in corpus["truth"].items()}
    cluster_of = {d: n for n, c in enumerate(clusters) for d in c}
    removals = [(d, c[0]) for c in clusters for d in c[1:]]
    wrong = [(d, r) for d, r in removals if family.get(d, d) != family.get(r, r)]
    right = len(removals) - len(wrong)
    found = Counter()
    for copy, (kind, src, _) in corpus["truth"].items():
        found[kind] += cluster_of.get(copy, -1) == cluster_of.get(src, -2)
    merged = Counter(
        kind
        for kind, a, b, _ in corpus["negatives"]
        if cluster_of.get(a, -1) == cluster_of.get(b, -2)
    )
    return {
        "wrong": wrong,
        "removed": len(removals),
        "precision": right / max(1, len(removals)),
        "found": found,
        "merged": merged,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=1500)
    ap.add_argument("--copies", type=int, default=60, help="planted copies per kind")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--explain", action="store_true", help="print every wrong removal")
    ap.add_argument(
        "--record", action="store_true", help="print a BENCHMARKS.md block (command, CPU)"
    )
    args = ap.parse_args()
    corpus = build_corpus(args.docs, args.copies, args.seed)
    texts = corpus["texts"]
    mb = sum(len(t.encode()) for t in texts) / 1e6
    kinds = Counter(k for k, _, _ in corpus["truth"].values())
    neg_kinds = Counter(k for k, _, _, _ in corpus["negatives"])
    js = {k: [j for kk, _, j in corpus["truth"].values() if kk == k] for k in kinds}
    neg_js = {k: [j for kk, *_, j in corpus["negatives"] if kk == k] for k in neg_kinds}
    lines = [
        f"corpus: {len(texts)} real docs, {mb:.1f} MB ({corpus['dropped_natural']} natural near "
        f"duplicates removed first), {NUM_PERM} perms, word {NGRAM}-grams",
        "planted copies (exact Jaccard min-max): "
        + ", ".join(f"{k} {kinds[k]} ({min(js[k]):.2f}-{max(js[k]):.2f})" for k in kinds),
        "hard-negative pairs (exact Jaccard min-max): "
        + ", ".join(
            f"{k} {n} ({min(neg_js[k]):.2f}-{max(neg_js[k]):.2f})" for k, n in neg_kinds.items()
        ),
        f"{'method':58s} {'s':>6s} {'recall':>7s} {'prec':>6s} "
        + " ".join(f"{k[:9]:>9s}" for k in kinds)
        + "  negatives merged",
    ]
    main_kinds = [k for k in KINDS if k in kinds]
    runs = [
        (f"forgeml {CFG.threshold} verified (LSH {CFG.candidate_threshold}, exact check)",
         lambda: forgeml_clusters(texts, True, CFG.threshold)),
        ("forgeml 0.8 signature check (before)", lambda: forgeml_clusters(texts, False, 0.8)),
        (f"forgeml {CFG.threshold} signature check (no exact check)",
         lambda: forgeml_clusters(texts, False, CFG.threshold)),
        (f"datasketch MinHashLSH {CFG.threshold}", lambda: datasketch_clusters(texts, CFG.threshold)),
        ("datasketch MinHashLSH 0.8", lambda: datasketch_clusters(texts, 0.8)),
        (f"datasketch MinHashLSH {CFG.candidate_threshold} (our candidate threshold)",
         lambda: datasketch_clusters(texts, CFG.candidate_threshold)),
    ]  # fmt: skip
    for name, run in runs:
        t = time.perf_counter()
        clusters = run()
        seconds = time.perf_counter() - t
        s = score(clusters, corpus)
        recall = sum(s["found"][k] for k in main_kinds) / sum(kinds[k] for k in main_kinds)
        merged = sum(s["merged"].values())
        if args.explain:
            for d, r in s["wrong"]:
                j, c = overlap(shingles(texts[d]), shingles(texts[r]))
                print(
                    f"  wrong: {name[:20]} J={j:.2f} C={c:.2f}",
                    corpus["truth"].get(d),
                    corpus["truth"].get(r),
                    texts[d][:80].replace("\n", " "),
                    "|",
                    texts[r][:80].replace("\n", " "),
                )
        lines.append(
            f"{name:58s} {seconds:6.1f} {recall:7.3f} {s['precision']:6.3f} "
            + " ".join(f"{s['found'][k] / kinds[k]:9.3f}" for k in kinds)
            + f"  {merged}/{len(corpus['negatives'])}"
        )
    print("\n".join(lines))
    if args.record:
        cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(
            (ln.split(":", 1)[1].strip() for ln in cpu.splitlines() if "Model name" in ln), "?"
        )
        cmd = f".venv/bin/python benchmarks/near_dup_recall.py --docs {args.docs} --copies {args.copies}"
        print(f"\n```\n{cmd}   # CPU: {model}\n" + "\n".join(lines) + "\n```")


if __name__ == "__main__":
    main()
