"""The MQ source (`pyfc trigger mq`): every message published to a trigger's exchange
becomes an async invocation of its function.

Each enabled trigger has one durable queue of its own, `{namespace}.trigger.mq.<id>`,
bound to its exchange with its routing-key pattern, on the platform's broker or on the
tenant's (`amqpUrl`). Every replica of this process consumes every trigger's queue (the
broker shares the messages out), with a bounded prefetch, so a slow function's backlog
waits in the broker, not in our memory. For each message (or batch, flushed at
`batchSize` messages or `batchWindowSeconds` after its first, whichever comes first):

1. derive the request id from the message (`triggers/mq_event.py`), so a redelivered
   message is the same invocation, marked `once`: the dispatcher runs its first copy only;
2. accept the invocation (recorded, published with a confirm) through the Emitter,
   retrying with backoff while the store or broker is down (the messages stay unacked);
3. ack the messages. A process that dies before 3 leaves them unacked: the broker
   gives them to another replica, which accepts the same ids again.

A message that cannot become an invocation (larger than the event limit) is rejected to
the trigger's dead-letter queue `<queue>.dlq` and counted. Disabling a trigger stops its
consumer (messages wait in the queue and run on re-enable); deleting it deletes the queues.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
    FieldValue,
)

from shared.broker import connect
from shared.cluster import redact
from shared.errors import NotFound, PyfcError
from shared.protocol import Lineage
from shared.settings import Settings
from shared.store import Store
from shared.topology import Topology, declare_durable
from shared.trigger_types import Limits, MqConfig, check_exchange
from triggers.adapter import ActiveTrigger, Emitter, event_id
from triggers.metrics import TriggerMetrics
from triggers.mq_event import Message, batch_event, batch_key, chain, event_size

log = logging.getLogger(f"pyfc.{__name__}")

KIND = "mq"
RETRY_FIRST, RETRY_MAX = 0.2, 5.0
# A trigger whose broker or exchange cannot be reached now is tried again this often.
RESTART_SECONDS = 5.0
STOP_GRACE = 10.0
CONNECT_TIMEOUT = 5.0


def queue_name(namespace: str, trigger_id: str) -> str:
    return f"{namespace}.trigger.mq.{trigger_id}"


def dead_letter_name(namespace: str, trigger_id: str) -> str:
    return f"{queue_name(namespace, trigger_id)}.dlq"


def message_of(incoming: AbstractIncomingMessage) -> Message:
    """Decode at the edge: the message's fields, no broker objects past here."""
    props: dict[str, Any] = dict(incoming.info())
    for broker_only in ("body_size", "delivery_tag", "redelivered", "exchange", "routing_key"):
        props.pop(broker_only, None)
    props.pop("consumer_tag", None)
    return Message(
        body=incoming.body,
        exchange=incoming.exchange or "",
        routing_key=incoming.routing_key or "",
        delivery_tag=incoming.delivery_tag or 0,
        redelivered=bool(incoming.redelivered),
        message_id=incoming.message_id or "",
        headers=dict(incoming.headers or {}),
        properties={k: v for k, v in props.items() if v not in (None, {}, "")},
    )


