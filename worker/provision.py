"""Provisioned instances on this worker: keep its share of every provision target warm.

Inputs, all from the broker: the provision snapshot (dispatchers publish the whole desired
state on `{ns}.provision`), the heartbeats of the fleet (`{ns}.fleet`; this worker beats
too), and the pool's own instances. A reconcile pass, every second and at once when an
input changes, computes this worker's share (`worker.placement.place`) and starts or
retires instances to match (`worker.placement.plan`). A provisioned instance that dies
drops out of the pool, and the next pass starts another; a worker whose heartbeats stop is
dropped from the fleet after `expire_after`, and the others take its share.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractRobustConnection,
)

from shared import codec
from shared.errors import PyfcError
from shared.protocol import FunctionSpec, ProvisionSnapshot, WorkerBeat
from shared.topology import Topology, declare_fanout
from worker.affinity import AffinityQueue
from worker.codecache import CodeCache
from worker.placement import Fleet, Held, Wanted, function_key, place, plan, provision_capacity
from worker.pool import AnyInstance, InstancePool

log = logging.getLogger(f"pyfc.{__name__}")

BEAT_SECONDS = 2.0
RECONCILE_SECONDS = 1.0
# A new worker listens this long before it acts, so it has heard the fleet (workers answer
# a first heartbeat at once) and does not start what another worker already keeps.
SETTLE_SECONDS = 0.5
# A start that fails (initializer error, code fetch) is retried with doubling delays.
RETRY_BASE_SECONDS, RETRY_MAX_SECONDS = 1.0, 60.0
# A beat is stale once the fleet's expiry (3 beats + 1 s) has passed: do not wait longer
# than that for one (every other publish waits shared.broker.PUBLISH_TIMEOUT).
BEAT_PUBLISH_TIMEOUT = 5.0


class Provisioner:
    """Built and started by `open` (its first beat is out then); `close` stops it."""

    def __init__(
        self,
        channel: AbstractChannel,
        fleet_exchange: AbstractExchange,
        topo: Topology,
        pool: InstancePool,
        code: CodeCache,
        *,
        worker_id: str,
        slots: int,
        beat_seconds: float,
        affinity: AffinityQueue | None,
    ) -> None:
        self._channel = channel
        self._fleet_exchange = fleet_exchange
        self._topo = topo
        self._pool = pool
        self._code = code
        self.worker_id = worker_id
        self.capacity = provision_capacity(slots)
        self._slots = slots
        self._beat_seconds = beat_seconds
        # Beats carry this worker's warm room when it has an affinity queue.
        self._affinity = affinity
        self._beat_lock = asyncio.Lock()
        self._beat_due = False
        self._leaving = False
        # Gone after three missed beats (and some slack for a busy broker or loop).
        self.fleet = Fleet(expire_after=3 * beat_seconds + 1.0)
        # function key -> (spec of its current revision, target); None until a snapshot came.
        self.wanted: dict[str, tuple[FunctionSpec, int]] | None = None
        self.owned: dict[str, int] = {}  # this worker's share, per function key
        self._starting: Counter[str] = Counter()  # function key -> starts under way
        self._failures: dict[str, tuple[int, float]] = {}  # instance key -> (n, retry at)
        self._wake = asyncio.Event()
        self._seq = 0
        self._heard_self = time.monotonic()  # when this worker's own beat last came back
        self._tasks: list[asyncio.Task[None]] = []
        self._starts: set[asyncio.Task[None]] = set()
        self._watchers: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(
        cls,
        connection: AbstractRobustConnection,
        topo: Topology,
        pool: InstancePool,
        code: CodeCache,
        *,
        worker_id: str,
        slots: int,
        beat_seconds: float = BEAT_SECONDS,
        affinity: AffinityQueue | None = None,
    ) -> Provisioner:
        """Join the fleet (a first beat), listen to it and to snapshots, and reconcile."""
        channel = await connection.channel()
        fleet = await declare_fanout(channel, topo.fleet_exchange)
        provisioner = cls(
            channel,
            fleet,
            topo,
            pool,
            code,
            worker_id=worker_id,
            slots=slots,
            beat_seconds=beat_seconds,
            affinity=affinity,
        )
        provision = await declare_fanout(channel, topo.provision_exchange)
        for exchange, on_message in (
            (fleet, provisioner._on_beat),
            (provision, provisioner._on_snapshot),
        ):
            # Named (not server-named) so the robust channel can declare it again after a
            # reconnect; exclusive, so it goes away with this worker.
            queue = await channel.declare_queue(
                f"{exchange.name}.{worker_id}", exclusive=True, auto_delete=True
            )
            await queue.bind(exchange)
            await queue.consume(on_message, no_ack=True)
        await provisioner._beat()
        settle_until = time.monotonic() + SETTLE_SECONDS
        provisioner._tasks = [
            asyncio.create_task(provisioner._beat_forever()),
            asyncio.create_task(provisioner._reconcile_forever(settle_until)),
        ]
        return provisioner

    async def close(self) -> None:
        """Stop provisioning and tell the fleet at once, so others take this share now."""
        self._leaving = True  # no beat after the one that says so
        tasks = [*self._tasks, *self._starts, *self._watchers]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            await self._beat(leaving=True)
        except Exception as e:  # the others notice the missing beats instead
            log.warning("cannot announce leaving the fleet: %s", e)
        if not self._channel.is_closed:
            await self._channel.close()

    # -- inputs ------------------------------------------------------------------------

    async def _on_beat(self, message: AbstractIncomingMessage) -> None:
        try:
            beat = codec.decode(message.body, WorkerBeat)
        except PyfcError as e:
            log.warning("ignoring malformed heartbeat: %s", e.message)
            return
        if beat.worker_id == self.worker_id:
            # Always a member, with what it knows of itself; the echo proves it is connected.
            self._heard_self = time.monotonic()
            return
        changed = self.fleet.heard(beat, time.monotonic())
        if changed:
            log.info(
                "fleet: worker %s %s (capacity %d)",
                beat.worker_id,
                "left" if beat.leaving else "joined",
                beat.capacity,
            )
            self._wake.set()
        if beat.seq == 0 and not beat.leaving:
            try:  # a newcomer learns the fleet without waiting a beat period
                await self._beat()
            except Exception as e:
                log.warning("heartbeat not sent: %s", e)

    async def _on_snapshot(self, message: AbstractIncomingMessage) -> None:
        try:
            snapshot = codec.decode(message.body, ProvisionSnapshot)
        except PyfcError as e:
            log.warning("ignoring malformed provision snapshot: %s", e.message)
            return
        wanted = {function_key(t.spec): (t.spec, t.target) for t in snapshot.targets}
        if wanted != self.wanted:
            self.wanted = wanted
            self._wake.set()

    # -- heartbeats --------------------------------------------------------------------

    async def _beat(self, *, leaving: bool = False) -> None:
        ready = Counter(i.spec.instance_key for i in self._pool.provisioned())
        warm, busy, held = self._affinity.room() if self._affinity else ({}, {}, 0)
        beat = WorkerBeat(
            worker_id=self.worker_id,
            capacity=self.capacity,
            slots=self._slots,
            seq=self._seq,
            leaving=leaving,
            ready=dict(ready),
            warm=warm,
            busy=busy,
            held=held,
        )
        self._seq += 1
        await self._fleet_exchange.publish(
            aio_pika.Message(codec.encode(beat)), routing_key="", timeout=BEAT_PUBLISH_TIMEOUT
        )

    async def beat_now(self) -> None:
        """Beat at once (an instance became warm), several callers at once sharing one."""
        if self._leaving:
            return  # gone
        self._beat_due = True
        async with self._beat_lock:
            if not self._beat_due:
                return  # a beat taken after this caller's news went out meanwhile
            self._beat_due = False
            try:
                await self._beat()
            except Exception as e:
                log.warning("heartbeat not sent: %s", e)

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(self._beat_seconds)
            try:
                await self._beat()
            except Exception as e:  # reconnecting: the next beat goes out after it
                log.warning("heartbeat not sent: %s", e)

    # -- reconciling -------------------------------------------------------------------

    async def _reconcile_forever(self, settle_until: float) -> None:
        await asyncio.sleep(max(0.0, settle_until - time.monotonic()))
        while True:
            self._wake.clear()
            try:
                await self.reconcile()
            except Exception:
                log.exception("provisioning pass failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RECONCILE_SECONDS):
                    await self._wake.wait()

    async def reconcile(self) -> None:
        """One pass: this worker's share of every target, started or retired to match."""
        now = time.monotonic()
        # Cut off from the broker, this worker hears nobody: the others are not gone, so it
        # keeps its share (and restarts what dies) rather than take everyone's.
        cut_off = now - self._heard_self > self.fleet.expire_after
        gone = [] if cut_off else self.fleet.expire(now)
        if gone:
            log.info("fleet: worker(s) %s went silent; taking over their share", ", ".join(gone))
        if self.wanted is None:
            return  # no snapshot yet: nothing is known to be wanted or unwanted
        capacities = self.fleet.capacities()
        capacities[self.worker_id] = self.capacity
        targets = {key: target for key, (_, target) in self.wanted.items()}
        self.owned = place(targets, capacities).get(self.worker_id, {})
        instances = {i.instance_id: i for i in self._pool.provisioned()}
        held = [
            Held(i.instance_id, function_key(i.spec), i.spec.instance_key, i.reserved, i.last_used)
            for i in instances.values()
        ]
        wanted = {k: Wanted(spec.instance_key, n) for k, (spec, n) in self.wanted.items()}
        todo = plan(
            wanted, self.owned, held, self._starting, self.fleet.ready_elsewhere(self.worker_id)
        )
        for instance_id in todo.retire:
            instance = instances[instance_id]
            log.info(
                "retiring provisioned instance %s of %s", instance_id, function_key(instance.spec)
            )
            await self._pool.unprovision(instance)
        for key, n in todo.start.items():
            spec = self.wanted[key][0]
            failed = self._failures.get(spec.instance_key)
            if failed is not None and failed[1] > now:
                continue
            for _ in range(n):
                self._starting[key] += 1
                task = asyncio.create_task(self._start_one(key, spec))
                self._starts.add(task)
                task.add_done_callback(self._starts.discard)

    async def _start_one(self, key: str, spec: FunctionSpec) -> None:
        try:
            code_dir = await self._code.path_for(spec.code_digest)
            instance = await self._pool.provision(spec, code_dir)
        except PyfcError as e:  # InstanceStartError (initializer, import) or code fetch
            self._failed(spec, e.message)
        except Exception as e:
            log.exception("provisioning %s failed", key)
            self._failed(spec, repr(e))
        else:
            if instance is None:
                log.debug("no free slot for a provisioned instance of %s yet", key)
            else:
                self._failures.pop(spec.instance_key, None)
                await self.beat_now()  # dispatchers route its calls here from now on
                watcher = asyncio.create_task(self._watch(instance))
                self._watchers.add(watcher)
                watcher.add_done_callback(self._watchers.discard)
                log.info(
                    "provisioned instance %s of %s ready (init %.1f ms)",
                    instance.instance_id,
                    key,
                    instance.init_duration_ms,
                )
                self._wake.set()
        finally:
            self._starting[key] -= 1
            if self._starting[key] <= 0:
                del self._starting[key]

    async def _watch(self, instance: AnyInstance) -> None:
        """A provisioned instance that exits (crash, kill, retired) triggers a pass at once."""
        await instance.exited()
        self._wake.set()

    def _failed(self, spec: FunctionSpec, reason: str) -> None:
        now = time.monotonic()
        n, retry_at = self._failures.get(spec.instance_key, (0, 0.0))
        if retry_at > now:
            return  # a sibling start of the same pass failed already and set the delay
        n += 1
        delay = min(RETRY_MAX_SECONDS, RETRY_BASE_SECONDS * 2 ** (n - 1))
        self._failures[spec.instance_key] = (n, now + delay)
        log.warning(
            "cannot start a provisioned instance of %s (%s); retrying in %.0f s",
            function_key(spec),
            reason,
            delay,
        )
