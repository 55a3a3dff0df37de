"""Connecting to RabbitMQ: robust connections with explicit timeouts and clear errors."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

import aio_pika
from aio_pika.abc import AbstractRobustConnection

from shared.errors import Unavailable

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0


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
