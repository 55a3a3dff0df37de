"""What worker affinity relies on from RabbitMQ (3.10, classic queues), checked on the real
broker: work a worker's queue holds past its TTL falls back to the shared work queue,
whether nobody consumes it, its consumer's prefetch is full, or its consumer died holding
it (requeued messages keep their original expiry); the fallen-back copy is not marked
redelivered but names the queue it expired from; and a passive declare tells whether the
queue still has its consumer.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from shared.topology import Topology, declare_affinity, declare_work
from tests.stack import AMQP_URL
from worker.affinity import fell_back_from

TTL_MS = 300
# `sent` is taken once the publish is written, a little after the broker's TTL clock starts.
SLACK = 0.05

# A consumer of the affinity queue in its own process (so it can be SIGKILLed), with one
# global prefetch slot like a worker's channel; it never acks.
HOLDER = """
import asyncio, sys, aio_pika
async def main():
    connection = await aio_pika.connect(sys.argv[1])
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=1, global_=True)
    queue = await channel.get_queue(sys.argv[2], ensure=False)
    async def hold(message):
        print("holding", message.body.decode(), flush=True)
    await queue.consume(hold)
    print("consuming", flush=True)
    await asyncio.Future()
asyncio.run(main())
"""


class Shared:
    """Messages arriving on the shared work queue, with when they arrived."""

    def __init__(self, queue: AbstractQueue) -> None:
        self.queue = queue
        self.arrived: asyncio.Queue[tuple[AbstractIncomingMessage, float]] = asyncio.Queue()

    async def start(self) -> None:
        async def on_message(message: AbstractIncomingMessage) -> None:
            await message.ack()
            await self.arrived.put((message, time.monotonic()))

        await self.queue.consume(on_message)

    async def next(self) -> tuple[AbstractIncomingMessage, float]:
        return await asyncio.wait_for(self.arrived.get(), 10)


@pytest.fixture
async def setup() -> AsyncIterator[tuple[Topology, AbstractChannel, Shared]]:
    topo = Topology(f"t{uuid.uuid4().hex[:10]}")
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        shared = Shared(await declare_work(channel, topo))
        await declare_affinity(channel, topo, "w-1", TTL_MS)
        await shared.start()
        try:
            yield topo, channel, shared
        finally:
            await channel.queue_delete(topo.affinity_queue("w-1"))
            await channel.queue_delete(topo.work_queue)


async def publish(channel: AbstractChannel, topo: Topology, body: str) -> float:
    await channel.default_exchange.publish(
        aio_pika.Message(body.encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
        routing_key=topo.affinity_queue("w-1"),
    )
    return time.monotonic()


async def consumers(channel: AbstractChannel, name: str) -> int:
    underlay = await channel.get_underlay_channel()
    ok = await underlay.queue_declare(name, passive=True)
    return int(ok.consumer_count or 0)


async def test_work_nobody_takes_falls_back_after_the_ttl(
    setup: tuple[Topology, AbstractChannel, Shared],
) -> None:
    topo, channel, shared = setup
    sent = await publish(channel, topo, "lonely")
    message, arrived = await shared.next()
    assert message.body == b"lonely"
    assert TTL_MS / 1000 - SLACK <= arrived - sent < TTL_MS / 1000 + 1.0
    assert not message.redelivered
    assert fell_back_from(message.headers, topo.affinity_queue("")) == topo.affinity_queue("w-1")


async def test_a_full_consumer_and_a_dead_one(
    setup: tuple[Topology, AbstractChannel, Shared],
) -> None:
    topo, channel, shared = setup
    name = topo.affinity_queue("w-1")
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLDER, AMQP_URL, name, stdout=asyncio.subprocess.PIPE
    )
    assert holder.stdout is not None
    try:
        assert await asyncio.wait_for(holder.stdout.readline(), 30) == b"consuming\n"
        assert await consumers(channel, name) == 1
        await publish(channel, topo, "taken")
        assert await asyncio.wait_for(holder.stdout.readline(), 10) == b"holding taken\n"
        # Its one prefetch slot is full: the next waits out the TTL, then falls back.
        sent = await publish(channel, topo, "waited")
        message, arrived = await shared.next()
        assert message.body == b"waited"
        assert arrived - sent >= TTL_MS / 1000 - SLACK
        # "taken" is held unacked past its TTL: it does not expire while its consumer lives.
        assert shared.arrived.empty()
        holder.send_signal(signal.SIGKILL)
        await holder.wait()
        killed = time.monotonic()
        message, arrived = await shared.next()
        assert message.body == b"taken"
        assert arrived - killed < 1.0  # returned with its old expiry: falls back at once
        assert not message.redelivered  # so the broker's flag cannot tell it ran
        assert fell_back_from(message.headers, topo.affinity_queue("")) == name
        assert await consumers(channel, name) == 0  # but this can
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()


async def test_work_turned_away_falls_back_at_once_as_rejected(
    setup: tuple[Topology, AbstractChannel, Shared],
) -> None:
    topo, channel, shared = setup
    queue = await channel.get_queue(topo.affinity_queue("w-1"), ensure=False)

    async def turn_away(message: AbstractIncomingMessage) -> None:
        await message.reject(requeue=False)

    await queue.consume(turn_away)
    sent = await publish(channel, topo, "bounced")
    message, arrived = await shared.next()
    assert message.body == b"bounced"
    assert arrived - sent < TTL_MS / 1000
    assert fell_back_from(message.headers, topo.affinity_queue("")) is None
