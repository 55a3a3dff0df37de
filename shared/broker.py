"""Connecting to RabbitMQ: robust connections with explicit timeouts and clear errors."""

from __future__ import annotations

import logging
from typing import TypeVar
from urllib.parse import urlsplit

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from shared import codec
from shared.errors import BadRequest, Unavailable

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0

T = TypeVar("T")


def redact(url: str) -> str:
    """The URL without its password, for messages a person reads."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    user = f"{parts.username}@" if parts.username else ""
    return f"{parts.scheme}://{user}{host}{port}{parts.path}"


async def connect(
    url: str, name: str, timeout: float = CONNECT_TIMEOUT
) -> AbstractRobustConnection:
    """A robust (auto-reconnecting) connection, or `Unavailable` saying where we tried."""
    try:
        return await aio_pika.connect_robust(
            url, timeout=timeout, client_properties={"connection_name": name}
        )
    except (TimeoutError, OSError, aio_pika.exceptions.AMQPError) as e:
        raise Unavailable(
            f"cannot reach RabbitMQ at {redact(url)} ({type(e).__name__}: {e}); "
            "is it running? start it with `rabbitmq-server -detached` or set PYFC_AMQP_URL"
        ) from e


async def decode_or_drop(message: AbstractIncomingMessage, kind: type[T]) -> T | None:
    """Decode a consumed message as `kind`; an undecodable one is logged and dropped.

    Requeueing bytes that can never decode would only loop them forever.
    """
    try:
        return codec.decode(message.body, kind)
    except BadRequest as e:
        log.error(
            "dropping undecodable %s message (%d bytes): %s", kind.__name__, len(message.body), e
        )
        await message.reject(requeue=False)
        return None
