"""Serving metrics in the Prometheus text exposition format (version 0.0.4), hand-written.

Counters and a latency histogram updated by the API; engine gauges read at scrape time.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""

    def esc(v: str) -> str:
        return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in sorted(labels.items())) + "}"


class ServeMetrics:
    """Thread-safe counters and histograms; `render()` is the /metrics body."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[tuple, float]] = defaultdict(lambda: defaultdict(float))
        self._hist: dict[tuple, list[float]] = {}
        self._gauges: dict[str, Callable[[], dict[tuple, float]]] = {}
        self._help = {
            "forgeml_requests_total": "Requests by endpoint, model and HTTP status.",
            "forgeml_prompt_tokens_total": "Prompt tokens processed.",
            "forgeml_completion_tokens_total": "Completion tokens generated.",
            "forgeml_policy_decisions_total": "Policy rules that fired.",
            "forgeml_request_seconds": "Request latency in seconds.",
        }

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        with self._lock:
            self._counters[name][tuple(sorted(labels.items()))] += value

    def observe_latency(self, seconds: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            counts = self._hist.setdefault(key, [0.0] * (len(LATENCY_BUCKETS) + 2))
            for i, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    counts[i] += 1
            counts[-2] += 1  # +Inf bucket == count
            counts[-1] += seconds

    def gauge(self, name: str, help_text: str, read: Callable[[], dict[tuple, float]]) -> None:
        """Register a gauge read at scrape time: `read()` -> {label items tuple: value}."""
        self._help[name] = help_text
        self._gauges[name] = read

    def render(self) -> str:
        out: list[str] = []
        with self._lock:
            for name, series in sorted(self._counters.items()):
                out += [f"# HELP {name} {self._help.get(name, name)}", f"# TYPE {name} counter"]
                out += [f"{name}{_labels(dict(k))} {v:g}" for k, v in sorted(series.items())]
            if self._hist:
                name = "forgeml_request_seconds"
                out += [f"# HELP {name} {self._help[name]}", f"# TYPE {name} histogram"]
                for key, counts in sorted(self._hist.items()):
                    labels = dict(key)
                    for bound, c in zip(
                        LATENCY_BUCKETS, counts[: len(LATENCY_BUCKETS)], strict=True
                    ):
                        out.append(f"{name}_bucket{_labels({**labels, 'le': f'{bound:g}'})} {c:g}")
                    out.append(f"{name}_bucket{_labels({**labels, 'le': '+Inf'})} {counts[-2]:g}")
                    out.append(f"{name}_count{_labels(labels)} {counts[-2]:g}")
                    out.append(f"{name}_sum{_labels(labels)} {counts[-1]:.6f}")
        for name, read in sorted(self._gauges.items()):
            out += [f"# HELP {name} {self._help[name]}", f"# TYPE {name} gauge"]
            out += [f"{name}{_labels(dict(k))} {v:g}" for k, v in sorted(read().items())]
        return "\n".join(out) + "\n"
