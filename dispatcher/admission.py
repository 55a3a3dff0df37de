"""Concurrency accounting of the tenants on this dispatcher's shards (pure, no I/O).

Every tenant hashes to one shard and every shard has one active dispatcher, so the
counters of a tenant live in exactly one process: admission is a dict lookup, not a
round trip. An invocation takes a slot in one pool: its function's own pool when the
function has reserved concurrency, else the tenant's shared pool (the tenant cap minus
everything reserved). Slots are held by request id until the worker's completion for
that id arrives, so a duplicate or stray completion cannot free someone else's slot.

Async work over the cap waits here, in arrival order per pool, as unacked deliveries:
the broker keeps it (a crash redelivers it to the next dispatcher) while other tenants'
work passes it by.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")

PoolKey = tuple[str, ...]


@dataclass(slots=True)
class Pool(Generic[T]):
    key: PoolKey
    limit: int
    # request id -> lease expiry (monotonic): a slot whose completion never comes back
    # (a lost sync release, say) is reclaimed when its lease runs out.
    running: dict[str, float] = field(default_factory=dict)
    waiting: deque[T] = field(default_factory=deque)

    @property
    def free(self) -> int:
        return self.limit - len(self.running)


class FleetSlots:
    """The workers' slots as heard on their heartbeats (a worker unheard is gone)."""

    def __init__(self, expire_after: float = 7.0) -> None:
        self._expire_after = expire_after
        self._workers: dict[str, tuple[int, float]] = {}

    def heard(self, worker_id: str, slots: int, leaving: bool, now: float) -> None:
        if leaving:
            self._workers.pop(worker_id, None)
        elif slots > 0:
            self._workers[worker_id] = (slots, now)

    def total(self, now: float) -> int:
        """Slots of the live fleet; 0 when unknown (no heartbeats heard)."""
        for worker in [w for w, (_, t) in self._workers.items() if now - t > self._expire_after]:
            del self._workers[worker]
        return sum(slots for slots, _ in self._workers.values())


def async_share(fleet_slots: int) -> int:
    """How much of the fleet async work may occupy: all but a quarter (at least one slot),
    kept for sync calls, which are never queued behind a backlog. 0 = no limit known."""
    if fleet_slots <= 0:
        return 0
    return max(1, fleet_slots - max(1, fleet_slots // 4))


class Admission(Generic[T]):
    """Pools of slots by tenant (and by function, for reserved concurrency).

    Async work also counts against the fleet: no more is routed than the workers have
    slots for (`async_share`), so a tenant's backlog waits here, where every tenant's
    waiting work is taken in turn (`next_waiting`), not in the shared work queue, where
    it would be run in arrival order ahead of everyone else's.
    """

    def __init__(self) -> None:
        self._pools: dict[PoolKey, Pool[T]] = {}
        self._owner: dict[str, Pool[T]] = {}
        # async request id -> the share of an instance (slot) it occupies
        self._async: dict[str, float] = {}
        self._async_used = 0.0
        self._turns: deque[Pool[T]] = deque()
        self.async_limit = 0  # 0 = unknown fleet: no limit

    def pool(
        self,
        tenant: str,
        service: str,
        function: str,
        *,
        tenant_cap: int,
        reserved_total: int,
        reserved: int | None,
    ) -> Pool[T]:
        """The pool an invocation of this function draws from, with its current limit."""
        if reserved is not None:
            key: PoolKey = (tenant, service, function)
            limit = reserved
        else:
            key = (tenant,)
            limit = max(0, tenant_cap - reserved_total)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = Pool(key, limit)
        else:
            pool.limit = limit
        return pool

    def try_acquire(
        self,
        pool: Pool[T],
        request_id: str,
        lease_seconds: float,
        *,
        is_async: bool = False,
        per_instance: int = 1,
    ) -> bool:
        """Take a slot for `request_id` if the pool (and, for async, the fleet) has room.

        Worker slots hold instances, and one instance serves `per_instance`
        (instanceConcurrency) requests at once: an async request takes that share of one.
        """
        if len(pool.running) >= pool.limit:
            return False
        weight = 1.0 / max(1, per_instance)
        if is_async and self.async_limit and self._async_used + weight > self.async_limit + 1e-9:
            return False
        pool.running[request_id] = time.monotonic() + lease_seconds
        self._owner[request_id] = pool
        if is_async:
            self._async[request_id] = weight
            self._async_used += weight
        return True

    def _forget_async(self, request_id: str) -> None:
        weight = self._async.pop(request_id, None)
        if weight is not None:
            self._async_used = max(0.0, self._async_used - weight) if self._async else 0.0

    def wait(self, pool: Pool[T], item: T) -> None:
        """Queue `item` in its pool, which joins the turns if it was not waiting yet."""
        if not pool.waiting:
            self._turns.append(pool)
        pool.waiting.append(item)

    def next_waiting(self) -> tuple[Pool[T], T] | None:
        """The next waiting item that may take a slot now, taking pools in turn; the
        caller then tries to acquire for it (and puts it back with `unget` if it cannot)."""
        for _ in range(len(self._turns)):
            pool = self._turns.popleft()
            if not pool.waiting:
                continue
            self._turns.append(pool)
            if pool.free > 0:
                return pool, pool.waiting.popleft()
        return None

    def unget(self, pool: Pool[T], item: T) -> None:
        pool.waiting.appendleft(item)
        if pool not in self._turns:
            self._turns.append(pool)

    @property
    def async_running(self) -> int:
        return len(self._async)

    @property
    def async_slots_used(self) -> float:
        return self._async_used

    def holds(self, request_id: str) -> bool:
        return request_id in self._owner

    def release(self, request_id: str) -> Pool[T] | None:
        """Free the slot of `request_id`; the pool it was in (None if we held none)."""
        pool = self._owner.pop(request_id, None)
        if pool is not None:
            pool.running.pop(request_id, None)
            self._forget_async(request_id)
        return pool

    def expire(self, now: float | None = None) -> list[Pool[T]]:
        """Reclaim slots whose lease ran out; the pools that gained room."""
        now = time.monotonic() if now is None else now
        freed: list[Pool[T]] = []
        for pool in self._pools.values():
            stale = [rid for rid, expiry in pool.running.items() if expiry <= now]
            for rid in stale:
                del pool.running[rid]
                self._owner.pop(rid, None)
                self._forget_async(rid)
            if stale:
                freed.append(pool)
        return freed

    def pools(self) -> list[Pool[T]]:
        return list(self._pools.values())

    def forget_idle(self) -> None:
        """Drop pools with nothing running or waiting (tenants come and go)."""
        for key in [k for k, p in self._pools.items() if not p.running and not p.waiting]:
            del self._pools[key]
        self._turns = deque(p for p in self._turns if p.waiting)
