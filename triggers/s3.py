"""Object storage triggers (`pyfc trigger s3`): bucket events to invocations.

`ObjectSource` is the kind's `Source`. It sorts the enabled s3 triggers by where their
events come from and runs one receiver per origin: a consumer per MinIO AMQP exchange
(`triggers/s3_amqp.py`) and a poller per SQS queue (`triggers/s3_sqs.py`); webhook
triggers are served by the gateway. Every receiver hands a message's events to
`ObjectRouter.route`, which runs each matching trigger once per event: a deterministic
request id per (trigger, event) and `once`, so a redelivered message (the adapter died
before its ack) is admitted once by the dispatcher. A receiver acks or deletes a message
only after `route` returned, i.e. after every invocation it made was accepted.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Iterable

from aio_pika.abc import AbstractRobustConnection

from shared import s3events, tokens
from shared.broker import connect
from shared.errors import Unauthorized
from shared.protocol import Invocation, Lineage
from shared.s3events import ObjectEvent
from shared.settings import Settings
from shared.topology import Topology
from shared.trigger_types import MinioAmqpSource, S3Config, events_exchange
from triggers.adapter import ActiveTrigger, Emitter, event_id
from triggers.metrics import TriggerMetrics
from triggers.s3_amqp import AmqpEvents

log = logging.getLogger(f"pyfc.{__name__}")


class ObjectRouter:
    """Turns object events into accepted invocations of the triggers that take them."""

    def __init__(self, emitter: Emitter, metrics: TriggerMetrics, secret: bytes) -> None:
        self._emitter = emitter
        self._metrics = metrics
        self._secret = secret
        # Request ids being accepted now. A second copy of an event (delivered twice) waits
        # for the first: two copies of one id in one published batch would both be
        # admitted (the dispatcher's first-admission check is per id within a message).
        self._inflight: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    async def route(self, events: list[ObjectEvent], triggers: Iterable[ActiveTrigger]) -> int:
        """Accept one invocation per (matching trigger, event); how many. Raises (the
        acceptor's Unavailable) if any was not accepted: the caller keeps the message."""
        events_of = self._metrics.object_events
        accepted = 0
        candidates = list(triggers)
        for event in events:
            for active in candidates:
                config: S3Config = active.config
                if config.bucket != event.bucket:
                    continue
                label = active.label
                events_of.labels(label, "received").inc()
                if not config.takes(event):
                    events_of.labels(label, "filtered").inc()
                    continue
                inv = self._emitter.invocation(
                    active,
                    s3events.payload(config.event_format, event),
                    event_id(active.trigger_id, event.dedup_key),
                    once=True,
                    created_at=time.time(),
                    lineage=self.lineage_of(event, active),
                )
                try:
                    await self._emit_alone(active, inv)
                except Exception:
                    events_of.labels(label, "failed").inc()
                    raise
                events_of.labels(label, "accepted").inc()
                accepted += 1
        return accepted

    def lineage_of(self, event: ObjectEvent, active: ActiveTrigger) -> Lineage | None:
        """The writer's chain, one hop deeper, when the object was written by a function of
        the trigger's tenant (a genuine mark in its metadata); else None (a new chain)."""
        mark = event.lineage_mark
        if not mark:
            return None
        try:
            grant = tokens.read_mark(self._secret, mark)
        except Unauthorized as e:
            log.info("object %s/%s: %s; a new chain", event.bucket, event.key, e.message)
            return None
        if grant.tenant != active.tenant:
            return None
        return Lineage(trace_id=grant.trace_id, hops=grant.hops + 1, origin=grant.origin)

    async def _emit_alone(self, active: ActiveTrigger, inv: Invocation) -> None:
        lock, users = self._inflight.setdefault(inv.id, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                # `again`: a redelivered message finds its invocations recorded.
                await self._emitter.emit(active, inv, again=True)
        finally:
            users[0] -= 1
            if not users[0]:
                del self._inflight[inv.id]


class ObjectSource:
    """The s3 kind's source: one receiver per event origin of the enabled triggers."""

    kind = "s3"

    def __init__(
        self,
        settings: Settings,
        router: ObjectRouter,
        metrics: TriggerMetrics,
        connection: AbstractRobustConnection,
    ) -> None:
        self._settings = settings
        self._router = router
        self._metrics = metrics
        self._connection = connection
        self._triggers: dict[str, ActiveTrigger] = {}
        self._amqp: dict[str, AmqpEvents] = {}

    @classmethod
    async def open(
        cls, settings: Settings, emitter: Emitter, metrics: TriggerMetrics
    ) -> ObjectSource:
        # Its own connection: MinIO's events are consumed apart from the acceptor's publishes.
        connection = await connect(settings.amqp_url, f"pyfc-trigger-s3@{settings.namespace}")
        router = ObjectRouter(emitter, metrics, settings.token_secret())
        return cls(settings, router, metrics, connection)

    def exchange_of(self, config: S3Config) -> str | None:
        source = config.source
        if isinstance(source, MinioAmqpSource):
            return source.exchange or events_exchange(self._settings.namespace)
        return None

    def triggers_of_exchange(self, exchange: str) -> list[ActiveTrigger]:
        return [a for a in self._triggers.values() if self.exchange_of(a.config) == exchange]

    async def sync(self, changed: list[ActiveTrigger], removed: list[str]) -> None:
        for tid in removed:
            self._triggers.pop(tid, None)
        for active in changed:
            self._triggers[active.trigger_id] = active
        self._metrics.triggers.labels(self.kind).set(len(self._triggers))
        wanted = {e for a in self._triggers.values() if (e := self.exchange_of(a.config))}
        for exchange in sorted(set(self._amqp) - wanted):
            await self._amqp.pop(exchange).close()
        for exchange in sorted(wanted - set(self._amqp)):
            self._amqp[exchange] = await AmqpEvents.open(
                self._connection,
                Topology(self._settings.namespace, self._settings.queue_type),
                exchange,
                functools.partial(self.route, exchange),
                self._metrics,
            )

    async def route(self, exchange: str, events: list[ObjectEvent]) -> int:
        return await self._router.route(events, self.triggers_of_exchange(exchange))

    async def close(self) -> None:
        for receiver in self._amqp.values():
            await receiver.close()
        self._amqp.clear()
        await self._connection.close()
