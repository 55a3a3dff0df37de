"""Warm instances of many functions sharing one worker's slots.

`InstancePool.invoke` takes an instance of the function with room for one more request
(warm start; an instance runs up to `instance_concurrency` requests at once), or starts one
(cold start) while there is a free slot, or evicts the least recently used idle instance of
another function, or waits for a slot. Slots count instances, not requests. Which of these
happens is decided by `choose`, a pure function over plain data; the pool only moves
instances between its dicts.

Provisioned instances (`InstancePool.provision`, kept by worker/provision.py) serve like any
warm instance, but are never evicted for another function nor reaped when idle.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Literal, Protocol, TypeVar

from shared.codepkg import CUSTOM_RUNTIME
from shared.protocol import FunctionSpec, Invocation, Outcome
from worker.credentials import TokenIssuer
from worker.custom import CustomInstance
from worker.forking import Zygote
from worker.instance import Instance, InstanceStartError
from worker.limits import release_worker_group
from worker.outcomes import late, start_failed, unavailable

log = logging.getLogger(__name__)

# A Python instance (worker.bootstrap child) or a runtime-custom `bootstrap` process.
AnyInstance = Instance | CustomInstance


class Candidate(Protocol):
    """What `choose` needs to know about an instance that could take a request."""

    @property
    def last_used(self) -> float: ...

    @property
    def alive(self) -> bool: ...

    @property
    def reserved(self) -> int:
        """Requests promised to it (running or about to)."""
        ...

    @property
    def room(self) -> int:
        """Requests it may still take (instance_concurrency - reserved)."""
        ...

    @property
    def provisioned(self) -> bool:
        """Kept warm by a provision config: never evicted or reaped while it lives."""
        ...


C = TypeVar("C", bound=Candidate)


@dataclass(frozen=True, slots=True)
class Decision(Generic[C]):
    """`warm`: send it to `instance`; `cold`: start one in a free slot; `evict`: stop
    `instance` (idle, another function's) and start one in its slot; `wait`: no slot now."""

    action: Literal["warm", "cold", "evict", "wait"]
    instance: C | None = None


def choose(key: str, idle: Mapping[str, Sequence[C]], used: int, capacity: int) -> Decision[C]:
    """Where the next invocation of `key` runs.

    `idle` maps instance keys to their instances with room for a request (idle, or busy
    below their instance_concurrency); `used` counts every slot taken (instances idle,
    busy and starting). Requests pack onto the busiest instance with room, then the most
    recently used, so the rest stay idle long enough to be reaped; the least recently used
    idle one that is not provisioned is evicted.
    """
    same = [c for c in idle.get(key, ()) if c.room > 0]
    if same:
        return Decision("warm", max(same, key=lambda c: (c.reserved, c.last_used)))
    if used < capacity:
        return Decision("cold")
    return _evict_or_wait(key, idle)


def provision_slot(
    key: str, idle: Mapping[str, Sequence[C]], used: int, capacity: int
) -> Decision[C]:
    """Where one more provisioned instance of `key` comes from.

    `warm`: adopt a warm instance of it that is not provisioned yet (no start at all);
    `cold`: start one in a free slot; `evict`: stop the least recently used idle,
    unprovisioned instance of another function for it; `wait`: no slot now.
    """
    adoptable = [c for c in idle.get(key, ()) if c.alive and not c.provisioned]
    if adoptable:
        return Decision("warm", max(adoptable, key=lambda c: c.last_used))
    if used < capacity:
        return Decision("cold")
    return _evict_or_wait(key, idle)


def _evict_or_wait(key: str, idle: Mapping[str, Sequence[C]]) -> Decision[C]:
    others = [
        c for k, cs in idle.items() if k != key for c in cs if c.reserved == 0 and not c.provisioned
    ]
    if others:
        return Decision("evict", min(others, key=lambda c: c.last_used))
    return Decision("wait")


def expired(idle: Mapping[str, Sequence[C]], now: float, idle_seconds: float) -> list[C]:
    """Idle instances unused for at least `idle_seconds` (monotonic clock) and not
    provisioned, or dead."""
    return [
        c
        for cs in idle.values()
        for c in cs
        if c.reserved == 0
        and (not c.alive or (not c.provisioned and now - c.last_used >= idle_seconds))
    ]


@dataclass(slots=True)
class PoolStats:
    """Counters for metrics; plain ints so reading them costs nothing."""

    cold_starts: int = 0
    warm_starts: int = 0
    start_failures: int = 0
    evictions: int = 0
    reaped: int = 0
    last_init_ms: float = 0.0
    provisioned_starts: int = 0


class InstancePool:
    """Up to `max_instances` instances, of any functions, on this worker."""

    def __init__(
        self,
        max_instances: int,
        *,
        python: str = sys.executable,
        stop_grace: float = 2.0,
        memory_cgroups: bool = True,
        zygote: Zygote | None = None,
        issuer: TokenIssuer | None = None,
    ) -> None:
        self.max_instances = max_instances
        self._issuer = issuer  # invoke tokens for functions (worker.credentials), if set
        self._zygote = zygote  # Python instances fork from it when set (worker.forking)
        self.stats = PoolStats()
        self._python = python
        self._stop_grace = stop_grace
        self._memory_cgroups = memory_cgroups
        self._instances: dict[str, AnyInstance] = {}  # every started, not yet dropped instance
        # instance key → instances with room for another request (idle or partly busy)
        self._idle: dict[str, list[AnyInstance]] = {}
        self._starting = 0
        self._closed = False
        self._cond = asyncio.Condition()

    @property
    def instances_alive(self) -> int:
        """Instances started and not yet dropped (idle or busy)."""
        return len(self._instances)

    @property
    def instances_idle(self) -> int:
        """Warm instances waiting for work (no request in flight)."""
        return sum(1 for v in self._idle.values() for i in v if i.reserved == 0)

    @property
    def instances_busy(self) -> int:
        """Instances running at least one request now."""
        return len(self._instances) - self.instances_idle

    def snapshot(self) -> list[AnyInstance]:
        """Every live instance now (for metrics read at scrape time)."""
        return list(self._instances.values())

    def instance(self, instance_id: str) -> AnyInstance | None:
        return self._instances.get(instance_id)

    @property
    def instances_starting(self) -> int:
        """Slots held by instances still in their cold start."""
        return self._starting

    async def invoke(self, spec: FunctionSpec, code_dir: Path, inv: Invocation) -> Outcome:
        """Run `inv` on a warm or new instance of `spec`; failures come back as Outcomes."""
        acquired = await self._acquire(spec.instance_key, inv.deadline)
        if acquired is None:
            return unavailable(inv) if self._closed else late(inv, "")
        instance, victim = acquired
        if victim is not None:
            await victim.stop(self._stop_grace)
        started = instance is None
        if instance is None:
            try:
                instance = await self._start(spec, code_dir)
            except InstanceStartError as e:
                self.stats.start_failures += 1
                await self._unreserve()
                log.warning("cannot start %s: %s", spec.instance_key, e.message)
                return start_failed(inv, e.error_type, e.error_message, e.stack_trace, e.log)
            except BaseException:
                await self._unreserve()
                raise
            self.stats.cold_starts += 1
            self.stats.last_init_ms = instance.init_duration_ms
            async with self._cond:
                self._starting -= 1
                self._instances[instance.instance_id] = instance
                instance.reserved = 1
                if instance.room > 0:  # concurrent requests may join it while it runs
                    self._idle.setdefault(spec.instance_key, []).append(instance)
                    self._cond.notify_all()
        try:
            outcome = await instance.invoke(inv)
        finally:
            await self._release(instance)
        # Cold means a new instance was started for this request: the first request of a
        # provisioned instance is warm.
        outcome.cold_start = outcome.cold_start and started
        return outcome

    async def _start(self, spec: FunctionSpec, code_dir: Path) -> AnyInstance:
        if spec.runtime == CUSTOM_RUNTIME:
            return await CustomInstance.start(
                spec, code_dir, memory_cgroups=self._memory_cgroups, issuer=self._issuer
            )
        return await Instance.start(
            spec,
            code_dir,
            python=self._python,
            memory_cgroups=self._memory_cgroups,
            zygote=self._zygote,
            issuer=self._issuer,
        )

    async def _acquire(
        self, key: str, deadline: float
    ) -> tuple[AnyInstance | None, AnyInstance | None] | None:
        """(warm instance or None to start one, idle instance to evict first); None if late."""
        async with self._cond:
            while True:
                if self._closed:
                    return None
                used = len(self._instances) + self._starting
                decision = choose(key, self._idle, used, self.max_instances)
                chosen = decision.instance
                if decision.action == "warm" and chosen is not None:
                    if not chosen.alive:  # died (OOM killer, ...): drop, retry
                        self._forget_idle(chosen)
                        if chosen.reserved == 0:
                            del self._instances[chosen.instance_id]
                        continue
                    chosen.reserved += 1
                    if chosen.room <= 0:
                        self._forget_idle(chosen)
                    self.stats.warm_starts += 1
                    return chosen, None
                if decision.action == "cold":
                    self._starting += 1
                    return None, None
                if decision.action == "evict" and chosen is not None:
                    self._forget_idle(chosen)
                    del self._instances[chosen.instance_id]
                    self._starting += 1
                    self.stats.evictions += 1
                    return None, chosen
                if not await self._wait_for_slot(deadline):
                    return None

    async def _wait_for_slot(self, deadline: float) -> bool:
        """Wait (lock held) until something is released; False if the deadline passes first."""
        if not deadline:
            await self._cond.wait()
            return True
        try:
            async with asyncio.timeout(deadline - time.time()):
                await self._cond.wait()
        except TimeoutError:
            return False
        return True

    def provisioned(self) -> list[AnyInstance]:
        """Live provisioned instances now."""
        return [i for i in self._instances.values() if i.provisioned and i.alive]

    async def provision(self, spec: FunctionSpec, code_dir: Path) -> AnyInstance | None:
        """One more provisioned instance of `spec`, started (or adopted if a warm one of it
        is not provisioned yet); None when no slot can be had now (busy or provisioned).

        Raises `InstanceStartError` when it cannot start.
        """
        key = spec.instance_key
        async with self._cond:
            if self._closed:
                return None
            dead = [i for cs in self._idle.values() for i in cs if not i.alive and i.reserved == 0]
            for instance in dead:  # their slots are free for this one
                self._forget_idle(instance)
                del self._instances[instance.instance_id]
            used = len(self._instances) + self._starting
            decision = provision_slot(key, self._idle, used, self.max_instances)
            chosen = decision.instance
            if decision.action == "warm" and chosen is not None:
                chosen.provisioned = True
                return chosen
            if decision.action == "wait":
                return None
            if chosen is not None:  # evict
                self._forget_idle(chosen)
                del self._instances[chosen.instance_id]
                self.stats.evictions += 1
            self._starting += 1
        stopped = [*dead, chosen] if chosen is not None else dead
        await asyncio.gather(*(i.stop(self._stop_grace) for i in stopped))
        try:
            instance = await self._start(spec, code_dir)
        except BaseException:
            await self._unreserve()
            raise
        instance.provisioned = True
        self.stats.provisioned_starts += 1
        async with self._cond:
            self._starting -= 1
            closed = self._closed
            if not closed:
                self._instances[instance.instance_id] = instance
                self._idle.setdefault(key, []).append(instance)
            self._cond.notify_all()
        if closed:
            await instance.stop(self._stop_grace)
            return None
        return instance

    async def unprovision(self, instance: AnyInstance) -> None:
        """No longer provisioned: stopped now if idle, else an ordinary warm instance that
        finishes its requests and is reaped when idle."""
        async with self._cond:
            instance.provisioned = False
            idle = instance.reserved == 0 and instance in self._idle.get(
                instance.spec.instance_key, ()
            )
            if idle:
                self._forget_idle(instance)
                self._instances.pop(instance.instance_id, None)
                self._cond.notify_all()
        if idle:
            await instance.stop(self._stop_grace)

    async def _unreserve(self) -> None:
        async with self._cond:
            self._starting -= 1
            self._cond.notify_all()

    async def _release(self, instance: AnyInstance) -> None:
        async with self._cond:
            instance.reserved -= 1
            listed = instance in self._idle.get(instance.spec.instance_key, ())
            if instance.alive and not self._closed:
                if not listed:
                    self._idle.setdefault(instance.spec.instance_key, []).append(instance)
            else:
                if listed:
                    self._forget_idle(instance)
                # A dead instance frees its slot at once, even with requests still failing.
                self._instances.pop(instance.instance_id, None)
            self._cond.notify_all()
        if self._closed and instance.alive and instance.reserved == 0:
            await instance.stop(self._stop_grace)

    def _forget_idle(self, instance: AnyInstance) -> None:
        key = instance.spec.instance_key
        idle = self._idle[key]
        idle.remove(instance)
        if not idle:
            del self._idle[key]

    async def reap_idle(self, idle_seconds: float) -> None:
        """Stop instances idle for `idle_seconds` or more (and any that died while idle)."""
        now = time.monotonic()
        async with self._cond:
            victims = expired(self._idle, now, idle_seconds)
            for instance in victims:
                self._forget_idle(instance)
                del self._instances[instance.instance_id]
            self._cond.notify_all()
        self.stats.reaped += len(victims)
        await asyncio.gather(*(i.stop(self._stop_grace) for i in victims))

    async def close(self) -> None:
        """Stop every instance; invocations still waiting for a slot come back late."""
        async with self._cond:
            self._closed = True
            instances = list(self._instances.values())
            self._instances.clear()
            self._idle.clear()
            self._cond.notify_all()
        await asyncio.gather(*(i.stop(self._stop_grace) for i in instances))
        if self._zygote is not None:  # its spare's memory group lives in the worker's
            await self._zygote.spares.close()
        await asyncio.to_thread(release_worker_group)