@dataclass(slots=True)
class _Consumer:
    """One trigger's queue consumer and the batch it is gathering."""

    active: ActiveTrigger
    channel: AbstractChannel
    queue: AbstractQueue
    emitter: Emitter
    metrics: TriggerMetrics
    max_event_bytes: int
    tag: str = ""
    pending: list[tuple[Message, AbstractIncomingMessage]] = field(default_factory=list)
    pending_bytes: int = 0
    flush_at: asyncio.TimerHandle | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    stopping: bool = False

    @property
    def config(self) -> MqConfig:
        config: MqConfig = self.active.config
        return config

    async def on_message(self, incoming: AbstractIncomingMessage) -> None:
        message = message_of(incoming)
        size = len(message.body) if self.config.batch_size == 1 else event_size(message)
        if size > self.max_event_bytes:
            # Never an invocation: parked in the trigger's dead-letter queue, counted.
            log.warning(
                "%s: a %d-byte message exceeds the %d-byte event limit; dead-lettered",
                self.active.label,
                len(message.body),
                self.max_event_bytes,
            )
            self.metrics.dead_lettered.labels(KIND, self.active.tenant).inc()
            with contextlib.suppress(Exception):
                await incoming.reject(requeue=False)
            return
        if self.config.batch_size == 1:
            await self._deliver([(message, incoming)])
            return
        if self.pending and self.pending_bytes + size > self.max_event_bytes:
            self._flush()
        self.pending.append((message, incoming))
        self.pending_bytes += size
        if len(self.pending) >= self.config.batch_size:
            self._flush()
        elif self.flush_at is None:
            loop = asyncio.get_running_loop()
            self.flush_at = loop.call_later(self.config.batch_window_seconds, self._flush)

    def _flush(self) -> None:
        if self.flush_at is not None:
            self.flush_at.cancel()
            self.flush_at = None
        batch, self.pending, self.pending_bytes = self.pending, [], 0
        if batch:
            task = asyncio.create_task(self._deliver(batch))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _deliver(self, batch: list[tuple[Message, AbstractIncomingMessage]]) -> None:
        """Accept the batch's invocation (retrying while the platform is down), then ack."""
        messages = [m for m, _ in batch]
        request_id = event_id(self.active.trigger_id, batch_key(messages))
        trace, hops = chain(messages)
        t = self.active.trigger
        inv = self.emitter.invocation(
            self.active,
            messages[0].body if self.config.batch_size == 1 else batch_event(messages),
            request_id,
            once=True,
            lineage=Lineage(trace_id=trace or request_id, hops=hops, origin=f"mq:{t.trigger_name}"),
        )
        delay = RETRY_FIRST
        started = time.monotonic()
        while True:
            try:
                # again: a redelivered message's id may be recorded already.
                await self.emitter.emit(self.active, inv, again=True)
                break
            except Exception as e:
                if self.channel.is_closed or self.stopping:
                    return  # the broker gives the messages back; their ids stay the same
                log.warning(
                    "%s: cannot accept invocation %s (retrying in %.1fs): %s",
                    self.active.label,
                    request_id,
                    delay,
                    e,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
        self.metrics.lag.labels(KIND).observe(time.monotonic() - started)
        for _, incoming in batch:
            try:
                await incoming.ack()
            except Exception as e:  # channel gone: redelivered, the same id runs once
                log.info("%s: ack after accept failed (%s); redelivery is deduplicated", t, e)
                return

    async def stop(self) -> None:
        """Take no more messages, finish accepting those taken, give back the rest."""
        if self.tag and not self.channel.is_closed:
            with contextlib.suppress(Exception):
                await self.queue.cancel(self.tag)
        self._flush()
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=STOP_GRACE)
        self.stopping = True
        for task in list(self.tasks):
            task.cancel()
        if not self.channel.is_closed:
            with contextlib.suppress(Exception):
                await self.channel.close()


