"""Accepted async invocations on their way to the dispatcher shards, several to a message.

Each async accept must be confirmed by the broker before its 202. Calls of one tenant
accepted while a publish to its shard is in flight go together in the next one (an
`InvocationBatch`, AMQP type `invoke-batch`), which the dispatcher admits invocation by
invocation; a lone one goes as a plain invocation message.
"""

from __future__ import annotations

import aio_pika
from aio_pika.abc import AbstractExchange

from shared import codec
from shared.batching import Batcher
from shared.broker import PUBLISH_TIMEOUT, invocation_headers, persistent_invocation
from shared.protocol import Invocation, InvocationBatch, invocation_bytes
from shared.topology import MSG_INVOKE_BATCH, invoke_routing_key


class AcceptedInvocations:
    def __init__(self, exchange: AbstractExchange) -> None:
        self._exchange = exchange
        self._batches: Batcher[str, Invocation] = Batcher(self._publish, invocation_bytes)

    async def publish(self, inv: Invocation) -> None:
        """Return once `inv` is persisted by the broker; raise the publish's error."""
        await self._batches.send(invoke_routing_key(inv.tenant), inv)

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
