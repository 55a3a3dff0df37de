"""Sync invocations as RPC over RabbitMQ: replies by direct reply-to (no reply queue to
declare or leak), or on a cluster to an exclusive queue of the gateway's own
(`Topology.reply_queues` says why)."""

from __future__ import annotations

import asyncio
import uuid

from aio_pika.abc import AbstractChannel, AbstractExchange
from aiormq.abc import DeliveredMessage
from aiormq.exceptions import AMQPError, ChannelInvalidStateError
from pamqp.commands import Basic

from shared import codec
from shared.broker import (
    Consumer,
    RawHandler,
    consume_fast,
    invocation_headers,
    keep_consuming,
    publish_transient,
)
from shared.errors import DeadlineExceeded, Unavailable
from shared.protocol import Invocation, Outcome
from shared.topology import (
    DIRECT_REPLY_TO,
    invoke_routing_key,
)

# How long a call waits for the reply consumer while the broker connection is restored.
RECONNECT_WAIT = 5.0

# What a publish raises while the broker connection is down or being restored.
BROKER_ERRORS = (AMQPError, ChannelInvalidStateError, ConnectionError, RuntimeError)


class RpcClient:
    """Publishes sync invocations and matches replies by correlation id; built by `open`."""

    def __init__(self, channel: AbstractChannel, exchange: AbstractExchange) -> None:
        # Direct reply-to requires publishing on the channel that consumes the pseudo-queue.
        self._channel = channel
        self._exchange = exchange
        self._pending: dict[str, asyncio.Future[Outcome]] = {}
        self._replies: Consumer | None = None

    @classmethod
    async def open(
        cls, channel: AbstractChannel, exchange: AbstractExchange, reply_queues: str | None = None
    ) -> RpcClient:
        """A client taking replies on `channel` from now on: by direct reply-to, or in an
        exclusive queue named `reply_queues`.<random> if given."""
        client = cls(channel, exchange)
        if reply_queues is None:
            client._replies = await consume_fast(
                channel, DIRECT_REPLY_TO, client._on_reply, no_ack=True
            )
        else:
            client._replies = await keep_consuming(
                ReplyQueue(channel, reply_queues, client._on_reply)
            )
        # Replies come on this channel: when it closes, replies to calls sent on it can
        # never arrive. Tell those callers now, not at their deadline.
        channel.close_callbacks.add(client._on_channel_closed)
        return client

    @property
    def reply_to(self) -> str:
        return self._replies.queue if self._replies is not None else DIRECT_REPLY_TO

    def _on_channel_closed(self, *_: object) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(
                    Unavailable(
                        "the broker connection was lost before the reply arrived; "
                        "the invocation may or may not have run"
                    )
                )

    async def _on_reply(self, message: DeliveredMessage) -> None:
        future = self._pending.pop(message.header.properties.correlation_id or "", None)
        if future is not None and not future.done():
            future.set_result(codec.decode(message.body, Outcome))

    async def call(self, inv: Invocation, timeout: float) -> Outcome:
        """Send `inv` and wait for its outcome, at most `timeout` seconds."""
        if self._replies is not None and not self._replies.registered.is_set():
            await self._replies_back(min(timeout, RECONNECT_WAIT))
        correlation_id = uuid.uuid4().hex
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        self._pending[correlation_id] = future
        # A timer handle instead of asyncio.wait_for: no extra task per call on the hot path.
        timer = loop.call_later(timeout, _expire, future)
        properties = Basic.Properties(
            reply_to=self.reply_to,
            correlation_id=correlation_id,
            headers=invocation_headers(inv),
            delivery_mode=1,
        )
        try:
            try:
                await publish_transient(
                    self._channel,
                    codec.encode(inv),
                    exchange=self._exchange.name,
                    routing_key=invoke_routing_key(inv.tenant),
                    properties=properties,
                )
            except BROKER_ERRORS as e:
                raise Unavailable(f"cannot reach the broker: {type(e).__name__}: {e}") from e
            return await future
        except TimeoutError as e:
            raise DeadlineExceeded(f"no result within {timeout:.1f}s (request {inv.id})") from e
        finally:
            timer.cancel()
            self._pending.pop(correlation_id, None)

    async def _replies_back(self, timeout: float) -> None:
        """Wait for the reply consumer to be registered again after a reconnect.

        While a robust channel is restored (after a lost connection, or its node lost in a
        cluster) it is open before the reply consumer is registered again; a call
        published then asks the broker for a reply to a consumer that does not exist, and
        the broker closes the channel (PRECONDITION_FAILED), which fails the restore and
        the connection starts over. So a call waits for the consumer, briefly (it was not
        sent: nothing can have run), then fails as unavailable.
        """
        assert self._replies is not None
        try:
            await asyncio.wait_for(self._replies.registered.wait(), timeout)
        except TimeoutError:
            raise Unavailable(
                "the broker connection is being restored; try again in a few seconds"
            ) from None


class ReplyQueue(Consumer):
    """A gateway's exclusive reply queue, declared under a new name on every connection.

    A new name each time: the queue of the lost connection may still be known to the
    cluster for a moment (its node is being declared down), and the replies still on their
    way to it are for calls already failed (`_on_channel_closed`). Not durable, not
    quorum: it lives and dies with this connection, like direct reply-to's pseudo-queue.
    """

    def __init__(self, channel: AbstractChannel, prefix: str, handler: RawHandler) -> None:
        super().__init__(channel, "", handler, no_ack=True)
        self._prefix = prefix

    async def register(self, *_: object) -> None:
        underlay = await self.channel.get_underlay_channel()
        name = f"{self._prefix}.{uuid.uuid4().hex[:16]}"
        await underlay.queue_declare(name, exclusive=True, auto_delete=True)
        self.queue = name
        await super().register()


def _expire(future: asyncio.Future[Outcome]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())
