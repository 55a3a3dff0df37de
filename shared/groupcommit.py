"""Group commit: concurrent small writes share one transaction (and one commit).

The async invocation path writes one row per accept and per outcome. One transaction
each means one write-lock acquisition and one commit each: on SQLite, shared by the
gateway and dispatcher processes, that caps throughput at a few hundred writes a second.
Here writes submitted while a transaction is in progress are queued and then run
together in the next one, so the batch size follows the load and an idle store adds no
delay. Writes of the same statement are sent as one executemany. If a batch fails, each
of its writes is run again alone, so one bad write (a duplicate key, say) fails by
itself and the others still land.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Executable
from sqlalchemy.ext.asyncio import AsyncConnection

log = logging.getLogger(f"pyfc.{__name__}")

Begin = Callable[[], AbstractAsyncContextManager[AsyncConnection]]

MAX_BATCH = 200


@dataclass(slots=True)
class _Write:
    statement: Executable
    params: Mapping[str, Any]
    future: asyncio.Future[None]


class GroupCommit:
    def __init__(self, begin: Begin, max_batch: int = MAX_BATCH) -> None:
        self._begin = begin
        self._max_batch = max_batch
        self._pending: list[_Write] = []
        self._worker: asyncio.Task[None] | None = None

    async def execute(self, statement: Executable, params: Mapping[str, Any]) -> None:
        """Execute `statement` with `params` in a shared transaction; raises its own error."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append(_Write(statement, params, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        await future

    async def _drain(self) -> None:
        while self._pending:
            batch = [w for w in self._pending[: self._max_batch] if not w.future.done()]
            del self._pending[: self._max_batch]
            if len(batch) == 1:
                await self._alone(batch[0])
            elif batch:
                await self._together(batch)

    async def _together(self, batch: list[_Write]) -> None:
        try:
            async with self._begin() as conn:
                # Consecutive writes of one statement go as one executemany.
                for statement, group in itertools.groupby(batch, key=lambda w: w.statement):
                    await conn.execute(statement, [w.params for w in group])
        except Exception:
            log.debug("batch of %d writes failed; running them one by one", len(batch))
            for write in batch:
                await self._alone(write)
            return
        for write in batch:
            if not write.future.done():
                write.future.set_result(None)

    async def _alone(self, write: _Write) -> None:
        try:
            async with self._begin() as conn:
                await conn.execute(write.statement, write.params)
        except Exception as e:
            if not write.future.done():
                write.future.set_exception(e)
            return
        if not write.future.done():
            write.future.set_result(None)
