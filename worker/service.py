"""The worker loop: take admitted work from the broker, run it on a warm instance, answer.

Ack discipline (at-least-once for async): the work message is acked only after the
outcome is published to `done` and confirmed by the broker; a worker that dies before
that returns the message to the queue and another worker runs it again.

A lost connection (a broker restart) does not stop what runs: the handlers run in tasks of
the worker's own (`shared.broker.Detached`), so a function keeps its instance, its timeout
and its memory limit, and its outcome is published once the connection is back. The
broker gives the unacked work back meanwhile; a copy that comes back to this worker waits
for the run in progress (or finds it answered) instead of running it twice. A clean stop
takes no new work and lets what runs finish, for up to `stop_grace` seconds.

As in the dispatcher, handlers return a `Settlement` (shared/broker.py) and `_settle`
alone acks or gives back a delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import cast

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection
from aiormq.abc import DeliveredMessage
from opentelemetry.trace import SpanKind, StatusCode
from pamqp.commands import Basic

from shared import codec, telemetry
from shared.batching import Batcher
from shared.broker import (
    ACK,
    PUBLISH_TIMEOUT,
    REJECT,
    Consumer,
    Detached,
    Settlement,
    consume_fast,
    decode_body,
    ready,
    requeue_after,
    settle,
)
from shared.errors import PyfcError, Unavailable
from shared.logs import request_id_var
from shared.protocol import (
    Completion,
    CompletionBatch,
    Invocation,
    Outcome,
    WorkBatch,
    completion_bytes,
    system_outcome,
)
from shared.topology import (
    MSG_DONE,
    MSG_DONE_BATCH,
    MSG_WORK_BATCH,
    Topology,
    declare_all,
    declare_invoke,
    invoke_routing_key,
)
from worker.affinity import AffinityQueue
from worker.codecache import CodeCache
from worker.logship import LogShipper
from worker.metrics import WorkerMetrics
from worker.pool import InstancePool

log = logging.getLogger(f"pyfc.{__name__}")

ANSWER_RETRY_SECONDS = 1.0
# Async work answered here, remembered so a redelivered copy of it is not run again: by
# request id, attempt and accept time (a redriven dead letter runs attempt 1 again).
ANSWERED_MEMORY = 10_000


@dataclass(slots=True)
class _Run:
    """Async work running here: a copy of it redelivered meanwhile waits for this run."""

    done: asyncio.Event = field(default_factory=asyncio.Event)
    answered: bool = False


def skip_reason(inv: Invocation, redelivered: bool, now: float) -> Outcome | None:
    """Work that must not run: a sync call whose caller gave up or whose worker died.

    Sync invocations are never retried by the platform: a redelivered sync message means
    the worker running it died, so the caller gets a prompt system error instead.
    """
    if inv.kind != "sync":
        return None
    if redelivered:
        return system_outcome(
            inv, "WorkerLost", "the worker running this invocation died; not retried", 502
        )
    if inv.deadline and now > inv.deadline:
        return system_outcome(inv, "DeadlineExceeded", "deadline passed before it started", 504)
    return None


class Worker:
    """Built complete by `open`; `consume` starts taking work, `close` stops."""

    def __init__(
        self,
        topo: Topology,
        pool: InstancePool,
        code: CodeCache,
        *,
        consume_channel: AbstractChannel,
        confirmed: AbstractChannel,
        fast: AbstractChannel,
        done_confirmed: AbstractExchange,
        idle_seconds: float,
        metrics: WorkerMetrics | None,
        worker_id: str,
        affinity: AffinityQueue | None,
        stop_grace: float,
        logs: LogShipper | None,
    ) -> None:
        self._topo = topo
        # Where the functions' lines go (None: log stores off).
        self._logs = logs
        self._pool = pool
        self._code = code
        self._consume = consume_channel
        self._confirmed = confirmed
        self._fast = fast
        self._done_confirmed = done_confirmed
        self._idle_seconds = idle_seconds
        self._metrics = metrics
        self._worker_id = worker_id
        # This worker's own queue, for calls routed to its warm instances (None: off).
        self._affinity = affinity
        # Async completions to one dispatcher shard go several to a message.
        self._completions: Batcher[str, Completion] = Batcher(
            self._publish_completions, completion_bytes
        )
        self._stop_grace = stop_grace
        # Deliveries run in tasks of our own: a closed channel does not cut a run short.
        self._handlers: list[Detached] = []
        self._consumers: list[Consumer] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._runs: dict[tuple[str, int, float], _Run] = {}
        self._answered: OrderedDict[tuple[str, int, float], None] = OrderedDict()

    @classmethod
    async def open(
        cls,
        connection: AbstractRobustConnection,
        topo: Topology,
        pool: InstancePool,
        code: CodeCache,
        *,
        slots: int,
        idle_seconds: float,
        metrics: WorkerMetrics | None = None,
        worker_id: str = "",
        affinity: AffinityQueue | None = None,
        stop_grace: float = 25.0,
        logs: LogShipper | None = None,
    ) -> Worker:
        """Open the worker's channels and declare what it uses (`consume` starts it)."""
        consume = await connection.channel()
        # One unacked message per slot: a full worker takes nothing it cannot start. Global:
        # one limit for the shared queue and this worker's affinity queue together. Quorum
        # queues refuse a channel-wide limit (the broker closes the connection), so there
        # each of the two consumers has its own: the worker may then hold up to twice its
        # slots, the extra waiting in its pool for a slot (docs/high-availability.md).
        await consume.set_qos(prefetch_count=slots, global_=topo.queue_type == "classic")
        confirmed = await connection.channel(publisher_confirms=True, on_return_raises=True)
        fast = await connection.channel(publisher_confirms=False)
        await declare_all(consume, topo)
        # Completions go back through the invoke exchange to the tenant's dispatcher shard.
        done_confirmed = await declare_invoke(confirmed, topo)
        await declare_invoke(fast, topo)
        return cls(
            topo,
            pool,
            code,
            consume_channel=consume,
            confirmed=confirmed,
            fast=fast,
            done_confirmed=done_confirmed,
            idle_seconds=idle_seconds,
            metrics=metrics,
            worker_id=worker_id,
            affinity=affinity,
            stop_grace=stop_grace,
            logs=logs,
        )

    async def consume(self) -> None:
        """Take work from the shared queue and this worker's own; reap idle instances."""
        shared = Detached(
            self._on_work if self._affinity is None else self._affinity.hold(self._on_work)
        )
        self._handlers.append(shared)
        self._consumers.append(await consume_fast(self._consume, self._topo.work_queue, shared))
        if self._affinity is not None:
            own = Detached(self._on_own_work)
            self._handlers.append(own)
            self._consumers.append(await self._affinity.consume(self._consume, own))
        self._tasks.append(asyncio.create_task(self._reap_forever()))

    async def close(self) -> None:
        """Take no new work, let what runs finish (up to `stop_grace`), then disconnect:
        what is still running then goes back to the queue and runs again elsewhere."""
        if self._consumers:
            with contextlib.suppress(Exception):
                await self._consumers[0].cancel()  # the shared queue: nothing new from it
            if self._affinity is not None:
                await self._affinity.drain()
        for consumer in self._consumers:
            with contextlib.suppress(Exception):
                await consumer.cancel()
        deadline = time.monotonic() + self._stop_grace
        left = 0
        for handler in self._handlers:
            left += await handler.finish(deadline - time.monotonic())
        if left:
            log.warning(
                "stopping with %d deliveries still running after %.0fs: they go back to the "
                "queue (async work runs again elsewhere)",
                left,
                self._stop_grace,
            )
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for channel in (self._consume, self._confirmed, self._fast):
            if not channel.is_closed:
                await channel.close()

    async def _reap_forever(self) -> None:
        interval = max(0.5, min(30.0, self._idle_seconds / 4))
        while True:
            await asyncio.sleep(interval)
            try:
                await self._pool.reap_idle(self._idle_seconds)
            except Exception:
                log.exception("idle reaping failed")

    # -- the consumer: a handler decides, one step settles -----------------------------

    async def _on_work(self, message: DeliveredMessage) -> None:
        await self._settle(message, await self._work(message))

    async def _on_own_work(self, message: DeliveredMessage) -> None:
        """Work from this worker's affinity queue: turned away once it is leaving (it falls
        back to the shared queue at once, marked rejected: it never ran here)."""
        leaving = self._affinity is not None and self._affinity.leaving
        how = REJECT if leaving else await self._work(message)
        await self._settle(message, how)

    async def _settle(self, message: DeliveredMessage, how: Settlement) -> None:
        """The one place a work delivery is acked or given back."""
        if how.pause:
            await asyncio.sleep(how.pause)
        await settle(message, how)

    async def _work(self, message: DeliveredMessage) -> Settlement:
        if message.header.properties.message_type == MSG_WORK_BATCH:
            return await self._work_batch(message)
        inv = decode_body(message, Invocation)
        if inv is None:
            return REJECT
        try:
            await self._run_and_answer(message, inv)
        except Exception as e:
            return self._give_back([inv.id], e)
        return ACK

    async def _work_batch(self, message: DeliveredMessage) -> Settlement:
        """Async work of one function version: run together, acked once all are answered."""
        batch = decode_body(message, WorkBatch)
        if batch is None:
            return REJECT
        results = await asyncio.gather(
            *(self._run_and_answer(message, inv) for inv in batch.invocations),
            return_exceptions=True,
        )
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            return self._give_back([inv.id for inv in batch.invocations], failed[0])
        return ACK

    async def _run_and_answer(self, message: DeliveredMessage, inv: Invocation) -> None:
        request_id_var.set(inv.id)
        if inv.kind == "async":
            await self._run_async(message, inv)
            return
        outcome = skip_reason(inv, bool(message.redelivered), time.time())
        if outcome is None and self._affinity is not None:
            outcome = await self._affinity.lost(message, inv)
        if outcome is None:
            outcome = await self._run(inv)
        await self._answer(message, inv, outcome)

    async def _run_async(self, message: DeliveredMessage, inv: Invocation) -> None:
        """Run async work and answer it, unless this worker runs or answered it already
        (a copy the broker gave back after a lost connection, or routed twice)."""
        key = (inv.id, inv.attempt, inv.created_at)
        first = self._runs.get(key)
        if first is not None:
            await first.done.wait()
            if not first.answered:
                raise Unavailable(f"the run of {inv.id} in progress here was not answered")
        if first is not None or key in self._answered:
            log.info("async %s attempt %d ran here already; this copy is not run", *key[:2])
            if self._metrics is not None:
                self._metrics.copies_not_run.inc()
            # The dispatcher may have routed this copy anew, holding a concurrency slot
            # for it: an outcome-less completion frees it (and nothing else) once more.
            release = Completion(
                request_id=inv.id, tenant=inv.tenant, kind="async", worker_id=self._worker_id
            )
            await self._completions.send(invoke_routing_key(inv.tenant), release)
            return
        run = self._runs[key] = _Run()
        try:
            outcome = await self._run(inv)
            await self._answer(message, inv, outcome)
            run.answered = True
            self._answered[key] = None
            if len(self._answered) > ANSWERED_MEMORY:
                self._answered.popitem(last=False)
        finally:
            del self._runs[key]
            run.done.set()

    def _give_back(self, request_ids: list[str], error: BaseException) -> Settlement:
        """Not answered: give the work back (its channel may be alive, so it would
        otherwise sit unacked forever); async work runs again, at least once."""
        log.error(
            "cannot send the outcome of %s; returning the work",
            ", ".join(request_ids),
            exc_info=error,
        )
        return requeue_after(ANSWER_RETRY_SECONDS)

    async def _run(self, inv: Invocation) -> Outcome:
        if inv.spec is None:
            return system_outcome(inv, "InternalError", "work arrived without a function spec", 500)
        try:
            code_dir = await self._code.path_for(inv.spec.code_digest)
        except PyfcError as e:
            log.error("cannot fetch code %s: %s", inv.spec.code_digest[:12], e.message)
            return system_outcome(inv, e.code, f"cannot fetch function code: {e.message}", 503)
        with telemetry.span(
            "pyfc.run",
            inv.traceparent,
            SpanKind.CONSUMER,
            {
                "faas.invocation_id": inv.id,
                "faas.name": f"{inv.service}/{inv.function}",
                "faas.version": inv.spec.version,
            },
        ) as span:
            started = time.time()
            outcome = await self._pool.invoke(inv.spec, code_dir, inv)
            if self._logs is not None:
                instance = self._pool.instance(outcome.instance_id) if outcome.cold_start else None
                init_ms = instance.init_duration_ms if instance is not None else None
                self._logs.invocation(inv.spec, inv, outcome, started, init_ms)
            outcome.log_lines = []
            if span is not None:
                span.set_attribute("faas.coldstart", outcome.cold_start)
                span.set_attribute("faas.instance", outcome.instance_id)
                span.set_attribute("pyfc.outcome", outcome.status)
                if outcome.status != "succeeded":
                    span.set_status(StatusCode.ERROR, outcome.error_type)
        if self._metrics is not None:
            self._metrics.observe(inv.spec, outcome)
        if outcome.cold_start and self._affinity is not None:
            await self._affinity.warmed()
        # Warm successful calls are the hot path: DEBUG keeps them out of the way (the
        # dispatcher logs every async outcome); errors and cold starts are always logged.
        quiet = outcome.status == "succeeded" and not outcome.cold_start
        log.log(
            logging.DEBUG if quiet else logging.INFO,
            "%s %s/%s@%s %s%s in %.1f ms%s",
            inv.kind,
            inv.service,
            inv.function,
            inv.spec.version,
            outcome.status,
            f" {outcome.error_type}" if outcome.error_type else "",
            outcome.duration_ms,
            " (cold)" if outcome.cold_start else "",
        )
        return outcome

    async def _answer(self, message: DeliveredMessage, inv: Invocation, outcome: Outcome) -> None:
        routing_key = invoke_routing_key(inv.tenant)
        await ready(self._fast)
        await ready(self._confirmed)
        if inv.kind == "sync":
            # The release of the caller's concurrency slot (and of the warm room the
            # dispatcher counted) goes first, queued with the reply on one channel: it is
            # on the dispatcher's queue before the reply reaches the caller (so before the
            # caller's next call, which the room decides where to route), and the reply
            # waits for no round trip, only for this enqueue. Not persistent: if it is lost,
            # the dispatcher reclaims the slot when its lease (the caller's deadline) runs out.
            channel = cast(aiormq.Channel, await self._fast.get_underlay_channel())
            release = Completion(
                request_id=inv.id,
                tenant=inv.tenant,
                kind="sync",
                worker_id=self._worker_id,
                failed=outcome.status == "function_error",
            )
            await channel.basic_publish(
                codec.encode(release),
                exchange=self._topo.invoke_exchange,
                routing_key=routing_key,
                properties=Basic.Properties(message_type=MSG_DONE),
                wait=False,
            )
            props = message.header.properties
            if props.reply_to:
                await channel.basic_publish(
                    codec.encode(outcome),
                    routing_key=props.reply_to,
                    properties=Basic.Properties(correlation_id=props.correlation_id),
                )
            return
        inv.spec = None  # the dispatcher re-reads it if it retries
        done = Completion(
            request_id=inv.id,
            tenant=inv.tenant,
            kind="async",
            outcome=outcome,
            invocation=inv,
            worker_id=self._worker_id,
        )
        # Confirmed before the work is acked: the outcome is never lost in between.
        await self._completions.send(routing_key, done)

    async def _publish_completions(self, routing_key: str, batch: list[Completion]) -> None:
        await ready(self._confirmed)
        await self._done_confirmed.publish(
            aio_pika.Message(
                codec.encode(CompletionBatch(completions=batch)),
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                type=MSG_DONE_BATCH,
            ),
            routing_key=routing_key,
            timeout=PUBLISH_TIMEOUT,
        )
