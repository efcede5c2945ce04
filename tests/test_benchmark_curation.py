"""benchmarks/curation.py at a tiny size: both pipelines run and agree on the planted copies."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("datatrove")
pytest.importorskip("spacy")

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "curation.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_curation", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_both_pipelines_remove_the_planted_copies(tmp_path: Path) -> None:
    bench = _bench()
    (tmp_path / "input").mkdir()
    src = tmp_path / "input" / "docs.parquet"
    truth = bench.generate_corpus(src, 0.3)
    n_docs = len(bench.pq.read_table(src, columns=["doc_id"]))
    ours = bench.run_forgeml(src, tmp_path / "forgeml")
    theirs = bench.run_datatrove(src, tmp_path / "datatrove")
    ours_removed = set(range(n_docs)) - bench.forgeml_filter_drops(src) - ours["kept"]
    theirs_removed = theirs["filtered"] - theirs["kept"]
    assert truth["copies"] and truth["junk"] <= set(range(n_docs)) - theirs["filtered"]
    for removed in (ours_removed, theirs_removed):
        assert bench.dedup_scores(removed, truth["copies"]) == (1.0, 1.0)
        assert not removed & truth["misses"]
