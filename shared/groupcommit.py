"""Group commit: concurrent small writes share one transaction (and one commit).

The async invocation path writes one row per accept and per outcome. One transaction
each means one write-lock acquisition and one commit each: on SQLite, shared by the
gateway and dispatcher processes, that caps throughput at a few hundred writes a second.
Here writes submitted while a transaction is in progress are queued and then run
together in the next one, so the batch size follows the load and an idle store adds no
delay. If a batch fails, each of its writes is run again alone, so one bad write (a
duplicate key, say) fails by itself and the others still land.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection

log = logging.getLogger(__name__)

T = TypeVar("T")
Op = Callable[[AsyncConnection], Awaitable[Any]]
Begin = Callable[[], AbstractAsyncContextManager[AsyncConnection]]

MAX_BATCH = 200


class GroupCommit:
    def __init__(self, begin: Begin, max_batch: int = MAX_BATCH) -> None:
        self._begin = begin
        self._max_batch = max_batch
        self._pending: list[tuple[Op, asyncio.Future[Any]]] = []
        self._worker: asyncio.Task[None] | None = None

    async def run(self, op: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """Run `op` in a shared transaction; its result, or its own exception."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append((op, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._pending:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            live = [(op, f) for op, f in batch if not f.done()]  # a cancelled caller
            if len(live) == 1:
                await self._alone(*live[0])
            elif live:
                await self._together(live)

    async def _together(self, batch: list[tuple[Op, asyncio.Future[Any]]]) -> None:
        try:
            results = []
            async with self._begin() as conn:
                for op, _ in batch:
                    results.append(await op(conn))
        except Exception:
            log.debug("batch of %d writes failed; running them one by one", len(batch))
            for op, future in batch:
                await self._alone(op, future)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def _alone(self, op: Op, future: asyncio.Future[Any]) -> None:
        try:
            async with self._begin() as conn:
                result = await op(conn)
        except Exception as e:
            if not future.done():
                future.set_exception(e)
            return
        if not future.done():
            future.set_result(result)
