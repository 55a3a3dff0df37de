"""A batch delivery settled part by part: acked after its last part, requeued whole if any
part asks for it; on a real broker queue."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import aiormq
import pytest
from aiormq.abc import DeliveredMessage

from shared.broker import requeue_after, settle
from shared.parts import split
from tests.stack import AMQP_URL


@pytest.fixture
async def broker() -> AsyncIterator[tuple[aiormq.abc.AbstractConnection, str]]:
    connection = await aiormq.connect(AMQP_URL)
    channel = await connection.channel()
    name = f"test-parts-{uuid.uuid4().hex[:8]}"
    await channel.queue_declare(name)
    await channel.basic_publish(b"batch", routing_key=name)
    try:
        yield connection, name
    finally:
        await channel.queue_delete(name)
        await connection.close()


async def deliver(channel: aiormq.abc.AbstractChannel, queue: str) -> DeliveredMessage:
    got: asyncio.Queue[DeliveredMessage] = asyncio.Queue()

    async def on_message(message: DeliveredMessage) -> None:
        await got.put(message)

    ok = await channel.basic_consume(queue, on_message, no_ack=False)
    message = await asyncio.wait_for(got.get(), 5)
    assert ok.consumer_tag is not None
    await channel.basic_cancel(ok.consumer_tag)
    return message


async def ready_after_close(
    connection: aiormq.abc.AbstractConnection, channel: aiormq.abc.AbstractChannel, queue: str
) -> int:
    """Messages ready once `channel` is closed (what it left unacked comes back)."""
    await channel.close()
    probe = await connection.channel()
    declared = await probe.queue_declare(queue, passive=True)
    await probe.close()
    return int(declared.message_count or 0)


@pytest.mark.parametrize(("settled", "ready"), [(3, 0), (2, 1), (0, 1)])
async def test_acked_once_its_last_part_is(
    broker: tuple[aiormq.abc.AbstractConnection, str], settled: int, ready: int
) -> None:
    connection, queue = broker
    channel = await connection.channel()
    parts = split(await deliver(channel, queue), 3)
    for part in parts[:settled]:
        await settle(part)
        await settle(part)  # settling a part twice counts once
    assert await ready_after_close(connection, channel, queue) == ready


async def test_a_part_asking_for_requeue_returns_the_whole_delivery(
    broker: tuple[aiormq.abc.AbstractConnection, str],
) -> None:
    connection, queue = broker
    channel = await connection.channel()
    first, second = split(await deliver(channel, queue), 2)
    await settle(first, requeue_after(0))
    await settle(second)
    again = await deliver(channel, queue)
    assert again.body == b"batch" and again.redelivered
    await settle(again)
    assert await ready_after_close(connection, channel, queue) == 0
