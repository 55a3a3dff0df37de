"""Placement of provisioned instances over the fleet: pure functions, tables and invariants."""

from __future__ import annotations

import math
import random

import pytest

from shared.protocol import WorkerBeat
from worker.placement import (
    Fleet,
    Held,
    Plan,
    Wanted,
    place,
    plan,
    provision_capacity,
)


@pytest.mark.parametrize(
    ("targets", "capacity", "expected"),
    [
        # no live worker with room: nothing placed
        ({"f": 2}, {}, {}),
        ({"f": 2}, {"a": 0}, {}),
        # one worker keeps everything that fits
        ({"f": 2}, {"a": 3}, {"a": {"f": 2}}),
        ({"f": 5}, {"a": 3}, {"a": {"f": 3}}),
        # a fair share each: 4 over 2 workers is 2 and 2, whatever the hash says
        ({"f": 4}, {"a": 3, "b": 3}, {"a": {"f": 2}, "b": {"f": 2}}),
        ({"f": 4}, {"a": 4, "b": 4}, {"a": {"f": 2}, "b": {"f": 2}}),
        # capacity beats fairness: a worker with room takes more than its share
        ({"f": 4}, {"a": 1, "b": 5}, {"a": {"f": 1}, "b": {"f": 3}}),
        # a worker with no room takes none, the others share
        ({"f": 2}, {"a": 0, "b": 3, "c": 3}, {"b": {"f": 1}, "c": {"f": 1}}),
        # a full fleet: every function gets some (rounds), not the first one all
        ({"f": 3, "g": 3}, {"a": 4}, {"a": {"f": 2, "g": 2}}),
        ({"f": 1, "g": 5}, {"a": 3}, {"a": {"f": 1, "g": 2}}),
        # target 0 is no target
        ({"f": 0}, {"a": 3}, {}),
    ],
)
def test_place(
    targets: dict[str, int], capacity: dict[str, int], expected: dict[str, dict[str, int]]
) -> None:
    assert place(targets, capacity) == expected


def _random_case(rng: random.Random) -> tuple[dict[str, int], dict[str, int]]:
    """Some function wants instances and some worker has room: every seed places something.
    (No target or no room at all are rows of the table above.)"""
    targets = {f"t/s.LATEST/f{i}": rng.randint(0, 12) for i in range(rng.randint(1, 6))}
    targets[rng.choice(sorted(targets))] = rng.randint(1, 12)
    capacity = {f"w-{i:02x}": rng.randint(0, 10) for i in range(rng.randint(1, 6))}
    capacity[rng.choice(sorted(capacity))] = rng.randint(1, 10)
    return targets, capacity


def _wide_targets(rng: random.Random, workers: int) -> dict[str, int]:
    """Targets where one function wants at least one instance per worker (and one more), so a
    fair share gives every worker some of it."""
    targets = {f"f{i}": rng.randint(1, 8) for i in range(rng.randint(1, 4))}
    targets[rng.choice(sorted(targets))] = rng.randint(workers + 1, workers + 8)
    return targets


@pytest.mark.parametrize("seed", range(200))
def test_place_invariants(seed: int) -> None:
    rng = random.Random(seed)
    targets, capacity = _random_case(rng)
    placed = place(targets, capacity)
    assert placed, "every seed places something"
    # every worker computes the same answer, whatever order it learned things in
    shuffled_t = dict(rng.sample(sorted(targets.items()), len(targets)))
    shuffled_c = dict(rng.sample(sorted(capacity.items()), len(capacity)))
    assert place(shuffled_t, shuffled_c) == placed
    for worker, share in placed.items():
        assert sum(share.values()) <= capacity[worker]
        assert all(n > 0 for n in share.values())
    per_function = {k: sum(s.get(k, 0) for s in placed.values()) for k in targets}
    assert all(per_function[k] <= targets[k] for k in targets)
    # nothing left unplaced while any worker has room
    assert sum(per_function.values()) == min(sum(targets.values()), sum(capacity.values()))


def test_the_random_cases_cover_both_limits() -> None:
    """Over the seeds above, room and targets each run out first often enough to matter."""
    cases = [_random_case(random.Random(seed)) for seed in range(200)]
    room_short = sum(sum(c.values()) < sum(t.values()) for t, c in cases)
    targets_short = sum(sum(t.values()) < sum(c.values()) for t, c in cases)
    several = sum(len(c) > 1 and len(t) > 1 for t, c in cases)
    assert min(room_short, targets_short, several) >= 40, (room_short, targets_short, several)


@pytest.mark.parametrize("seed", range(100))
def test_place_spreads_when_there_is_room(seed: int) -> None:
    rng = random.Random(seed)
    workers = [f"w-{i}" for i in range(rng.randint(2, 5))]
    targets = _wide_targets(rng, len(workers))
    ample = dict.fromkeys(workers, sum(targets.values()))
    placed = place(targets, ample)
    # the widest function is on every worker, none holding more than its share
    assert sorted(placed) == workers
    for share in placed.values():
        for key, n in share.items():
            assert n <= math.ceil(targets[key] / len(workers))


