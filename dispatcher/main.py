"""Dispatcher process: settings, connections and the service; nothing else."""

from __future__ import annotations

import asyncio
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

log = logging.getLogger("pyfc.dispatcher")


def main(settings: Settings | None = None) -> int:
    settings = settings or load_or_exit()
    logs.setup("dispatcher", settings.log_level)
    tracing = telemetry.setup("dispatcher", settings.otel_exporter)

    async def serve(stop: asyncio.Event) -> None:
        store = await Store.open(settings.effective_database_url)
        await store.migrate()
        connection = await connect(settings.amqp_url, f"pyfc-dispatcher@{settings.namespace}")
        topo = Topology(settings.namespace)
        dispatcher = Dispatcher(
            connection,
            store,
            topo,
            retry_steps_ms=backoff_steps(settings.retry_base_seconds, settings.retry_max_seconds),
            prefetch=settings.dispatch_prefetch,
        )
        provision = ProvisionPublisher(connection, store, topo)
        provision.on_beat = dispatcher.heard
        metrics_runner = None
        try:
            await dispatcher.start()
            await provision.start()
            if settings.dispatcher_metrics_port:
                metrics_runner = await serve_metrics(
                    dispatcher.metrics.registry,
                    "dispatcher",
                    settings.http_host,
                    settings.dispatcher_metrics_port,
                    settings.metrics_token,
                )
            log.info("dispatcher ready (namespace %s)", settings.namespace)
            await stop.wait()
        finally:
            if metrics_runner is not None:
                await metrics_runner.cleanup()
            await provision.close()
            await dispatcher.close()
            await connection.close()
            await store.close()
            if tracing is not None:
                tracing.shutdown()
            log.info("dispatcher stopped")

    return run_role(serve)
