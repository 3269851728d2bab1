"""Recording the catalogue's metrics from any hfserve process (ingress, model replica, state
actor, node actor) through `ray.util.metrics`.

Ray's metric objects are created on first use, one per spec per process, and every record
call checks its labels against the spec: a wrong or missing label is a bug that fails loudly
in tests rather than a silently split series. With metrics off (`enable_metrics: false`, used
by the benchmark to price them) every call returns at once.

Outside a Ray worker `ray.util.metrics` records nowhere, so unit tests swap in a `sink` to see
what would have been recorded.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from .catalogue import MetricSpec

logger = logging.getLogger("ray.serve")

Sink = Callable[[MetricSpec, float, dict[str, str]], None]  # (spec, value, labels): tests only


class Recorder:
    def __init__(self, enabled: bool = True, sink: Sink | None = None):
        self.enabled = enabled
        self._sink = sink
        self._metrics: dict[str, Any] = {}
        self._lock = threading.Lock()  # replicas record from the event loop and from threads

    def inc(self, spec: MetricSpec, value: float = 1.0, **labels: str) -> None:
        if self.enabled and value:
            self._record(spec, "counter", value, labels)

    def observe(self, spec: MetricSpec, value: float, **labels: str) -> None:
        if self.enabled:
            self._record(spec, "histogram", value, labels)

    def set(self, spec: MetricSpec, value: float, **labels: str) -> None:
        if self.enabled:
            self._record(spec, "gauge", value, labels)

    def _record(self, spec: MetricSpec, kind: str, value: float, labels: dict[str, str]) -> None:
        if spec.kind != kind:
            raise TypeError(f"{spec.name} is a {spec.kind}, not a {kind}")
        if len(labels) != len(spec.labels) or any(name not in labels for name in spec.labels):
            raise ValueError(f"{spec.name} takes the labels {spec.labels}, got {tuple(labels)}")
        if self._sink is not None:
            self._sink(spec, value, labels)
            return
        metric = self._metrics.get(spec.name) or self._create(spec)
        if kind == "counter":
            metric.inc(value, tags=labels)
        elif kind == "histogram":
            metric.observe(value, tags=labels)
        else:
            metric.set(value, tags=labels)

    def _create(self, spec: MetricSpec) -> Any:
        from ray.util import metrics

        with self._lock:
            if spec.name in self._metrics:
                return self._metrics[spec.name]
            if spec.kind == "counter":
                metric = metrics.Counter(spec.name, description=spec.help, tag_keys=spec.labels)
            elif spec.kind == "histogram":
                metric = metrics.Histogram(spec.name, description=spec.help, boundaries=list(spec.buckets),
                                           tag_keys=spec.labels)
            else:
                metric = metrics.Gauge(spec.name, description=spec.help, tag_keys=spec.labels)
            self._metrics[spec.name] = metric
            return metric


def gauge_refresh_s(longest: float = 5.0) -> float:
    """How often a process must set its gauges again: Ray's metrics agent evicts a gauge that
    was not set within two report intervals (`metrics_report_interval_ms`), so a value that
    does not change (a replica loaded, a breaker closed) would vanish, and an alert on its
    absence fire. Once per report interval, at most every `longest` seconds."""
    try:
        import ray

        interval_s = ray._config.metrics_report_interval_ms() / 1000.0
    except Exception:  # noqa: BLE001 - outside a Ray process: nothing evicts
        return longest
    return max(1.0, min(longest, interval_s))
