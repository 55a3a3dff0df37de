"""Redelivered invocations: neither lost, nor stranded, nor run again once concluded.

A lost broker connection must not cut an admission in half. aiormq runs a delivery's
handler in a task of the channel and cancels it when the channel closes. A dispatcher
admission cancelled between taking a slot and routing the work kept the slot, and every
redelivered copy of the invocation was taken for a duplicate waiting on a routing that
would never settle it: the invocation never ran and its message sat unacked (the
broker-restart chaos test lost one `WorkBatch` in about 1 run of 10 that way).

A redelivered batch whose parts ran and were recorded since runs only the rest.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import pytest
from aio_pika.abc import AbstractRobustConnection
from aiormq.abc import DeliveredMessage
from prometheus_client import generate_latest

from dispatcher.service import Dispatcher
from shared import codec
from shared.batching import Batcher
from shared.broker import Detached, RawHandler, connect, consume_fast
from shared.models import Function, InvocationRecord, Service
from shared.protocol import Invocation, InvocationBatch, WorkBatch, invocation_bytes
from shared.store import Store
from shared.topology import (
    MSG_INVOKE_BATCH,
    Topology,
    declare_invoke,
    invoke_routing_key,
)
from tests.helpers import async_invocation, enqueue
from tests.instances import eventually
from tests.stack import AMQP_URL, delete_namespace
from tests.test_e2e_reconnect import close_connections, stack_connections


def queue_counts(prefix: str) -> dict[str, tuple[int, int]]:
    """(ready, unacked) of every queue named `prefix...`, as the broker sees them."""
    out = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "name", "messages_ready", "messages_unacknowledged"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    counts = {}
    for line in out.splitlines():
        name, ready, unacked = line.split("\t")
        if name.startswith(prefix):
            counts[name] = (int(ready), int(unacked))
    return counts


@pytest.mark.parametrize("wrap, survives", [(Detached, True), (lambda h: h, False)])
async def test_a_detached_handler_outlives_its_channel(
    wrap: Callable[[RawHandler], RawHandler], survives: bool
) -> None:
    name = f"t{uuid.uuid4().hex[:10]}"
    started, release = asyncio.Event(), asyncio.Event()
    finished: list[bytes] = []
    cancelled: list[bytes] = []

    async def handler(message: DeliveredMessage) -> None:
        started.set()
        try:
            await release.wait()
        except asyncio.CancelledError:
            cancelled.append(message.body)
            raise
        finished.append(message.body)

    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(name, auto_delete=True)
        await consume_fast(channel, name, wrap(handler))
        await channel.default_exchange.publish(aio_pika.Message(b"m"), routing_key=name)
        await asyncio.wait_for(started.wait(), 10)
        await channel.close()  # as a broker restart closes it: its tasks are cancelled
        release.set()
        await eventually(lambda: bool(finished or cancelled))
        assert (finished, cancelled) == (([b"m"], []) if survives else ([], [b"m"]))


@dataclass
class Scratch:
    """An in-process dispatcher on the shared broker, with a store holding acme/s/f."""

    topo: Topology
    store: Store
    connection: AbstractRobustConnection
    dispatcher: Dispatcher

    async def publish_batch(self, batch: InvocationBatch) -> None:
        """Several invocations in one message, as the gateway accepts them."""
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await declare_invoke(channel, self.topo)
            await exchange.publish(
                aio_pika.Message(
                    codec.encode(batch),
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    type=MSG_INVOKE_BATCH,
                ),
                routing_key=invoke_routing_key("acme"),
            )


@pytest.fixture
async def scratch(tmp_path: Path) -> AsyncIterator[Scratch]:
    topo = Topology(f"t{uuid.uuid4().hex[:10]}")
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path}/pyfc.db")
    await store.migrate()
    await store.create_tenant("acme", 10)
    await store.create_service("acme", Service(service_name="s"))
    await store.create_function(
        "acme", "s", Function(function_name="f", service_name="s", code_checksum="0" * 64)
    )
    connection = await connect(AMQP_URL, f"dispatcher@{topo.namespace}")
    dispatcher = await Dispatcher.open(connection, store, topo, retry_steps_ms=[1000])
    try:
        yield Scratch(topo, store, connection, dispatcher)
    finally:
        await dispatcher.close()
        await connection.close()
        await store.close()
        await delete_namespace(topo.namespace)


async def test_a_routing_cut_by_a_lost_connection_is_neither_lost_nor_stranded(
    scratch: Scratch,
) -> None:
    topo, dispatcher = scratch.topo, scratch.dispatcher
    # The work's publish is held until the connection it started on is gone.
    reached, gate = asyncio.Event(), asyncio.Event()
    router = dispatcher._router
    publish = router._publish_work

    async def held_publish(key: tuple[str, str], batch: list[Invocation]) -> None:
        reached.set()
        await gate.wait()
        await publish(key, batch)

    router._work = Batcher(held_publish, invocation_bytes)
    await dispatcher.consume()
    await enqueue(AMQP_URL, topo.namespace, async_invocation("acme", "s", "f"))
    await asyncio.wait_for(reached.wait(), 10)
    pids = await asyncio.to_thread(stack_connections, topo.namespace, "dispatcher")
    assert len(pids) == 1, pids
    await asyncio.to_thread(close_connections, pids)
    prefix = f"{topo.namespace}."

    def redelivered() -> bool:
        counts = queue_counts(prefix)
        return sum(counts.get(q, (0, 0))[1] for q in topo.shard_queues) == 1

    # Reconnected: the invocation is back, held by the dispatcher as a copy of the
    # routing still in flight.
    await eventually(redelivered, within=30)
    gate.set()

    def settled() -> bool:
        counts = queue_counts(prefix)
        shards = [counts.get(q, (0, 0)) for q in topo.shard_queues]
        return counts.get(topo.work_queue) == (1, 0) and all(c == (0, 0) for c in shards)

    # The work went out once and the invocation (both deliveries of it) is settled.
    await eventually(settled, within=30)


async def test_a_redelivered_batch_runs_only_what_was_not_concluded(scratch: Scratch) -> None:
    topo, store = scratch.topo, scratch.store
    ran, retried, fresh = (async_invocation("acme", "s", "f") for _ in range(3))
    for inv in (ran, retried, fresh):
        await store.record_accepted(
            InvocationRecord(
                request_id=inv.id, tenant="acme", service_name="s", qualifier="LATEST",
                function_name="f",
            )
        )  # fmt: skip
    await store.record_outcome(
        "acme", ran.id, status="Succeeded", attempt=1, result=b"", error_type="", error_message=""
    )
    # Attempt 1 failed and attempt 2 is scheduled: this copy of attempt 1 is done with.
    await store.record_outcome(
        "acme", retried.id, status="Enqueued", attempt=1, result=b"", error_type="E",
        error_message="",
    )  # fmt: skip
    # The batch as a broker gives it back after a restart: marked redelivered.
    await scratch.publish_batch(InvocationBatch(invocations=[ran, retried, fresh]))
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        for name in topo.shard_queues:
            queue = await channel.get_queue(name)
            if (message := await queue.get(fail=False)) is not None:
                await message.reject(requeue=True)
        await scratch.dispatcher.consume()
        work = await channel.get_queue(topo.work_queue)
        deadline = time.monotonic() + 10
        while (message := await work.get(fail=False)) is None:
            assert time.monotonic() < deadline, "no work routed"
            await asyncio.sleep(0.05)
        await message.ack()
    assert [inv.id for inv in codec.decode(message.body, WorkBatch).invocations] == [fresh.id]
    metrics = generate_latest(scratch.dispatcher.metrics.registry).decode()
    assert 'pyfc_dispatcher_redelivered_concluded_total{tenant="acme"} 2.0' in metrics
    # The whole batch is acked: nothing left on the shards.
    counts = queue_counts(f"{topo.namespace}.")
    assert all(counts.get(q, (0, 0)) == (0, 0) for q in topo.shard_queues), counts
