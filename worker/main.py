"""Worker process: settings, connections and the service; nothing else."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import tempfile

from shared import logs, telemetry
from shared.blobs import open_blob_store
from shared.broker import connect
from shared.errors import BadRequest
from shared.logstore import Retention
from shared.process import run_role
from shared.settings import Settings, load_or_exit
from shared.topology import Topology
from worker import netpolicy
from worker.affinity import AffinityQueue
from worker.child import isolation
from worker.codecache import CodeCache, prepare_root
from worker.credentials import TokenIssuer
from worker.forking import Zygote
from worker.logship import LogShipper
from worker.metrics import WorkerMetrics
from worker.pool import InstancePool
from worker.provision import Provisioner
from worker.service import Worker
from worker.spares import sweep_stale_workdirs

log = logging.getLogger(f"pyfc.{__name__}")


def main(settings: Settings | None = None) -> int:
    settings = settings or load_or_exit()
    logs.setup(f"worker:{settings.worker_id[-4:]}", settings.log_level)
    tracing = telemetry.setup("worker", settings.otel_exporter)
    try:
        settings.private_data_dir()  # functions (other uids) run on this host
        code_root = prepare_root(settings.effective_code_cache_dir)
        users = isolation.for_this_worker(
            settings.instance_uid_base,
            sys.executable,
            [code_root, tempfile.gettempdir()],
            settings.instance_max_procs,
            settings.instance_uid_count,
            settings.instance_hidden_paths.split(","),
        )
        # Before any instance (a spare, a zygote's child) exists.
        netpolicy.for_this_worker(settings, users)
        issuer = TokenIssuer(settings.token_secret(), settings.effective_gateway_url)
    except BadRequest as e:
        raise SystemExit(f"pyfc: {e.message}") from None
    except (OSError, ValueError) as e:
        raise SystemExit(f"pyfc: {e}") from None
    isolation.configure(users)  # the pool does not pass `users` to instances yet

    async def serve(stop: asyncio.Event) -> None:
        removed = await asyncio.to_thread(sweep_stale_workdirs)
        if removed:
            log.info("removed the instance workdirs of %d worker(s) no longer running", removed)
        try:
            async with contextlib.AsyncExitStack() as stack:
                blobs = open_blob_store(settings.effective_blob_url)
                stack.push_async_callback(blobs.close)
                connection = await connect(
                    settings.amqp_url, f"pyfc-worker-{settings.worker_id}@{settings.namespace}"
                )
                stack.push_async_callback(connection.close)
                zygote = Zygote(hidden=users.hidden) if settings.worker_zygote else None
                if zygote is not None:
                    stack.push_async_callback(zygote.close)
                pool = InstancePool(
                    max_instances=settings.worker_slots, zygote=zygote, issuer=issuer
                )
                stack.push_async_callback(pool.close)
                code = CodeCache(blobs, code_root)
                metrics = WorkerMetrics(pool)
                if settings.worker_metrics_port:
                    metrics_runner = await metrics.serve(
                        settings.http_host, settings.worker_metrics_port, settings.metrics_token
                    )
                    stack.push_async_callback(metrics_runner.cleanup)
                topo = Topology(settings.namespace, settings.queue_type)
                affinity = None
                if settings.worker_affinity_ttl_ms > 0:
                    affinity = AffinityQueue(
                        connection,
                        topo,
                        settings.worker_id,
                        settings.worker_affinity_ttl_ms,
                        pool.snapshot,
                    )
                logs = None
                if settings.log_store:
                    retention = Retention(
                        max_age=settings.log_max_age, max_bytes=settings.log_max_bytes
                    )
                    logs = await LogShipper.open(
                        connection,
                        settings.namespace,
                        retention,
                        flush_seconds=settings.log_flush_seconds,
                        buffer_chars=settings.log_buffer_chars,
                        metrics=metrics,
                    )
                    # Closed after the worker: the lines of the last runs are shipped.
                    stack.push_async_callback(logs.close)
                worker = await Worker.open(
                    connection,
                    topo,
                    pool,
                    code,
                    slots=settings.worker_slots,
                    idle_seconds=settings.instance_idle_seconds,
                    metrics=metrics,
                    worker_id=settings.worker_id,
                    affinity=affinity,
                    stop_grace=settings.worker_stop_grace_seconds,
                    logs=logs,
                )
                stack.push_async_callback(worker.close)
                await worker.consume()
                provisioner = await Provisioner.open(
                    connection,
                    topo,
                    pool,
                    code,
                    worker_id=settings.worker_id,
                    slots=settings.worker_slots,
                    affinity=affinity,
                )
                # First on the way out: nothing new starts while the pool closes.
                stack.push_async_callback(provisioner.close)
                if affinity is not None:
                    affinity.announce = provisioner.beat_now
                log.info(
                    "worker %s ready: %d slots (namespace %s)",
                    settings.worker_id,
                    settings.worker_slots,
                    settings.namespace,
                )
                await stop.wait()
        finally:
            if tracing is not None:
                tracing.shutdown()
            log.info("worker stopped")

    return run_role(serve)
