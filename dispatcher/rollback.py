"""Automatic rollback of a canary: an alias's weighted version that fails too often.

An alias with `autoRollback` config sends a share of its calls to its additional
(canary) version. Every call and completion of a tenant lands on that tenant's shard, so
the one dispatcher that owns it sees every outcome of the canary: sync calls through their
slot release (`Completion.failed`), async calls through their outcome. When the canary's
error rate over the window passes `maxErrorRate` with at least `minInvocations` calls
(`shared.release.should_roll_back`), its weight goes to 0 in the store (only if the alias
still sends it a share: a user's change wins), the alias records why and when, every
process hears `alias-changed`, and a log line and `pyfc_dispatcher_auto_rollbacks` say so.

Only calls through an alias whose canary is watched cost anything: one dict entry from
admission to completion. LATEST and version-id calls return at the first comparison.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from prometheus_client import Counter

from shared import rows
from shared.catalog import FunctionCatalog
from shared.errors import PyfcError
from shared.protocol import LATEST, Completion, ControlEvent, Invocation
from shared.release import (
    AutoRollback,
    ErrorWindow,
    RollbackRecord,
    counts_as_error,
    is_version_id,
    should_roll_back,
)
from shared.store import Store

log = logging.getLogger(f"pyfc.{__name__}")

# An entry whose completion never came (a lost sync release) is dropped after this.
WATCH_SECONDS = 3600.0

# (tenant, service, alias, canary version)
CanaryKey = tuple[str, str, str, str]


@dataclass(slots=True)
class _Watched:
    key: CanaryKey
    config: AutoRollback
    until: float


class CanaryWatch:
    def __init__(
        self,
        catalog: FunctionCatalog,
        store: Store,
        notify: Callable[[ControlEvent], Awaitable[None]],
        rollbacks: Counter,
    ) -> None:
        self._catalog = catalog
        self._store = store
        self._notify = notify
        self._rollbacks = rollbacks
        self._watched: dict[str, _Watched] = {}  # request id -> its canary
        self._windows: dict[CanaryKey, ErrorWindow] = {}
        self._tripping: set[CanaryKey] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def admitted(self, inv: Invocation) -> None:
        """An invocation will run: watch it if it runs an alias's watched canary."""
        if inv.qualifier == LATEST or is_version_id(inv.qualifier):
            return
        try:
            route = await self._catalog.alias(inv.tenant, inv.service, inv.qualifier)
        except PyfcError:
            return  # deleted since it was resolved: nothing to watch
        if route.auto_rollback is None or route.canary != inv.version:
            return
        key = (inv.tenant, inv.service, inv.qualifier, inv.version)
        self._watched[inv.id] = _Watched(key, route.auto_rollback, time.monotonic() + WATCH_SECONDS)

    def completed(self, done: Completion) -> None:
        """Count a watched invocation's outcome; trip the rollback when the canary fails."""
        if not self._watched:
            return
        if done.kind == "sync":
            failed = done.failed
        elif done.outcome is not None:
            failed = counts_as_error(done.outcome.status)
        else:
            return  # a copy not run: its real completion comes (or came) on its own
        watched = self._watched.pop(done.request_id, None)
        if watched is None:
            return
        key, config = watched.key, watched.config
        window = self._windows.get(key)
        if window is None or window.seconds != config.window_seconds:
            window = self._windows[key] = ErrorWindow(config.window_seconds)
        now = time.time()
        window.add(now, failed)
        if key in self._tripping or not should_roll_back(window.errors, window.total, config):
            return
        self._tripping.add(key)
        task = asyncio.create_task(self._trip(key, window, config))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def sweep(self, now: float) -> None:
        """Forget watched calls whose completion was lost, and idle windows."""
        for request_id in [r for r, w in self._watched.items() if w.until < now]:
            del self._watched[request_id]
        wall = time.time()
        for key, window in list(self._windows.items()):
            window.expire(wall)
            if not window.total and key not in self._tripping:
                del self._windows[key]

    async def _trip(self, key: CanaryKey, window: ErrorWindow, config: AutoRollback) -> None:
        tenant, service, alias, version = key
        rate = window.errors / window.total
        record = RollbackRecord(
            version_id=version,
            rolled_back_time=rows.now_iso(),
            reason=(
                f"error rate {rate:.1%} ({window.errors} of {window.total} invocations in "
                f"{config.window_seconds}s) above maxErrorRate {config.max_error_rate:.1%}"
            ),
            error_rate=round(rate, 4),
            errors=window.errors,
            invocations=window.total,
        )
        try:
            changed = await self._store.roll_back_alias(tenant, service, alias, record)
            if changed is None:
                log.info("alias %s.%s sends no share to version %s now", service, alias, version)
            else:
                log.warning(
                    "auto-rollback: alias %s.%s of tenant %s: version %s weight -> 0 (%s)",
                    service,
                    alias,
                    tenant,
                    version,
                    record.reason,
                )
                self._rollbacks.labels(tenant, service, alias, version).inc()
            self._windows.pop(key, None)
            event = ControlEvent(kind="alias-changed", tenant=tenant, service=service)
            self._catalog.invalidate(event)
            await self._notify(event)
        except Exception:
            # The next completion of the canary tries again.
            log.exception("auto-rollback of %s.%s (version %s) failed", service, alias, version)
        finally:
            self._tripping.discard(key)
