"""Accepting an async invocation: record it, then publish it with a broker confirm.

The one way work enters the async path, whoever accepts it: the gateway (HTTP async
invoke, DLQ redrive), the dispatcher (function destinations) and the trigger adapters.
"Accepted" means persisted twice: an `Enqueued` record in the store (the status API reads
it) and a persistent message the broker confirmed. Invocations of one tenant accepted
while a publish to its shard is in flight go together in the next one (an
`InvocationBatch`, AMQP type `invoke-batch`), which the dispatcher admits one by one; a
lone one goes as a plain invocation message.
"""

from __future__ import annotations

import asyncio
import logging

import aio_pika
from aio_pika.abc import AbstractExchange
from aio_pika.exceptions import AMQPError
from aiormq.exceptions import ChannelInvalidStateError

from shared import codec
from shared.batching import MAX_BATCH_BYTES, Batcher
from shared.broker import PUBLISH_TIMEOUT, invocation_headers, persistent_invocation
from shared.errors import AlreadyExists, Unavailable
from shared.models import InvocationRecord
from shared.protocol import Invocation, InvocationBatch, invocation_bytes
from shared.rows import iso_millis
from shared.store import Store
from shared.topology import MSG_INVOKE_BATCH, invoke_routing_key

log = logging.getLogger(f"pyfc.{__name__}")

# What a publish raises when the broker cannot take the message.
BROKER_ERRORS: tuple[type[BaseException], ...] = (
    AMQPError,
    ChannelInvalidStateError,
    ConnectionError,
    RuntimeError,
    asyncio.TimeoutError,
)


class Acceptor:
    """Records and publishes async invocations; `exchange` is on a confirming channel."""

    def __init__(self, store: Store, exchange: AbstractExchange) -> None:
        self._store = store
        self._exchange = exchange
        self._batches: Batcher[str, Invocation] = Batcher(self._publish, invocation_bytes)

    async def accept(
        self, inv: Invocation, *, again: bool = False, refused: str | None = None
    ) -> None:
        """Record `inv` as Enqueued, then publish it and wait for the broker's confirm.

        `again`: the id may be recorded already (a redelivered completion's destination, a
        trigger's fire taken over after its owner died): publish anyway, the same id marks
        the same event. `refused`: if the broker cannot take it, record the invocation
        Failed with this message (the caller is told and will not retry); else leave it
        Enqueued for the caller's own retry. Raises Unavailable when not published.
        """
        await self.record(inv, again=again)
        await self.publish(inv, refused=refused)

    async def record(self, inv: Invocation, *, again: bool = False) -> None:
        """Record `inv` as Enqueued (the first half of `accept`); AlreadyExists unless
        `again`. Its created time is the invocation's (an event's own time)."""
        record = InvocationRecord(
            request_id=inv.id,
            tenant=inv.tenant,
            service_name=inv.service,
            qualifier=inv.qualifier,
            function_name=inv.function,
            version=inv.version,
            origin=inv.lineage.origin,
            created_time=iso_millis(inv.created_at) if inv.created_at else "",
        )
        try:
            await self._store.record_accepted(record)
        except AlreadyExists:
            if not again:
                raise
            log.info("invocation %s already recorded; publishing it again", inv.id)

    async def publish(self, inv: Invocation, *, refused: str | None = None) -> None:
        """Publish an already recorded invocation (persistent, confirmed); see `accept`."""
        try:
            await self._batches.send(invoke_routing_key(inv.tenant), inv)
        except BROKER_ERRORS as e:
            if refused is not None:
                await self._store.record_outcome(
                    inv.tenant,
                    inv.id,
                    status="Failed",
                    attempt=0,
                    result=b"",
                    error_type="ServiceUnavailable",
                    error_message=refused,
                )
            raise Unavailable(f"cannot enqueue the invocation: {type(e).__name__}: {e}") from e

    async def publish_all(self, invs: list[Invocation]) -> list[BaseException | None]:
        """Publish many recorded invocations at once, as few messages as they fit in (per
        tenant shard, up to MAX_BATCH_BYTES each); per invocation None or the error.

        For a source that has a whole group at one instant (timers due at the same time):
        one publish and one confirm per message, instead of the Batcher's lone first one
        and its follow-up batches."""
        chunks: list[list[int]] = []
        by_key: dict[str, list[int]] = {}
        for i, inv in enumerate(invs):
            by_key.setdefault(invoke_routing_key(inv.tenant), []).append(i)
        for indexes in by_key.values():
            chunk: list[int] = []
            size = 0
            for i in indexes:
                if chunk and size + invocation_bytes(invs[i]) > MAX_BATCH_BYTES:
                    chunks.append(chunk)
                    chunk, size = [], 0
                chunk.append(i)
                size += invocation_bytes(invs[i])
            chunks.append(chunk)

        async def send(chunk: list[int]) -> BaseException | None:
            batch = [invs[i] for i in chunk]
            try:
                await self._publish(invoke_routing_key(batch[0].tenant), batch)
            except BROKER_ERRORS as e:
                return Unavailable(f"cannot enqueue the invocation: {type(e).__name__}: {e}")
            return None

        results: list[BaseException | None] = [None] * len(invs)
        for chunk, error in zip(chunks, await asyncio.gather(*map(send, chunks)), strict=True):
            for i in chunk:
                results[i] = error
        return results

    async def _publish(self, routing_key: str, batch: list[Invocation]) -> None:
        if len(batch) == 1:
            message = persistent_invocation(batch[0])
        else:
            message = aio_pika.Message(
                codec.encode(InvocationBatch(invocations=batch)),
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                type=MSG_INVOKE_BATCH,
                headers=invocation_headers(batch[0]),
            )
        await self._exchange.publish(message, routing_key=routing_key, timeout=PUBLISH_TIMEOUT)
