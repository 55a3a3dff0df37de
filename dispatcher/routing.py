"""Routing admitted work to the workers, and the dispatcher's other publishes on that path.

Work goes to the affinity queue of a worker with warm room for its function, else to the
shared work queue: sync work transient and unconfirmed (its caller waits and would rather
fail fast than wait twice), async work persistent and confirmed, in batches of up to one
instance's worth. The invocation is acked only once its work is out; a routing that fails
frees the slot and gives the invocation back (async) or answers the caller (sync).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aio_pika
import msgspec
from aio_pika.abc import AbstractChannel, AbstractExchange
from pamqp.commands import Basic

from dispatcher.admission import Admission
from dispatcher.affinity import WarmFleet
from dispatcher.metrics import DispatcherMetrics
from shared import codec
from shared.batching import Batcher
from shared.broker import (
    ACK,
    PUBLISH_TIMEOUT,
    Delivery,
    Settlement,
    invocation_headers,
    persistent_invocation,
    publish_transient,
    ready,
    requeue_after,
)
from shared.protocol import Invocation, Outcome, WorkBatch, invocation_bytes, system_outcome
from shared.topology import MSG_WORK_BATCH, Topology, invoke_routing_key

log = logging.getLogger(f"pyfc.{__name__}")

# A routing or a conclusion that failed gives its message back after this pause, so an
# outage is not a hot requeue loop.
RETRY_PAUSE_SECONDS = 1.0


class Router:
    def __init__(
        self,
        topo: Topology,
        admission: Admission[Any],
        warm: WarmFleet,
        metrics: DispatcherMetrics,
        *,
        fast: AbstractChannel,
        confirmed: AbstractChannel,
        invoke: AbstractExchange,
    ) -> None:
        self._topo = topo
        self._admission = admission
        self.warm = warm  # workers' warm room: calls go to a worker's own queue when it has some
        self._metrics = metrics
        self._fast = fast  # no confirms: sync work and answers
        self._confirmed = confirmed  # confirms: async work
        self._invoke = invoke  # on the confirming channel
        # Invocation id -> redelivered copies of async work whose routing is in flight.
        self.unconfirmed: dict[str, list[Delivery]] = {}
        self._work: Batcher[tuple[str, str], Invocation] = Batcher(
            self._publish_work, invocation_bytes
        )

    async def route(self, message: Delivery, inv: Invocation) -> Settlement:
        """Publish admitted work to the workers; on failure free the slot.

        Async work for one instance key goes out in batches of up to its
        instanceConcurrency (one instance's worth: what a worker slot holds), several
        invocations to one persistent message when they arrive together. The settlement
        covers the copies redelivered meanwhile (`attach`) too.
        """
        assert inv.spec is not None
        key = inv.spec.instance_key
        weight = 1.0 if inv.kind == "sync" else 1.0 / max(1, inv.spec.instance_concurrency)
        # A worker with warm room for it, else the shared queue (a cold start anywhere).
        affinity = self.warm.route(key, inv.id, weight)
        self._metrics.count_route(affinity is not None)
        queue = affinity or self._topo.work_queue
        if inv.kind == "async":
            self.unconfirmed.setdefault(inv.id, [])
        try:
            if inv.kind == "sync":
                await self._publish_sync_work(message, inv, queue)
            else:
                await self._work.send((queue, key), inv, limit=inv.spec.instance_concurrency)
        except asyncio.CancelledError:
            # Stopped mid-routing (shutting down): the work may or may not be out. Free
            # the slot so a redelivered copy is admitted again (at least once), not taken
            # for a duplicate of a routing that will never settle it.
            self._admission.release(inv.id)
            self.warm.completed(inv.id)
            self.unconfirmed.pop(inv.id, None)
            raise
        except Exception:
            log.exception("cannot route invocation %s", inv.id)
            self._admission.release(inv.id)
            self.warm.completed(inv.id)
            if inv.kind == "sync":  # never retried: tell the caller now
                await self.reply(
                    message,
                    system_outcome(inv, "ServiceUnavailable", "cannot route the invocation", 503),
                )
                return ACK
            return requeue_after(RETRY_PAUSE_SECONDS, inv.id)  # back to the queue
        return Settlement("ack", request_id=inv.id)

    def attach(self, request_id: str, copy: Delivery) -> bool:
        """Settle `copy` with the routing of `request_id` if that is still in flight."""
        copies = self.unconfirmed.get(request_id)
        if copies is None:
            return False
        copies.append(copy)
        return True

    def copies(self, request_id: str) -> list[Delivery]:
        """The copies attached to the routing of `request_id`, which is done now."""
        return self.unconfirmed.pop(request_id, [])

    async def reply(self, message: Delivery, outcome: Outcome) -> None:
        """Answer a sync caller directly (nothing to run, or not admitted)."""
        props = message.header.properties
        if props.reply_to:
            await ready(self._fast)
            await self._fast.default_exchange.publish(
                aio_pika.Message(codec.encode(outcome), correlation_id=props.correlation_id),
                routing_key=props.reply_to,
                mandatory=False,
            )

    async def requeue(self, inv: Invocation) -> None:
        """Publish `inv` again to its shard, confirmed (long-waiting work, rotated)."""
        await self._invoke.publish(
            persistent_invocation(msgspec.structs.replace(inv, spec=None)),
            routing_key=invoke_routing_key(inv.tenant),
            timeout=PUBLISH_TIMEOUT,
        )

    async def _publish_sync_work(self, message: Delivery, inv: Invocation, queue: str) -> None:
        # Not persistent and not confirmed: its caller is waiting and would rather fail
        # fast than wait twice; a lost message times out the caller, never runs twice.
        await ready(self._fast)
        props = message.header.properties
        await publish_transient(
            self._fast,
            codec.encode(inv),
            exchange="",
            routing_key=queue,
            properties=Basic.Properties(
                reply_to=props.reply_to,
                correlation_id=props.correlation_id,
                headers=invocation_headers(inv),
                delivery_mode=1,
            ),
        )

    async def _publish_work(self, key: tuple[str, str], batch: list[Invocation]) -> None:
        """One persistent, confirmed message of async work for one instance key."""
        queue, _ = key
        await ready(self._confirmed)
        await self._confirmed.default_exchange.publish(
            aio_pika.Message(
                codec.encode(WorkBatch(invocations=batch)),
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                type=MSG_WORK_BATCH,
                headers=invocation_headers(batch[0]),
            ),
            routing_key=queue,
            timeout=PUBLISH_TIMEOUT,
        )
