"""Which worker keeps which provisioned instances: pure functions over plain data.

There is no leader. Every worker hears the same heartbeats (the live fleet, `Fleet`) and the
same provision snapshot, computes the same `place`, and starts or retires only its own
share (`plan`). Views differ for a heartbeat interval at most (a worker joined or went
quiet); in between a function may have an instance too many or too few, never for long.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from shared.protocol import FunctionSpec, WorkerBeat

# Instances of functions without a provision config need somewhere to run: a worker keeps
# this many of its slots out of provisioning.
ON_DEMAND_SLOTS = 1


def provision_capacity(slots: int) -> int:
    """How many provisioned instances a worker with `slots` instance slots hosts at most."""
    return max(0, slots - ON_DEMAND_SLOTS)


def function_key(spec: FunctionSpec) -> str:
    """What a provision config is for: placement survives a new revision of the function."""
    return f"{spec.tenant}/{spec.service}.{spec.qualifier}/{spec.function}"


def score(key: str, worker: str) -> int:
    """Rendezvous weight of `worker` for function `key`: its rank in the function's order."""
    digest = hashlib.blake2b(f"{key}\0{worker}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def ranking(key: str, workers: Iterable[str]) -> list[str]:
    """The workers in function `key`'s order (highest score first; ids break ties)."""
    return sorted(workers, key=lambda w: (score(key, w), w), reverse=True)


def place(targets: Mapping[str, int], capacity: Mapping[str, int]) -> dict[str, dict[str, int]]:
    """worker -> {function key: instances it keeps}, for every function's `target`.

    Each function orders the workers with room by rendezvous score, and deals its
    instances along that order like cards: instance `j` goes to worker `j mod n` (or, if
    that one is full, the next in order with room). So a function's instances are spread
    evenly (no worker keeps more than ceil(target / n) while all have room, and losing a
    worker loses a fair share, not all of a function), the extra ones land on different
    workers for different functions, and when a worker leaves or joins the others' shares
    only grow or only shrink: nothing moves between two workers that stay. A worker keeps
    at most `capacity[worker]` instances in all. Instances are dealt in rounds (every
    function's first, then every second one, ...), so when the fleet is full each function
    gets some rather than the first ones all.
    """
    hosts = [w for w, c in capacity.items() if c > 0]
    if not hosts:
        return {}
    live = {key: n for key, n in targets.items() if n > 0}
    order = {key: ranking(key, hosts) for key in live}
    used = dict.fromkeys(hosts, 0)
    counts: dict[str, Counter[str]] = {key: Counter() for key in live}
    for index in range(max(live.values(), default=0)):
        for key in sorted(live):
            if index >= live[key]:
                continue
            ranked = order[key]
            chosen = next(
                (
                    w
                    for w in (ranked[(index + step) % len(ranked)] for step in range(len(ranked)))
                    if used[w] < capacity[w]
                ),
                None,
            )
            if chosen is None:
                return _by_worker(counts)  # every worker is full
            used[chosen] += 1
            counts[key][chosen] += 1
    return _by_worker(counts)


def _by_worker(counts: Mapping[str, Counter[str]]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for key, per_worker in counts.items():
        for worker, n in per_worker.items():
            out.setdefault(worker, {})[key] = n
    return out


@dataclass(slots=True)
class Member:
    capacity: int
    ready: dict[str, int]
    last_heard: float


@dataclass(slots=True)
class Fleet:
    """The live workers as heard on the heartbeat fanout (local monotonic times, so clocks
    of other hosts do not matter). A worker unheard for `expire_after` seconds is gone."""

    expire_after: float
    members: dict[str, Member] = field(default_factory=dict)

    def heard(self, beat: WorkerBeat, now: float) -> bool:
        """Record a heartbeat; True if who is live, or a capacity, changed."""
        known = self.members.get(beat.worker_id)
        if beat.leaving:
            return self.members.pop(beat.worker_id, None) is not None
        self.members[beat.worker_id] = Member(beat.capacity, dict(beat.ready), now)
        return known is None or known.capacity != beat.capacity

    def expire(self, now: float) -> list[str]:
        """Forget workers unheard for too long; returns their ids."""
        gone = [w for w, m in self.members.items() if now - m.last_heard > self.expire_after]
        for worker in gone:
            del self.members[worker]
        return gone

    def capacities(self) -> dict[str, int]:
        return {w: m.capacity for w, m in self.members.items()}

    def ready_elsewhere(self, me: str) -> Counter[str]:
        """Provisioned instances ready on the other live workers, per instance key."""
        total: Counter[str] = Counter()
        for worker, member in self.members.items():
            if worker != me:
                total.update(member.ready)
        return total


@dataclass(frozen=True, slots=True)
class Held:
    """A provisioned instance this worker runs, as `plan` sees it."""

    instance_id: str
    function_key: str
    instance_key: str
    reserved: int = 0
    last_used: float = 0.0


@dataclass(frozen=True, slots=True)
class Wanted:
    """A function's provision target and the instance key of its current revision."""

    instance_key: str
    target: int


@dataclass(frozen=True, slots=True)
class Plan:
    start: dict[str, int]  # function key -> instances to start
    retire: list[str]  # instance ids


def plan(
    wanted: Mapping[str, Wanted],
    owned: Mapping[str, int],
    held: Iterable[Held],
    starting: Mapping[str, int],
    ready_elsewhere: Mapping[str, int],
) -> Plan:
    """What this worker starts and retires to reach its share `owned` (from `place`).

    `held`: its live provisioned instances; `starting`: starts under way per function key;
    `ready_elsewhere`: other workers' ready instances per instance key (from heartbeats).
    An instance of a function no longer wanted, or of an old revision, is retired at once.
    One this worker holds beyond its share is retired only while the fleet still has the
    target ready without it (make before break: a share moving to a joining worker stays
    warm here until it is warm there). Idle and least recently used ones go first.
    """
    retire: list[str] = []
    current: dict[str, list[Held]] = {}
    for h in held:
        want = wanted.get(h.function_key)
        if want is None or want.instance_key != h.instance_key:
            retire.append(h.instance_id)
        else:
            current.setdefault(h.function_key, []).append(h)
    start: dict[str, int] = {}
    for key, want in wanted.items():
        mine = current.get(key, [])
        share = owned.get(key, 0)
        missing = share - len(mine) - starting.get(key, 0)
        if missing > 0:
            start[key] = missing
        extra = len(mine) - share
        if extra > 0:
            spare = ready_elsewhere.get(want.instance_key, 0) + len(mine) - want.target
            mine.sort(key=lambda h: (h.reserved, h.last_used))
            retire.extend(h.instance_id for h in mine[: max(0, min(extra, spare))])
    return Plan(start, retire)
