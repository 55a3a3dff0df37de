"""Broker topology: the names of every exchange and queue, and their declaration.

Every role declares what it uses (idempotent) at start. `namespace` prefixes all names so
several stacks or test runs share one broker without seeing each other.

Invocations and their completions enter through one consistent-hash exchange keyed by
tenant, so every message of a tenant lands on the same dispatcher shard queue; each shard
has a single active consumer, which therefore holds that tenant's counters alone, and the
broker hands the shard to another dispatcher replica when that consumer goes away.

Every durable queue is declared by `declare_durable`, with the topology's queue type
(`PYFC_QUEUE_TYPE`): `classic` (one node holds it) or `quorum` (Raft-replicated over a
cluster's nodes: a node lost loses none of it; docs/high-availability.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue, FieldValue

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


# classic: a queue lives on one node; quorum: replicated (Raft) over the cluster's nodes.
QueueType = Literal["classic", "quorum"]
QUEUE_TYPES: tuple[str, ...] = get_args(QueueType)


def invoke_routing_key(tenant: str) -> str:
    """Routing key on the invoke exchange: the tenant, hashed onto a dispatcher shard."""
    return tenant


@dataclass(frozen=True, slots=True)
class Topology:
    namespace: str = "pyfc"
    # The type of every durable queue (`declare_durable`).
    queue_type: QueueType = "classic"

    def __post_init__(self) -> None:
        if self.queue_type not in QUEUE_TYPES:
            raise ValueError(f"queue type {self.queue_type!r} is not one of {QUEUE_TYPES}")

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
    def reply_queues(self) -> str | None:
        """Prefix of the gateways' own reply queues for sync calls, or None: replies go by
        direct reply-to (one node). On a cluster (quorum) RabbitMQ 3.10 cannot be trusted
        with direct reply-to: a reply to a caller whose node is down crashes the replying
        channel's whole connection (`rabbit_channel:deliver_reply` case_clause), so one
        lost node would disconnect every worker answering its gateways' calls. A reply to
        an exclusive queue that went with its node is only dropped."""
        return f"{self.namespace}.reply" if self.queue_type == "quorum" else None

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


def durable_arguments(
    queue_type: QueueType, arguments: Mapping[str, FieldValue] | None = None
) -> dict[str, FieldValue]:
    """The declare arguments of a durable pyfc queue of `queue_type`.

    A quorum queue dead-letters at most once unless told otherwise: a message expiring out
    of it while the target's leader is down would be dropped. At-least-once dead-lettering
    keeps it until the target confirms, and requires the `reject-publish` overflow (which
    only acts on a length limit; pyfc sets none).
    """
    args: dict[str, FieldValue] = {"x-queue-type": queue_type, **(arguments or {})}
    if queue_type == "quorum" and "x-dead-letter-exchange" in args:
        args["x-dead-letter-strategy"] = "at-least-once"
        args["x-overflow"] = "reject-publish"
    return args


async def declare_durable(
    channel: AbstractChannel,
    topo: Topology,
    name: str,
    arguments: Mapping[str, FieldValue] | None = None,
) -> AbstractQueue:
    """Declare the durable queue `name` with the topology's queue type: the one place pyfc
    declares a queue that outlives its consumers.

    A queue's type (or arguments) cannot change in place: a queue left by a deployment with
    another `PYFC_QUEUE_TYPE` is refused with what to do, not silently used.
    """
    args = durable_arguments(topo.queue_type, arguments)
    try:
        return await channel.declare_queue(name, durable=True, arguments=args)
    except aiormq.exceptions.ChannelPreconditionFailed as e:
        if "x-queue-type" in str(e):
            raise Unavailable(
                f"queue {name!r} exists with another type than PYFC_QUEUE_TYPE="
                f"{topo.queue_type} ({e}); a queue's type cannot change in place: stop the "
                f"roles, let the queue drain, delete it (`rabbitmqctl delete_queue {name}`) "
                f"and start them again, or keep the type it has"
            ) from e
        raise Unavailable(
            f"queue {name!r} exists with other arguments (left by another pyfc version or "
            f"setting?): delete it with `rabbitmqctl delete_queue {name}` once drained ({e})"
        ) from e


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
        queue = await declare_durable(channel, topo, name, {"x-single-active-consumer": True})
        # The binding key of a consistent-hash exchange is the shard's weight.
        await queue.bind(exchange, routing_key="1")
    return exchange


async def declare_work(channel: AbstractChannel, topo: Topology) -> AbstractQueue:
    return await declare_durable(channel, topo, topo.work_queue)


async def declare_affinity(
    channel: AbstractChannel, topo: Topology, worker_id: str, ttl_ms: int
) -> AbstractQueue:
    """`worker_id`'s affinity queue: durable (async work in it is persistent), a message TTL
    after which work the worker did not take (busy, or dead: a dead consumer's unacked
    deliveries return here and keep their original expiry) is dead-lettered to the shared
    work queue, and deleted once unused for `AFFINITY_EXPIRES_MS`."""
    return await declare_durable(
        channel,
        topo,
        topo.affinity_queue(worker_id),
        {
            "x-message-ttl": ttl_ms,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": topo.work_queue,
            "x-expires": AFFINITY_EXPIRES_MS,
        },
    )


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
        queue = await declare_durable(
            channel,
            topo,
            topo.delay_queue(ms),
            {"x-message-ttl": ms, "x-dead-letter-exchange": topo.invoke_exchange},
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