class MqSource:
    kind = KIND

    def __init__(self, settings: Settings, store: Store, emitter: Emitter, metrics: TriggerMetrics):
        self._settings = settings
        self._store = store
        self._emitter = emitter
        self._metrics = metrics
        self._brokers: dict[str, AbstractRobustConnection] = {}
        self._consumers: dict[str, _Consumer] = {}
        # Triggers that could not start (broker or exchange unreachable): tried again.
        self._waiting: dict[str, ActiveTrigger] = {}
        self._lock = asyncio.Lock()
        self._restarts = asyncio.create_task(self._restart_forever())

    async def sync(self, changed: list[ActiveTrigger], removed: list[str]) -> None:
        async with self._lock:
            for trigger_id in removed:
                self._waiting.pop(trigger_id, None)
                consumer = self._consumers.pop(trigger_id, None)
                if consumer is not None:
                    await consumer.stop()
                    log.info("%s: consumer stopped", consumer.active.label)
                    if await self._deleted(consumer.active):
                        await self._delete_queues(consumer.active)
            for active in changed:
                self._waiting.pop(active.trigger_id, None)
                old = self._consumers.pop(active.trigger_id, None)
                if old is not None:
                    await old.stop()
                    await self._unbind_if_moved(old.active, active)
                await self._start(active)
            self._metrics.triggers.labels(KIND).set(len(self._consumers))

    async def _start(self, active: ActiveTrigger) -> None:
        try:
            self._consumers[active.trigger_id] = await self._consume(active)
            log.info("%s: consuming %s", active.label, queue_name(self._ns, active.trigger_id))
        except PyfcError as e:
            log.error("%s: not served: %s", active.label, e.message)
        except Exception as e:  # broker unreachable, exchange refused: tried again later
            log.warning("%s: cannot consume yet (%s: %s)", active.label, type(e).__name__, e)
            self._waiting[active.trigger_id] = active

    @property
    def _ns(self) -> str:
        return self._settings.namespace

    async def _consume(self, active: ActiveTrigger) -> _Consumer:
        config: MqConfig = active.config
        if not config.amqp_url:
            # Checked when it was stored; again in case the namespace or allow-list changed.
            check_exchange(
                config.exchange,
                Limits(
                    max_event_bytes=0,
                    namespace=self._ns,
                    mq_exchanges=self._settings.mq_exchange_patterns,
                    tenant=active.tenant,
                ),
            )
        connection = await self._broker(config.amqp_url)
        await _ensure_exchange(connection, config.exchange)
        channel = await connection.channel()
        try:
            await channel.set_qos(prefetch_count=max(config.batch_size, self._settings.mq_prefetch))
            topo = Topology(self._ns, self._settings.queue_type)
            queue = await _declare_queues(channel, topo, active.trigger_id)
            await queue.bind(config.exchange, routing_key=config.routing_key)
            consumer = _Consumer(
                active, channel, queue, self._emitter, self._metrics, self._settings.max_event_bytes
            )
            consumer.tag = await queue.consume(consumer.on_message)
        except BaseException:
            with contextlib.suppress(Exception):
                await channel.close()
            raise
        return consumer

    async def _broker(self, url: str) -> AbstractRobustConnection:
        url = url or self._settings.amqp_url
        found = self._brokers.get(url)
        if found is None or found.is_closed:
            found = await connect(url, f"pyfc-trigger-mq@{self._ns}", timeout=CONNECT_TIMEOUT)
            self._brokers[url] = found
        return found

    async def _deleted(self, active: ActiveTrigger) -> bool:
        """Removed because deleted (not disabled): its queues go too."""
        t = active.trigger
        try:
            current = await self._store.get_trigger(
                active.tenant, t.service_name, t.function_name, t.trigger_name
            )
        except NotFound:
            return True
        except PyfcError as e:
            log.warning("%s: cannot tell whether it was deleted: %s", active.label, e.message)
            return False
        return current.trigger_id != t.trigger_id

    async def _delete_queues(self, active: ActiveTrigger) -> None:
        config: MqConfig = active.config
        try:
            connection = await self._broker(config.amqp_url)
            channel = await connection.channel()
            async with channel:
                for name in (
                    queue_name(self._ns, active.trigger_id),
                    dead_letter_name(self._ns, active.trigger_id),
                ):
                    await channel.queue_delete(name)
            log.info("%s: deleted; its queues are gone", active.label)
        except Exception as e:
            log.warning("%s: deleted, but its queues stay (%s)", active.label, e)

    async def _unbind_if_moved(self, old: ActiveTrigger, new: ActiveTrigger) -> None:
        """A changed exchange or pattern: the old binding goes (same broker only)."""
        before: MqConfig = old.config
        after: MqConfig = new.config
        if (before.exchange, before.routing_key) == (after.exchange, after.routing_key):
            return
        if before.amqp_url != after.amqp_url:
            return
        try:
            channel = await (await self._broker(before.amqp_url)).channel()
            async with channel:
                queue = await channel.get_queue(queue_name(self._ns, old.trigger_id), ensure=False)
                await queue.unbind(before.exchange, routing_key=before.routing_key)
        except Exception as e:
            log.warning("%s: cannot remove its old binding (%s)", old.label, e)

    async def _restart_forever(self) -> None:
        while True:
            await asyncio.sleep(RESTART_SECONDS)
            async with self._lock:
                for trigger_id, active in list(self._waiting.items()):
                    del self._waiting[trigger_id]
                    await self._start(active)
                self._metrics.triggers.labels(KIND).set(len(self._consumers))

    async def close(self) -> None:
        self._restarts.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._restarts
        async with self._lock:
            for consumer in list(self._consumers.values()):
                await consumer.stop()
            self._consumers.clear()
        for url, connection in self._brokers.items():
            try:
                await connection.close()
            except Exception as e:
                log.info("closing the connection to %s: %s", redact(url), e)


async def _ensure_exchange(connection: AbstractRobustConnection, exchange: str) -> None:
    """A topic exchange unless one of that name exists already (of whatever type)."""
    channel = await connection.channel()
    try:
        await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
    except aio_pika.exceptions.ChannelPreconditionFailed:
        pass  # exists with another type or arguments: bind to it as it is
    finally:
        if not channel.is_closed:
            await channel.close()


async def _declare_queues(
    channel: AbstractChannel, topo: Topology, trigger_id: str
) -> AbstractQueue:
    dead = dead_letter_name(topo.namespace, trigger_id)
    await declare_durable(channel, topo, dead)
    arguments: dict[str, FieldValue] = {
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": dead,
    }
    return await declare_durable(channel, topo, queue_name(topo.namespace, trigger_id), arguments)
