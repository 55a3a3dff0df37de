"""Sync invocations as RPC over RabbitMQ direct reply-to: no reply queue to declare or leak."""

from __future__ import annotations

import asyncio
import uuid

from aio_pika.abc import AbstractChannel, AbstractExchange
from aiormq.abc import DeliveredMessage
from aiormq.exceptions import AMQPError, ChannelInvalidStateError
from pamqp.commands import Basic

from shared import codec
from shared.broker import consume_fast, invocation_headers, publish_transient
from shared.errors import DeadlineExceeded, Unavailable
from shared.protocol import Invocation, Outcome
from shared.topology import (
    DIRECT_REPLY_TO,
    invoke_routing_key,
)

# What a publish raises while the broker connection is down or being restored.
BROKER_ERRORS = (AMQPError, ChannelInvalidStateError, ConnectionError, RuntimeError)


class RpcClient:
    """Publishes sync invocations and matches replies by correlation id; built by `open`."""

    def __init__(self, channel: AbstractChannel, exchange: AbstractExchange) -> None:
        # Direct reply-to requires publishing on the channel that consumes the pseudo-queue.
        self._channel = channel
        self._exchange = exchange
        self._pending: dict[str, asyncio.Future[Outcome]] = {}

    @classmethod
    async def open(cls, channel: AbstractChannel, exchange: AbstractExchange) -> RpcClient:
        """A client taking replies on `channel` (direct reply-to) from now on."""
        client = cls(channel, exchange)
        await consume_fast(channel, DIRECT_REPLY_TO, client._on_reply, no_ack=True)
        # Direct reply-to is bound to this channel: when it closes, replies to calls sent
        # on it can never arrive. Tell those callers now, not at their deadline.
        channel.close_callbacks.add(client._on_channel_closed)
        return client

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
        correlation_id = uuid.uuid4().hex
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        self._pending[correlation_id] = future
        # A timer handle instead of asyncio.wait_for: no extra task per call on the hot path.
        timer = loop.call_later(timeout, _expire, future)
        properties = Basic.Properties(
            reply_to=DIRECT_REPLY_TO,
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


def _expire(future: asyncio.Future[Outcome]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())
