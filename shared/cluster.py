"""One robust connection to a RabbitMQ cluster: it fails over between the nodes' URLs.

`PYFC_AMQP_URL` may name several nodes (`amqp://u:p@rabbit-0:5672/,amqp://u:p@rabbit-1/`).
aio-pika's robust connection reconnects to the one URL it was given; `ClusterConnection`
is that same connection (its channels, consumers and callbacks are restored as before),
only each attempt to (re)connect goes to the next node in the list. So when the node a
role is connected to dies, its next attempt, a reconnect interval later, goes to another.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from aio_pika import Connection, RobustConnection
from aio_pika.abc import UnderlayConnection
from yarl import URL

from shared.errors import BadRequest

log = logging.getLogger(f"pyfc.{__name__}")

SCHEMES = ("amqp", "amqps")
# After a lost node, wait this long before reconnecting to another (`_on_connection_close`).
SETTLE = 2.0


def node_urls(value: str) -> list[str]:
    """The node URLs of a `PYFC_AMQP_URL`: one, or several separated by commas or spaces
    (a comma inside a password is written `%2C`)."""
    urls = [part for part in re.split(r"[,\s]+", value.strip()) if part]
    if not urls:
        raise BadRequest(
            "PYFC_AMQP_URL is empty: give one RabbitMQ URL, or several comma-separated"
        )
    for url in urls:
        parsed = URL(url)
        if parsed.scheme not in SCHEMES or not parsed.host:
            raise BadRequest(
                f"PYFC_AMQP_URL: {redact(url)!r} is not an amqp:// or amqps:// URL with a host"
            )
    return urls


def redact(url: str) -> str:
    """`url` without its password, for messages a person reads."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    user = f"{parts.username}@" if parts.username else ""
    return f"{parts.scheme}://{user}{host}{port}{parts.path}"


class ClusterConnection(RobustConnection):
    """A robust connection whose every (re)connect attempt takes the next of `urls`.

    The robust connection clears its transport as it starts an attempt, then connects to
    `self.url`: that is the moment the next node is chosen (not at close). Attempts go
    round the list, so a node that is back is tried again in its turn.
    """

    def __init__(self, urls: Sequence[str], **kwargs: Any) -> None:
        if not urls:
            raise ValueError("a cluster connection needs at least one URL")
        self.urls = [URL(url) for url in urls]
        self._transport: UnderlayConnection | None = None
        super().__init__(self.urls[0], **kwargs)
        self.attempts = 0

    @property
    def transport(self) -> UnderlayConnection | None:
        return self._transport

    @transport.setter
    def transport(self, value: UnderlayConnection | None) -> None:
        # `attempts` exists once __init__ is done; its own clearing is not an attempt, nor
        # is the clearing at close.
        if value is None and hasattr(self, "attempts") and not self._close_called:
            self.url = self.urls[self.attempts % len(self.urls)]
            self.attempts += 1
        self._transport = value

    async def _on_connection_close(self, closing: asyncio.Future[Any]) -> None:
        """What the robust connection does when its connection is lost (close callbacks,
        then reconnect), with a pause between the two on a cluster.

        The pause lets the cluster elect new leaders for the quorum queues the lost node
        led before this connection's channels come back. RabbitMQ 3.10 channels that
        publish to a quorum queue during its election can stay broken for it: every later
        publish there is nacked until the channel is closed (measured: 2 s after the kill
        never, at once nearly always; docs/high-availability.md).
        """
        try:
            await Connection._on_connection_close(self, closing)
        except Exception:
            log.exception("close callbacks of %s failed", self)
        if self._close_called or self.is_closed:
            return
        if len(self.urls) > 1:
            log.warning(
                "lost RabbitMQ node %s; reconnecting to another in %.0f s", self.node, SETTLE
            )
            await asyncio.sleep(SETTLE)
        self._request_recovery()

    @property
    def node(self) -> str:
        """host:port of the node this connection is (or was last) connected to."""
        return f"{self.url.host}:{self.url.port}"
