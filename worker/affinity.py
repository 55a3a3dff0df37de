"""This worker's own work queue, for calls routed to its warm instances, and what it tells
the dispatchers about them (they choose: dispatcher/affinity.py).

* The queue `{ns}.work.<worker id>` (`shared.topology.declare_affinity`) is consumed on the
  same channel as the shared work queue under one prefetch for both (`global` QoS), so
  the worker never holds more work than its slots, from either queue (on quorum queues,
  which refuse global QoS, a prefetch of its slots each). Work it does not
  take within the queue's TTL (it is busy, or dead: a dead consumer's unacked deliveries
  return to the queue and keep their original expiry) is dead-lettered to the shared queue.
* A sync call must never run twice. A sync message that expired out of another worker's
  queue may have been delivered there before that worker died: the dead-lettered copy is
  not marked redelivered. So the worker asks the broker whether that queue still has its
  consumer. If it has, the call never reached that worker (a delivered message does not
  expire while its consumer lives) and it runs here; if not, it is answered `WorkerLost`
  like a redelivered one. Only work that fell back pays for the question.
* A clean stop (`drain`): after the fleet heard it leave, the worker turns away (rejects,
  so they fall back at once, as "rejected") the calls still arriving, and keeps consuming
  until its queue is empty, so no call sent to it before the dispatchers knew waits out
  the TTL or is taken for one a dead worker had.
* Heartbeats carry its warm room (`room`): per instance key the requests its live
  instances can take at once and those running, and the shared queue's messages it holds
  (work no dispatcher counts as routed to it; its own queue's work each dispatcher counts
  itself, and a beat cannot be ordered with the completions that would correct for it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Protocol

from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from aiormq.abc import DeliveredMessage

from shared.broker import Consumer, RawHandler, consume_fast
from shared.protocol import FunctionSpec, Invocation, Outcome, system_outcome
from shared.topology import Topology, declare_affinity

log = logging.getLogger(f"pyfc.{__name__}")

PROBE_TIMEOUT = 5.0
# On a clean stop, calls published before the dispatchers heard this worker leave may
# still be on their way for this long.
LEAVE_GRACE_SECONDS = 0.05


class WarmInstance(Protocol):
    @property
    def spec(self) -> FunctionSpec: ...

    @property
    def alive(self) -> bool: ...

    @property
    def reserved(self) -> int: ...


def warm_room(instances: Iterable[WarmInstance]) -> tuple[dict[str, int], dict[str, int]]:
    """Per instance key: the requests its live instances can take at once, and those
    promised to them now (running or about to)."""
    warm: dict[str, int] = {}
    busy: dict[str, int] = {}
    for instance in instances:
        if not instance.alive:
            continue
        key = instance.spec.instance_key
        warm[key] = warm.get(key, 0) + instance.spec.instance_concurrency
        if instance.reserved:
            busy[key] = busy.get(key, 0) + instance.reserved
    return warm, busy


def fell_back_from(headers: Mapping[str, object] | None, prefix: str) -> str | None:
    """The affinity queue (a name starting with `prefix`) this message expired out of, if
    it came to the shared queue that way (its latest `x-death`); else None."""
    if not headers:
        return None
    deaths = headers.get("x-death")
    if not isinstance(deaths, list) or not deaths or not isinstance(deaths[0], Mapping):
        return None
    death = deaths[0]
    queue = death.get("queue")
    if death.get("reason") != "expired" or not isinstance(queue, str):
        return None
    return queue if queue.startswith(prefix) else None


class AffinityQueue:
    def __init__(
        self,
        connection: AbstractRobustConnection,
        topo: Topology,
        worker_id: str,
        ttl_ms: int,
        instances: Callable[[], Iterable[WarmInstance]],
    ) -> None:
        self._connection = connection
        self._topo = topo
        self._worker_id = worker_id
        self._ttl_ms = ttl_ms
        self._instances = instances
        self.name = topo.affinity_queue(worker_id)
        self._prefix = topo.affinity_queue("")
        self.held = 0  # messages of the shared work queue held unacked
        self._leaving = False
        # Set by the heartbeat's owner: tells the fleet now that an instance became warm.
        self.announce: Callable[[], Awaitable[None]] | None = None

    def hold(self, handler: RawHandler) -> RawHandler:
        """`handler` for the shared queue, counting the deliveries it holds."""

        async def counted(message: DeliveredMessage) -> None:
            self.held += 1
            try:
                await handler(message)
            finally:
                self.held -= 1

        return counted

    async def consume(self, channel: AbstractChannel, handler: RawHandler) -> Consumer:
        """Declare this worker's queue and consume it on `channel` with `handler`."""
        await declare_affinity(channel, self._topo, self._worker_id, self._ttl_ms)
        return await consume_fast(channel, self.name, handler)

    @property
    def leaving(self) -> bool:
        """A clean stop began: what still arrives here is turned away (`drain`)."""
        return self._leaving

    def room(self) -> tuple[dict[str, int], dict[str, int], int]:
        """(warm, busy, held) for this worker's heartbeat."""
        warm, busy = warm_room(self._instances())
        return warm, busy, self.held

    async def warmed(self) -> None:
        """An instance was started for a call: tell the fleet before answering it, so the
        caller's next call can already be routed to it."""
        if self.announce is not None:
            await self.announce()

    async def lost(self, message: DeliveredMessage, inv: Invocation) -> Outcome | None:
        """`WorkerLost` for a sync call that fell back from a worker that may have taken it
        before it died; None (run it) otherwise."""
        if inv.kind != "sync":
            return None
        origin = fell_back_from(message.header.properties.headers, self._prefix)
        if origin is None:
            return None
        consumers = await self._consumers(origin)
        if consumers:
            return None  # its worker lives: it was busy and never took the call
        log.warning("sync call %s fell back from %s, whose worker is gone; not run", inv.id, origin)
        return system_outcome(
            inv, "WorkerLost", "the worker this invocation was sent to went away; not retried", 502
        )

    async def drain(self) -> None:
        """A clean stop, once the fleet was told: turn away what still arrives until the
        queue is empty (at most one TTL: what is not delivered expires and falls back)."""
        self._leaving = True
        await asyncio.sleep(LEAVE_GRACE_SECONDS)
        deadline = time.monotonic() + self._ttl_ms / 1000 + 0.5
        while time.monotonic() < deadline:
            try:
                messages, _ = await self._probe(self.name)
            except Exception as e:
                log.warning("cannot see whether %s is empty: %s", self.name, e)
                return
            if messages == 0:
                return
            await asyncio.sleep(0.02)

    async def _consumers(self, queue: str) -> int:
        try:
            _, consumers = await self._probe(queue)
        except Exception as e:  # gone (expired) or unreachable: treat as no consumer
            log.warning("cannot look up queue %s: %s", queue, e)
            return 0
        return consumers

    async def _probe(self, queue: str) -> tuple[int, int]:
        """(ready messages, consumers) of `queue`, by a passive declare on a channel of its
        own (an unknown queue closes the channel it is asked on)."""
        transport = self._connection.transport
        if transport is None:
            raise ConnectionError("not connected to the broker")
        async with asyncio.timeout(PROBE_TIMEOUT):
            channel = await transport.connection.channel(publisher_confirms=False)
            try:
                ok = await channel.queue_declare(queue, passive=True)
            finally:
                with contextlib.suppress(Exception):
                    await channel.close()
        return int(ok.message_count or 0), int(ok.consumer_count or 0)
