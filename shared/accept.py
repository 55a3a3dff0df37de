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
from shared.batching import Batcher
from shared.broker import invocation_headers, persistent_invocation
from shared.errors import AlreadyExists, Unavailable
from shared.models import InvocationRecord
from shared.protocol import Invocation, InvocationBatch, invocation_bytes
from shared.store import Store
from shared.topology import MSG_INVOKE_BATCH, invoke_routing_key

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT = 10.0
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
        record = InvocationRecord(
            request_id=inv.id,
            tenant=inv.tenant,
            service_name=inv.service,
            qualifier=inv.qualifier,
            function_name=inv.function,
            origin=inv.lineage.origin,
        )
        try:
            await self._store.record_accepted(record)
        except AlreadyExists:
            if not again:
                raise
            log.info("invocation %s already recorded; publishing it again", inv.id)
        await self.publish(inv, refused=refused)

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
