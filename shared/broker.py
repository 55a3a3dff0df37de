"""Connecting to RabbitMQ: robust connections with explicit timeouts and clear errors."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractRobustConnection, FieldValue
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

from shared import codec
from shared.cluster import ClusterConnection, node_urls, redact
from shared.errors import BadRequest, Unavailable
from shared.parts import Part
from shared.protocol import Invocation
from shared.topology import HDR_HOPS, HDR_KIND, HDR_TENANT, HDR_TRACEPARENT

log = logging.getLogger(f"pyfc.{__name__}")

CONNECT_TIMEOUT = 10.0
RECONNECT_INTERVAL = 1.0
READY_TIMEOUT = 30.0
# A confirmed publish waits at most this long for the broker's confirm.
PUBLISH_TIMEOUT = 10.0

T = TypeVar("T")


async def connect(
    url: str, name: str, timeout: float = CONNECT_TIMEOUT
) -> AbstractRobustConnection:
    """A robust (auto-reconnecting) connection, or `Unavailable` saying where we tried.

    `url` names one RabbitMQ node or several (a cluster, comma-separated): the first that
    answers is used, and a reconnect goes to the next (`shared.cluster`).
    """
    try:
        urls = node_urls(url)
    except BadRequest as e:
        raise Unavailable(e.message) from e
    failures = []
    for start in range(len(urls)):
        # Retry every second (aio-pika's default is 5 s): a broker restart or a node lost
        # costs callers about as long as the restart or the failover itself.
        connection = ClusterConnection(
            [*urls[start:], *urls[:start]],
            reconnect_interval=RECONNECT_INTERVAL,
            client_properties={"connection_name": name},
        )
        try:
            await connection.connect(timeout=timeout)
            return connection
        except (TimeoutError, OSError, aio_pika.exceptions.AMQPError) as e:
            await connection.close()
            failures.append(f"{redact(urls[start])} ({type(e).__name__}: {e})")
    raise Unavailable(
        f"cannot reach RabbitMQ at {'; '.join(failures)}; is it running? start it with "
        "`rabbitmq-server -detached` or set PYFC_AMQP_URL"
    )


def invocation_headers(inv: Invocation) -> dict[str, FieldValue]:
    """The AMQP headers every invocation message carries (visible to the broker's tools)."""
    headers: dict[str, FieldValue] = {
        HDR_TENANT: inv.tenant,
        HDR_HOPS: inv.lineage.hops,
        HDR_KIND: inv.kind,
    }
    if inv.traceparent:
        headers[HDR_TRACEPARENT] = inv.traceparent
    return headers


def persistent_invocation(inv: Invocation, **headers: FieldValue) -> aio_pika.Message:
    """An async invocation as a persistent message (id = request id), `headers` added."""
    return aio_pika.Message(
        codec.encode(inv),
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=inv.id,
        headers={**invocation_headers(inv), **headers},
    )


async def publish_transient(
    channel: AbstractChannel,
    body: bytes,
    *,
    exchange: str,
    routing_key: str,
    properties: Basic.Properties,
) -> None:
    """Publish below aio-pika on the sync hot path (no confirm, not persistent).

    aio-pika's `Message` costs ~17 us to build per publish, a tenth of a role's share of
    a warm sync call; the pamqp properties it ends up as cost ~1 us. Fails at once on a
    closed channel, as aio-pika's publish does (a robust channel's underlay would wait
    for the reconnect instead).
    """
    if channel.is_closed:
        raise aiormq.exceptions.ChannelInvalidStateError(f"{channel} is closed")
    underlay = await channel.get_underlay_channel()
    await underlay.basic_publish(
        body, exchange=exchange, routing_key=routing_key, properties=properties
    )


RawHandler = Callable[[DeliveredMessage], Coroutine[Any, Any, None]]


class Consumer:
    """A `consume_fast` registration: re-made after every reconnect until cancelled."""

    def __init__(self, channel: AbstractChannel, queue: str, handler: RawHandler, no_ack: bool):
        self.channel = channel
        self.queue = queue
        self._handler = handler
        self._no_ack = no_ack
        self._tag: str | None = None
        self._cancelled = False
        # Set while the broker knows this consumer: from its registration until its
        # channel closes (a lost connection), set again once re-registered.
        self.registered = asyncio.Event()

    async def register(self, *_: object) -> None:
        if self._cancelled:
            return
        underlay = await self.channel.get_underlay_channel()
        ok = await underlay.basic_consume(self.queue, self._handler, no_ack=self._no_ack)
        self._tag = ok.consumer_tag
        self.registered.set()

    def unregistered(self, *_: object) -> None:
        self.registered.clear()

    async def cancel(self) -> None:
        """Take no more deliveries (those already taken stay ours to settle)."""
        self._cancelled = True
        tag, self._tag = self._tag, None
        if tag is None or self.channel.is_closed:
            return
        underlay = await self.channel.get_underlay_channel()
        await underlay.basic_cancel(tag)


async def consume_fast(
    channel: AbstractChannel, queue: str, handler: RawHandler, *, no_ack: bool = False
) -> Consumer:
    """Consume `queue` below aio-pika's per-message wrapper on the hot paths.

    aio-pika wraps every delivery in an IncomingMessage and a second task (aiormq already
    runs each in one); measured at ~0.05 ms of CPU per delivery per role. A robust channel
    restores only consumers aio-pika registered itself, so this one is re-registered from
    the channel's reopen callback after a reconnect.
    """
    return await keep_consuming(Consumer(channel, queue, handler, no_ack))


async def keep_consuming(consumer: Consumer) -> Consumer:
    """Register `consumer`, and again whenever its robust channel is reopened."""
    await consumer.register()
    consumer.channel.close_callbacks.add(consumer.unregistered)
    reopen = getattr(consumer.channel, "reopen_callbacks", None)
    if reopen is not None:
        reopen.add(consumer.register)
    return consumer


class Detached:
    """A delivery handler run in tasks of our own instead of the channel's.

    aiormq runs each delivery's handler in a task that belongs to the channel, and cancels
    it when the channel closes (a broker restart, a lost connection). A handler that keeps
    state across awaits beyond its delivery (a concurrency slot taken, a routing in flight
    that redelivered copies wait on, a function running on an instance) must not be cut
    off between two of them: it runs to its end, and finds its delivery's channel closed
    when it settles (the broker has given the message back: `settle` then does nothing).
    Tasks start in delivery order, as the channel's own would.
    """

    def __init__(self, handler: RawHandler) -> None:
        self._handler = handler
        self.running: set[asyncio.Task[None]] = set()

    async def __call__(self, message: DeliveredMessage) -> None:
        task = asyncio.create_task(self._handler(message))
        self.running.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.running.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("consumer callback failed", exc_info=error)

    async def finish(self, timeout: float) -> int:
        """Wait up to `timeout` seconds for the running handlers; how many are left."""
        if self.running and timeout > 0:
            await asyncio.wait(set(self.running), timeout=timeout)
        return len(self.running)


async def ready(channel: AbstractChannel, timeout: float = READY_TIMEOUT) -> None:
    """Wait until a robust channel is usable again after a reconnect.

    A robust connection restores its channels one by one: a consumer on the first one
    can receive deliveries before the channel it publishes answers on is back, and a
    publish there fails at once. Waiting here turns that race into a short delay.
    """
    if channel.is_closed:
        waiter = getattr(channel, "ready", None)
        if waiter is None:
            return
        await asyncio.wait_for(waiter(), timeout)


# A delivery, or one invocation of a batch delivery (acked when all its parts are).
Delivery = DeliveredMessage | Part


@dataclass(frozen=True, slots=True)
class Settlement:
    """What becomes of a delivery once its handler is done.

    Handlers decide and return one; each consumer has one settle step that does it
    (dramatiq's `post_process_message`), so the places that ack or give a message back
    are one per role, not one per outcome:

    - ack: done with (ran, answered, recorded, or refused for good);
    - requeue: given back to its queue, after `pause` seconds so an outage is not a
      hot loop (a redelivery runs it again: at least once);
    - reject: not requeued (dead-lettered where its queue has a dead-letter exchange,
      else dropped): bytes that cannot decode, or work a leaving worker turns away;
    - hold: left unacked; whoever took it over settles it later (the dispatcher's work
      waiting for a slot, a batch delivery settled by its parts);
    - attach: the dispatcher's redelivered copy of an invocation whose routing is in
      flight (`request_id`): settled with that routing.

    `request_id` on an ack or requeue: the redelivered copies attached to that routing are
    settled the same way.
    """

    action: Literal["ack", "requeue", "reject", "hold", "attach"]
    pause: float = 0.0
    request_id: str = ""


ACK = Settlement("ack")
REJECT = Settlement("reject")
HOLD = Settlement("hold")


def requeue_after(pause: float, request_id: str = "") -> Settlement:
    return Settlement("requeue", pause, request_id)


async def settle(message: Delivery, how: Settlement = ACK) -> None:
    """Ack, requeue or reject `message` on the channel it came from (no pause: the
    caller's settle step waits first).

    If that channel is gone the broker already returned the message to its queue, so
    there is nothing left to settle (and its delivery tag means nothing on a new channel).
    """
    if how.action not in ("ack", "requeue", "reject"):
        raise ValueError(f"a delivery to {how.action} is not settled now")
    tag = message.delivery_tag
    if tag is None or message.channel.is_closed:
        log.warning("channel closed before settling delivery %s", tag)
        return
    if how.action == "ack":
        await message.channel.basic_ack(tag)
    else:
        await message.channel.basic_reject(tag, requeue=how.action == "requeue")


def decode_body(message: DeliveredMessage, kind: type[T]) -> T | None:
    """Decode a delivery as `kind`; an undecodable one is logged and None (its handler
    rejects it, never requeues it: bytes that cannot decode would loop forever)."""
    try:
        return codec.decode(message.body, kind)
    except BadRequest as e:
        log.error(
            "dropping undecodable %s message (%d bytes): %s", kind.__name__, len(message.body), e
        )
        return None
