"""Trigger process (`pyfc trigger <kind>`): settings, connections and the runtime; nothing else."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from shared import logs, telemetry
from shared.broker import connect
from shared.process import run_role
from shared.scrape import serve_metrics
from shared.settings import Settings, load_or_exit
from shared.store import Store
from triggers.kinds import KINDS
from triggers.runtime import TriggerRuntime

log = logging.getLogger(f"pyfc.{__name__}")


def main(kind: str, settings: Settings | None = None) -> int:
    if kind not in KINDS:
        raise SystemExit(f"pyfc: unknown trigger kind {kind!r} (kinds: {', '.join(KINDS)})")
    settings = settings or load_or_exit()
    logs.setup(f"trig-{kind}", settings.log_level)
    tracing = telemetry.setup(f"trigger-{kind}", settings.otel_exporter)

    async def serve(stop: asyncio.Event) -> None:
        try:
            async with contextlib.AsyncExitStack() as stack:
                store = await Store.open(settings.effective_database_url)
                stack.push_async_callback(store.close)
                await store.migrate()
                connection = await connect(
                    settings.amqp_url, f"pyfc-trigger-{kind}@{settings.namespace}"
                )
                stack.push_async_callback(connection.close)
                runtime = await TriggerRuntime.open(settings, store, connection, kind)
                stack.push_async_callback(runtime.close)
                if settings.trigger_metrics_port:
                    metrics_runner = await serve_metrics(
                        runtime.metrics.registry,
                        f"trigger-{kind}",
                        settings.http_host,
                        settings.trigger_metrics_port,
                        settings.metrics_token,
                    )
                    stack.push_async_callback(metrics_runner.cleanup)
                log.info(
                    "%s triggers ready: %d served (namespace %s)",
                    kind,
                    len(runtime.cache.active),
                    settings.namespace,
                )
                await stop.wait()
        finally:
            if tracing is not None:
                tracing.shutdown()
            log.info("%s triggers stopped", kind)

    return run_role(serve)
