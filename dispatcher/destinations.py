"""Sending a finished async invocation's record to its onSuccess/onFailure destination.

`function:{service}[.{qualifier}]/{function}` becomes a new async invocation of that
function (same tenant; lineage one hop deeper, so a destination chain that loops is
stopped like any other); `mq:{exchange}[/{routingKey}]` is published to the tenant's
exchange with the lineage in AMQP headers. The request id is the idempotency key: the
destination invocation's id and the MQ message id are derived from it, so a completion
delivered twice produces a recognisable duplicate, not a different event.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

import aio_pika
from aio_pika.abc import AbstractRobustConnection

from shared.accept import Acceptor
from shared.broker import PUBLISH_TIMEOUT
from shared.errors import Unavailable
from shared.protocol import Invocation, Lineage
from shared.topology import HDR_HOPS, HDR_TENANT, HDR_TRACE

log = logging.getLogger(f"pyfc.{__name__}")

FUNCTION_RE = re.compile(r"^function:(?P<service>[^./]+)(?:\.(?P<qualifier>[^/]+))?/(?P<fn>.+)$")
MQ_RE = re.compile(r"^mq:(?P<exchange>[^/]+)(?:/(?P<key>.*))?$")


def derived_id(request_id: str, condition: str) -> str:
    """The destination event's id: the same for every delivery of the same completion."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"pyfc:{request_id}/{condition}"))


class DestinationError(Exception):
    """The record could not be delivered (bad destination, missing exchange)."""


class Destinations:
    def __init__(self, connection: AbstractRobustConnection, acceptor: Acceptor) -> None:
        self._connection = connection
        self._acceptor = acceptor

    async def send(self, destination: str, inv: Invocation, record: bytes, condition: str) -> None:
        """Deliver `record`; raises DestinationError when it cannot be delivered."""
        if m := FUNCTION_RE.match(destination):
            await self._to_function(
                inv, record, condition, m["service"], m["qualifier"] or "LATEST", m["fn"]
            )
        elif m := MQ_RE.match(destination):
            await self._to_exchange(inv, record, condition, m["exchange"], m["key"] or "")
        else:
            raise DestinationError(f"unknown destination {destination!r}")

    async def _to_function(
        self,
        inv: Invocation,
        record: bytes,
        condition: str,
        service: str,
        qualifier: str,
        function: str,
    ) -> None:
        target = Invocation(
            id=derived_id(inv.id, condition),
            tenant=inv.tenant,
            service=service,
            qualifier=qualifier,
            function=function,
            kind="async",
            source="destination",
            payload=record,
            created_at=time.time(),
            lineage=Lineage(
                trace_id=inv.lineage.trace_id,
                hops=inv.lineage.hops + 1,
                origin=f"destination:{inv.service}/{inv.function}",
            ),
            traceparent=inv.traceparent,
        )
        try:
            # again: a redelivered completion publishes again (we may have died between
            # recording and publishing); the same id marks it as the same event.
            await self._acceptor.accept(target, again=True)
        except Unavailable as e:
            raise DestinationError(e.message) from e

    async def _to_exchange(
        self, inv: Invocation, record: bytes, condition: str, exchange: str, routing_key: str
    ) -> None:
        # Its own channel: publishing to an exchange that does not exist closes the channel.
        channel = await self._connection.channel(publisher_confirms=True)
        try:
            try:
                target = await channel.get_exchange(exchange, ensure=True)
            except aio_pika.exceptions.ChannelClosed as e:
                raise DestinationError(f"exchange {exchange!r} not found") from e
            await target.publish(
                aio_pika.Message(
                    record,
                    content_type="application/json",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    message_id=derived_id(inv.id, condition),
                    headers={
                        HDR_TENANT: inv.tenant,
                        HDR_HOPS: inv.lineage.hops + 1,
                        HDR_TRACE: inv.lineage.trace_id,
                        "x-pyfc-condition": condition,
                    },
                ),
                routing_key=routing_key,
                timeout=PUBLISH_TIMEOUT,
            )
        finally:
            if not channel.is_closed:
                await channel.close()
