"""Metadata-changed notices over the `control` fanout, so caches in every process stay fresh."""

from __future__ import annotations

import logging
from collections.abc import Callable

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from shared import codec
from shared.protocol import ControlEvent
from shared.topology import Topology, declare_control

log = logging.getLogger(f"pyfc.{__name__}")


async def publish(channel: AbstractChannel, topo: Topology, event: ControlEvent) -> None:
    exchange = await declare_control(channel, topo)
    await exchange.publish(aio_pika.Message(codec.encode(event)), routing_key="")


async def subscribe(
    channel: AbstractChannel, topo: Topology, on_event: Callable[[ControlEvent], None]
) -> None:
    """Bind a private auto-delete queue to the fanout and call `on_event` for each notice."""
    exchange = await declare_control(channel, topo)
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind(exchange)

    async def _on_message(message: AbstractIncomingMessage) -> None:
        try:
            on_event(codec.decode(message.body, ControlEvent))
        except Exception:
            # A bad notice must not stop the subscription; caches also expire by TTL.
            log.exception("ignoring malformed control notice")

    await queue.consume(_on_message, no_ack=True)
