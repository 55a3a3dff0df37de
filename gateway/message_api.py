"""Data plane: publishing a message to an exchange of the platform's broker
(`POST /v1/messages/{exchange}`), for MQ triggers and whoever else binds it.

The exchange must exist (an MQ trigger declares its exchange when it starts serving) and
be one tenants may use (`shared.trigger_types.check_exchange`: never the platform's own,
and within PYFC_MQ_EXCHANGES). The message carries its lineage in AMQP headers
(`x-pyfc-trace`, `x-pyfc-hops`: one hop below a publishing function's invocation), so a
function that publishes to the exchange that triggers it is stopped at the chain limit.
"""

from __future__ import annotations

import base64
import binascii
import uuid

import aio_pika
from aio_pika.abc import FieldValue
from aiohttp import web

from gateway.bodies import MessagePublish, MessagePublished, parse
from gateway.http import (
    PUBLISH_ROUTE,
    gateway_of,
    grant_of,
    json_response,
    request_lineage,
    tenant_of,
)
from shared.broker import PUBLISH_TIMEOUT
from shared.errors import BadRequest, NotFound, PayloadTooLarge, Unavailable
from shared.topology import HDR_HOPS, HDR_TENANT, HDR_TRACE
from shared.trigger_types import Limits, check_exchange, check_routing_pattern

# Headers a publisher may not set: the platform's (lineage, tenant) are ours to write.
RESERVED_PREFIXES = ("x-pyfc-", "x-death", "x-delay")


class ExchangeNotFound(NotFound):
    code = "ExchangeNotFound"


def _body(msg: MessagePublish) -> bytes:
    if not msg.is_base64_encoded:
        return msg.body.encode()
    try:
        return base64.b64decode(msg.body, validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadRequest(f"body: not base64 ({e})") from e


async def publish_message(request: web.Request) -> web.Response:
    gw, tenant = gateway_of(request), tenant_of(request).name
    exchange = request.match_info["exchange"]
    settings = gw.settings
    check_exchange(
        exchange,
        Limits(
            max_event_bytes=settings.max_event_bytes,
            namespace=settings.namespace,
            mq_exchanges=settings.mq_exchange_patterns,
            tenant=tenant,
        ),
    )
    msg = parse(await request.read(), MessagePublish)
    if "*" in msg.routing_key or "#" in msg.routing_key:
        raise BadRequest("routingKey: a message's key has no wildcards ('*', '#')")
    check_routing_pattern(msg.routing_key, "routingKey")
    for name in msg.headers:
        if name.lower().startswith(RESERVED_PREFIXES) or name.lower() == "traceparent":
            raise BadRequest(f"headers: {name!r} is reserved for the platform")
    body = _body(msg)
    if len(body) > settings.max_event_bytes:
        raise PayloadTooLarge(f"body is {len(body)} bytes; the limit is {settings.max_event_bytes}")
    message_id = msg.message_id or str(uuid.uuid4())
    lineage = request_lineage(request.headers.get("X-Fc-Lineage"), message_id, grant_of(request))
    headers: dict[str, FieldValue] = {
        **msg.headers,
        HDR_TENANT: tenant,
        HDR_TRACE: lineage.trace_id,
        # What the invocation it triggers will carry: one hop below its publisher.
        HDR_HOPS: lineage.hops,
    }
    message = aio_pika.Message(
        body,
        headers=headers,
        message_id=message_id,
        content_type=msg.content_type or None,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )
    routed = await _publish(request, exchange, msg.routing_key, message)
    return json_response(MessagePublished(message_id=message_id, routed=routed))


async def _publish(
    request: web.Request, exchange: str, routing_key: str, message: aio_pika.Message
) -> bool:
    """Publish on a channel of its own (a missing exchange closes the channel), confirmed;
    whether a queue took it."""
    channel = await gateway_of(request).connection.channel(
        publisher_confirms=True, on_return_raises=True
    )
    try:
        try:
            target = await channel.get_exchange(exchange, ensure=True)
        except aio_pika.exceptions.ChannelNotFoundEntity as e:
            raise ExchangeNotFound(
                f"exchange {exchange!r} does not exist (an mq trigger bound to it creates it)"
            ) from e
        try:
            await target.publish(
                message, routing_key=routing_key, mandatory=True, timeout=PUBLISH_TIMEOUT
            )
        except aio_pika.exceptions.PublishError:
            return False  # returned: no queue bound with a matching pattern
        except aio_pika.exceptions.DeliveryError as e:
            raise Unavailable(f"the broker did not take the message: {e}") from e
        except (aio_pika.exceptions.AMQPError, TimeoutError) as e:
            raise Unavailable(f"cannot publish: {type(e).__name__}: {e}") from e
        return True
    finally:
        if not channel.is_closed:
            await channel.close()


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_post("/v1/messages/{exchange}", publish_message, name=PUBLISH_ROUTE)
