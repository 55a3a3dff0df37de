"""Prometheus metrics of a trigger process (`PYFC_TRIGGER_METRICS_PORT`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class TriggerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.triggers = Gauge(
            "pyfc_trigger_active",
            "Enabled triggers this process serves",
            ["kind"],
            registry=self.registry,
        )
        self.emitted = Counter(
            "pyfc_trigger_invocations",
            "Invocations a trigger accepted (recorded and confirmed by the broker)",
            ["kind", "tenant"],
            registry=self.registry,
        )
        self.failed = Counter(
            "pyfc_trigger_accept_failures",
            "Events whose invocation could not be accepted (store or broker down)",
            ["kind", "tenant"],
            registry=self.registry,
        )
        self.skipped = Counter(
            "pyfc_trigger_skipped",
            "Events not turned into invocations, by reason (overlap, missed, removed)",
            ["kind", "reason"],
            registry=self.registry,
        )
        self.dead_lettered = Counter(
            "pyfc_trigger_dead_lettered",
            "Source events that cannot become invocations, parked in the trigger's DLQ",
            ["kind", "tenant"],
            registry=self.registry,
        )
        self.taken_over = Counter(
            "pyfc_trigger_taken_over",
            "Fires another replica claimed and did not finish, completed by this one",
            ["kind"],
            registry=self.registry,
        )
        self.lag = Histogram(
            "pyfc_trigger_lag_seconds",
            "From an event's scheduled (or source) time to its broker confirm",
            ["kind"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.object_events = Counter(
            "pyfc_trigger_object_events",
            "Object events per trigger of the event's bucket: received, filtered (events or "
            "key filter), accepted, failed",
            ["trigger", "outcome"],
            registry=self.registry,
        )
        self.malformed = Counter(
            "pyfc_trigger_malformed_messages",
            "Messages that were not events of the kind, parked (or refused)",
            ["kind", "source"],
            registry=self.registry,
        )
