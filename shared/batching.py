"""Messages sent several to one publish, as a group commit does for the store.

A persistent, confirmed publish per item costs a publish, a confirm and a delivery at
every role it passes. Here items bound for the same key (a routing key, a queue) that
arrive while a publish for that key is in flight are queued and go together in the next
one: the batch size follows the load, and an idle sender adds no delay (a lone item goes
out on the next loop turn). `send` returns once the publish carrying the item is
confirmed, so callers ack what they consumed only after that, exactly as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)

MAX_BATCH = 64
# A batch stops growing past this many bytes (payloads and results dominate).
MAX_BATCH_BYTES = 1 << 20


@dataclass(slots=True)
class _Entry(Generic[T]):
    item: T
    size: int
    limit: int
    future: asyncio.Future[None]


class Batcher(Generic[K, T]):
    """Publishes items per key, several at a time; `publish(key, items)` sends one batch."""

    def __init__(
        self,
        publish: Callable[[K, list[T]], Awaitable[None]],
        size: Callable[[T], int],
        *,
        max_bytes: int = MAX_BATCH_BYTES,
    ) -> None:
        self._publish = publish
        self._size = size
        self._max_bytes = max_bytes
        self._pending: dict[K, list[_Entry[T]]] = {}
        self._senders: dict[K, asyncio.Task[None]] = {}

    async def send(self, key: K, item: T, *, limit: int = MAX_BATCH) -> None:
        """Return once `item` is confirmed; raise what its publish raised.

        `limit`: at most this many items go in a batch with this one.
        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = _Entry(item, self._size(item), max(1, limit), future)
        self._pending.setdefault(key, []).append(entry)
        sender = self._senders.get(key)
        if sender is None or sender.done():
            self._senders[key] = asyncio.create_task(self._drain(key))
        await future

    def _take(self, key: K) -> list[_Entry[T]]:
        pending = self._pending.get(key)
        if not pending:
            return []
        limit = pending[0].limit
        count, size = 0, 0
        for entry in pending:
            if count and (count >= limit or size + entry.size > self._max_bytes):
                break
            count += 1
            size += entry.size
        batch = pending[:count]
        del pending[:count]
        return batch

    async def _drain(self, key: K) -> None:
        while batch := self._take(key):
            try:
                await self._publish(key, [entry.item for entry in batch])
            except Exception as e:
                for entry in batch:
                    if not entry.future.done():
                        entry.future.set_exception(e)
                continue
            for entry in batch:
                if not entry.future.done():
                    entry.future.set_result(None)
        self._pending.pop(key, None)
        self._senders.pop(key, None)
