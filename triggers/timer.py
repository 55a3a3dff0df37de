"""The timer source: every enabled timer trigger on one heap, fired exactly once.

One scheduler for all timers of the process: a heap of (next fire time, timer) and one
loop timer armed for its head, so an idle timer costs a heap entry and nothing per tick.
Due entries are fired in batches (one claim statement, accepts that share a group commit
and a publish, one finish statement):

1. claim: insert a `trigger_fires` row per (trigger, scheduled time); the primary key
   lets one replica win (every replica schedules every timer);
2. accept: record the invocation and publish it with a broker confirm, its request id
   derived from (trigger id, scheduled time) and marked `once`;
3. finish: mark the claim published.

A replica that dies between 1 and 3 leaves a claim whose lease lapses; any replica's
sweep takes it over (compare-and-set) and does 2 and 3 again. If the dead replica had
published, the second copy carries the same id and `once`, and the dispatcher admits only
the first copy of an id (`Store.admit_first`): so no time runs twice and none is lost
while one replica lives. docs/architecture.md "Triggers" has the whole design.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared import cron
from shared.errors import PyfcError
from shared.protocol import Invocation
from shared.store import Store
from shared.store_triggers import Fire
from shared.trigger_types import TimerConfig, timer_event
from triggers.adapter import ActiveTrigger, Emitter, event_id, iso_utc
from triggers.metrics import TriggerMetrics
from triggers.timer_policy import LATE_GRACE_SECONDS, catch_up, first_due, overlap_verdict

log = logging.getLogger(f"pyfc.{__name__}")

KIND = "timer"
LEASE_SECONDS = 5.0
SWEEP_SECONDS = 1.0
PRUNE_SECONDS = 60.0
QUEUE_POLL_SECONDS = 0.25
# Fires are claimed and recorded this long before their time, so only the publish is
# left when it comes (bench/cron.py: the store's commits are off the jitter). Fire times
# are whole seconds, so a lead of k + 0.5 s also keeps the preparing of later fires off
# the instants the earlier ones are published.
LEAD_SECONDS = 1.5
LATE_WARNING_SECONDS = 0.05
MAX_CLAIM_BATCH = 500
CLAIM_ATTEMPTS = 3
COMPACT_AFTER = 1000
# The loop timer is re-armed at least this often, so a wall-clock step is noticed.
MAX_SLEEP = 30.0


@dataclass(slots=True)
class _Prepared:
    """A claimed fire and its invocation, recorded before its scheduled time."""

    timer: _Timer
    fire: Fire
    invocation: Invocation


@dataclass(slots=True)
class _Timer:
    active: ActiveTrigger
    schedule: cron.Schedule
    generation: int

    @property
    def config(self) -> TimerConfig:
        config: TimerConfig = self.active.config
        return config


def owner_id() -> str:
    """This process among the replicas (host, pid, and a nonce for pid reuse)."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _iso_seconds(text: str) -> float:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


