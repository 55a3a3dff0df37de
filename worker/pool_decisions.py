"""Where a request runs among a worker's instance slots: pure decisions of `worker.pool`.

`choose` places an invocation (warm instance, a start to join, a cold start, an eviction,
or a wait), `provision_slot` finds room for a provisioned instance, `expired` picks the
idle instances to reap. They read plain data (instances as `Candidate` / `Joinable`) and
change nothing; the pool acts on what they return.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, Literal, Protocol, TypeVar


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


class Joinable(Protocol):
    """What `choose` needs to know about an instance still starting."""

    @property
    def reserved(self) -> int:
        """Requests that will run on it once it is up (the one that started it included)."""
        ...

    @property
    def room(self) -> int:
        """Requests that may still join it (instance_concurrency - reserved)."""
        ...


C = TypeVar("C", bound=Candidate)
S = TypeVar("S", bound=Joinable)
T = TypeVar("T", covariant=True)


@dataclass(frozen=True, slots=True)
class Decision(Generic[T]):
    """`warm`: send it to `instance`; `join`: wait for `instance` to finish starting and
    send it there; `cold`: start one in a free slot; `evict`: stop `instance` (idle,
    another function's) and start one in its slot; `wait`: no slot now."""

    action: Literal["warm", "join", "cold", "evict", "wait"]
    instance: T | None = None


def choose(
    key: str,
    idle: Mapping[str, Sequence[C]],
    used: int,
    capacity: int,
    starting: Mapping[str, Sequence[S]] | None = None,
) -> Decision[C | S]:
    """Where the next invocation of `key` runs.

    `idle` maps instance keys to their instances with room for a request (idle, or busy
    below their instance_concurrency); `starting` to their instances still starting; `used`
    counts every slot taken (instances idle, busy and starting). Requests pack onto the
    busiest instance with room, then the most recently used, so the rest stay idle long
    enough to be reaped. With none, a request joins the fullest starting instance with
    room (the earliest started among equals) before it starts one of its own. The least
    recently used idle instance that is not provisioned is evicted.
    """
    same = [c for c in idle.get(key, ()) if c.room > 0]
    if same:
        return Decision("warm", max(same, key=lambda c: (c.reserved, c.last_used)))
    joinable = [s for s in (starting or {}).get(key, ()) if s.room > 0]
    if joinable:
        return Decision("join", max(joinable, key=lambda s: s.reserved))
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
