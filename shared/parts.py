"""One delivery that carries several items, settled item by item.

A batch message (several invocations in one persistent publish) is acked once, but its
invocations are admitted, held and routed one by one. Each gets a `Part`, which looks to
`shared.broker.settle` like a delivery of its own: the real delivery is acked when its
last part is settled, or given back to the queue (whole) if any part asked for that,
so nothing in it is lost; parts already routed then run again (at least once).
"""

from __future__ import annotations

from aiormq.abc import DeliveredMessage
from pamqp.header import ContentHeader


class _Shared:
    def __init__(self, message: DeliveredMessage, parts: int) -> None:
        self.message = message
        self.left = parts
        self.requeue = False

    async def settled(self, *, ack: bool, requeue: bool) -> None:
        self.left -= 1
        self.requeue |= not ack and requeue
        if self.left > 0:
            return
        tag = self.message.delivery_tag
        if tag is None or self.message.channel.is_closed:
            return  # the broker already gave it back to the queue
        if self.requeue:
            await self.message.channel.basic_reject(tag, requeue=True)
        else:
            await self.message.channel.basic_ack(tag)


class PartChannel:
    """What `settle` uses of a channel, for one part."""

    def __init__(self, part: Part) -> None:
        self._part = part

    @property
    def is_closed(self) -> bool:
        return self._part.shared.message.channel.is_closed

    async def basic_ack(self, delivery_tag: int) -> None:
        await self._part.settle(ack=True, requeue=False)

    async def basic_reject(self, delivery_tag: int, *, requeue: bool = True) -> None:
        await self._part.settle(ack=False, requeue=requeue)


class Part:
    """One item of a batch delivery; settling it twice is a no-op."""

    def __init__(self, shared: _Shared) -> None:
        self.shared = shared
        self.channel = PartChannel(self)
        self._settled = False

    @property
    def delivery_tag(self) -> int | None:
        return self.shared.message.delivery_tag

    @property
    def header(self) -> ContentHeader:
        return self.shared.message.header

    @property
    def redelivered(self) -> bool:
        return bool(self.shared.message.redelivered)

    async def settle(self, *, ack: bool, requeue: bool) -> None:
        if self._settled:
            return
        self._settled = True
        await self.shared.settled(ack=ack, requeue=requeue)


def split(message: DeliveredMessage, count: int) -> list[Part]:
    """`count` parts of `message`, to be settled one by one."""
    shared = _Shared(message, count)
    return [Part(shared) for _ in range(count)]
