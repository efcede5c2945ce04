"""Several processes open the same fresh SQLite registry at once and write to it: the first
open migrates exactly once, and every run, asset and alias move is stored, none twice."""

from __future__ import annotations

import multiprocessing as mp
import queue
import time
import traceback
from pathlib import Path

from forgeml.registry import Registry

N_PROCS = 4
N_OPS = 25


def write_runs_and_assets(
    url: str, art: str, work: str, proc: int, n_ops: int, barrier, out
) -> None:
    """One writer: open the registry (racing the others), then `n_ops` x (run, asset, alias)."""
    try:
        barrier.wait(timeout=60)
        start = time.perf_counter()
        reg = Registry(url, art)
        shared_src = Path(work) / f"shared-{proc}"
        shared_src.mkdir()
        (shared_src / "data.txt").write_text("the same bytes in every process")
        shared = reg.add_asset("dataset", "shared", shared_src)
        made = []
        for i in range(n_ops):
            run = reg.start_run("tokenize", {"proc": proc, "op": i}, inputs=[shared.id], seed=i)
            src = Path(work) / f"out-{proc}-{i}.json"
            src.write_text(f'{{"proc": {proc}, "op": {i}}}')
            asset = reg.add_asset("tokenizer", f"tok-{proc}-{i}", src, run_id=run.id)
            reg.finish_run(run.id, status="succeeded", outputs=[asset.id], metrics={"op": i})
            reg.set_alias("latest", asset.id, actor=f"proc-{proc}")
            made.append((run.id, asset.id))
        reg.close()
        out.put((proc, shared.id, made, None, time.perf_counter() - start))
    except BaseException:
        out.put((proc, None, [], traceback.format_exc(), 0.0))


def run_writers(url: str, art: Path, work: Path, n_procs: int, n_ops: int) -> list[tuple]:
    """Start `n_procs` spawned writers together and return what each reports."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(n_procs)
    out = ctx.Queue()
    procs = [
        ctx.Process(
            target=write_runs_and_assets,
            args=(url, str(art), str(work), p, n_ops, barrier, out),
        )
        for p in range(n_procs)
    ]
    for p in procs:
        p.start()
    results: list[tuple] = []
    deadline = time.monotonic() + 120
    while len(results) < n_procs:
        try:
            results.append(out.get(timeout=1))
        except queue.Empty:
            # A child that died before reporting (e.g. failed to import) would hang us.
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            assert not dead, f"writer processes died with exit codes {dead}"
            assert time.monotonic() < deadline, "writers did not finish within 120 s"
    for p in procs:
        p.join(timeout=30)
    errors = [r[3] for r in results if r[3]]
    assert not errors, errors[0]
    return results


def check_writes(reg: Registry, results: list[tuple], n_procs: int, n_ops: int) -> None:
    """Every reported write is present exactly once, with its lineage."""
    shared_ids = {r[1] for r in results}
    assert len(shared_ids) == 1  # same content from every process: one asset
    (shared_id,) = shared_ids
    made = [pair for r in results for pair in r[2]]
    assert len(made) == n_procs * n_ops

    runs = reg.list_runs(stage="tokenize")
    assert len(runs) == len({r.id for r in runs}) == n_procs * n_ops
    by_id = {r.id: r for r in runs}
    for run_id, asset_id in made:
        run = by_id[run_id]
        assert run.status == "succeeded" and run.inputs == [shared_id]
        assert run.outputs == [asset_id]
        assert reg.get_asset(asset_id).producer_run == run_id
    assert len(reg.list_assets("tokenizer")) == n_procs * n_ops
    assert len(reg.list_assets("dataset")) == 1
    assert reg.verify_asset(shared_id)

    history = reg.alias_history("latest")
    assert len(history) == n_procs * n_ops
    assert reg.resolve_alias("latest") == history[-1]["asset_id"]
    down = reg.lineage(shared_id, "down")
    assert len(down.nodes) == 1 + 2 * n_procs * n_ops


def test_concurrent_writers_on_fresh_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    work = tmp_path / "work"
    work.mkdir()
    results = run_writers(url, tmp_path / "art", work, N_PROCS, N_OPS)
    with Registry(url, tmp_path / "art") as reg:
        check_writes(reg, results, N_PROCS, N_OPS)
    # Time from the barrier to the last write, i.e. without process start-up.
    slowest = max(r[4] for r in results)
    assert slowest < 30, f"{N_PROCS}x{N_OPS} concurrent ops took {slowest:.1f}s"
