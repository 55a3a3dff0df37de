"""Per-function metrics of one worker: starts, init time, outcomes, live, busy and
provisioned instances.

Counters are updated on the invoke path; instance gauges are read from the pool at scrape
time (no bookkeeping on the hot path). Served by `serve()` when PYFC_WORKER_METRICS_PORT
is set; Prometheus scrapes each worker and aggregates by function labels.
"""

from __future__ import annotations

import logging
from collections import Counter as Tally
from collections.abc import Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from shared.protocol import FunctionSpec, Outcome
from shared.scrape import serve_metrics
from worker.pool import InstancePool

log = logging.getLogger(f"pyfc.{__name__}")

FUNCTION_LABELS = ["tenant", "service", "function"]
INIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def function_labels(spec: FunctionSpec) -> tuple[str, str, str]:
    return spec.tenant, spec.service, spec.function


class _InstanceGauges(Collector):
    def __init__(self, pool: InstancePool) -> None:
        self._pool = pool

    def collect(self) -> Iterator[GaugeMetricFamily]:
        alive = GaugeMetricFamily(
            "pyfc_worker_instances", "Live instances per function", labels=FUNCTION_LABELS
        )
        busy = GaugeMetricFamily(
            "pyfc_worker_instances_busy",
            "Instances running at least one request",
            labels=FUNCTION_LABELS,
        )
        provisioned = GaugeMetricFamily(
            "pyfc_worker_instances_provisioned",
            "Live instances kept warm by a provision config",
            labels=FUNCTION_LABELS,
        )
        alive_by: Tally[tuple[str, str, str]] = Tally()
        busy_by: Tally[tuple[str, str, str]] = Tally()
        provisioned_by: Tally[tuple[str, str, str]] = Tally()
        for instance in self._pool.snapshot():
            key = function_labels(instance.spec)
            alive_by[key] += 1
            busy_by[key] += 1 if instance.reserved else 0
            provisioned_by[key] += 1 if instance.provisioned and instance.alive else 0
        for key, n in alive_by.items():
            alive.add_metric(list(key), n)
            busy.add_metric(list(key), busy_by[key])
            provisioned.add_metric(list(key), provisioned_by[key])
        yield alive
        yield busy
        yield provisioned


class WorkerMetrics:
    def __init__(self, pool: InstancePool) -> None:
        self.registry = CollectorRegistry()
        self.starts = Counter(
            "pyfc_worker_starts",
            "Invocations by start kind (cold = a new instance was started for it)",
            [*FUNCTION_LABELS, "kind"],
            registry=self.registry,
        )
        self.outcomes = Counter(
            "pyfc_worker_invocations",
            "Invocations run, by version (LATEST, 1, 2...) and outcome",
            [*FUNCTION_LABELS, "version", "outcome"],
            registry=self.registry,
        )
        self.copies_not_run = Counter(
            "pyfc_worker_copies_not_run",
            "Redelivered async work not run again: running or answered here already",
            registry=self.registry,
        )
        self.init_seconds = Histogram(
            "pyfc_worker_instance_init_seconds",
            "Cold start to ready (process start, import, initializer)",
            FUNCTION_LABELS,
            buckets=INIT_BUCKETS,
            registry=self.registry,
        )
        self.log_shipped = Counter(
            "pyfc_worker_log_records_shipped",
            "Log records confirmed by their log store's stream",
            registry=self.registry,
        )
        self.log_dropped = Counter(
            "pyfc_worker_log_records_dropped",
            "Log records dropped: their store's buffer on this worker was full",
            FUNCTION_LABELS,
            registry=self.registry,
        )
        self._pool = pool
        self.registry.register(_InstanceGauges(pool))

    def observe(self, spec: FunctionSpec, outcome: Outcome) -> None:
        labels = function_labels(spec)
        self.outcomes.labels(*labels, spec.version, outcome.status).inc()
        if not outcome.instance_id:
            return  # nothing ran (deadline passed, shutting down)
        self.starts.labels(*labels, "cold" if outcome.cold_start else "warm").inc()
        if outcome.cold_start:
            instance = self._pool.instance(outcome.instance_id)
            if instance is not None:
                self.init_seconds.labels(*labels).observe(instance.init_duration_ms / 1000)

    async def serve(self, host: str, port: int, token: str) -> web.AppRunner:
        return await serve_metrics(self.registry, "worker", host, port, token)
