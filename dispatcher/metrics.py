"""Prometheus metrics of one dispatcher: admissions, throttles, retries, dead letters, loops.

Running and waiting counts are read from the admission pools at scrape time. Only the
active consumer of a shard counts its tenants, so sum over replicas.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from dispatcher.admission import Admission


class _PoolGauges(Collector):
    def __init__(self, admission: Admission[Any]) -> None:
        self._admission = admission

    def collect(self) -> Iterator[GaugeMetricFamily]:
        running = GaugeMetricFamily(
            "pyfc_dispatcher_running", "Invocations holding a slot", labels=["tenant", "pool"]
        )
        waiting = GaugeMetricFamily(
            "pyfc_dispatcher_waiting",
            "Async invocations waiting for a slot",
            labels=["tenant", "pool"],
        )
        for pool in self._admission.pools():
            labels = [pool.key[0], "/".join(pool.key[1:]) or "tenant"]
            running.add_metric(labels, len(pool.running))
            waiting.add_metric(labels, len(pool.waiting))
        yield running
        yield waiting
        yield GaugeMetricFamily(
            "pyfc_dispatcher_async_slots_used",
            "Worker slots (instances) taken by routed async work",
            value=self._admission.async_slots_used,
        )
        yield GaugeMetricFamily(
            "pyfc_dispatcher_async_slots_limit",
            "Worker slots async work may take (0: fleet not heard yet, no limit)",
            value=self._admission.async_limit,
        )


class DispatcherMetrics:
    def __init__(self, admission: Admission[Any]) -> None:
        self.registry = CollectorRegistry()
        self.admitted = Counter(
            "pyfc_dispatcher_admitted", "Invocations admitted", ["tenant", "kind"],
            registry=self.registry,
        )  # fmt: skip
        self.throttled = Counter(
            "pyfc_dispatcher_throttled", "Sync invocations refused at a cap (429)", ["tenant"],
            registry=self.registry,
        )  # fmt: skip
        self.retries = Counter(
            "pyfc_dispatcher_retries", "Async attempts scheduled again", ["tenant"],
            registry=self.registry,
        )  # fmt: skip
        self.dead_letters = Counter(
            "pyfc_dispatcher_dead_letters", "Invocations dead-lettered, by reason",
            ["tenant", "reason"], registry=self.registry,
        )  # fmt: skip
        self.redelivered_concluded = Counter(
            "pyfc_dispatcher_redelivered_concluded",
            "Redelivered async invocations not run again: attempt already concluded",
            ["tenant"], registry=self.registry,
        )  # fmt: skip
        self.second_copies = Counter(
            "pyfc_dispatcher_second_copies",
            "Second copies of a `once` invocation (a trigger fire published twice), not run",
            ["tenant"], registry=self.registry,
        )  # fmt: skip
        self.loops = Counter(
            "pyfc_dispatcher_loops_detected", "Invocation chains stopped at the depth limit",
            ["tenant"], registry=self.registry,
        )  # fmt: skip
        self.destinations = Counter(
            "pyfc_dispatcher_destinations", "Records delivered to destinations, by condition",
            ["tenant", "condition"], registry=self.registry,
        )  # fmt: skip
        routed = Counter(
            "pyfc_dispatcher_routed",
            "Invocations routed to a worker's affinity queue (warm room) or the shared queue",
            ["route"], registry=self.registry,
        )  # fmt: skip
        self._routed = (routed.labels("shared"), routed.labels("affinity"))
        self.auto_rollbacks = Counter(
            "pyfc_dispatcher_auto_rollbacks",
            "Canary versions whose alias weight was set to 0 by automatic rollback",
            ["tenant", "service", "alias", "version"],
            registry=self.registry,
        )
        self.affinity_missed = Counter(
            "pyfc_dispatcher_affinity_missed",
            "Work routed to a worker's affinity queue that ran elsewhere (it fell back)",
            registry=self.registry,
        )
        self.registry.register(_PoolGauges(admission))

    def count_route(self, affinity: bool) -> None:
        self._routed[affinity].inc()