class TimerSource:
    kind = KIND

    def __init__(
        self,
        store: Store,
        emitter: Emitter,
        metrics: TriggerMetrics,
        *,
        owner: str,
        catch_up_window: float,
        catch_up_limit: int,
        lease_seconds: float = LEASE_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._emitter = emitter
        self._metrics = metrics
        self._owner = owner
        self._window = catch_up_window
        self._limit = catch_up_limit
        self._lease = lease_seconds
        self._clock = clock
        self._timers: dict[str, _Timer] = {}
        # (due, seq, trigger id, generation, regular): a catch-up entry is not regular
        # (it does not schedule the next fire).
        self._heap: list[tuple[float, int, str, int, bool]] = []
        self._seq = itertools.count()
        # Heap entries left by removed or changed timers (dropped when popped, or all at
        # once by `_compact` when they outnumber the live ones).
        self._stale = 0
        self._generations = itertools.count(1)
        self._armed: asyncio.TimerHandle | None = None
        self._armed_for = 0.0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop = asyncio.get_running_loop()
        self._chores: list[asyncio.Task[Any]] = []

    @classmethod
    async def open(
        cls,
        store: Store,
        emitter: Emitter,
        metrics: TriggerMetrics,
        *,
        catch_up_window: float,
        catch_up_limit: int,
        lease_seconds: float = LEASE_SECONDS,
    ) -> TimerSource:
        """A running timer source with no timers yet (the cache syncs them in)."""
        return cls(
            store,
            emitter,
            metrics,
            owner=owner_id(),
            catch_up_window=catch_up_window,
            catch_up_limit=catch_up_limit,
            lease_seconds=lease_seconds,
        )

    @property
    def timers(self) -> int:
        return len(self._timers)

    async def close(self) -> None:
        """Stop firing, then hand back the claims not yet published (a rolling restart
        loses no scheduled time: another replica's next sweep, within a second, takes
        them over; a replica killed without this leaves them to lapse instead)."""
        if self._armed is not None:
            self._armed.cancel()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            released = await self._store.release_fires(self._owner)
        except PyfcError as e:
            log.warning("cannot hand back timer claims (they lapse instead): %s", e.message)
            return
        if released:
            log.info("handed back %d timer fires not yet published", released)

    # -- the set of timers -----------------------------------------------------------

    async def sync(self, changed: list[ActiveTrigger], removed: list[str]) -> None:
        """Schedule new and changed timers (missed runs per their policy); drop removed."""
        self._stale += sum(1 for a in changed if a.trigger_id in self._timers)
        for trigger_id in removed:
            self._stale += self._timers.pop(trigger_id, None) is not None
        if self._stale > len(self._timers) + COMPACT_AFTER:
            self._compact()
        last: dict[str, int] = {}
        ids = [a.trigger_id for a in changed]
        for i in range(0, len(ids), MAX_CLAIM_BATCH):
            last.update(await self._store.last_fires(ids[i : i + MAX_CLAIM_BATCH]))
        now = self._clock()
        for active in changed:
            config: TimerConfig = active.config
            timer = _Timer(active, config.schedule(), next(self._generations))
            self._timers[active.trigger_id] = timer
            # Missed runs count from the last fire, or from the last change (an update or
            # enabling starts the schedule afresh: a disabled spell is not downtime).
            baseline = max(
                last.get(active.trigger_id, 0) / 1000.0,
                _iso_seconds(active.trigger.last_modified_time),
            )
            for due in catch_up(
                timer.schedule, config.missed_runs, baseline, now, self._window, self._limit
            ):
                self._push(due, timer, regular=False)
            self._push(first_due(timer.schedule, baseline, now), timer, regular=True)
        self._metrics.triggers.labels(KIND).set(len(self._timers))
        self._arm()
        if not self._chores:
            # After the first load: a sweep before it would see every trigger as gone.
            self._chores = [
                self._spawn(self._every(SWEEP_SECONDS, self._sweep)),
                self._spawn(self._every(PRUNE_SECONDS, self._prune)),
            ]

    def _compact(self) -> None:
        """Drop the entries of removed and changed timers (otherwise each stays until its
        time comes, a year for a yearly schedule)."""
        self._heap = [
            entry
            for entry in self._heap
            if (timer := self._timers.get(entry[2])) is not None and timer.generation == entry[3]
        ]
        heapq.heapify(self._heap)
        self._stale = 0
        if self._armed is not None:
            self._armed.cancel()
            self._armed = None

    def _push(self, due: float, timer: _Timer, *, regular: bool) -> None:
        heapq.heappush(
            self._heap,
            (due, next(self._seq), timer.active.trigger_id, timer.generation, regular),
        )

    # -- the scheduler ---------------------------------------------------------------

    def _arm(self) -> None:
        """Arm the one loop timer for the heap's head, LEAD_SECONDS early (re-armed only
        if the head moved earlier)."""
        if not self._heap:
            return
        wake = self._heap[0][0] - LEAD_SECONDS
        if self._armed is not None:
            if wake >= self._armed_for:
                return
            self._armed.cancel()
        delay = min(max(0.0, wake - self._clock()), MAX_SLEEP)
        self._armed_for = wake if delay < MAX_SLEEP else self._clock() + MAX_SLEEP
        self._armed = self._loop.call_later(delay, self._on_due)

    def _on_due(self) -> None:
        """Take every entry due within LEAD_SECONDS off the heap and prepare it."""
        self._armed = None
        now = self._clock()
        due: list[tuple[_Timer, float]] = []
        while self._heap and self._heap[0][0] <= now + LEAD_SECONDS:
            at, _, trigger_id, generation, regular = heapq.heappop(self._heap)
            timer = self._timers.get(trigger_id)
            if timer is None or timer.generation != generation:
                continue  # removed or changed since: its new entry is in the heap
            due.append((timer, at))
            if regular:
                after = at
                if now - at > LATE_GRACE_SECONDS:
                    # This process stalled: what it missed meanwhile is not fired late
                    # (another replica fired it, or missedRuns applies at the next load).
                    after = now - LATE_GRACE_SECONDS
                    self._metrics.skipped.labels(KIND, "late").inc()
                nxt = cron.next_fire(timer.schedule, datetime.fromtimestamp(after, UTC))
                self._push(nxt.timestamp(), timer, regular=True)
        for i in range(0, len(due), MAX_CLAIM_BATCH):
            self._spawn(self._fire(due[i : i + MAX_CLAIM_BATCH]))
        self._arm()

    # -- firing ----------------------------------------------------------------------

    async def _fire(self, due: list[tuple[_Timer, float]]) -> None:
        """Claim and record ahead of time, then publish at the scheduled time."""
        timers: dict[tuple[str, int], _Timer] = {}
        fires: list[Fire] = []
        for timer, at in due:
            ms = round(at * 1000)
            tid = timer.active.trigger_id
            timers[(tid, ms)] = timer
            fires.append(Fire(tid, ms, timer.active.tenant, event_id(tid, str(ms))))
        claimed = await self._claim(fires)
        await self._complete([(timers[(f.trigger_id, f.scheduled_ms)], f) for f in claimed])

    async def _claim(self, fires: list[Fire]) -> list[Fire]:
        for attempt in range(CLAIM_ATTEMPTS):
            try:
                return await self._store.claim_fires(
                    fires, self._owner, self._clock() + LEAD_SECONDS + self._lease
                )
            except PyfcError as e:
                log.warning("cannot claim %d timer fires (try %d): %s", len(fires), attempt + 1, e)
                await asyncio.sleep(0.5 * (attempt + 1))
        log.error("gave up claiming %d timer fires: the store is unavailable", len(fires))
        self._metrics.skipped.labels(KIND, "store-unavailable").inc(len(fires))
        return []

    async def _complete(self, claimed: list[tuple[_Timer, Fire]]) -> None:
        """Fire claimed times: overlap rules first where a trigger has them; the others are
        recorded now and published at their scheduled time, in one group per time."""
        plain: list[_Prepared] = []
        for timer, fire in claimed:
            if timer.config.overlap != "allow":
                self._spawn(self._fire_after_previous(timer, fire))
            else:
                plain.append(_Prepared(timer, fire, self._invocation(timer, fire)))
        recorded = await self._record(plain)
        by_time: dict[int, list[_Prepared]] = {}
        for prepared in recorded:
            by_time.setdefault(prepared.fire.scheduled_ms, []).append(prepared)
        await asyncio.gather(
            *(self._publish_at(ms / 1000.0, group) for ms, group in by_time.items())
        )

    def _invocation(self, timer: _Timer, fire: Fire) -> Invocation:
        at = fire.scheduled_ms / 1000.0
        event = timer_event(iso_utc(at), timer.active.trigger.trigger_name, timer.config.payload)
        return self._emitter.invocation(
            timer.active, event, fire.request_id, once=True, created_at=at
        )

    async def _record(self, prepared: list[_Prepared]) -> list[_Prepared]:
        """Record the invocations (one group commit); the ones recorded."""

        async def one(p: _Prepared) -> _Prepared | None:
            try:
                await self._emitter.record(p.timer.active, p.invocation)
            except PyfcError as e:
                # The claim stays: its lease lapses and the sweep completes it.
                log.warning("timer %s: cannot record a fire: %s", p.timer.active.label, e)
                return None
            return p

        return [p for p in await asyncio.gather(*(one(p) for p in prepared)) if p is not None]

    async def _publish_at(self, at: float, group: list[_Prepared]) -> None:
        """At `at`, publish the group (those whose trigger is still enabled and served)."""
        delay = at - self._clock()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -LATE_WARNING_SECONDS:
            log.warning("%d timer fires were ready %.0f ms late", len(group), -delay * 1000)
        live = [p for p in group if self._timers.get(p.fire.trigger_id) is not None]
        if gone := [p.fire for p in group if self._timers.get(p.fire.trigger_id) is None]:
            # Disabled or deleted while it was prepared: the change wins.
            self._metrics.skipped.labels(KIND, "removed").inc(len(gone))
            await self._finish_skipped(gone)
        await self._publish(live)

    async def _publish(self, prepared: list[_Prepared]) -> None:
        if not prepared:
            return
        results = await self._emitter.publish_all(
            [(p.timer.active, p.invocation) for p in prepared]
        )
        now = self._clock()
        published: list[Fire] = []
        for p, error in zip(prepared, results, strict=True):
            if error is not None:
                # The claim stays: its lease lapses and the sweep publishes it again.
                log.warning("timer %s: fire not published: %s", p.timer.active.label, error)
                continue
            self._metrics.lag.labels(KIND).observe(max(0.0, now - p.fire.scheduled_ms / 1000.0))
            published.append(p.fire)
        try:
            await self._store.finish_fires(published, self._owner, "published")
        except PyfcError as e:
            # Published but not marked: a takeover publishes a copy the dispatcher drops.
            log.warning("cannot mark %d timer fires published: %s", len(published), e)

    async def _fire_after_previous(self, timer: _Timer, fire: Fire) -> None:
        """overlap skip/queue: at the scheduled time, look at the trigger's previous run."""
        policy = timer.config.overlap
        delay = fire.scheduled_ms / 1000.0 - self._clock()
        if delay > 0:
            await asyncio.sleep(delay)
        while True:
            try:
                previous = await self._store.previous_run(fire.trigger_id, fire.scheduled_ms)
            except PyfcError as e:
                log.warning("cannot read the previous run of %s: %s", timer.active.label, e)
                return  # the claim's lease lapses; the sweep tries again
            status = None if previous is None else previous.status
            verdict = overlap_verdict(policy, status)
            if previous is not None and previous.earlier_pending:
                verdict = "skip"  # another fire of it is waiting already (queue keeps one)
            if verdict == "fire":
                prepared = await self._record(
                    [_Prepared(timer, fire, self._invocation(timer, fire))]
                )
                await self._publish_at(fire.scheduled_ms / 1000.0, prepared)
                return
            if verdict == "skip" or self._timers.get(fire.trigger_id) is not timer:
                self._metrics.skipped.labels(KIND, "overlap").inc()
                await self._finish_skipped([fire])
                return
            # queue: wait for the previous run, keeping our claim.
            await asyncio.sleep(QUEUE_POLL_SECONDS)
            lease = self._clock() + self._lease
            if not await self._store.extend_fire(fire, self._owner, lease):
                return  # no longer ours (taken over after a stall)

    async def _finish_skipped(self, fires: list[Fire]) -> None:
        try:
            await self._store.finish_fires(fires, self._owner, "skipped")
        except PyfcError as e:
            log.warning("cannot mark %d timer fires skipped: %s", len(fires), e)

    # -- chores ----------------------------------------------------------------------

    async def _sweep(self) -> None:
        """Take over claims whose owner died (lease lapsed) and complete them."""
        now = self._clock()
        taken = await self._store.take_over_lapsed(
            self._owner, now, now + self._lease, limit=MAX_CLAIM_BATCH
        )
        if not taken:
            return
        self._metrics.taken_over.labels(KIND).inc(len(taken))
        log.info("took over %d timer fires whose claim lapsed", len(taken))
        known = [(self._timers[f.trigger_id], f) for f in taken if f.trigger_id in self._timers]
        unknown = [f for f in taken if f.trigger_id not in self._timers]
        # Not served here: deleted or disabled since it was claimed (the change wins), or
        # not loaded here yet (left alone: the claim lapses again and is retried).
        enabled = await self._store.enabled_triggers([f.trigger_id for f in unknown])
        if gone := [f for f in unknown if f.trigger_id not in enabled]:
            self._metrics.skipped.labels(KIND, "removed").inc(len(gone))
            await self._finish_skipped(gone)
        await self._complete(known)

    async def _prune(self) -> None:
        horizon = self._clock() - self._window - 3600.0
        await self._store.prune_fires(int(horizon * 1000))

    async def _every(self, seconds: float, chore: Callable[[], Coroutine[Any, Any, None]]) -> None:
        while True:
            # At x.75 s: away from the whole seconds fires are published at and the x.5
            # where the next are prepared.
            await asyncio.sleep(seconds - (self._clock() - 0.75) % 1.0)
            try:
                await chore()
            except PyfcError as e:
                log.warning("timer %s failed: %s", chore.__name__, e.message)
            except Exception:
                log.exception("timer %s failed", chore.__name__)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("timer task failed", exc_info=error)
