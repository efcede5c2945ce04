"""Keep rate of curation on a real folder: CPython's standard library plus /usr/share/doc.

Ingests the folders once (offline, into a temporary folder), then curates the raw dataset
three ways: dedup only (which documents are not duplicates), the `enterprise` profile (the
default) and the `web` profile (the Gopher/C4 rules as published). For each profile it prints
the share of non-duplicate documents kept and, for every non-duplicate document dropped, the
filter and document type, counted, with one example path and reason each; a dropped document
without a reason would be counted as unexplained. It also prints the curation report's drop
warnings (curate.warn_drop_share) and, with --quality-model, how well curate.quality_model
(a hashed n-gram classifier trained on a sample of this corpus) agrees with each profile's
rules on held-out documents.

    .venv/bin/python benchmarks/curation_keep_rate.py [--max-docs 4000] [--source DIR ...]
        [--quality-model] [--raw RAW.parquet]
"""

from __future__ import annotations

import argparse
import sysconfig
import tempfile
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

# site-packages is not the standard library; testtar.tar holds member names that are not
# UTF-8, which ingest cannot write yet (reported with issue 23).
EXCLUDE = ["site-packages/**", "**/__pycache__/**", "**/*.pyc", "**/*.so", "**/testtar.tar"]


def curate(raw: Path, out: Path, settings: dict) -> tuple[set[int], dict]:
    from forgeml.core.config import CurateConfig
    from forgeml.data.curate import curate_documents

    report = curate_documents(raw, out, CurateConfig.model_validate(settings))
    kept = set(pq.read_table(out, columns=["raw_row"])["raw_row"].to_pylist())
    return kept, report.to_dict()


def filter_verdicts(raw: Path, settings: dict) -> dict[int, tuple[str, str, str]]:
    """raw row -> (reason, type, path) for every record the profile's filters drop, by the
    same steps curation runs (boilerplate, language id, document kind, filter chain)."""
    from forgeml.core.config import CurateConfig
    from forgeml.data.curate import _RecordSteps
    from forgeml.data.filters import detect_language, document_kind

    cfg = CurateConfig.model_validate(settings)
    steps = _RecordSteps.build(cfg)
    out = {}
    rows = pq.read_table(raw, columns=["text", "type", "language", "path", "locator"])
    for i, record in enumerate(rows.to_pylist()):
        text, doc_type = record["text"] or "", record["type"] or "text"
        if doc_type in steps.boiler_types:
            text, _ = steps.strip_boilerplate(text)
        language_drops = cfg.language.keep or cfg.language.min_confidence > 0
        if doc_type in steps.prose and cfg.language.enabled and language_drops:
            record["natural_language"], record["language_score"] = detect_language(
                text, cfg.language, cfg.seed
            )
        record["kind"] = document_kind(text, record, cfg)
        for flt in steps.filters:
            if flt.applies(record) and (reason := flt.check(text, record)):
                where = record["path"] + (f" ({record['locator']})" if record["locator"] else "")
                out[i] = (reason, doc_type, where)
                break
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", action="append", help="folders (default: stdlib, /usr/share/doc)")
    ap.add_argument("--max-docs", type=int, default=0, help="curate the first N documents only")
    ap.add_argument("--max-file-bytes", type=int, default=4 << 20)
    ap.add_argument("--quality-model", action="store_true", help="train and test it too")
    ap.add_argument("--raw", type=Path, help="a raw documents Parquet instead of ingesting")
    args = ap.parse_args()
    sources = args.source or [sysconfig.get_paths()["stdlib"], "/usr/share/doc"]
    from forgeml.core.config import CurateConfig
    from forgeml.data.ingest import ingest_files

    with tempfile.TemporaryDirectory(prefix="bench-keep-rate-") as tmp:
        tmp = Path(tmp)
        raw = tmp / "raw.parquet"
        t0 = time.perf_counter()
        if args.raw:
            pq.write_table(pq.read_table(args.raw), raw)
            print(f"raw documents: {args.raw}")
        else:
            ing = ingest_files(sources, raw, exclude=EXCLUDE, max_file_bytes=args.max_file_bytes)
            print(
                f"sources: {', '.join(sources)}\ningest: {ing.kept} files kept, {ing.skipped} "
                f"skipped, {ing.failed} failed in {time.perf_counter() - t0:.0f} s; "
                f"types {dict(Counter(ing.by_type))}"
            )
        if args.max_docs:
            pq.write_table(pq.read_table(raw).slice(0, args.max_docs), raw)
        n_docs = pq.ParquetFile(raw).metadata.num_rows
        off = {"enabled": False}
        dedup_only = {
            "profile": "web",
            **{s: off for s in ("gopher_quality", "gopher_repetition", "language", "code")},
            "length": {"min_chars": 0},
        }
        unique, _ = curate(raw, tmp / "unique.parquet", dedup_only)
        # documents over length.max_chars are left out of the dedup-only run (its cost) and
        # counted as non-duplicates: every profile drops them, as length:too_long
        chars = pq.read_table(raw, columns=["text"])["text"].to_pylist()
        max_chars = CurateConfig().length.max_chars
        unique |= {i for i, t in enumerate(chars) if len(t or "") > max_chars}
        del chars
        print(f"documents read {n_docs}, duplicates {n_docs - len(unique)}, "
              f"not duplicates {len(unique)}\n")  # fmt: skip
        rows = []
        for profile in ("enterprise", "web"):
            t0 = time.perf_counter()
            settings = {"profile": profile}
            if args.quality_model:  # score only: the kept documents are the same
                settings["quality_model"] = {"enabled": True}
            kept, report = curate(raw, tmp / f"{profile}.parquet", settings)
            seconds = time.perf_counter() - t0
            verdicts = filter_verdicts(raw, {"profile": profile})
            lost = unique - kept
            explained = {i: verdicts[i] for i in lost if i in verdicts}
            share = len(unique & kept) / max(1, len(unique))
            rows.append((profile, len(kept), share, len(lost), len(lost) - len(explained)))
            print(f"## {profile}: kept {len(unique & kept)} of {len(unique)} non-duplicates "
                  f"({share:.1%}), {len(lost) - len(explained)} unexplained; curate "
                  f"{seconds:.0f} s")  # fmt: skip
            by = Counter((r.split(":")[0], t) for r, t, _ in explained.values())
            example = {}
            for reason, doc_type, where in explained.values():
                example.setdefault((reason.split(":")[0], doc_type), (reason, where))
            print("| filter | type | dropped | example reason | example document |")
            print("|---|---|---|---|---|")
            for (flt, doc_type), n in by.most_common():
                reason, where = example[(flt, doc_type)]
                print(f"| {flt} | {doc_type} | {n} | {reason} | {where} |")
            if args.quality_model:
                print(f"quality model vs the {profile} rules: {report['quality_model']}")
            for w in report["warnings"]:
                print(f"warning: {w['filter']} dropped {w['dropped']} of {w['of']} "
                      f"{w['type']} ({w['share']:.0%}), e.g. {w['example_reason']}")  # fmt: skip
            print()
        print("| profile | kept docs | kept share of non-duplicates | non-duplicates dropped "
              "| unexplained |")  # fmt: skip
        print("|---|---|---|---|---|")
        for profile, n_kept, share, n_lost, unexplained in rows:
            print(f"| {profile} | {n_kept} | {share:.1%} | {n_lost} | {unexplained} |")


if __name__ == "__main__":
    main()
