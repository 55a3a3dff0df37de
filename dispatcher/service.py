"""Admission and routing of invocations, and recording of async outcomes.

Flow: `invoke` queue -> resolve function spec -> publish to `work` (persistent and
confirmed for async) -> ack. Async outcomes arrive on `done` and are recorded in the
metadata store before they are acked, so nothing accepted is lost across crashes.
"""

from __future__ import annotations

import asyncio
import logging
import time

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractRobustConnection,
)
from aiormq.abc import DeliveredMessage
from opentelemetry.trace import SpanKind

from shared import codec, control, telemetry
from shared.broker import consume_fast, decode_delivery, settle
from shared.catalog import FunctionCatalog
from shared.errors import PyfcError
from shared.logs import request_id_var
from shared.models import InvocationStatus
from shared.protocol import Invocation, Outcome, system_outcome
from shared.store import Store
from shared.topology import HDR_HOPS, HDR_KIND, HDR_TENANT, Topology, declare_all

log = logging.getLogger("pyfc.dispatcher")

PREFETCH = 256
RECORD_RETRY_SECONDS = 1.0


def outcome_status(outcome: Outcome) -> InvocationStatus:
    """The invocation status a finished outcome is recorded as."""
    return "Succeeded" if outcome.status == "succeeded" else "Failed"


class Dispatcher:
    def __init__(self, connection: AbstractRobustConnection, store: Store, topo: Topology) -> None:
        self._connection = connection
        self._store = store
        self._topo = topo
        self._catalog = FunctionCatalog(store)
        self._consume: AbstractChannel | None = None
        self._confirmed: AbstractChannel | None = None
        self._fast: AbstractChannel | None = None

    async def start(self) -> None:
        self._consume = await self._connection.channel()
        await self._consume.set_qos(prefetch_count=PREFETCH)
        # Async work is published with confirms; sync work goes on a confirm-less channel
        # because its caller is waiting and would rather fail fast than wait twice.
        self._confirmed = await self._connection.channel(publisher_confirms=True)
        self._fast = await self._connection.channel(publisher_confirms=False)
        await declare_all(self._consume, self._topo)
        await control.subscribe(self._consume, self._topo, self._catalog.invalidate)
        await consume_fast(self._consume, self._topo.dispatch_queue, self._on_invoke)
        await consume_fast(self._consume, self._topo.done_queue, self._on_done)

    async def close(self) -> None:
        for channel in (self._consume, self._confirmed, self._fast):
            if channel is not None and not channel.is_closed:
                await channel.close()

    async def _on_invoke(self, message: DeliveredMessage) -> None:
        inv = await decode_delivery(message, Invocation)
        if inv is None:
            return
        request_id_var.set(inv.id)
        with telemetry.span(
            "pyfc.dispatch",
            inv.traceparent,
            SpanKind.CONSUMER,
            {"faas.invocation_id": inv.id, "pyfc.tenant": inv.tenant},
        ):
            try:
                inv.spec = await self._catalog.spec(
                    inv.tenant, inv.service, inv.qualifier, inv.function, inv.min_revision
                )
            except PyfcError as e:
                await self._fail(message, inv, e)
                return
            inv.traceparent = telemetry.current_traceparent(fallback=inv.traceparent)
            await self._route(message, inv)
        await settle(message)

    async def _route(self, message: DeliveredMessage, inv: Invocation) -> None:
        assert self._confirmed is not None and self._fast is not None
        persistent = inv.kind == "async"
        out = aio_pika.Message(
            codec.encode(inv),
            delivery_mode=(
                aio_pika.DeliveryMode.PERSISTENT
                if persistent
                else aio_pika.DeliveryMode.NOT_PERSISTENT
            ),
            reply_to=message.header.properties.reply_to,
            correlation_id=message.header.properties.correlation_id,
            headers={HDR_TENANT: inv.tenant, HDR_HOPS: inv.lineage.hops, HDR_KIND: inv.kind},
        )
        channel = self._confirmed if persistent else self._fast
        await channel.default_exchange.publish(out, routing_key=self._topo.work_queue)

    async def _fail(self, message: DeliveredMessage, inv: Invocation, err: PyfcError) -> None:
        """The invocation cannot be admitted: tell the sync caller, or record the async failure."""
        log.warning("invocation not admitted: %s: %s", err.code, err.message)
        outcome = system_outcome(inv, err.code, err.message, err.status)
        props = message.header.properties
        if inv.kind == "sync":
            if props.reply_to:
                assert self._fast is not None
                await self._fast.default_exchange.publish(
                    aio_pika.Message(codec.encode(outcome), correlation_id=props.correlation_id),
                    routing_key=props.reply_to,
                    mandatory=False,
                )
        else:
            await self._record(outcome)
        await settle(message)

    async def _on_done(self, message: DeliveredMessage) -> None:
        outcome = await decode_delivery(message, Outcome)
        if outcome is None:
            return
        request_id_var.set(outcome.request_id)
        try:
            await self._record(outcome)
        except PyfcError:
            # The store is down: keep the outcome on the queue and try again, after a
            # pause so a long outage is not a hot requeue loop.
            log.exception("cannot record outcome yet; requeueing in %.0fs", RECORD_RETRY_SECONDS)
            await asyncio.sleep(RECORD_RETRY_SECONDS)
            await settle(message, ack=False, requeue=True)
            return
        await settle(message)

    async def _record(self, outcome: Outcome) -> None:
        started = time.perf_counter()
        await self._store.record_outcome(
            outcome.tenant,
            outcome.request_id,
            status=outcome_status(outcome),
            attempt=outcome.attempt,
            result=outcome.body,
            error_type=outcome.error_type,
            error_message=outcome.error_message,
        )
        log.info(
            "async invocation %s: %s%s (recorded in %.1f ms)",
            outcome.request_id,
            outcome.status,
            f" {outcome.error_type}" if outcome.error_type else "",
            (time.perf_counter() - started) * 1000,
        )