@pytest.mark.parametrize("seed", range(100))
def test_a_lost_worker_moves_only_its_share(seed: int) -> None:
    """Survivors keep what they had (ample room): only the lost worker's instances move."""
    rng = random.Random(seed)
    workers = [f"w-{i}" for i in range(rng.randint(2, 5))]
    targets = _wide_targets(rng, len(workers))
    before = place(targets, dict.fromkeys(workers, 100))
    lost = rng.choice(workers)
    assert before[lost], "the lost worker held instances"
    after = place(targets, {w: 100 for w in workers if w != lost})
    for worker, share in before.items():
        if worker != lost:
            for key, n in share.items():
                assert after[worker][key] >= n
    assert lost not in after
    # its instances moved to the survivors: nothing lost with it
    assert sum(map(sum, (s.values() for s in after.values()))) == sum(targets.values())


@pytest.mark.parametrize("seed", range(100))
def test_a_joining_worker_takes_only_from_the_others(seed: int) -> None:
    """With room for all, a newcomer's share comes off the others; none of them gains."""
    rng = random.Random(seed)
    workers = [f"w-{i}" for i in range(rng.randint(1, 4))]
    targets = _wide_targets(rng, len(workers) + 1)
    before = place(targets, dict.fromkeys(workers, 100))
    after = place(targets, dict.fromkeys([*workers, "w-new"], 100))
    assert after.get("w-new"), "the newcomer takes a share"
    for worker, share in after.items():
        if worker != "w-new":
            for key, n in share.items():
                assert n <= before[worker][key]


def test_provision_capacity_keeps_a_slot_for_other_work() -> None:
    assert [provision_capacity(s) for s in (0, 1, 2, 8)] == [0, 0, 1, 7]


def _beat(worker: str, capacity: int = 3, **kw: object) -> WorkerBeat:
    return WorkerBeat(worker_id=worker, capacity=capacity, **kw)  # type: ignore[arg-type]


def test_fleet_membership() -> None:
    fleet = Fleet(expire_after=7.0)
    assert fleet.heard(_beat("a"), 0.0)  # joined
    assert not fleet.heard(_beat("a", seq=1), 2.0)  # same as before
    assert fleet.heard(_beat("a", 5, seq=2), 4.0)  # capacity changed
    assert fleet.heard(_beat("b", ready={"k#1": 2}), 4.0)
    assert fleet.capacities() == {"a": 5, "b": 3}
    assert fleet.ready_elsewhere("a") == {"k#1": 2}
    assert fleet.ready_elsewhere("b") == {}
    assert fleet.expire(11.0) == []  # 7 s since a, 7 s since b: not yet
    assert fleet.expire(11.5) == ["a", "b"]
    assert fleet.capacities() == {}
    fleet.heard(_beat("c"), 20.0)
    assert fleet.heard(_beat("c", leaving=True), 20.5)  # left: gone at once
    assert not fleet.heard(_beat("c", leaving=True), 20.6)
    assert fleet.capacities() == {}


F, G = "t/s.LATEST/f", "t/s.LATEST/g"
F1, F2 = Wanted("f#1", 2), Wanted("f#2", 2)


def _held(iid: str, key: str = F, ikey: str = "f#1", reserved: int = 0, used: float = 0.0) -> Held:
    return Held(iid, key, ikey, reserved, used)


@pytest.mark.parametrize(
    ("wanted", "owned", "held", "starting", "elsewhere", "expected"),
    [
        # a share with nothing yet: start it (minus starts under way)
        ({F: F1}, {F: 2}, [], {}, {}, Plan({F: 2}, [])),
        ({F: F1}, {F: 2}, [_held("i1")], {F: 1}, {}, Plan({}, [])),
        ({F: F1}, {F: 2}, [_held("i1")], {}, {}, Plan({F: 1}, [])),
        # no longer wanted (target 0, function gone), or an old revision: retired at once
        ({}, {}, [_held("i1"), _held("i2")], {}, {}, Plan({}, ["i1", "i2"])),
        ({F: F2}, {F: 2}, [_held("i1")], {}, {}, Plan({F: 2}, ["i1"])),
        # beyond its share (another worker took it over): kept until the fleet has the
        # target ready elsewhere, then the idle, least recently used one goes
        ({F: F1}, {F: 1}, [_held("i1"), _held("i2")], {}, {}, Plan({}, [])),
        (
            {F: F1},
            {F: 1},
            [_held("i1", reserved=1), _held("i2", used=5.0), _held("i3", used=1.0)],
            {},
            {"f#1": 1},
            Plan({}, ["i3", "i2"]),
        ),
        ({F: F1}, {}, [_held("i1"), _held("i2")], {}, {"f#1": 1}, Plan({}, ["i1"])),
        # old-revision instances elsewhere do not count as ready
        ({F: F1}, {}, [_held("i1")], {}, {"f#0": 5}, Plan({}, [])),
        # the target dropped from 4 to 2: keep the share (1 here), the rest go
        ({F: F1}, {F: 1}, [_held("i1"), _held("i2")], {}, {"f#1": 2}, Plan({}, ["i1"])),
        # functions are independent
        (
            {F: F1, G: Wanted("g#1", 1)},
            {F: 2, G: 1},
            [_held("i1"), _held("j1", G, "g#0")],
            {},
            {},
            Plan({F: 1, G: 1}, ["j1"]),
        ),
    ],
)
def test_plan(
    wanted: dict[str, Wanted],
    owned: dict[str, int],
    held: list[Held],
    starting: dict[str, int],
    elsewhere: dict[str, int],
    expected: Plan,
) -> None:
    assert plan(wanted, owned, held, starting, elsewhere) == expected
