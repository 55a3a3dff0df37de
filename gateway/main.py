"""Gateway process: settings, connections and the HTTP app; nothing else."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from gateway.app import build_app
from gateway.http import Gateway
from gateway.rpc import RpcClient
from shared import control, logs, telemetry
from shared.blobs import open_blob_store
from shared.broker import connect
from shared.catalog import FunctionCatalog
from shared.errors import BadRequest
from shared.process import run_role
from shared.settings import Settings, load_or_exit
from shared.store import Store
from shared.topology import Topology, declare_all, declare_invoke

log = logging.getLogger(f"pyfc.{__name__}")


def main(settings: Settings | None = None) -> int:
    settings = settings or load_or_exit()
    logs.setup("gateway", settings.log_level)
    tracing = telemetry.setup("gateway", settings.otel_exporter)
    try:
        settings.private_data_dir()  # before the database and blobs are made in it
        token_secret = settings.token_secret()
    except BadRequest as e:
        raise SystemExit(f"pyfc: {e.message}") from None

    async def serve(stop: asyncio.Event) -> None:
        store = await Store.open(settings.effective_database_url)
        await store.migrate()
        blobs = open_blob_store(settings.effective_blob_url)
        connection = await connect(settings.amqp_url, f"pyfc-gateway@{settings.namespace}")
        topo = Topology(settings.namespace, settings.queue_type)
        rpc_channel = await connection.channel(publisher_confirms=False)
        await declare_all(rpc_channel, topo)
        rpc = await RpcClient.open(
            rpc_channel, await declare_invoke(rpc_channel, topo), topo.reply_queues
        )
        # on_return_raises: an unroutable publish (right after a broker restart, say) is an
        # error, not a silent success: nothing gets a 202 that no queue holds.
        confirmed = await connection.channel(publisher_confirms=True, on_return_raises=True)
        control_channel = await connection.channel()
        catalog = FunctionCatalog(store)
        await control.subscribe(control_channel, topo, catalog.invalidate)
        gateway = Gateway(
            settings=settings,
            store=store,
            blobs=blobs,
            topo=topo,
            rpc=rpc,
            invoke_exchange=await declare_invoke(confirmed, topo),
            control_channel=control_channel,
            catalog=catalog,
            connection=connection,
            log_markers=await connection.channel(publisher_confirms=True),
            token_secret=token_secret,
        )
        runner = web.AppRunner(build_app(gateway), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, settings.http_host, settings.http_port)
        try:
            await site.start()
            log.info("gateway listening on http://%s:%d", settings.http_host, settings.http_port)
            await stop.wait()
        finally:
            await runner.cleanup()
            await connection.close()
            await blobs.close()
            await store.close()
            if tracing is not None:
                tracing.shutdown()
            log.info("gateway stopped")

    return run_role(serve)
