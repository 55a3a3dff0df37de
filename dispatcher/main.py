"""Dispatcher process: settings, connections and the service; nothing else."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from dispatcher.provision import ProvisionPublisher
from dispatcher.service import Dispatcher
from shared import logs, telemetry
from shared.broker import connect
from shared.process import run_role
from shared.scrape import serve_metrics
from shared.settings import Settings, load_or_exit
from shared.store import Store
from shared.topology import Topology, backoff_steps

log = logging.getLogger(f"pyfc.{__name__}")


def main(settings: Settings | None = None) -> int:
    settings = settings or load_or_exit()
    logs.setup("dispatcher", settings.log_level)
    tracing = telemetry.setup("dispatcher", settings.otel_exporter)

    async def serve(stop: asyncio.Event) -> None:
        try:
            async with contextlib.AsyncExitStack() as stack:
                store = await Store.open(settings.effective_database_url)
                stack.push_async_callback(store.close)
                await store.migrate()
                connection = await connect(
                    settings.amqp_url, f"pyfc-dispatcher@{settings.namespace}"
                )
                stack.push_async_callback(connection.close)
                topo = Topology(settings.namespace, settings.queue_type)
                dispatcher = await Dispatcher.open(
                    connection,
                    store,
                    topo,
                    retry_steps_ms=backoff_steps(
                        settings.retry_base_seconds, settings.retry_max_seconds
                    ),
                    prefetch=settings.dispatch_prefetch,
                )
                stack.push_async_callback(dispatcher.close)
                await dispatcher.consume()
                provision = await ProvisionPublisher.open(
                    connection, store, topo, on_beat=dispatcher.heard
                )
                stack.push_async_callback(provision.close)
                if settings.dispatcher_metrics_port:
                    metrics_runner = await serve_metrics(
                        dispatcher.metrics.registry,
                        "dispatcher",
                        settings.http_host,
                        settings.dispatcher_metrics_port,
                        settings.metrics_token,
                    )
                    stack.push_async_callback(metrics_runner.cleanup)
                log.info("dispatcher ready (namespace %s)", settings.namespace)
                await stop.wait()
        finally:
            if tracing is not None:
                tracing.shutdown()
            log.info("dispatcher stopped")

    return run_role(serve)
