"""Broker topology: the names of every exchange and queue, and their declaration.

Every role declares what it uses (idempotent) at start. `namespace` prefixes all names so
several stacks or test runs share one broker without seeing each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

# AMQP headers that must be visible to the broker and other tools (not only our code).
HDR_TENANT = "x-pyfc-tenant"
HDR_HOPS = "x-pyfc-hops"
HDR_TRACEPARENT = "traceparent"
HDR_KIND = "x-pyfc-kind"

DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"


@dataclass(frozen=True, slots=True)
class Topology:
    namespace: str = "pyfc"

    @property
    def invoke_exchange(self) -> str:
        """Entry point of every invocation; bound to the dispatcher queue."""
        return f"{self.namespace}.invoke"

    @property
    def dispatch_queue(self) -> str:
        return f"{self.namespace}.dispatch"

    @property
    def work_queue(self) -> str:
        """Admitted work waiting for a worker slot."""
        return f"{self.namespace}.work"

    @property
    def done_queue(self) -> str:
        """Async outcomes on their way to be recorded by a dispatcher."""
        return f"{self.namespace}.done"

    @property
    def control_exchange(self) -> str:
        """Fanout of metadata-changed notices (cache invalidation)."""
        return f"{self.namespace}.control"

    def all_queues(self) -> list[str]:
        return [self.dispatch_queue, self.work_queue, self.done_queue]

    def all_exchanges(self) -> list[str]:
        return [self.invoke_exchange, self.control_exchange]


async def declare_invoke(channel: AbstractChannel, topo: Topology) -> AbstractExchange:
    """The invoke exchange and the dispatcher queue behind it."""
    exchange = await channel.declare_exchange(
        topo.invoke_exchange, aio_pika.ExchangeType.DIRECT, durable=True
    )
    queue = await channel.declare_queue(topo.dispatch_queue, durable=True)
    await queue.bind(exchange, routing_key="invoke")
    return exchange


async def declare_work(channel: AbstractChannel, topo: Topology) -> AbstractQueue:
    return await channel.declare_queue(topo.work_queue, durable=True)


async def declare_done(channel: AbstractChannel, topo: Topology) -> AbstractQueue:
    return await channel.declare_queue(topo.done_queue, durable=True)


async def declare_control(channel: AbstractChannel, topo: Topology) -> AbstractExchange:
    return await channel.declare_exchange(
        topo.control_exchange, aio_pika.ExchangeType.FANOUT, durable=True
    )


async def declare_all(channel: AbstractChannel, topo: Topology) -> None:
    await declare_invoke(channel, topo)
    await declare_work(channel, topo)
    await declare_done(channel, topo)
    await declare_control(channel, topo)


async def delete_all(channel: AbstractChannel, topo: Topology) -> None:
    """Remove every queue and exchange of a namespace (tests clean up with this)."""
    for name in topo.all_queues():
        await channel.queue_delete(name)
    for name in topo.all_exchanges():
        await channel.exchange_delete(name)
