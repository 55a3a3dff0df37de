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


class Admission(Generic[T]):
    """Pools of slots by tenant (and by function, for reserved concurrency)."""

    def __init__(self) -> None:
        self._pools: dict[PoolKey, Pool[T]] = {}
        self._owner: dict[str, Pool[T]] = {}

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

    def try_acquire(self, pool: Pool[T], request_id: str, lease_seconds: float) -> bool:
        """Take a slot for `request_id` if the pool has one free."""
        if len(pool.running) >= pool.limit:
            return False
        pool.running[request_id] = time.monotonic() + lease_seconds
        self._owner[request_id] = pool
        return True

    def holds(self, request_id: str) -> bool:
        return request_id in self._owner

    def release(self, request_id: str) -> Pool[T] | None:
        """Free the slot of `request_id`; the pool it was in (None if we held none)."""
        pool = self._owner.pop(request_id, None)
        if pool is not None:
            pool.running.pop(request_id, None)
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
            if stale:
                freed.append(pool)
        return freed

    def pools(self) -> list[Pool[T]]:
        return list(self._pools.values())

    def forget_idle(self) -> None:
        """Drop pools with nothing running or waiting (tenants come and go)."""
        for key in [k for k, p in self._pools.items() if not p.running and not p.waiting]:
            del self._pools[key]
