"""Which worker a call goes to: one with warm room for its function version (pure, no I/O).

Workers say on every heartbeat, per instance key (`FunctionSpec.instance_key`), how many
requests their live instances can take at once (`warm`) and how many run on them now
(`busy`), and how many messages of the shared work queue they hold unacked (`held`, of
`slots`: their prefetch). Beats come every 2 s, so between them the dispatcher counts
what it routed to each worker and has not seen complete (`pending`) itself:

    room(W, K) = warm[K] - pending[K] - foreign[K]
    foreign[K] = min(busy[K] - pending[K], held)      as of the last beat, at least 0

`foreign` is work on W's instances that this dispatcher did not route there: it came from
the shared queue (work that fell back, cold starts, other dispatcher replicas' shared
work), so there is no more of it than W holds from there. Capping by `held` matters: a
beat and the completions of the work it saw running travel on different queues, so a
beat often arrives after the completion of a call it counted busy; without the cap that
call would count as foreign until the next beat. Work routed but still on its way when
the beat was taken is in `pending`, not `busy`. Room is also capped by W's free prefetch
(`slots` - our pending load - `held`): a worker whose prefetch is full takes nothing from
its queue, and the call would wait out the TTL.

A call goes to the worker with the most room for its key (a worker that keeps
provisioned instances of it first), else to the shared work queue: a cold start wherever
there is a free slot. Work that a chosen worker does not take in time falls back to the
shared queue by itself (the affinity queue's TTL); when its completion names another
worker, the chosen one is `missed`: no more work goes to it until its next beat.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from shared.protocol import WorkerBeat

# A worker unheard this long is gone (three missed 2 s beats + 1 s), as for fleet slots.
EXPIRE_AFTER = 7.0
EPSILON = 1e-9


@dataclass(slots=True)
class WarmWorker:
    """What the dispatcher knows of one worker's warm instances (see the module doc)."""

    worker_id: str
    queue: str = ""
    slots: int = 0
    warm: dict[str, int] = field(default_factory=dict)
    provisioned: dict[str, int] = field(default_factory=dict)
    foreign: dict[str, int] = field(default_factory=dict)
    foreign_load: float = 0.0
    pending: dict[str, int] = field(default_factory=dict)
    # Prefetch the pending work takes: 1 per sync call (its own message), 1/instanceConcurrency
    # per async one (async work goes out in batches of one instance's worth).
    load: float = 0.0
    heard: float = 0.0
    seq: int = -1
    missed: bool = False

    def room(self, key: str, weight: float = 1.0) -> int:
        """Requests of `key` it can start now, as far as we know; 0 if it cannot take
        one more message of `weight`."""
        if self.missed or self.slots - self.load - self.foreign_load + EPSILON < weight:
            return 0
        return self.warm.get(key, 0) - self.pending.get(key, 0) - self.foreign.get(key, 0)


def pick(key: str, workers: Iterable[WarmWorker], weight: float = 1.0) -> WarmWorker | None:
    """The worker a call of `key` goes to, or None (no warm room: the shared queue).

    Workers that keep provisioned instances of `key` first, then the most room (so load
    spreads over the warm workers), then the worker id (the same choice on every replica).
    """
    best: WarmWorker | None = None
    best_rank: tuple[bool, int, str] | None = None
    for worker in workers:
        room = worker.room(key, weight)
        if room <= 0:
            continue
        rank = (worker.provisioned.get(key, 0) > 0, room, worker.worker_id)
        if best_rank is None or rank > best_rank:
            best, best_rank = worker, rank
    return best


class WarmFleet:
    """The fleet's warm room as heard on heartbeats, and the work routed since."""

    def __init__(self, queue_of: Callable[[str], str], expire_after: float = EXPIRE_AFTER) -> None:
        self._queue_of = queue_of
        self._expire_after = expire_after
        self._workers: dict[str, WarmWorker] = {}
        self._by_key: dict[str, list[WarmWorker]] = {}  # instance key -> workers with it warm
        # request id -> (worker it was routed to, its instance key, its weight)
        self._routed: dict[str, tuple[WarmWorker, str, float]] = {}

    @property
    def workers(self) -> dict[str, WarmWorker]:
        return self._workers

    @property
    def routed(self) -> int:
        """Calls routed to an affinity queue whose completion has not come yet."""
        return len(self._routed)

    def heard(self, beat: WorkerBeat, now: float) -> None:
        """A heartbeat: the worker's warm room as it is, corrected for work in flight."""
        if beat.leaving:
            self._drop(beat.worker_id)
            return
        worker = self._workers.get(beat.worker_id)
        if worker is None:
            if not beat.warm:
                return  # nothing warm (or no affinity queue): nothing to route to it
            worker = WarmWorker(beat.worker_id, self._queue_of(beat.worker_id))
            self._workers[beat.worker_id] = worker
        elif 0 < beat.seq < worker.seq:
            return  # overtaken by a newer one (beats are built and sent concurrently)
        worker.seq = beat.seq  # 0: the worker (re)started
        self._index(worker, beat.warm)
        worker.slots = beat.slots
        worker.warm = dict(beat.warm)
        worker.provisioned = {k: n for k, n in beat.ready.items() if k in beat.warm}
        worker.foreign = {
            k: min(n - worker.pending.get(k, 0), beat.held)
            for k, n in beat.busy.items()
            if n > worker.pending.get(k, 0) and beat.held > 0
        }
        worker.foreign_load = float(beat.held)
        worker.heard = now
        worker.missed = False

    def route(self, key: str, request_id: str, weight: float = 1.0) -> str | None:
        """The affinity queue to send a call of `key` to (its room taken), or None."""
        workers = self._by_key.get(key)
        if not workers:
            return None
        worker = pick(key, workers, weight)
        if worker is None:
            return None
        worker.pending[key] = worker.pending.get(key, 0) + 1
        worker.load += weight
        self._routed[request_id] = (worker, key, weight)
        return worker.queue

    def completed(self, request_id: str, worker_id: str = "") -> bool:
        """The call ended (run by `worker_id`, if known): its room is given back. True when
        it ran on another worker than the one it was routed to (it fell back)."""
        entry = self._routed.pop(request_id, None)
        if entry is None:
            return False
        worker, key, weight = entry
        left = worker.pending.get(key, 0) - 1
        if left > 0:
            worker.pending[key] = left
        else:
            worker.pending.pop(key, None)
        worker.load = max(0.0, worker.load - weight)
        if worker_id and worker_id != worker.worker_id:
            worker.missed = True  # busy or gone: nothing more for it until it beats again
            return True
        return False

    def expire(self, now: float, holds: Callable[[str], bool]) -> list[str]:
        """Forget workers not heard for a while, and routed calls whose slot is gone
        (their completion was lost and the lease ran out); the workers forgotten."""
        gone = [w for w, s in self._workers.items() if now - s.heard > self._expire_after]
        for worker_id in gone:
            self._drop(worker_id)
        for request_id in [r for r in self._routed if not holds(r)]:
            self.completed(request_id)
        return gone

    def _drop(self, worker_id: str) -> None:
        worker = self._workers.pop(worker_id, None)
        if worker is not None:
            self._index(worker, {})

    def _index(self, worker: WarmWorker, warm: dict[str, int]) -> None:
        for key in worker.warm.keys() - warm.keys():
            others = [w for w in self._by_key.get(key, ()) if w is not worker]
            if others:
                self._by_key[key] = others
            else:
                self._by_key.pop(key, None)
        for key in warm.keys() - worker.warm.keys():
            self._by_key.setdefault(key, []).append(worker)
