"""Publish the provision snapshot: every provision target with its function's current spec.

Workers never read the database, so the desired state comes to them whole on the
`{ns}.provision` fanout: every `PUBLISH_SECONDS`, at once after a control notice (a
provision config, function, service or tenant changed: specs are re-read through the
catalog, so a new revision reaches the workers), and when a worker sends its first
heartbeat (so a new worker need not wait for the next period). Every dispatcher replica
publishes; the snapshots are the same, so that is harmless. Placement is the workers' job
(worker/placement.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractRobustConnection,
)

from shared import codec, control
from shared.broker import PUBLISH_TIMEOUT
from shared.catalog import FunctionCatalog
from shared.errors import PyfcError
from shared.protocol import ControlEvent, ProvisionSnapshot, ProvisionTarget, WorkerBeat
from shared.store import Store
from shared.topology import Topology, declare_fanout

log = logging.getLogger(f"pyfc.{__name__}")

PUBLISH_SECONDS = 5.0
# A burst of notices (a deploy touching many functions) becomes one snapshot.
COALESCE_SECONDS = 0.05


class ProvisionPublisher:
    """Built and started by `open`; `close` stops it."""

    def __init__(
        self,
        channel: AbstractChannel,
        exchange: AbstractExchange,
        store: Store,
        topo: Topology,
        *,
        interval: float,
        on_beat: Callable[[WorkerBeat], None] | None,
    ) -> None:
        self._channel = channel
        self._exchange = exchange  # the provision fanout
        self._store = store
        self._topo = topo
        self._interval = interval
        self._catalog = FunctionCatalog(store)
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.published = 0
        # Also told of every heartbeat (the dispatcher sizes async work to the fleet).
        self._on_beat_heard = on_beat

    @classmethod
    async def open(
        cls,
        connection: AbstractRobustConnection,
        store: Store,
        topo: Topology,
        *,
        interval: float = PUBLISH_SECONDS,
        on_beat: Callable[[WorkerBeat], None] | None = None,
    ) -> ProvisionPublisher:
        """Listen to the fleet and to control notices, and publish snapshots from now on."""
        channel = await connection.channel()
        exchange = await declare_fanout(channel, topo.provision_exchange)
        publisher = cls(channel, exchange, store, topo, interval=interval, on_beat=on_beat)
        fleet = await declare_fanout(channel, topo.fleet_exchange)
        queue = await channel.declare_queue(
            f"{fleet.name}.dispatcher-{uuid.uuid4().hex[:8]}", exclusive=True, auto_delete=True
        )
        await queue.bind(fleet)
        await queue.consume(publisher._on_beat, no_ack=True)
        await control.subscribe(channel, topo, publisher._on_control)
        publisher._tasks.append(asyncio.create_task(publisher._publish_forever()))
        return publisher

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if not self._channel.is_closed:
            await self._channel.close()

    def _on_control(self, event: ControlEvent) -> None:
        self._catalog.invalidate(event)
        self._wake.set()

    async def _on_beat(self, message: AbstractIncomingMessage) -> None:
        try:
            beat = codec.decode(message.body, WorkerBeat)
        except PyfcError as e:
            log.warning("ignoring malformed heartbeat: %s", e.message)
            return
        if self._on_beat_heard is not None:
            self._on_beat_heard(beat)
        if beat.seq == 0 and not beat.leaving:
            self._wake.set()

    async def snapshot(self) -> ProvisionSnapshot:
        """Every target above 0 with the spec its instances must run."""
        targets: list[ProvisionTarget] = []
        for tenant, cfg in await self._store.list_provision_configs():
            try:
                spec = await self._catalog.spec(
                    tenant, cfg.service_name, cfg.qualifier, cfg.function_name
                )
            except PyfcError as e:  # deleted meanwhile (its config goes with it)
                log.warning(
                    "provision config of %s/%s.%s/%s skipped: %s",
                    tenant,
                    cfg.service_name,
                    cfg.qualifier,
                    cfg.function_name,
                    e.message,
                )
                continue
            targets.append(ProvisionTarget(spec=spec, target=cfg.target))
        return ProvisionSnapshot(targets=targets, published_at=time.time())

    async def publish(self) -> None:
        snapshot = await self.snapshot()
        await self._exchange.publish(
            aio_pika.Message(codec.encode(snapshot)), routing_key="", timeout=PUBLISH_TIMEOUT
        )
        self.published += 1

    async def _publish_forever(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.publish()
            except Exception:
                log.exception("cannot publish the provision snapshot; retrying")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._wake.wait()
            await asyncio.sleep(COALESCE_SECONDS)
