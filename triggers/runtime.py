"""A trigger process: one kind's source, fed by the trigger cache, emitting through an
acceptor on its own confirming channel. Built complete by `await TriggerRuntime.open`."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from shared import control
from shared.accept import Acceptor
from shared.errors import PyfcError
from shared.settings import Settings
from shared.store import Store
from shared.topology import Topology, declare_all, declare_invoke
from shared.trigger_types import trigger_type
from triggers.adapter import Emitter, Source
from triggers.cache import TriggerCache
from triggers.kinds import KINDS
from triggers.metrics import TriggerMetrics

log = logging.getLogger(f"pyfc.{__name__}")

# A full reload this often repairs a lost control notice (a broker blip).
RESYNC_SECONDS = 30.0


class TriggerRuntime:
    def __init__(
        self,
        source: Source,
        cache: TriggerCache,
        metrics: TriggerMetrics,
        channels: list[AbstractChannel],
    ) -> None:
        self.source = source
        self.cache = cache
        self.metrics = metrics
        self._channels = channels
        self._resync = asyncio.create_task(self._resync_forever())

    @classmethod
    async def open(
        cls, settings: Settings, store: Store, connection: AbstractRobustConnection, kind: str
    ) -> TriggerRuntime:
        """Declare the topology, start the kind's source and load its triggers."""
        factory = KINDS[kind]
        topo = Topology(settings.namespace, settings.queue_type)
        # on_return_raises: an unroutable publish is an error, not an accepted invocation.
        confirmed = await connection.channel(publisher_confirms=True, on_return_raises=True)
        await declare_all(confirmed, topo)
        acceptor = Acceptor(store, await declare_invoke(confirmed, topo))
        metrics = TriggerMetrics()
        emitter = Emitter(trigger_type(kind), acceptor, metrics)
        source = await factory(settings, store, emitter, metrics)
        cache = TriggerCache(store, source)
        notices = await connection.channel()
        # Subscribed before the first load, so no change falls between the two.
        await control.subscribe(notices, topo, cache.notice)
        await cache.load_all()
        return cls(source, cache, metrics, [notices, confirmed])

    async def _resync_forever(self) -> None:
        while True:
            await asyncio.sleep(RESYNC_SECONDS)
            try:
                await self.cache.load_all()
            except PyfcError as e:
                log.warning("trigger resync failed: %s", e.message)

    async def close(self) -> None:
        self._resync.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._resync
        await self.cache.close()
        await self.source.close()
        for channel in self._channels:
            if not channel.is_closed:
                await channel.close()
