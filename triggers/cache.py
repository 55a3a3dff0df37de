"""The triggers of one kind a process serves, kept fresh from the store.

Loaded whole at start and every `resync` seconds (repairs a lost notice); a
`trigger-changed` control notice reloads that function's triggers at once (a change
reaches every trigger process in milliseconds). Each difference is handed to the
source as `sync(changed, removed)`; an unchanged trigger is not handed again, so a reload
never resets a schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from shared.errors import PyfcError
from shared.models import Trigger
from shared.protocol import ControlEvent
from shared.store import Store
from triggers.adapter import ActiveTrigger, Source

log = logging.getLogger(f"pyfc.{__name__}")

FunctionKey = tuple[str, str, str]


class TriggerCache:
    def __init__(self, store: Store, source: Source) -> None:
        self._store = store
        self._source = source
        self.active: dict[str, ActiveTrigger] = {}
        self._lock = asyncio.Lock()
        self._reloads: set[asyncio.Task[None]] = set()
        self._loaded = False

    async def load_all(self) -> None:
        """Read every trigger of the kind and hand the differences to the source."""
        found = await self._store.triggers_of_type(self._source.kind)
        async with self._lock:
            await self._apply(found, scope=None)

    def notice(self, event: ControlEvent) -> None:
        """A control notice (sync callback): reload the function's triggers if one of
        ours changed. Nothing else concerns them: a function with triggers cannot be
        deleted, nor a service with functions."""
        if event.kind != "trigger-changed" or event.trigger_type != self._source.kind:
            return
        task = asyncio.create_task(self._reload(event))
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def _reload(self, event: ControlEvent) -> None:
        try:
            found = await self._store.triggers_of_type(
                self._source.kind,
                tenant=event.tenant,
                service=event.service,
                function=event.function,
            )
            async with self._lock:
                await self._apply(found, (event.tenant, event.service, event.function))
        except PyfcError as e:
            log.warning("cannot reload triggers after a notice (next resync will): %s", e.message)

    async def _apply(self, found: list[tuple[str, Trigger]], scope: FunctionKey | None) -> None:
        wanted: dict[str, ActiveTrigger] = {}
        for tenant, trigger in found:
            try:
                active = ActiveTrigger.of(tenant, trigger)
            except PyfcError as e:
                log.error("trigger %s has an unusable config, not served: %s", trigger, e.message)
                continue
            if active.trigger.enabled:
                wanted[active.trigger_id] = active
        in_scope = [
            tid
            for tid, a in self.active.items()
            if scope is None or (a.tenant, a.trigger.service_name, a.trigger.function_name) == scope
        ]
        removed = [tid for tid in in_scope if tid not in wanted]
        changed = [
            a
            for tid, a in wanted.items()
            if tid not in self.active or self.active[tid].version != a.version
        ]
        if changed or removed or not self._loaded:
            # The source first: if it fails (store down), the next reload tries again. The
            # first load is always handed over, even empty: the source then knows it has
            # the whole set (a timer starts its takeover sweep).
            await self._source.sync(changed, removed)
            self._loaded = True
        for tid in removed:
            del self.active[tid]
        for a in changed:
            self.active[a.trigger_id] = a

    async def close(self) -> None:
        for task in list(self._reloads):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
