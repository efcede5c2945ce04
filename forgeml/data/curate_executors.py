"""Where curation's pass one runs: batches of raw records handed to worker processes on this
machine (`curate.executor: processes`) or to Ray tasks (`curate.executor: ray`), their
outcomes yielded in input order so the output is the same as the local executor's.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import pyarrow as pa

from forgeml.core.config import CurateConfig
from forgeml.core.errors import DataError

BatchWork = Callable[[pa.RecordBatch, int, CurateConfig], Any]  # (batch, first row, config)


def _in_input_order(
    batches: Iterator[tuple[int, pa.RecordBatch]],
    submit: Callable[[pa.RecordBatch, int], Any],
    result: Callable[[Any], Any],
    window: int,
) -> Iterator[Any]:
    """`result(submit(batch, first_row))` of every batch, `window` submitted ahead (memory
    holds that many batches, not the corpus), in input order."""
    in_flight: deque[Any] = deque()
    for first_row, batch in batches:
        in_flight.append(submit(batch, first_row))
        if len(in_flight) >= window:
            yield result(in_flight.popleft())
    while in_flight:
        yield result(in_flight.popleft())


def batches_on_ray(
    batches: Iterator[tuple[int, pa.RecordBatch]], work: BatchWork, cfg: CurateConfig
) -> Iterator[Any]:
    """`work` (curate_batch) as Ray tasks, two per cluster CPU in flight; in input order."""
    from forgeml.core.ray_cluster import ray_cluster

    with ray_cluster(cfg.ray_address) as ray:
        task = ray.remote(work)
        cfg_ref = ray.put(cfg)
        window = 2 * max(1, int(ray.cluster_resources().get("CPU", 1)))
        submit = lambda batch, first_row: task.remote(batch, first_row, cfg_ref)  # noqa: E731
        yield from _in_input_order(batches, submit, ray.get, window)


def batches_in_processes(
    batches: Iterator[tuple[int, pa.RecordBatch]], work: BatchWork, cfg: CurateConfig
) -> Iterator[Any]:
    """`work` (curate_batch, importable by name) in a pool of `cfg.workers` processes (spawned: no state forked from
    a parent that may hold threads), two per worker in flight; in input order."""
    workers = cfg.workers or os.cpu_count() or 1
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        submit = lambda batch, first_row: pool.submit(work, batch, first_row, cfg)  # noqa: E731
        try:
            yield from _in_input_order(batches, submit, Future.result, 2 * workers)
        except BrokenProcessPool:
            raise DataError(
                "a curation worker process died (out of memory or killed)",
                "run again with fewer `curate.workers` or `curate.executor=local`",
            ) from None
        finally:
            pool.shutdown(cancel_futures=True)  # work not yet started, when stopped early
