"""The dispatcher: the consumer of the tenants' shard queues and its admission loop.

Every invocation and every completion of a tenant arrives on that tenant's shard queue
(see shared/topology.py), whose single active consumer is one dispatcher replica:

- invoke: resolve the function, stop chains deeper than the tenant's limit, take a
  concurrency slot (see dispatcher/admission.py) and route the work to the workers
  (dispatcher/routing.py; persistent and confirmed for async) before acking. Over the cap
  a sync call gets 429 at once; async work waits here unacked, in order, until a slot frees.
- done: free the slot (and admit waiting work), then for async work conclude the outcome
  (dispatcher/concluding.py: record, retry through a delay queue, or give up: Failed,
  onFailure, dead letter). The completion is acked only after all of that, so a crash
  repeats rather than loses it.

Handlers return a `Settlement` (shared/broker.py); `_settle` alone acks or gives back a
delivery (or a part of a batch delivery).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Literal

from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from aiormq.abc import DeliveredMessage
from opentelemetry.trace import SpanKind

from dispatcher.admission import Admission, FleetSlots, Pool, async_share
from dispatcher.affinity import WarmFleet
from dispatcher.concluding import Conclusions
from dispatcher.destinations import Destinations
from dispatcher.metrics import DispatcherMetrics
from dispatcher.rollback import CanaryWatch
from dispatcher.routing import RETRY_PAUSE_SECONDS, Router
from dispatcher.verdict import EVENT_AGE_EXCEEDED, LOOP_DETECTED, NOT_RETRYABLE, expired
from shared import control, telemetry
from shared.accept import Acceptor
from shared.broker import (
    ACK,
    HOLD,
    REJECT,
    Delivery,
    Detached,
    Settlement,
    consume_fast,
    decode_body,
    requeue_after,
    settle,
)
from shared.catalog import FunctionCatalog, FunctionPolicy
from shared.errors import PyfcError
from shared.logs import request_id_var
from shared.parts import Part, split
from shared.protocol import (
    Completion,
    CompletionBatch,
    ControlEvent,
    Invocation,
    InvocationBatch,
    Outcome,
    WorkerBeat,
    system_outcome,
)
from shared.store import Store
from shared.topology import (
    MSG_DONE,
    MSG_DONE_BATCH,
    MSG_INVOKE_BATCH,
    Topology,
    declare_all,
    declare_invoke,
    declare_retries,
)

log = logging.getLogger(f"pyfc.{__name__}")

SWEEP_SECONDS = 1.0
# A sync slot is reclaimed this long after the caller's deadline if its release is lost.
SYNC_LEASE_SLACK = 5.0
# An async slot is reclaimed after this if its completion never comes (it always should:
# completions are persistent; this only bounds the damage of a bug).
ASYNC_LEASE_SECONDS = 3600.0
# Waiting work is re-queued before the broker's consumer timeout (30 min by default)
# would close the channel over a delivery held that long.
HOLD_ROTATE_SECONDS = 600.0


@dataclass(slots=True)
class Decision:
    verdict: Literal["run", "wait", "throttle", "loop", "duplicate"]
    pool: Pool[Held]
    policy: FunctionPolicy
    limit: int


@dataclass(slots=True)
class Held:
    """Async work waiting for a slot: the unacked delivery and its decoded envelope."""

    message: Delivery
    inv: Invocation
    max_age: float
    since: float


class Dispatcher:
    """Built complete by `open`; `consume` starts taking deliveries, `close` stops."""

    def __init__(
        self,
        topo: Topology,
        catalog: FunctionCatalog,
        admission: Admission[Held],
        metrics: DispatcherMetrics,
        router: Router,
        conclusions: Conclusions,
        canaries: CanaryWatch,
        *,
        consume_channel: AbstractChannel,
        channels: list[AbstractChannel],
    ) -> None:
        self._topo = topo
        self._catalog = catalog
        self.admission = admission
        self._metrics = metrics
        self._router = router
        self._conclusions = conclusions
        self.canaries = canaries
        self._consume = consume_channel
        self._channels = channels  # closed by `close`, the consuming one included
        self._fleet = FleetSlots()
        self.warm = router.warm
        self._routing: set[asyncio.Task[None]] = set()
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    async def open(
        cls,
        connection: AbstractRobustConnection,
        store: Store,
        topo: Topology,
        *,
        retry_steps_ms: list[int],
        prefetch: int = 5000,
        metrics: DispatcherMetrics | None = None,
    ) -> Dispatcher:
        """Open the dispatcher's channels and declare what it uses (`consume` starts it)."""
        consume = await connection.channel()
        # Per consumer (one per shard): async work over a cap waits as unacked deliveries.
        await consume.set_qos(prefetch_count=prefetch)
        # Async work is published with confirms; sync work goes on a confirm-less channel
        # because its caller is waiting and would rather fail fast than wait twice.
        confirmed = await connection.channel(publisher_confirms=True, on_return_raises=True)
        fast = await connection.channel(publisher_confirms=False)
        await declare_all(consume, topo)
        invoke = await declare_invoke(confirmed, topo)
        retry = await declare_retries(confirmed, topo, retry_steps_ms)
        catalog = FunctionCatalog(store)
        admission: Admission[Held] = Admission()
        metrics = metrics or DispatcherMetrics(admission)
        router = Router(
            topo,
            admission,
            WarmFleet(topo.affinity_queue),
            metrics,
            fast=fast,
            confirmed=confirmed,
            invoke=invoke,
        )
        conclusions = Conclusions(
            store,
            catalog,
            metrics,
            Destinations(connection, Acceptor(store, invoke)),
            confirmed=confirmed,
            retry=retry,
            steps_ms=retry_steps_ms,
        )

        async def notify(event: ControlEvent) -> None:  # an automatic rollback
            await control.publish(confirmed, topo, event)

        canaries = CanaryWatch(catalog, store, notify, metrics.auto_rollbacks)
        return cls(
            topo,
            catalog,
            admission,
            metrics,
            router,
            conclusions,
            canaries,
            consume_channel=consume,
            channels=[consume, confirmed, fast],
        )

    @property
    def metrics(self) -> DispatcherMetrics:
        return self._metrics

    async def consume(self) -> None:
        """Take control notices and the shard queues' deliveries; sweep waiting work."""
        await control.subscribe(self._consume, self._topo, self._catalog.invalidate)
        # Our own tasks, not the channel's: a broker restart must not cancel an admission
        # between taking a slot and routing the work (the slot would stay taken and every
        # redelivered copy would wait on a routing that never ends).
        handler = Detached(self._on_message)
        for queue in self._topo.shard_queues:
            await consume_fast(self._consume, queue, handler)
        self._tasks.append(asyncio.create_task(self._sweep_forever()))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for channel in self._channels:
            if not channel.is_closed:
                await channel.close()

    # -- the consumer: a handler per message type decides, one step settles ---------------

    async def _on_message(self, message: DeliveredMessage) -> None:
        kind = message.header.properties.message_type
        if kind == MSG_INVOKE_BATCH:
            how = await self._on_invoke_batch(message)
        elif kind == MSG_DONE_BATCH:
            how = await self._on_done_batch(message)
        elif kind == MSG_DONE:
            how = await self._on_done(message)
        else:
            how = await self._on_invoke(message)
        await self._settle(message, how)

    async def _settle(self, message: Delivery, how: Settlement) -> None:
        """The one place a shard delivery, or a part of one, is acked or given back."""
        if how.action == "hold":
            return  # waiting for a slot, or settled by its parts: settled when taken over
        if how.action == "attach":
            if self._router.attach(how.request_id, message):
                return  # settled with the routing in flight
            how = ACK  # that routing is done: the work is out
        if how.pause:
            await asyncio.sleep(how.pause)
        copies = self._router.copies(how.request_id) if how.request_id else []
        for delivery in (message, *copies):
            await settle(delivery, how)

    async def _settled(self, message: Delivery, handling: Awaitable[Settlement]) -> None:
        await self._settle(message, await handling)

    async def _on_invoke(self, message: DeliveredMessage) -> Settlement:
        inv = decode_body(message, Invocation)
        if inv is None:
            return REJECT
        if inv.id in await self._concluded(message, [inv]):
            return ACK
        return await self._admit(message, inv)

    async def _on_invoke_batch(self, message: DeliveredMessage) -> Settlement:
        """Several async invocations accepted together: each admitted and settled on its
        own (a `Part` of the delivery), which is acked once every one is."""
        batch = decode_body(message, InvocationBatch)
        if batch is None:
            return REJECT
        if not batch.invocations:
            return ACK
        concluded = await self._concluded(message, batch.invocations)

        async def admit(part: Part, inv: Invocation) -> Settlement:
            return ACK if inv.id in concluded else await self._admit(part, inv)

        parts = split(message, len(batch.invocations))
        await asyncio.gather(
            *(
                self._settled(part, admit(part, inv))
                for part, inv in zip(parts, batch.invocations, strict=True)
            )
        )
        return HOLD  # settled by its parts

    async def _on_done(self, message: DeliveredMessage) -> Settlement:
        done = decode_body(message, Completion)
        if done is None:
            return REJECT
        request_id_var.set(done.request_id)
        return await self._finish([done])

    async def _on_done_batch(self, message: DeliveredMessage) -> Settlement:
        batch = decode_body(message, CompletionBatch)
        return REJECT if batch is None else await self._finish(batch.completions)

    # -- admission ---------------------------------------------------------------------

    async def decide(self, inv: Invocation) -> Decision:
        """The admission decision for `inv`, a slot taken when it may run now.

        Only cache lookups and dict operations when the function's config is cached (the
        hot path: `bench/dispatch.py` times exactly this). Raises PyfcError when the
        function cannot be resolved.
        """
        if not inv.version:  # not resolved by its source: once, here, before it first runs
            inv.version = await self._catalog.resolve(
                inv.tenant, inv.service, inv.qualifier, inv.id
            )
        inv.spec = await self._catalog.spec(
            inv.tenant, inv.service, inv.version, inv.function, inv.min_revision
        )
        policy = await self._catalog.policy(inv.tenant, inv.service, inv.qualifier, inv.function)
        limits = await self._catalog.tenant_limits(inv.tenant)
        pool = self.admission.pool(
            inv.tenant,
            inv.service,
            inv.function,
            tenant_cap=limits.concurrency,
            reserved_total=limits.reserved_total,
            reserved=policy.reserved_concurrency,
        )
        if inv.lineage.hops >= limits.max_chain_depth:
            return Decision("loop", pool, policy, limits.max_chain_depth)
        if inv.kind == "sync":
            lease = max(1.0, inv.deadline - time.time()) + SYNC_LEASE_SLACK
            if self.admission.try_acquire(pool, inv.id, lease):
                return Decision("run", pool, policy, pool.limit)
            return Decision("throttle", pool, policy, pool.limit)
        if self.admission.holds(inv.id):
            # Redelivered after a connection blip, but already routed by us.
            return Decision("duplicate", pool, policy, pool.limit)
        if pool.waiting or not self.admission.try_acquire(
            pool,
            inv.id,
            ASYNC_LEASE_SECONDS,
            is_async=True,
            per_instance=inv.spec.instance_concurrency,
        ):
            return Decision("wait", pool, policy, pool.limit)  # nothing overtakes older work
        return Decision("run", pool, policy, pool.limit)

    async def _concluded(self, message: DeliveredMessage, invs: list[Invocation]) -> set[str]:
        """The invocations among `invs` not to run: concluded already, if `message` is a
        redelivery; on a first delivery, second copies of `once` invocations (first
        deliveries of other invocations never pay for a lookup)."""
        if message.redelivered:
            return await self._conclusions.concluded(invs)
        return await self._conclusions.second_copies(invs)

    async def _admit(self, message: Delivery, inv: Invocation) -> Settlement:
        request_id_var.set(inv.id)
        with telemetry.span(
            "pyfc.dispatch",
            inv.traceparent,
            SpanKind.CONSUMER,
            {"faas.invocation_id": inv.id, "pyfc.tenant": inv.tenant, "faas.version": inv.version},
        ):
            try:
                decision = await self.decide(inv)
            except PyfcError as e:
                return await self._reject(message, inv, e)
            inv.traceparent = telemetry.current_traceparent(fallback=inv.traceparent)
            verdict, pool = decision.verdict, decision.pool
            if verdict in ("run", "wait"):
                await self.canaries.admitted(inv)
            if verdict == "loop":
                return await self._loop_detected(message, inv, decision.limit)
            if verdict == "duplicate":
                # Redelivered after a connection blip, but routed by us already. If that
                # routing is still unconfirmed, this copy is settled with it (acked if it
                # lands, returned to the queue if it fails), so the invocation is never
                # acked away before its work is safely out.
                return Settlement("attach", request_id=inv.id)
            if verdict == "throttle":
                return await self._throttle(message, inv, pool)
            if verdict == "wait":
                held = Held(message, inv, decision.policy.max_event_age, time.time())
                self.admission.wait(pool, held)
                self._drain()
                return HOLD
            if inv.kind == "sync":
                self._metrics.admitted.labels(inv.tenant, "sync").inc()
                return await self._router.route(message, inv)
            held = Held(message, inv, decision.policy.max_event_age, time.time())
            return await self._route_async(held)

    async def _route_async(self, held: Held) -> Settlement:
        """Route async work that holds a slot (or give it up if it is too old)."""
        inv = held.inv
        if expired(inv, held.max_age, time.time()):
            self.admission.release(inv.id)
            await self._conclusions.give_up(inv, None, EVENT_AGE_EXCEEDED, notify=True)
            return ACK
        self._metrics.admitted.labels(inv.tenant, "async").inc()
        return await self._router.route(held.message, inv)

    def _drain(self) -> None:
        """Admit waiting async work while there is room, the tenants' pools in turn.

        Slots are taken here, synchronously; the routing (a confirmed publish each) runs
        in tasks, so a long backlog is not routed one round trip at a time.
        """
        while (turn := self.admission.next_waiting()) is not None:
            pool, held = turn
            if held.message.channel.is_closed:
                continue  # the broker already gave it back to the queue
            per_instance = held.inv.spec.instance_concurrency if held.inv.spec else 1
            if not self.admission.try_acquire(
                pool, held.inv.id, ASYNC_LEASE_SECONDS, is_async=True, per_instance=per_instance
            ):
                self.admission.unget(pool, held)  # the fleet is full
                return
            task = asyncio.create_task(self._settled(held.message, self._route_async(held)))
            self._routing.add(task)
            task.add_done_callback(self._routing.discard)

    def heard(self, beat: WorkerBeat) -> None:
        """A worker's heartbeat: async work is kept within the fleet's slots."""
        now = time.monotonic()
        self._fleet.heard(beat.worker_id, beat.slots, beat.leaving, now)
        self.warm.heard(beat, now)
        self._resize(now)

    def _resize(self, now: float) -> None:
        limit = async_share(self._fleet.total(now))
        if limit != self.admission.async_limit:
            log.info("async work limited to %s slots of the fleet", limit or "all")
            self.admission.async_limit = limit
        self._drain()

    async def _throttle(self, message: Delivery, inv: Invocation, pool: Pool[Held]) -> Settlement:
        self._metrics.throttled.labels(inv.tenant).inc()
        scope = f"function {inv.function}" if len(pool.key) > 1 else f"tenant {inv.tenant}"
        text = f"concurrency limit reached: {pool.limit} in flight for {scope}"
        await self._router.reply(message, system_outcome(inv, "ThrottlingException", text, 429))
        return ACK

    async def _reject(self, message: Delivery, inv: Invocation, err: PyfcError) -> Settlement:
        """The invocation cannot be admitted (no such function, ...): tell or record it."""
        log.warning("invocation not admitted: %s: %s", err.code, err.message)
        outcome = system_outcome(inv, err.code, err.message, err.status)
        return await self._refuse(message, inv, outcome, NOT_RETRYABLE)

    async def _loop_detected(self, message: Delivery, inv: Invocation, limit: int) -> Settlement:
        """A chain deeper than the tenant's limit: not run; logged, counted, dead-lettered.

        Never sent to an onFailure destination: a function destination would be one hop
        deeper still, and stopped again, forever.
        """
        log.warning(
            "recursive loop stopped: %s/%s at hop %d (limit %d, trace %s, origin %s)",
            inv.service,
            inv.function,
            inv.lineage.hops,
            limit,
            inv.lineage.trace_id,
            inv.lineage.origin,
        )
        self._metrics.loops.labels(inv.tenant).inc()
        outcome = system_outcome(
            inv,
            LOOP_DETECTED,
            f"invocation chain is {inv.lineage.hops} hops deep; the limit is {limit}",
            508,
        )
        return await self._refuse(message, inv, outcome, LOOP_DETECTED)

    async def _refuse(
        self, message: Delivery, inv: Invocation, outcome: Outcome, reason: str
    ) -> Settlement:
        """Not run: a sync caller is told at once, async work is recorded Failed."""
        if inv.kind == "sync":
            await self._router.reply(message, outcome)
        else:
            await self._conclusions.refused(inv, outcome, reason)
        return ACK

    # -- completions -------------------------------------------------------------------

    async def _finish(self, completions: list[Completion]) -> Settlement:
        """Completions of one delivery: slots freed, async outcomes concluded together
        (their rows share the store's group commit), then one ack.

        A sync release has nothing to conclude: the caller has its answer. If any outcome
        cannot be concluded (the store or the broker is down) the whole message goes back
        to the queue after a pause, so a long outage is not a hot requeue loop;
        concluding one twice records the same outcome again (an upsert) and may schedule
        its retry twice (at least once).
        """
        released = False
        for done in completions:
            # Give the warm room its call took back to the worker it was routed to.
            if self.warm.completed(done.request_id, done.worker_id):
                self._metrics.affinity_missed.inc()
            released |= self.admission.release(done.request_id) is not None
            self.canaries.completed(done)
        if released:
            self._drain()
        results = await asyncio.gather(
            *(
                self._conclusions.conclude(done.invocation, done.outcome)
                for done in completions
                if done.outcome is not None and done.invocation is not None
            ),
            return_exceptions=True,
        )
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            log.error(
                "cannot conclude %d of %d completions yet (%s); requeueing in %.0fs",
                len(failed),
                len(results),
                ", ".join(done.request_id for done in completions),
                RETRY_PAUSE_SECONDS,
                exc_info=failed[0],
            )
            return requeue_after(RETRY_PAUSE_SECONDS)
        return ACK

    # -- housekeeping --------------------------------------------------------------------

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            try:
                await self.sweep()
            except Exception:
                log.exception("dispatcher sweep failed")

    async def sweep(self) -> None:
        """Reclaim lapsed leases, drop waiters whose channel died, rotate long waiters."""
        self.admission.expire()
        self.warm.expire(time.monotonic(), self.admission.holds)
        self.canaries.sweep(time.monotonic())
        self._resize(time.monotonic())  # drains too
        now = time.time()
        for pool in self.admission.pools():
            keep = [h for h in pool.waiting if not h.message.channel.is_closed]
            old = [h for h in keep if now - h.since > HOLD_ROTATE_SECONDS]
            pool.waiting.clear()
            pool.waiting.extend(h for h in keep if now - h.since <= HOLD_ROTATE_SECONDS)
            for held in old:
                # Re-queued (confirmed) before the old delivery is acked.
                await self._router.requeue(held.inv)
                await self._settle(held.message, ACK)
