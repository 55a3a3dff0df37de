"""Admission, routing, retries, destinations, dead letters and loop protection.

Every invocation and every completion of a tenant arrives on that tenant's shard queue
(see shared/topology.py), whose single active consumer is one dispatcher replica:

- invoke: resolve the function, stop chains deeper than the tenant's limit, take a
  concurrency slot (see dispatcher/admission.py) and route the work to the workers
  (persistent and confirmed for async) before acking. Over the cap a sync call gets 429
  at once; async work waits here unacked, in order, until a slot frees.
- done: free the slot (and admit waiting work), then for async work record the outcome
  and retry it through a delay queue, or give up: Failed, onFailure, dead letter. The
  completion is acked only after all of that, so a crash repeats rather than loses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Literal

import aio_pika
import msgspec
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection
from aiormq.abc import DeliveredMessage
from opentelemetry.trace import SpanKind
from pamqp.commands import Basic

from dispatcher.admission import Admission, FleetSlots, Pool, async_share
from dispatcher.affinity import WarmFleet
from dispatcher.destinations import DestinationError, Destinations
from dispatcher.metrics import DispatcherMetrics
from dispatcher.verdict import (
    DESTINATION_FAILED,
    EVENT_AGE_EXCEEDED,
    LOOP_DETECTED,
    NOT_RETRYABLE,
    destination_record,
    expired,
    judge,
)
from shared import codec, control, telemetry
from shared.batching import Batcher
from shared.broker import (
    Delivery,
    Detached,
    consume_fast,
    decode_delivery,
    invocation_headers,
    persistent_invocation,
    publish_transient,
    ready,
    settle,
)
from shared.catalog import FunctionCatalog, FunctionPolicy
from shared.errors import FunctionNotFound, PyfcError, ServiceNotFound
from shared.logs import request_id_var
from shared.models import DeadLetter, InvocationStatus
from shared.parts import split
from shared.protocol import (
    Completion,
    CompletionBatch,
    Invocation,
    InvocationBatch,
    Outcome,
    WorkBatch,
    WorkerBeat,
    invocation_bytes,
    system_outcome,
)
from shared.store import Store
from shared.topology import (
    HDR_DELAY,
    MSG_DONE,
    MSG_DONE_BATCH,
    MSG_INVOKE_BATCH,
    MSG_WORK_BATCH,
    Topology,
    declare_all,
    declare_invoke,
    declare_retries,
    invoke_routing_key,
)

log = logging.getLogger("pyfc.dispatcher")

RECORD_RETRY_SECONDS = 1.0
SWEEP_SECONDS = 1.0
# A sync slot is reclaimed this long after the caller's deadline if its release is lost.
SYNC_LEASE_SLACK = 5.0
# An async slot is reclaimed after this if its completion never comes (it always should:
# completions are persistent; this only bounds the damage of a bug).
ASYNC_LEASE_SECONDS = 3600.0
# Waiting work is re-queued before the broker's consumer timeout (30 min by default)
# would close the channel over a delivery held that long.
HOLD_ROTATE_SECONDS = 600.0
PUBLISH_TIMEOUT = 10.0


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
    def __init__(
        self,
        connection: AbstractRobustConnection,
        store: Store,
        topo: Topology,
        *,
        retry_steps_ms: list[int],
        prefetch: int = 5000,
        metrics: DispatcherMetrics | None = None,
    ) -> None:
        self._connection = connection
        self._store = store
        self._topo = topo
        self._steps = retry_steps_ms
        self._prefetch = prefetch
        self._catalog = FunctionCatalog(store)
        self.admission: Admission[Held] = Admission()
        self._metrics = metrics or DispatcherMetrics(self.admission)
        self._consume: AbstractChannel | None = None
        self._confirmed: AbstractChannel | None = None
        self._fast: AbstractChannel | None = None
        self._invoke: AbstractExchange | None = None
        self._retry: AbstractExchange | None = None
        self._destinations: Destinations | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._fleet = FleetSlots()
        # Workers' warm room: calls go to a worker's own queue when it has some.
        self.warm = WarmFleet(topo.affinity_queue)
        self._routing: set[asyncio.Task[None]] = set()
        # Invocation id -> redelivered copies of async work whose routing is in flight.
        self._unconfirmed: dict[str, list[Delivery]] = {}
        self._work: Batcher[tuple[str, str], Invocation] = Batcher(
            self._publish_work, invocation_bytes
        )

    @property
    def metrics(self) -> DispatcherMetrics:
        return self._metrics

    async def start(self) -> None:
        self._consume = await self._connection.channel()
        # Per consumer (one per shard): async work over a cap waits as unacked deliveries.
        await self._consume.set_qos(prefetch_count=self._prefetch)
        # Async work is published with confirms; sync work goes on a confirm-less channel
        # because its caller is waiting and would rather fail fast than wait twice.
        self._confirmed = await self._connection.channel(
            publisher_confirms=True, on_return_raises=True
        )
        self._fast = await self._connection.channel(publisher_confirms=False)
        await declare_all(self._consume, self._topo)
        self._invoke = await declare_invoke(self._confirmed, self._topo)
        self._retry = await declare_retries(self._confirmed, self._topo, self._steps)
        self._destinations = Destinations(self._connection, self._invoke, self._store)
        await control.subscribe(self._consume, self._topo, self._catalog.invalidate)
        # Our own tasks, not the channel's: a broker restart must not cancel an admission
        # between taking a slot and routing the work (the slot would stay taken and every
        # redelivered copy would wait on a routing that never ends).
        handler = Detached(self._on_message)
        for queue in self._topo.shard_queues:
            await consume_fast(self._consume, queue, handler)
        self._sweeper = asyncio.create_task(self._sweep_forever())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for channel in (self._consume, self._confirmed, self._fast):
            if channel is not None and not channel.is_closed:
                await channel.close()

    async def _on_message(self, message: DeliveredMessage) -> None:
        kind = message.header.properties.message_type
        if kind == MSG_INVOKE_BATCH:
            await self._on_invoke_batch(message)
        elif kind == MSG_DONE_BATCH:
            await self._on_done_batch(message)
        elif kind == MSG_DONE:
            await self._on_done(message)
        else:
            await self._on_invoke(message)

    # -- admission ---------------------------------------------------------------------

    async def decide(self, inv: Invocation) -> Decision:
        """The admission decision for `inv`, a slot taken when it may run now.

        Only cache lookups and dict operations when the function's config is cached (the
        hot path: `bench/dispatch.py` times exactly this). Raises PyfcError when the
        function cannot be resolved.
        """
        inv.spec = await self._catalog.spec(
            inv.tenant, inv.service, inv.qualifier, inv.function, inv.min_revision
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

    async def _on_invoke(self, message: DeliveredMessage) -> None:
        inv = await decode_delivery(message, Invocation)
        if inv is None:
            return
        if inv.id in await self._concluded(message, [inv]):
            await settle(message)
            return
        await self._admit(message, inv)

    async def _on_invoke_batch(self, message: DeliveredMessage) -> None:
        """Several async invocations accepted together: each admitted on its own, the
        delivery acked once every one is routed (or given up)."""
        batch = await decode_delivery(message, InvocationBatch)
        if batch is None:
            return
        if not batch.invocations:
            await settle(message)
            return
        concluded = await self._concluded(message, batch.invocations)
        parts = split(message, len(batch.invocations))
        await asyncio.gather(
            *(
                settle(part) if inv.id in concluded else self._admit(part, inv)
                for part, inv in zip(parts, batch.invocations, strict=True)
            )
        )

    async def _concluded(self, message: DeliveredMessage, invs: list[Invocation]) -> set[str]:
        """The async invocations among `invs` already concluded for good, if `message` is a
        redelivery.

        A broker restart or a replica's crash gives back whole batches, parts of which ran
        and were concluded since (Succeeded, Failed, or retried: a later attempt is under
        way): those are not run again. Only redeliveries pay for the lookup (one query per
        tenant); if the store cannot answer, all run (at least once).
        """
        if not message.redelivered:
            return set()
        by_tenant: dict[str, dict[str, int]] = {}
        for inv in invs:
            if inv.kind == "async":
                by_tenant.setdefault(inv.tenant, {})[inv.id] = inv.attempt
        concluded: set[str] = set()
        for tenant, attempts in by_tenant.items():
            try:
                found = await self._store.concluded(tenant, attempts)
            except PyfcError as e:
                log.warning("cannot tell which redelivered invocations ran already: %s", e.message)
                continue
            if found:
                self._metrics.redelivered_concluded.labels(tenant).inc(len(found))
                log.info(
                    "%d redelivered invocations already concluded, not run again: %s",
                    len(found),
                    ", ".join(sorted(found)),
                )
            concluded |= found
        return concluded

    async def _admit(self, message: Delivery, inv: Invocation) -> None:
        request_id_var.set(inv.id)
        with telemetry.span(
            "pyfc.dispatch",
            inv.traceparent,
            SpanKind.CONSUMER,
            {"faas.invocation_id": inv.id, "pyfc.tenant": inv.tenant},
        ):
            try:
                decision = await self.decide(inv)
            except PyfcError as e:
                await self._reject(message, inv, e)
                return
            inv.traceparent = telemetry.current_traceparent(fallback=inv.traceparent)
            verdict, pool = decision.verdict, decision.pool
            if verdict == "loop":
                await self._loop_detected(message, inv, decision.limit)
            elif verdict == "duplicate":
                # Redelivered after a connection blip, but routed by us already. If that
                # routing is still unconfirmed, this copy is settled with it (acked if it
                # lands, returned to the queue if it fails), so the invocation is never
                # acked away before its work is safely out.
                copies = self._unconfirmed.get(inv.id)
                if copies is not None:
                    copies.append(message)
                else:
                    await settle(message)
            elif verdict == "throttle":
                await self._throttle(message, inv, pool)
            elif verdict == "wait":
                held = Held(message, inv, decision.policy.max_event_age, time.time())
                self.admission.wait(pool, held)
                self._drain()
            elif inv.kind == "sync":
                self._metrics.admitted.labels(inv.tenant, "sync").inc()
                await self._route(message, inv)
            else:
                held = Held(message, inv, decision.policy.max_event_age, time.time())
                await self._route_async(held)

    async def _throttle(self, message: Delivery, inv: Invocation, pool: Pool[Held]) -> None:
        self._metrics.throttled.labels(inv.tenant).inc()
        scope = f"function {inv.function}" if len(pool.key) > 1 else f"tenant {inv.tenant}"
        text = f"concurrency limit reached: {pool.limit} in flight for {scope}"
        await self._reply(message, system_outcome(inv, "ThrottlingException", text, 429))
        await settle(message)

    async def _route_async(self, held: Held) -> None:
        """Route async work that holds a slot (or give it up if it is too old)."""
        inv = held.inv
        if expired(inv, held.max_age, time.time()):
            self.admission.release(inv.id)
            await self._give_up(inv, None, EVENT_AGE_EXCEEDED, notify=True)
            await settle(held.message)
            return
        self._metrics.admitted.labels(inv.tenant, "async").inc()
        await self._route(held.message, inv)

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
            task = asyncio.create_task(self._route_async(held))
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

    async def _route(self, message: Delivery, inv: Invocation) -> None:
        """Publish admitted work to the workers, then ack; on failure free the slot.

        Async work for one instance key goes out in batches of up to its
        instanceConcurrency (one instance's worth: what a worker slot holds), several
        invocations to one persistent message when they arrive together.
        """
        assert inv.spec is not None
        key = inv.spec.instance_key
        weight = 1.0 if inv.kind == "sync" else 1.0 / max(1, inv.spec.instance_concurrency)
        # A worker with warm room for it, else the shared queue (a cold start anywhere).
        affinity = self.warm.route(key, inv.id, weight)
        self._metrics.count_route(affinity is not None)
        queue = affinity or self._topo.work_queue
        if inv.kind == "async":
            self._unconfirmed.setdefault(inv.id, [])
        try:
            if inv.kind == "sync":
                await self._publish_sync_work(message, inv, queue)
            else:
                await self._work.send((queue, key), inv, limit=inv.spec.instance_concurrency)
        except asyncio.CancelledError:
            # Stopped mid-routing (shutting down): the work may or may not be out. Free
            # the slot so a redelivered copy is admitted again (at least once), not taken
            # for a duplicate of a routing that will never settle it.
            self.admission.release(inv.id)
            self.warm.completed(inv.id)
            self._unconfirmed.pop(inv.id, None)
            raise
        except Exception:
            log.exception("cannot route invocation %s", inv.id)
            self.admission.release(inv.id)
            self.warm.completed(inv.id)
            if inv.kind == "sync":  # never retried: tell the caller now
                await self._reply(
                    message,
                    system_outcome(inv, "ServiceUnavailable", "cannot route the invocation", 503),
                )
                await settle(message)
            else:  # back to the queue, after a pause so an outage is not a hot loop
                await asyncio.sleep(RECORD_RETRY_SECONDS)
                for delivery in [message, *self._unconfirmed.pop(inv.id, [])]:
                    await settle(delivery, ack=False, requeue=True)
            return
        for delivery in [message, *self._unconfirmed.pop(inv.id, [])]:
            await settle(delivery)

    async def _publish_sync_work(self, message: Delivery, inv: Invocation, queue: str) -> None:
        # Not persistent and not confirmed: its caller is waiting and would rather fail
        # fast than wait twice; a lost message times out the caller, never runs twice.
        assert self._fast is not None
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
        assert self._confirmed is not None
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

    async def _reply(self, message: Delivery, outcome: Outcome) -> None:
        """Answer a sync caller directly (nothing to run, or not admitted)."""
        props = message.header.properties
        if props.reply_to:
            assert self._fast is not None
            await ready(self._fast)
            await self._fast.default_exchange.publish(
                aio_pika.Message(codec.encode(outcome), correlation_id=props.correlation_id),
                routing_key=props.reply_to,
                mandatory=False,
            )

    async def _reject(self, message: Delivery, inv: Invocation, err: PyfcError) -> None:
        """The invocation cannot be admitted (no such function, ...): tell or record it."""
        log.warning("invocation not admitted: %s: %s", err.code, err.message)
        outcome = system_outcome(inv, err.code, err.message, err.status)
        if inv.kind == "sync":
            await self._reply(message, outcome)
        else:
            await self._guard_store(self._give_up(inv, outcome, NOT_RETRYABLE, notify=False))
        await settle(message)

    async def _loop_detected(self, message: Delivery, inv: Invocation, limit: int) -> None:
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
        if inv.kind == "sync":
            await self._reply(message, outcome)
        else:
            await self._guard_store(self._give_up(inv, outcome, LOOP_DETECTED, notify=False))
        await settle(message)

    # -- completions -------------------------------------------------------------------

    async def _on_done(self, message: DeliveredMessage) -> None:
        done = await decode_delivery(message, Completion)
        if done is not None:
            request_id_var.set(done.request_id)
            await self._finish(message, [done])

    async def _on_done_batch(self, message: DeliveredMessage) -> None:
        batch = await decode_delivery(message, CompletionBatch)
        if batch is not None:
            await self._finish(message, batch.completions)

    async def _finish(self, message: DeliveredMessage, completions: list[Completion]) -> None:
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
            self._completed(done)
            released |= self.admission.release(done.request_id) is not None
        if released:
            self._drain()
        results = await asyncio.gather(
            *(
                self._conclude(done.invocation, done.outcome)
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
                RECORD_RETRY_SECONDS,
                exc_info=failed[0],
            )
            await asyncio.sleep(RECORD_RETRY_SECONDS)
            await settle(message, ack=False, requeue=True)
            return
        await settle(message)

    def _completed(self, done: Completion) -> None:
        """Give the warm room its call took back to the worker it was routed to."""
        if self.warm.completed(done.request_id, done.worker_id):
            self._metrics.affinity_missed.inc()

    async def _policy(self, inv: Invocation) -> FunctionPolicy:
        try:
            return await self._catalog.policy(inv.tenant, inv.service, inv.qualifier, inv.function)
        except (FunctionNotFound, ServiceNotFound):
            return FunctionPolicy()  # deleted since: no retries' worth of config left

    async def _conclude(self, inv: Invocation, outcome: Outcome) -> None:
        policy = await self._policy(inv)
        verdict = judge(
            inv,
            outcome,
            max_retry_attempts=policy.max_retry_attempts,
            max_event_age=policy.max_event_age,
            steps_ms=self._steps,
        )
        if verdict.action == "succeeded":
            await self._record(outcome, "Succeeded")
            if policy.on_success:
                await self._forward(policy.on_success, inv, outcome, verdict.reason)
        elif verdict.action == "retry":
            await self._record(outcome, "Enqueued")
            await self._schedule_retry(inv, verdict.delay_ms)
        else:
            await self._give_up(inv, outcome, verdict.reason, notify=True, policy=policy)

    async def _schedule_retry(self, inv: Invocation, delay_ms: int) -> None:
        assert self._retry is not None and self._confirmed is not None
        await ready(self._confirmed)
        inv.attempt += 1
        inv.spec = None
        self._metrics.retries.labels(inv.tenant).inc()
        log.info("retrying %s (attempt %d) in %.1fs", inv.id, inv.attempt, delay_ms / 1000)
        await self._retry.publish(
            persistent_invocation(inv, **{HDR_DELAY: str(delay_ms)}),
            # Kept through dead-lettering: back on the tenant's shard after the delay.
            routing_key=invoke_routing_key(inv.tenant),
            timeout=PUBLISH_TIMEOUT,
        )

    async def _give_up(
        self,
        inv: Invocation,
        outcome: Outcome | None,
        reason: str,
        *,
        notify: bool,
        policy: FunctionPolicy | None = None,
    ) -> None:
        """Failed for good: record it, tell onFailure (if `notify`) and dead-letter it."""
        if outcome is None:
            outcome = system_outcome(
                inv, reason, f"event older than its max age; attempt {inv.attempt} not made", 410
            )
        await self._record(outcome, "Failed")
        if notify:
            policy = policy or await self._policy(inv)
            if policy.on_failure:
                await self._forward(policy.on_failure, inv, outcome, reason)
        await self._dead_letter(inv, outcome, reason)

    async def _dead_letter(self, inv: Invocation, outcome: Outcome, reason: str) -> None:
        self._metrics.dead_letters.labels(inv.tenant, reason).inc()
        inv.spec = None
        await self._store.add_dead_letter(
            inv.tenant,
            DeadLetter(
                request_id=inv.id,
                service_name=inv.service,
                qualifier=inv.qualifier,
                function_name=inv.function,
                reason=reason,
                error_type=outcome.error_type,
                error_message=outcome.error_message,
                attempts=inv.attempt,
                hops=inv.lineage.hops,
                trace_id=inv.lineage.trace_id,
                payload=inv.payload,
                response=outcome.body,
                envelope=codec.encode(inv),
            ),
        )
        log.warning(
            "dead letter %s/%s %s: %s %s", inv.service, inv.function, inv.id, reason,
            outcome.error_type,
        )  # fmt: skip

    async def _forward(
        self, destination: str, inv: Invocation, outcome: Outcome, condition: str
    ) -> None:
        assert self._destinations is not None
        record = destination_record(inv, outcome, condition)
        try:
            await self._destinations.send(destination, inv, record, condition)
        except (DestinationError, aio_pika.exceptions.AMQPError) as e:
            log.error("destination %s of %s failed: %s", destination, inv.id, e)
            failed = system_outcome(inv, DESTINATION_FAILED, f"{destination}: {e}", 502)
            failed.body = record
            await self._dead_letter(inv, failed, DESTINATION_FAILED)
            return
        self._metrics.destinations.labels(inv.tenant, condition).inc()

    async def _record(self, outcome: Outcome, status: InvocationStatus) -> None:
        started = time.perf_counter()
        await self._store.record_outcome(
            outcome.tenant,
            outcome.request_id,
            status=status,
            attempt=outcome.attempt,
            result=outcome.body,
            error_type=outcome.error_type,
            error_message=outcome.error_message,
        )
        log.info(
            "async invocation %s attempt %d: %s%s -> %s (recorded in %.1f ms)",
            outcome.request_id,
            outcome.attempt,
            outcome.status,
            f" {outcome.error_type}" if outcome.error_type else "",
            status,
            (time.perf_counter() - started) * 1000,
        )

    async def _guard_store(self, work: Awaitable[None]) -> None:
        """Run store work for a message we are about to ack; a store outage is logged."""
        try:
            await work
        except PyfcError:
            log.exception("cannot record a refused invocation")

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
        self._resize(time.monotonic())  # drains too
        now = time.time()
        for pool in self.admission.pools():
            keep = [h for h in pool.waiting if not h.message.channel.is_closed]
            old = [h for h in keep if now - h.since > HOLD_ROTATE_SECONDS]
            pool.waiting.clear()
            pool.waiting.extend(h for h in keep if now - h.since <= HOLD_ROTATE_SECONDS)
            for held in old:
                await self._rotate(held)
        self.admission.forget_idle()

    async def _rotate(self, held: Held) -> None:
        """Re-queue long-waiting work (confirmed) and ack the old delivery."""
        assert self._invoke is not None
        await self._invoke.publish(
            persistent_invocation(msgspec.structs.replace(held.inv, spec=None)),
            routing_key=invoke_routing_key(held.inv.tenant),
            timeout=PUBLISH_TIMEOUT,
        )
        await settle(held.message)
