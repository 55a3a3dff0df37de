"""Warm instances of many functions sharing one worker's slots.

`InstancePool.invoke` takes an instance of the function with room for one more request
(warm start; an instance runs up to `instance_concurrency` requests at once), or joins an
instance of it that is still starting and has room left (its requests share that start, as
on FC or Lambda), or starts one (cold start) while there is a free slot, or evicts the least
recently used idle instance of another function, or waits for a slot. Slots count
instances, not requests. Which of these happens is decided by `choose`
(`worker.pool_decisions`), a pure function over plain data; the pool only moves instances
between its dicts.

A request that joined a start waits for it (until its own deadline at most). If the start
fails, the request fails with the same error rather than starting another instance: what
makes a start fail (the initializer, the module's import, a timeout) is the function's own
and would fail every start alike. If the request that started it is cancelled instead, the
joined ones choose again. Only the request that started an instance counts as its cold
start.

Provisioned instances (`InstancePool.provision`, kept by worker/provision.py) serve like any
warm instance, but are never evicted for another function nor reaped when idle.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from shared.codepkg import CUSTOM_RUNTIME
from shared.protocol import FunctionSpec, Invocation, Outcome
from worker.credentials import TokenIssuer
from worker.custom import CustomInstance
from worker.forking import Zygote
from worker.instance import Instance, InstanceStartError
from worker.limits import release_worker_group
from worker.outcomes import late, start_failed, unavailable
from worker.pool_decisions import choose, expired, provision_slot

log = logging.getLogger(f"pyfc.{__name__}")

# A Python instance (worker.child.bootstrap child) or a runtime-custom `bootstrap` process.
AnyInstance = Instance | CustomInstance


class Starting:
    """An instance being started for a request, which others of its key may join while its
    room lasts; `done` is set once `instance` is up or `error` says why not (neither: the
    request that started it gave up)."""

    def __init__(self, key: str, concurrency: int) -> None:
        self.key = key
        self.concurrency = concurrency
        self.reserved = 1  # the request that started it
        self.done = asyncio.Event()
        self.instance: AnyInstance | None = None
        self.error: InstanceStartError | None = None

    @property
    def room(self) -> int:
        return self.concurrency - self.reserved


@dataclass(slots=True)
class _Place:
    """Where one request runs: on a warm `instance` (a slot on it reserved), or on the
    instance of `starting`, which it `joined` or starts itself (after stopping `victim`)."""

    instance: AnyInstance | None = None
    starting: Starting | None = None
    joined: bool = False
    victim: AnyInstance | None = None


class _StartAbandoned(Exception):
    """The request that started an instance gave up on it (cancelled): choose again."""


@dataclass(slots=True)
class PoolStats:
    """Counters for metrics; plain ints so reading them costs nothing."""

    cold_starts: int = 0
    warm_starts: int = 0
    joined_starts: int = 0  # requests that waited for an instance another one was starting
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
        # instance key → instances being started for requests (joinable while room lasts)
        self._joinable: dict[str, list[Starting]] = {}
        self._starting = 0  # slots held by starts (requests' and provisioned ones)
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
        while True:
            place = await self._acquire(spec, inv.deadline)
            if place is None:
                return unavailable(inv) if self._closed else late(inv, "")
            instance, starting = place.instance, place.starting
            started = starting is not None and not place.joined
            try:
                if starting is not None and place.joined:
                    instance = await self._join(starting, inv.deadline)
                    if instance is None:
                        return late(inv, "")
                elif starting is not None:
                    instance = await self._start_for(starting, spec, code_dir, place.victim)
            except InstanceStartError as e:
                if started:
                    log.warning("cannot start %s: %s", spec.instance_key, e.message)
                return start_failed(inv, e.error_type, e.error_message, e.stack_trace, e.log)
            except _StartAbandoned:
                continue
            assert instance is not None
            break
        try:
            outcome = await instance.invoke(inv)
        finally:
            await self._release(instance)
        # Cold means a new instance was started for this request: the first request of a
        # provisioned instance is warm, and so are those that joined the start.
        outcome.cold_start = started
        return outcome

    async def _start_for(
        self, starting: Starting, spec: FunctionSpec, code_dir: Path, victim: AnyInstance | None
    ) -> AnyInstance:
        """Start the instance `starting` stands for (after stopping `victim`), let the
        requests that joined it in, and return it with their slots reserved on it."""
        try:
            if victim is not None:
                await victim.stop(self._stop_grace)
            instance = await self._start(spec, code_dir)
        except InstanceStartError as e:
            self.stats.start_failures += 1
            await self._start_ended(starting, None, e)
            raise
        except BaseException:
            await self._start_ended(starting, None, None)
            raise
        self.stats.cold_starts += 1
        self.stats.last_init_ms = instance.init_duration_ms
        await self._start_ended(starting, instance, None)
        return instance

    async def _start_ended(
        self, starting: Starting, instance: AnyInstance | None, error: InstanceStartError | None
    ) -> None:
        async with self._cond:
            self._starting -= 1
            joinable = self._joinable[starting.key]
            joinable.remove(starting)
            if not joinable:
                del self._joinable[starting.key]
            if instance is not None:
                self._instances[instance.instance_id] = instance
                instance.reserved = starting.reserved
                if instance.room > 0:  # concurrent requests may join it while it runs
                    self._idle.setdefault(starting.key, []).append(instance)
            starting.instance, starting.error = instance, error
            starting.done.set()
            self._cond.notify_all()

    async def _join(self, starting: Starting, deadline: float) -> AnyInstance | None:
        """Wait for the instance this request joined to be up; None if the deadline passed
        first. Raises its `InstanceStartError`, or `_StartAbandoned`."""
        try:
            async with asyncio.timeout(deadline - time.time() if deadline else None):
                await starting.done.wait()
        except TimeoutError:
            await self._leave(starting)
            return None
        except BaseException:  # cancelled
            await self._leave(starting)
            raise
        if starting.instance is not None:
            return starting.instance
        if starting.error is not None:
            raise starting.error
        raise _StartAbandoned

    async def _leave(self, starting: Starting) -> None:
        """Give up the place this request holds on `starting`, or on what it became."""
        async with self._cond:
            if not starting.done.is_set():
                starting.reserved -= 1  # room for another request
                self._cond.notify_all()
                return
        if starting.instance is not None:
            await self._release(starting.instance)

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

    async def _acquire(self, spec: FunctionSpec, deadline: float) -> _Place | None:
        """Where this request goes, with its slot (or its place on a start) reserved; None
        if the deadline passes first or the pool is closed."""
        key = spec.instance_key
        async with self._cond:
            while True:
                if self._closed:
                    return None
                used = len(self._instances) + self._starting
                decision = choose(key, self._idle, used, self.max_instances, self._joinable)
                chosen = decision.instance
                if isinstance(chosen, Starting):  # join
                    chosen.reserved += 1
                    self.stats.joined_starts += 1
                    return _Place(starting=chosen, joined=True)
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
                    return _Place(instance=chosen)
                if decision.action in ("cold", "evict"):
                    if chosen is not None:  # evict
                        self._forget_idle(chosen)
                        del self._instances[chosen.instance_id]
                        self.stats.evictions += 1
                    self._starting += 1
                    starting = Starting(key, spec.instance_concurrency)
                    self._joinable.setdefault(key, []).append(starting)
                    return _Place(starting=starting, victim=chosen)
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
