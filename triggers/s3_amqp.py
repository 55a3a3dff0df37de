"""MinIO's AMQP notification target: bucket events consumed from the platform's broker.

MinIO publishes each event (`{"EventName", "Key", "Records"}`) to an exchange
(deploy/: `{namespace}.s3-events`, fanout, durable, persistent messages). Each exchange
that enabled triggers name gets one durable queue, `{namespace}.s3.<exchange>`, bound to
it and shared by the replicas of the s3 trigger process, so each message is handled by
one of them. A message is acked only once every invocation it makes is accepted; a
message that is not an object event is rejected, and the queue dead-letters it to
`{namespace}.s3.<exchange>.parked` (kept for inspection, never retried).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection

from shared import s3events
from shared.errors import PyfcError
from shared.s3events import MalformedEvent, ObjectEvent
from shared.topology import Topology, declare_durable
from triggers.metrics import TriggerMetrics

log = logging.getLogger(f"pyfc.{__name__}")

Route = Callable[[list[ObjectEvent]], Awaitable[int]]
# Messages in flight per exchange: their invocations are accepted concurrently.
PREFETCH = 64
# After a failed acceptance (store or broker down), the message goes back after this.
RETRY_PAUSE = 1.0


def events_queue(namespace: str, exchange: str) -> str:
    return f"{namespace}.s3.{exchange}"


def parked_queue(namespace: str, exchange: str) -> str:
    return f"{events_queue(namespace, exchange)}.parked"


class AmqpEvents:
    """The consumer of one MinIO exchange's event queue."""

    def __init__(
        self,
        channel: AbstractChannel,
        exchange: str,
        route: Route,
        metrics: TriggerMetrics,
    ) -> None:
        self._channel = channel
        self._exchange = exchange
        self._route = route
        self._metrics = metrics
        self._tag = ""

    @classmethod
    async def open(
        cls,
        connection: AbstractRobustConnection,
        topo: Topology,
        exchange: str,
        route: Route,
        metrics: TriggerMetrics,
    ) -> AmqpEvents:
        """Declare the exchange (fanout and durable, as deploy/ configures MinIO's target,
        so whichever of MinIO and pyfc starts first declares it the same), its queue, and
        start consuming."""
        channel = await connection.channel()
        source = await channel.declare_exchange(
            exchange, aio_pika.ExchangeType.FANOUT, durable=True
        )
        await channel.set_qos(prefetch_count=PREFETCH)
        parked = parked_queue(topo.namespace, exchange)
        await declare_durable(channel, topo, parked)
        queue = await declare_durable(
            channel,
            topo,
            events_queue(topo.namespace, exchange),
            {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": parked},
        )
        await queue.bind(source)
        self = cls(channel, exchange, route, metrics)
        self._tag = await queue.consume(self._on_message)
        log.info("s3 events: consuming exchange %s (queue %s)", exchange, queue.name)
        return self

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        # The one place a delivery is settled: ack, park (reject) or give back (nack).
        try:
            events = s3events.parse(message.body)
        except MalformedEvent as e:
            self._metrics.malformed.labels("s3", "minio-amqp").inc()
            log.warning(
                "parking a message on %s that is not an object event: %s", self._exchange, e
            )
            await message.reject(requeue=False)
            return
        try:
            await self._route(events)
        except PyfcError as e:
            log.warning("events on %s not accepted, retrying: %s", self._exchange, e.message)
            await asyncio.sleep(RETRY_PAUSE)
            await message.nack(requeue=True)
            return
        await message.ack()

    async def close(self) -> None:
        if not self._channel.is_closed:
            await self._channel.close()
