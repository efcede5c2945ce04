"""Curation pipeline end to end: forgeml's `curate_documents` vs datatrove on the same corpus.

Both run read Parquet -> Gopher quality -> Gopher repetition -> MinHash near-dedup (word
5-grams, 12 bands x 10 rows, threshold ~0.8) -> write Parquet (zstd) on one worker, in the
same process, alternating which goes first each round; the ratio is the median of the
per-round ratios. The corpus is generated prose with planted exact copies, near copies (1% of
words replaced) and near misses (15% replaced, not duplicates), plus junk documents that the
Gopher rules drop. Nothing is downloaded: datatrove's English word tokenizer is spaCy's blank
pipeline (no model). forgeml's language id, boilerplate removal, PII redaction and exact-hash
stage are off, since datatrove's pipeline here has none; forgeml's secret scan cannot be
turned off and runs. datatrove is a benchmark peer only, not a dependency:

    .venv/bin/pip install "datatrove[processing]" spacy -c <(echo torch==2.13.0)
    .venv/bin/python benchmarks/curation.py [--mb 16] [--rounds 3] [--quick] [--profile]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import pstats
import random
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

STOP = ["the", "of", "and", "to", "that", "with", "have", "be", "in", "is", "a", "for"]
BANDS, ROWS, NGRAM = 12, 10, 5  # forgeml's lsh_params(0.8, 128); datatrove gets the same


def generate_corpus(path: Path, target_mb: float, seed: int = 0) -> dict:
    """Documents Parquet (doc_id, text, path, source, type) of ~target_mb MB. Of every 100
    documents: 1 exact copy and 2 near copies (1% of words replaced) of earlier originals,
    1 near miss (15% replaced), 2 junk (too short; one line repeated); the rest original.
    Returns {"copies": {copy row: source row}, "misses": rows, "junk": rows}; rows are
    the doc ids."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["".join(rng.choices(letters, k=rng.randint(3, 9))) for _ in range(20_000)]

    def word() -> str:
        return rng.choice(STOP) if rng.random() < 0.25 else rng.choice(vocab)

    def prose() -> str:
        paras = []
        for _ in range(rng.randint(3, 7)):
            sents = []
            for _ in range(rng.randint(2, 4)):
                words = [word() for _ in range(rng.randint(8, 20))]
                sents.append(" ".join(words).capitalize() + ".")
            paras.append(" ".join(sents))
        return "\n\n".join(paras)

    def edit(text: str, frac: float) -> str:
        tokens = text.split(" ")
        for i in rng.sample(range(len(tokens)), max(1, int(len(tokens) * frac))):
            tokens[i] = rng.choice(vocab)
        return " ".join(tokens)

    texts: list[str] = []
    originals: list[int] = []
    copies: dict[int, int] = {}
    misses: set[int] = set()
    junk: set[int] = set()
    size = 0
    while size < target_mb * 1e6:
        kind, row = len(texts) % 100, len(texts)
        if kind in (97, 98, 99) and originals:
            src = rng.choice(originals)
            texts.append(texts[src] if kind == 99 else edit(texts[src], 0.01))
            copies[row] = src
        elif kind == 96 and originals:
            texts.append(edit(texts[rng.choice(originals)], 0.15))
            misses.add(row)
        elif kind == 95:
            texts.append(" ".join(word() for _ in range(30)) + ".")
            junk.add(row)
        elif kind == 94:
            texts.append("\n".join([" ".join(word() for _ in range(12))] * 40))
            junk.add(row)
        else:
            texts.append(prose())
            originals.append(row)
        size += len(texts[-1].encode())
    n = len(texts)
    table = pa.table(
        {
            "doc_id": [str(i) for i in range(n)],
            "text": texts,
            "path": [f"synthetic/{i}.txt" for i in range(n)],
            "source": ["synthetic"] * n,
            "type": ["text"] * n,
        }
    )
    pq.write_table(table, path, compression="zstd", row_group_size=2048)
    return {"copies": copies, "misses": misses, "junk": junk}


