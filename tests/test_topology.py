"""Topology declaration: a clear error when the broker's state cannot hold pyfc's names."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from pathlib import Path

import aio_pika
import pytest

from shared.errors import Unavailable
from shared.topology import Topology, declare_invoke
from tests.stack import AMQP_URL


async def test_an_invoke_exchange_of_another_type_is_a_clear_error() -> None:
    topo = Topology(f"t{uuid.uuid4().hex[:10]}")
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        setup = await connection.channel()
        await setup.declare_exchange(
            topo.invoke_exchange, aio_pika.ExchangeType.DIRECT, auto_delete=True
        )
        with pytest.raises(Unavailable, match="exists with another type"):
            await declare_invoke(await connection.channel(), topo)
        await setup.exchange_delete(topo.invoke_exchange)


async def test_the_shards_are_declared_and_bound() -> None:
    topo = Topology(f"t{uuid.uuid4().hex[:10]}")
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        exchange = await declare_invoke(channel, topo)
        try:
            for tenant in ("a", "b", "c", "d", "e", "f", "g", "h"):
                await exchange.publish(aio_pika.Message(tenant.encode()), routing_key=tenant)
            counts = []
            for name in topo.shard_queues:
                queue = await channel.declare_queue(name, durable=True, passive=True)
                counts.append(queue.declaration_result.message_count)
            assert sum(counts) == 8  # every message landed on some shard
        finally:
            for name in topo.shard_queues:
                await channel.queue_delete(name)
            await channel.exchange_delete(topo.invoke_exchange)


async def test_a_role_says_so_in_one_line_and_exits(tmp_path: Path) -> None:
    topo = Topology(f"t{uuid.uuid4().hex[:10]}")
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        setup = await connection.channel()
        await setup.declare_exchange(topo.invoke_exchange, aio_pika.ExchangeType.DIRECT)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("PYFC_")},
            "PYFC_DATA_DIR": str(tmp_path),
            "PYFC_NAMESPACE": topo.namespace,
        }
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "dispatcher", env=env,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            _, err = await asyncio.wait_for(proc.communicate(), 60)
        finally:
            await setup.exchange_delete(topo.invoke_exchange)
    assert proc.returncode == 1
    last = err.decode().strip().splitlines()[-1]
    assert last.startswith("pyfc: exchange") and "delete_exchange" in last, err.decode()


async def test_names_chosen_for_one_shard_land_on_one_shard_of_a_stack() -> None:
    """tests.helpers.same_shard_names predicts the shard queue of a real declared topology
    (the fairness tests rely on it to put two tenants on one shard every run)."""
    from tests.helpers import same_shard_names

    names = await same_shard_names(3)
    topo = Topology(f"t{uuid.uuid4().hex[:10]}")
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await declare_invoke(channel, topo)
        try:
            for name in names:
                await exchange.publish(aio_pika.Message(name.encode()), routing_key=name)
            counts = []
            for name in topo.shard_queues:
                queue = await channel.declare_queue(name, durable=True, passive=True)
                counts.append(queue.declaration_result.message_count)
            assert sorted(counts) == [0] * (len(counts) - 1) + [3], counts
        finally:
            for name in topo.shard_queues:
                await channel.queue_delete(name)
            await channel.exchange_delete(topo.invoke_exchange)
