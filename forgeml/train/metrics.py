"""Training metrics: one JSON line per logged step in metrics.jsonl, plus a rich progress
bar on the main process (step/max, loss, tok/s, ETA) unless quiet.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from forgeml.core.io import atomic_write_text


class MetricsLogger:
    """Append-only JSON-lines log, flushed on every write so a killed run keeps its curve.

    `resume_step`: the run continues from that checkpoint, so records the killed run wrote
    after it are dropped (the resumed run writes them again). Only the main process writes.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        max_steps: int,
        is_main: bool = True,
        progress: bool = True,
        resume_step: int | None = None,
    ) -> None:
        self.path, self.is_main = Path(path), is_main
        self._fh = None
        self._progress: Progress | None = None
        if not is_main:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if _step_of(line) is not None and _step_of(line) <= resume_step
            ]
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        elif resume_step is None:
            atomic_write_text(self.path, "")
        self._fh = open(self.path, "a")
        self._console = Console(stderr=True)
        self._max_steps = max_steps
        # Not a terminal (CI logs, redirected output): a plain line per record instead of a bar.
        self._plain = progress and not self._console.is_terminal
        self._t0, self._step0 = time.perf_counter(), resume_step or 0
        if progress and not self._plain:
            self._progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self._console,
            )
            self._task = self._progress.add_task(
                "train", total=max_steps, completed=resume_step or 0, status=""
            )
            self._progress.start()

    def log(self, record: dict[str, Any]) -> None:
        """Write one record (must contain `step`); update the progress line."""
        if not self.is_main:
            return
        self._fh.write(json.dumps(record, sort_keys=True) + "\n")
        self._fh.flush()
        if self._progress is not None:
            status = "  ".join(
                text.format(record[key])
                for key, text in (
                    ("loss", "loss {:.4f}"), ("eval_loss", "eval {:.4f}"), ("tok_per_s", "{:,.0f} tok/s")
                )
                if record.get(key) is not None
            )  # fmt: skip
            self._progress.update(self._task, completed=record["step"], status=status)
        elif self._plain:
            step = record["step"]
            rate = (time.perf_counter() - self._t0) / max(step - self._step0, 1)
            eta = rate * (self._max_steps - step)
            parts = [f"step {step}/{self._max_steps}"]
            parts += [
                text.format(record[key])
                for key, text in (
                    ("loss", "loss {:.4f}"), ("eval_loss", "eval {:.4f}"), ("tok_per_s", "{:,.0f} tok/s")
                )
                if record.get(key) is not None
            ]  # fmt: skip
            parts.append(f"ETA {eta:.0f}s")
            print("train  " + "  ".join(parts), file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _step_of(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All complete records of a metrics.jsonl (a torn last line from a kill is skipped)."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
