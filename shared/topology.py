"""Broker topology: the names of every exchange and queue, and their declaration.

Every role declares what it uses (idempotent) at start. `namespace` prefixes all names so
several stacks or test runs share one broker without seeing each other.

Invocations and their completions enter through one consistent-hash exchange keyed by
tenant, so every message of a tenant lands on the same dispatcher shard queue; each shard
has a single active consumer, which therefore holds that tenant's counters alone, and the
broker hands the shard to another dispatcher replica when that consumer goes away.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

from shared.errors import Unavailable

# AMQP headers that must be visible to the broker and other tools (not only our code).
HDR_TENANT = "x-pyfc-tenant"
HDR_HOPS = "x-pyfc-hops"
HDR_TRACE = "x-pyfc-trace"
HDR_TRACEPARENT = "traceparent"
HDR_KIND = "x-pyfc-kind"
# No "x-" prefix: a headers exchange ignores x- keys when matching bindings.
HDR_DELAY = "pyfc-delay-ms"

# AMQP `type` of the messages on a dispatcher shard queue.
MSG_INVOKE = "invoke"
MSG_DONE = "done"
MSG_DONE_BATCH = "done-batch"
# Several accepted async invocations of one tenant (an InvocationBatch).
MSG_INVOKE_BATCH = "invoke-batch"
# AMQP `type` of async work on the work queues (a WorkBatch); sync work is an Invocation.
MSG_WORK_BATCH = "work-batch"

DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
CONSISTENT_HASH = "x-consistent-hash"

# Fixed, not a setting: every role declares the same bindings, and a shard queue that no
# dispatcher consumes would strand its tenants' work. Replicas share the shards through
# single-active-consumer, so this bounds how many dispatchers can be active at once.
DISPATCH_SHARDS = 4

# A worker's affinity queue that nobody has consumed for this long is deleted by the broker:
# its worker is gone, and every message in it expired and fell back long before.
AFFINITY_EXPIRES_MS = 600_000


def invoke_routing_key(tenant: str) -> str:
    """Routing key on the invoke exchange: the tenant, hashed onto a dispatcher shard."""
    return tenant


@dataclass(frozen=True, slots=True)
class Topology:
    namespace: str = "pyfc"

    @property
    def invoke_exchange(self) -> str:
        """Entry point of every invocation and completion (consistent hash on tenant)."""
        return f"{self.namespace}.invoke"

    def shard_queue(self, shard: int) -> str:
        return f"{self.namespace}.dispatch.{shard}"

    @property
    def shard_queues(self) -> list[str]:
        return [self.shard_queue(i) for i in range(DISPATCH_SHARDS)]

    @property
    def work_queue(self) -> str:
        """Admitted work waiting for a worker slot."""
        return f"{self.namespace}.work"

    def affinity_queue(self, worker_id: str) -> str:
        """One worker's own work queue: calls routed to its warm instances. What it does not
        take within the queue's TTL is dead-lettered to the shared work queue."""
        return f"{self.work_queue}.{worker_id}"

    @property
    def retry_exchange(self) -> str:
        """Headers exchange routing a retry to the delay queue of its backoff."""
        return f"{self.namespace}.retry"

    def delay_queue(self, delay_ms: int) -> str:
        """Holds retries for `delay_ms`, then dead-letters them back to the invoke exchange."""
        return f"{self.namespace}.delay.{delay_ms}"

    @property
    def control_exchange(self) -> str:
        """Fanout of metadata-changed notices (cache invalidation)."""
        return f"{self.namespace}.control"

    @property
    def provision_exchange(self) -> str:
        """Fanout of provision snapshots (warm instances wanted), dispatchers to workers."""
        return f"{self.namespace}.provision"

    @property
    def fleet_exchange(self) -> str:
        """Fanout of worker heartbeats: every worker (and dispatcher) sees the live fleet."""
        return f"{self.namespace}.fleet"

    def all_queues(self) -> list[str]:
        return [*self.shard_queues, self.work_queue]

    def all_exchanges(self) -> list[str]:
        return [
            self.invoke_exchange,
            self.retry_exchange,
            self.control_exchange,
            self.provision_exchange,
            self.fleet_exchange,
        ]


