"""Peak memory of `curate_documents` against corpus size: it must not grow with the corpus.

Each size runs in a fresh subprocess: a raw-documents Parquet of synthetic prose with
planted exact (1%) and near (2%) copies is generated on the fly (streamed, never held in
memory), curated (filters, redaction, exact + near dedup, Parquet out), and the process's
peak RSS (ru_maxrss) is reported with the throughput and the planted-copy recall.

    .venv/bin/python benchmarks/curation_memory.py [--mb 64 256 2048] [--record]
        [--executor processes [--workers N]]

With `--executor processes` pass one runs in worker processes; their peak RSS (the largest
worker's, ru_maxrss of the children) is reported beside the curating process's.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROW_GROUP = 2048


def write_synthetic_raw(path: Path, target_mb: float, seed: int = 0) -> dict[str, int]:
    """Raw-documents Parquet of ~target_mb MB; every 100 documents hold 1 exact copy (case
    changed) and 2 near copies (1% of words replaced, a line added) of earlier documents
    of the same row group. Returns {"docs": n, "bytes": b, "exact": e, "near": k}."""
    from forgeml.data.ingest import SCHEMA

    rng = random.Random(seed)
    vocab = [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
        for _ in range(20_000)
    ]
    stats = {"docs": 0, "bytes": 0, "exact": 0, "near": 0}
    with pq.ParquetWriter(path, SCHEMA, compression="zstd") as writer:
        while stats["bytes"] < target_mb * 1e6:
            docs: list[list[str]] = []
            texts: list[str] = []
            for i in range(ROW_GROUP):
                kind = i % 100
                if kind == 99 and docs:
                    texts.append(texts[rng.randrange(len(texts))].upper())
                    stats["exact"] += 1
                    continue
                if kind in (97, 98) and docs:
                    words = list(docs[rng.randrange(len(docs))])
                    for j in rng.sample(range(len(words)), max(1, len(words) // 100)):
                        words[j] = rng.choice(vocab)
                    stats["near"] += 1
                else:
                    words = [rng.choice(vocab) for _ in range(rng.randint(150, 400))]
                docs.append(words)
                texts.append(" ".join(words) + ("\nForwarded." if kind in (97, 98) else ""))
            n0 = stats["docs"]
            cols = {
                "doc_id": [f"d{n0 + i}" for i in range(len(texts))],
                "text": texts,
                "path": [f"synthetic/{n0 + i}.txt" for i in range(len(texts))],
                "source": ["synthetic"] * len(texts),
                "sha256": [""] * len(texts),
                "bytes": [len(t) for t in texts],
                "type": ["text"] * len(texts),
                "language": [None] * len(texts),
                "locator": [""] * len(texts),
                "metadata": [None] * len(texts),
            }
            writer.write_table(pa.table(cols, schema=SCHEMA))
            stats["docs"] += len(texts)
            stats["bytes"] += sum(map(len, texts))
    return stats


def curate_config(executor: str = "local", workers: int | None = None):
    from forgeml.core.config import CurateConfig

    # Prose of random words: language id and Gopher rules would reject it; dedup and
    # redaction are what is measured.
    return CurateConfig.model_validate(
        {
            "language": {"enabled": False},
            "gopher_quality": {"enabled": False},
            "gopher_repetition": {"enabled": False},
            "executor": executor,
            "workers": workers,
        }
    )


def run_one(
    target_mb: float, work: Path, executor: str = "local", workers: int | None = None
) -> dict:
    from forgeml.data.curate import curate_documents

    raw = work / "raw.parquet"
    t0 = time.perf_counter()
    stats = write_synthetic_raw(raw, target_mb)
    generated = time.perf_counter() - t0
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    report = curate_documents(raw, work / "curated.parquet", curate_config(executor, workers))
    seconds = time.perf_counter() - t0
    dropped = report.dropped_by_reason
    return {
        "target_mb": target_mb,
        "docs": stats["docs"],
        "mb": round(stats["bytes"] / 1e6, 1),
        "generate_s": round(generated, 1),
        "curate_s": round(seconds, 1),
        "mb_per_s": round(stats["bytes"] / 1e6 / seconds, 2),
        "exact_recall": round(dropped.get("dedup:exact", 0) / stats["exact"], 4),
        "near_recall": round(dropped.get("dedup:near", 0) / stats["near"], 4),
        "peak_rss_mb_generate": round(rss_before / 1024, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "executor": executor,
        "peak_rss_mb_worker": round(
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, nargs="+", default=[64, 256])
    parser.add_argument("--executor", choices=["local", "processes"], default="local")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--child", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--record", action="store_true", help="append to BENCHMARKS.md")
    args = parser.parse_args()
    if args.child is not None:
        with tempfile.TemporaryDirectory(prefix="curation-memory-") as tmp:
            print(json.dumps(run_one(args.child, Path(tmp), args.executor, args.workers)))
        return
    results = []
    for mb in args.mb:
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(mb), "--executor", args.executor]
            + (["--workers", str(args.workers)] if args.workers else []),
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            raise SystemExit(out.stderr)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    if args.record:
        lines = [
            "",
            "## Curation memory (bounded-memory dedup)",
            "",
            f"`.venv/bin/python benchmarks/curation_memory.py --mb {' '.join(map(str, args.mb))}"
            f" --executor {args.executor}`",
            "",
            "| corpus MB | docs | curate s | MB/s | exact recall | near recall | peak RSS MB "
            "| worker peak RSS MB |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in results:
            lines.append(
                f"| {r['mb']} | {r['docs']} | {r['curate_s']} | {r['mb_per_s']} | "
                f"{r['exact_recall']} | {r['near_recall']} | {r['peak_rss_mb']} | "
                f"{r['peak_rss_mb_worker'] if r['executor'] != 'local' else '-'} |"
            )
        bench = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
        with bench.open("a") as fh:
            fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
