"""PYFC_AMQP_URL with several node URLs: a role connects to the first that answers, and
when its node goes away it reconnects to another and goes on consuming and publishing."""

from __future__ import annotations

import asyncio
import uuid

import aio_pika
import aiohttp
import pytest
from aio_pika.abc import AbstractIncomingMessage

from shared.broker import connect
from shared.cluster import ClusterConnection, node_urls
from shared.errors import BadRequest, Unavailable
from tests.conftest import Client, StartStack
from tests.helpers import deploy, invoke, wait_result
from tests.stack import AMQP_URL, free_port
from tests.tcpproxy import TcpProxy

A = "amqp://u:p@rabbit-0:5672/"
B = "amqp://u:p@rabbit-1/"


@pytest.mark.parametrize(
    ("value", "urls"),
    [
        (A, [A]),
        (f"{A},{B}", [A, B]),
        (f" {A} , {B},", [A, B]),
        (f"{A}\n{B}", [A, B]),
        ("amqps://u:p%2Cq@rabbit-0:5671/vh", ["amqps://u:p%2Cq@rabbit-0:5671/vh"]),
    ],
)
def test_node_urls(value: str, urls: list[str]) -> None:
    assert node_urls(value) == urls


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("", "empty"),
        (" , ", "empty"),
        (f"{A},http://rabbit-1/", "'http://rabbit-1/' is not an amqp://"),
        ("amqp://u:secret@/", "is not an amqp://"),
    ],
)
def test_bad_node_urls_are_refused(value: str, error: str) -> None:
    with pytest.raises(BadRequest, match=error) as raised:
        node_urls(value)
    assert "secret" not in raised.value.message


async def test_the_first_node_that_answers_is_used() -> None:
    dead = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    connection = await connect(f"{dead},{AMQP_URL}", "pyfc-test", timeout=5)
    try:
        assert isinstance(connection, ClusterConnection)
        assert connection.node == "127.0.0.1:5672"
    finally:
        await connection.close()


async def test_no_node_answering_names_each_without_passwords() -> None:
    ports = [free_port(), free_port()]
    urls = ",".join(f"amqp://guest:sekrit@127.0.0.1:{port}/" for port in ports)
    with pytest.raises(Unavailable) as raised:
        await connect(urls, "pyfc-test", timeout=2)
    message = raised.value.message
    assert all(f"127.0.0.1:{port}" in message for port in ports), message
    assert "sekrit" not in message


async def test_a_lost_node_fails_over_and_consumers_resume() -> None:
    """Two addresses of the broker (loopback forwarders): the one in use is cut, as a node
    dying cuts its clients; the connection moves to the other, its robust channel
    declares and consumes again, and a publish there reaches the consumer."""
    first, second = await TcpProxy(5672).start(), await TcpProxy(5672).start()
    connection = await connect(f"{first.url()},{second.url()}", "pyfc-test", timeout=5)
    assert isinstance(connection, ClusterConnection)
    name = f"failover-{uuid.uuid4().hex[:8]}"
    got: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_message(message: AbstractIncomingMessage) -> None:
        await message.ack()
        await got.put(message.body)

    try:
        assert connection.node == f"127.0.0.1:{first.port}"
        channel = await connection.channel(publisher_confirms=True)
        queue = await channel.declare_queue(name, durable=True)
        await queue.consume(on_message)
        await channel.default_exchange.publish(aio_pika.Message(b"before"), routing_key=name)
        assert await asyncio.wait_for(got.get(), 10) == b"before"
        reconnected = asyncio.Event()
        connection.reconnect_callbacks.add(lambda *_: reconnected.set())
        loop = asyncio.get_running_loop()
        cut_at = loop.time()
        await first.cut()
        await asyncio.wait_for(reconnected.wait(), 15)
        failover = loop.time() - cut_at
        assert connection.node == f"127.0.0.1:{second.port}"
        assert second.accepted == 1
        # Within two reconnect intervals (1 s each) and the reconnect itself.
        assert failover < 5, failover
        await channel.default_exchange.publish(aio_pika.Message(b"after"), routing_key=name)
        assert await asyncio.wait_for(got.get(), 10) == b"after"
    finally:
        cleanup = await aio_pika.connect(AMQP_URL)
        async with cleanup:
            await (await cleanup.channel()).queue_delete(name)
        await connection.close()
        await first.close()
        await second.close()


async def test_a_stack_takes_several_urls(fresh_stack: StartStack) -> None:
    dead = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    stack = fresh_stack(workers=1, env={"PYFC_AMQP_URL": f"{dead},{AMQP_URL}"})
    _, key = stack.create_tenant()
    async with aiohttp.ClientSession() as session:
        client = Client(session, stack.url, key)
        service, function = await deploy(client)
        assert (await invoke(client, service, function, b"sync"))[2] == b"sync"
        status, headers, body = await invoke(
            client, service, function, b"async", X_Fc_Invocation_Type="Async"
        )
        assert status == 202, body
        rec = await wait_result(client, service, function, headers["X-Fc-Request-Id"])
        assert rec["result"] == "async"