async def declare_invoke(channel: AbstractChannel, topo: Topology) -> AbstractExchange:
    """The invoke exchange and the dispatcher shard queues behind it.

    Each role declares the shards too, so nothing published before the first dispatcher
    starts is unroutable.
    """
    try:
        exchange = await channel.declare_exchange(
            topo.invoke_exchange, CONSISTENT_HASH, durable=True
        )
    except aiormq.exceptions.ConnectionCommandInvalid as e:
        raise Unavailable(
            "RabbitMQ has no x-consistent-hash exchange type: enable the plugin with "
            "`rabbitmq-plugins enable rabbitmq_consistent_hash_exchange` (`make up` and "
            "`make test` do it through .ci/services.sh)"
        ) from e
    except aiormq.exceptions.ChannelPreconditionFailed as e:
        raise Unavailable(
            f"exchange {topo.invoke_exchange!r} exists with another type or arguments "
            f"(left by an older pyfc?): delete it with `rabbitmqctl delete_exchange "
            f"{topo.invoke_exchange}` or choose another PYFC_NAMESPACE ({e})"
        ) from e
    for name in topo.shard_queues:
        queue = await channel.declare_queue(
            name, durable=True, arguments={"x-single-active-consumer": True}
        )
        # The binding key of a consistent-hash exchange is the shard's weight.
        await queue.bind(exchange, routing_key="1")
    return exchange


async def declare_work(channel: AbstractChannel, topo: Topology) -> AbstractQueue:
    return await channel.declare_queue(topo.work_queue, durable=True)


async def declare_affinity(
    channel: AbstractChannel, topo: Topology, worker_id: str, ttl_ms: int
) -> AbstractQueue:
    """`worker_id`'s affinity queue: durable (async work in it is persistent), a message TTL
    after which work the worker did not take (busy, or dead: a dead consumer's unacked
    deliveries return here and keep their original expiry) is dead-lettered to the shared
    work queue, and deleted once unused for `AFFINITY_EXPIRES_MS`."""
    name = topo.affinity_queue(worker_id)
    try:
        return await channel.declare_queue(
            name,
            durable=True,
            arguments={
                "x-message-ttl": ttl_ms,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": topo.work_queue,
                "x-expires": AFFINITY_EXPIRES_MS,
            },
        )
    except aiormq.exceptions.ChannelPreconditionFailed as e:
        raise Unavailable(
            f"queue {name!r} exists with other arguments (another affinity TTL under the "
            f"same worker id?): delete it with `rabbitmqctl delete_queue {name}` ({e})"
        ) from e


async def declare_retries(
    channel: AbstractChannel, topo: Topology, delays_ms: list[int]
) -> AbstractExchange:
    """The retry exchange and one delay queue per backoff step.

    A queue-wide TTL (not a per-message one) expires messages in order, so a short delay
    never waits behind a long one.
    """
    exchange = await channel.declare_exchange(
        topo.retry_exchange, aio_pika.ExchangeType.HEADERS, durable=True
    )
    for ms in delays_ms:
        queue = await channel.declare_queue(
            topo.delay_queue(ms),
            durable=True,
            arguments={"x-message-ttl": ms, "x-dead-letter-exchange": topo.invoke_exchange},
        )
        await queue.bind(exchange, arguments={"x-match": "all", HDR_DELAY: str(ms)})
    return exchange


async def declare_control(channel: AbstractChannel, topo: Topology) -> AbstractExchange:
    return await channel.declare_exchange(
        topo.control_exchange, aio_pika.ExchangeType.FANOUT, durable=True
    )


async def declare_fanout(channel: AbstractChannel, name: str) -> AbstractExchange:
    """A fanout exchange (control, provision, fleet): each subscriber binds its own queue."""
    return await channel.declare_exchange(name, aio_pika.ExchangeType.FANOUT, durable=True)


async def declare_all(channel: AbstractChannel, topo: Topology) -> None:
    await declare_invoke(channel, topo)
    await declare_work(channel, topo)
    await declare_control(channel, topo)


def backoff_steps(base_seconds: float, max_seconds: float) -> list[int]:
    """The retry delays in ms: base, 2*base, 4*base, ... up to max (one queue each)."""
    steps: list[int] = []
    delay = max(0.001, base_seconds)
    while not steps or (delay <= max_seconds and len(steps) < 24):
        steps.append(round(delay * 1000))
        delay *= 2
    return steps


async def delete_all(
    channel: AbstractChannel,
    topo: Topology,
    delays_ms: Sequence[int] = (),
    worker_ids: Sequence[str] = (),
) -> None:
    """Remove every queue and exchange of a namespace (tests clean up with this).

    Affinity queues are named by worker id, so only those of `worker_ids` go now; any
    other expires by itself (`AFFINITY_EXPIRES_MS`).
    """
    for name in [
        *topo.all_queues(),
        *(topo.delay_queue(ms) for ms in delays_ms),
        *(topo.affinity_queue(w) for w in worker_ids),
    ]:
        await channel.queue_delete(name)
    for name in topo.all_exchanges():
        await channel.exchange_delete(name)
