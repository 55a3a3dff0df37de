"""Prometheus metrics of one gateway process, served at `/metrics`.

Each gateway keeps its own registry (no globals shared across apps in one process, e.g.
in tests); Prometheus aggregates replicas by its `instance` label.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "pyfc_http_requests",
            "HTTP requests answered, by route and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.invocations = Counter(
            "pyfc_invocations",
            "Invocations handled by this gateway, by kind and outcome",
            ["tenant", "kind", "outcome"],
            registry=self.registry,
        )
        self.invoke_seconds = Histogram(
            "pyfc_sync_invoke_seconds",
            "Sync invoke latency seen by the gateway (admission to response)",
            ["tenant"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
