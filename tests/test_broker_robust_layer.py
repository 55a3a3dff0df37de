"""What shared/broker.py (and the worker) reach for under aio-pika's robust layer.

`consume_fast`, `publish_transient`, `ready` and the worker's sync answer use a robust
channel's `reopen_callbacks`, `ready()` and underlying aiormq channel, and a probe uses the
connection's aiormq transport. Those are aio-pika internals: an upgrade that moves them
must fail here, naming what moved, rather than leave consumers unregistered after the
next reconnect (the `getattr` fallbacks in shared/broker.py would hide it).
"""

from __future__ import annotations

import asyncio
import inspect
import uuid

import aio_pika
import aiormq
from aio_pika.tools import CallbackCollection
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

from shared.broker import connect, consume_fast, publish_transient, ready
from tests.stack import AMQP_URL
from tests.test_e2e_reconnect import close_connections, stack_connections


async def test_the_robust_layer_still_has_what_we_reach_for() -> None:
    connection = await connect(AMQP_URL, f"robust-layer@t{uuid.uuid4().hex[:8]}")
    async with connection:
        channel = await connection.channel()
        assert isinstance(channel, aio_pika.RobustChannel)
        assert isinstance(getattr(channel, "reopen_callbacks", None), CallbackCollection)
        assert inspect.iscoroutinefunction(getattr(channel, "ready", None))
        assert isinstance(channel.close_callbacks, CallbackCollection)
        underlay = await channel.get_underlay_channel()
        assert isinstance(underlay, aiormq.Channel)
        for method in ("basic_publish", "basic_consume", "basic_cancel", "queue_declare"):
            assert callable(getattr(underlay, method, None)), method
        # The worker queues a sync call's slot release without waiting for the write.
        assert "wait" in inspect.signature(underlay.basic_publish).parameters
        transport = connection.transport
        assert transport is not None and isinstance(transport.connection, aiormq.Connection)


async def test_a_fast_consumer_comes_back_after_the_broker_closes_the_connection() -> None:
    namespace = f"t{uuid.uuid4().hex[:10]}"
    connection = await connect(AMQP_URL, f"robust-layer@{namespace}")
    async with connection:
        reconnected = asyncio.Event()
        connection.reconnect_callbacks.add(lambda *_: reconnected.set())
        channel = await connection.channel(publisher_confirms=False)
        # Not auto-delete: a message sent before the consumer is back waits for it.
        queue = await channel.declare_queue(f"{namespace}.q")
        got: asyncio.Queue[bytes] = asyncio.Queue()

        async def on_message(message: DeliveredMessage) -> None:
            await got.put(message.body)

        async def send(body: bytes) -> None:
            await ready(channel)
            await publish_transient(
                channel, body, exchange="", routing_key=queue.name, properties=Basic.Properties()
            )

        try:
            await consume_fast(channel, queue.name, on_message, no_ack=True)
            await send(b"before")
            assert await asyncio.wait_for(got.get(), 10) == b"before"
            pids = await asyncio.to_thread(stack_connections, namespace, "robust-layer")
            assert len(pids) == 1, pids
            await asyncio.to_thread(close_connections, pids)
            await asyncio.wait_for(reconnected.wait(), 30)
            # Re-registered by the channel's reopen callback; `ready` waits for the channel.
            await send(b"after")
            assert await asyncio.wait_for(got.get(), 30) == b"after"
        finally:
            await ready(channel)
            await queue.delete(if_unused=False, if_empty=False)