def forgeml_config():
    from forgeml.core.config import CurateConfig
    from forgeml.governance.detectors import PII_KINDS

    return CurateConfig.model_validate(
        {
            "profile": "web",  # the Gopher rules on every document, as datatrove runs them
            "language": {"enabled": False},
            "boilerplate": {"enabled": False},
            "redact": {k: "keep" for k in PII_KINDS},
            "dedup": {"exact": False, "near": True, "threshold": 0.8, "num_perm": 128},
        }
    )


def run_forgeml(src: Path, work: Path) -> dict[str, set[int]]:
    from forgeml.data.curate import curate_documents

    out = work / "curated.parquet"
    curate_documents(src, out, forgeml_config())
    rows = pq.read_table(out, columns=["raw_row"])["raw_row"].to_pylist()
    return {"kept": set(rows)}


def forgeml_filter_drops(src: Path) -> set[int]:
    """Rows forgeml's filter chain drops (outside the timing: its report has counts only)."""
    from forgeml.data.filters import build_filters

    filters = build_filters(forgeml_config())
    rows = pq.read_table(src, columns=["text", "type"]).to_pylist()
    return {
        i
        for i, r in enumerate(rows)
        if any(f.applies(r) and f.check(r["text"], r) for f in filters)
    }


def run_datatrove(src: Path, work: Path) -> dict[str, set[int]]:
    """datatrove's examples/minhash_deduplication.py layout, the Gopher filters in front
    of the signatures and the survivors written once (read back by the dedup filter)."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import MinhashDedupSignature
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
    )
    from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
    from datatrove.pipeline.readers import ParquetReader
    from datatrove.pipeline.writers import ParquetWriter

    cfg = MinhashConfig(n_grams=NGRAM, num_buckets=BANDS, hashes_per_bucket=ROWS)
    filtered, sigs, buckets, clusters, out = (
        str(work / d) for d in ("filtered", "sigs", "buckets", "clusters", "out")
    )

    def reader(folder: str, id_key: str) -> ParquetReader:
        return ParquetReader(folder, id_key=id_key, glob_pattern="*.parquet")

    stages = [
        [
            reader(str(src.parent), "doc_id"),
            GopherQualityFilter(),
            GopherRepetitionFilter(),
            ParquetWriter(filtered, compression="zstd"),
            MinhashDedupSignature(output_folder=sigs, config=cfg),
        ],
        [MinhashDedupBuckets(input_folder=sigs, output_folder=buckets, config=cfg)],
        [MinhashDedupCluster(input_folder=buckets, output_folder=clusters, config=cfg)],
        [
            reader(filtered, "id"),  # datatrove's writer names the column "id"
            MinhashDedupFilter(input_folder=clusters),
            ParquetWriter(out, compression="zstd"),
        ],
    ]
    # datatrove's task logger writes to the sys.stderr it finds: send that to a file
    work.mkdir(parents=True, exist_ok=True)
    with open(work / "stderr.log", "w") as err, contextlib.redirect_stderr(err):
        for i, pipeline in enumerate(stages):
            tasks = BANDS if i == 1 else 1  # one bucket per task, run one after another
            LocalPipelineExecutor(
                pipeline, tasks=tasks, workers=1, logging_dir=str(work / f"logs{i}")
            ).run()

    def ids(folder: str) -> set[int]:
        return {int(i) for i in pq.read_table(folder, columns=["id"])["id"].to_pylist()}

    return {"kept": ids(out), "filtered": ids(filtered)}


def dedup_scores(removed: set[int], copies: dict[int, int]) -> tuple[float, float]:
    """Recall: planted (copy, source) pairs of which one was removed (a pipeline may keep
    the later one); precision: removals that are a planted copy or source."""
    found = sum(c in removed or s in removed for c, s in copies.items())
    planted = set(copies) | set(copies.values())
    return found / max(1, len(copies)), len(removed & planted) / max(1, len(removed))


def jaccard(a: set[int], b: set[int]) -> float:
    return len(a & b) / max(1, len(a | b))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=16.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="2 MB, 1 round: a smoke run")
    ap.add_argument("--profile", action="store_true", help="cProfile one forgeml run after")
    args = ap.parse_args()
    if args.quick:
        args.mb, args.rounds = 2.0, 1
    with tempfile.TemporaryDirectory(prefix="bench-curation-") as tmp:
        tmp = Path(tmp)
        (tmp / "input").mkdir()
        src = tmp / "input" / "docs.parquet"
        sets = generate_corpus(src, args.mb)
        table = pq.read_table(src, columns=["text"])
        n_docs = table.num_rows
        mb = sum(len(t.encode()) for t in table["text"].to_pylist()) / 1e6
        warm = tmp / "warm"
        (warm / "input").mkdir(parents=True)
        generate_corpus(warm / "input" / "docs.parquet", 0.2, seed=1)
        run_forgeml(warm / "input" / "docs.parquet", warm)  # imports, spaCy load
        run_datatrove(warm / "input" / "docs.parquet", warm / "dt")
        times: dict[str, list[float]] = {"forgeml": [], "datatrove": []}
        runners = {"forgeml": run_forgeml, "datatrove": run_datatrove}
        results = {}
        for r in range(args.rounds):
            order = ["forgeml", "datatrove"] if r % 2 == 0 else ["datatrove", "forgeml"]
            for name in order:
                work = Path(tempfile.mkdtemp(dir=tmp, prefix=f"{name}-{r}-"))
                t0 = time.perf_counter()
                results[name] = runners[name](src, work)
                times[name].append(time.perf_counter() - t0)
            print(
                f"round {r + 1}: forgeml {times['forgeml'][-1]:.1f} s, "
                f"datatrove {times['datatrove'][-1]:.1f} s",
                flush=True,
            )
        ratios = [d / f for f, d in zip(times["forgeml"], times["datatrove"], strict=True)]
        all_rows = set(range(n_docs))
        fm_dropped = forgeml_filter_drops(src)
        dt_dropped = all_rows - results["datatrove"]["filtered"]
        removed = {
            "forgeml": all_rows - fm_dropped - results["forgeml"]["kept"],
            "datatrove": results["datatrove"]["filtered"] - results["datatrove"]["kept"],
        }
        print(
            f"corpus: {n_docs} docs, {mb:.1f} MB: {len(sets['copies'])} planted copies "
            f"(1/3 exact), {len(sets['misses'])} near misses, {len(sets['junk'])} junk; "
            f"{args.rounds} rounds, 1 worker each"
        )
        print("| pipeline | median s | MB/s | kept docs | filter drops | dedup removed "
              "| recall | precision |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|")
        drops = {"forgeml": fm_dropped, "datatrove": dt_dropped}
        for name in ("forgeml", "datatrove"):
            med = statistics.median(times[name])
            rec, prec = dedup_scores(removed[name], sets["copies"])
            print(
                f"| {name} | {med:.1f} | {mb / med:.2f} | {len(results[name]['kept'])} | "
                f"{len(drops[name])} | {len(removed[name])} | {rec:.3f} | {prec:.3f} |"
            )
        print(
            f"forgeml / datatrove throughput: median {statistics.median(ratios):.2f}x "
            f"(range {min(ratios):.2f}-{max(ratios):.2f}); "
            f"Jaccard of dedup-removed sets {jaccard(removed['forgeml'], removed['datatrove']):.3f}, "
            f"of filter-dropped sets {jaccard(fm_dropped, dt_dropped):.3f}; "
            f"near misses removed: forgeml {len(removed['forgeml'] & sets['misses'])}, "
            f"datatrove {len(removed['datatrove'] & sets['misses'])}"
        )
        if args.profile:
            prof = cProfile.Profile()
            prof.runcall(run_forgeml, src, Path(tempfile.mkdtemp(dir=tmp)))
            pstats.Stats(prof).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()
