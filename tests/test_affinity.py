"""Routing calls to workers with warm room for them: the pure parts, tables and cases."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from dispatcher.affinity import WarmFleet, WarmWorker, pick
from shared.protocol import FunctionSpec, WorkerBeat
from worker.affinity import fell_back_from, warm_room

K, J = "t/s/f@LATEST#1:abc", "t/s/g@LATEST#1:abc"


def warm(worker_id: str, slots: int = 4, **kw: Any) -> WarmWorker:
    return WarmWorker(worker_id, f"q.{worker_id}", slots, **kw)


@pytest.mark.parametrize(
    ("workers", "weight", "expected"),
    [
        # nobody has it warm: the shared queue
        ([], 1.0, None),
        ([warm("a", warm={J: 2})], 1.0, None),
        # the one worker with an idle instance
        ([warm("a", warm={K: 1}), warm("b", warm={J: 1})], 1.0, "a"),
        # its instance is taken by work we routed there: none left
        ([warm("a", warm={K: 1}, pending={K: 1})], 1.0, None),
        # ... or by work someone else put there (seen busy on its beat)
        ([warm("a", warm={K: 1}, foreign={K: 1})], 1.0, None),
        # instanceConcurrency 4, three running: one more fits
        ([warm("a", warm={K: 4}, pending={K: 3}, load=3.0)], 1.0, "a"),
        # the most room wins, so load spreads over the warm workers
        ([warm("a", warm={K: 2}, pending={K: 1}), warm("b", warm={K: 2})], 1.0, "b"),
        # equal room: the highest worker id, the same answer on every dispatcher
        ([warm("a", warm={K: 1}), warm("b", warm={K: 1})], 1.0, "b"),
        # provisioned instances first, while they have room
        ([warm("a", warm={K: 1}, provisioned={K: 1}), warm("b", warm={K: 3})], 1.0, "a"),
        (
            [warm("a", warm={K: 1}, provisioned={K: 1}, pending={K: 1}), warm("b", warm={K: 3})],
            1.0,
            "b",
        ),
        # a full prefetch takes nothing more, however warm its instances
        ([warm("a", slots=2, warm={K: 8}, load=2.0)], 1.0, None),
        ([warm("a", slots=2, warm={K: 8}, foreign_load=2.0)], 1.0, None),
        # ... but async work of a 4-concurrent function takes a quarter of a slot
        ([warm("a", slots=2, warm={K: 8}, pending={K: 7}, load=1.75)], 0.25, "a"),
        ([warm("a", slots=2, warm={K: 8}, pending={K: 7}, load=1.75)], 1.0, None),
        # a worker whose routed work ran elsewhere gets nothing until it beats again
        (
            [warm("a", warm={K: 1}, missed=True), warm("b", warm={K: 1}, pending={K: 1})],
            1.0,
            None,
        ),
    ],
)
def test_pick(workers: list[WarmWorker], weight: float, expected: str | None) -> None:
    chosen = pick(K, workers, weight)
    assert (chosen.worker_id if chosen else None) == expected


def beat(worker_id: str, **kw: Any) -> WorkerBeat:
    return WorkerBeat(worker_id=worker_id, capacity=3, slots=kw.pop("slots", 4), **kw)


def fleet() -> WarmFleet:
    return WarmFleet(lambda w: f"pyfc.work.{w}")


def test_route_takes_room_and_completion_gives_it_back() -> None:
    f = fleet()
    f.heard(beat("a", warm={K: 1}), now=0.0)
    assert f.route(K, "r1") == "pyfc.work.a"
    assert f.route(K, "r2") is None  # its one instance is taken
    assert f.completed("r1", "a") is False
    assert f.route(K, "r3") == "pyfc.work.a"
    assert f.route(J, "r4") is None


def test_a_beat_does_not_count_routed_work_twice() -> None:
    f = fleet()
    f.heard(beat("a", warm={K: 2}), now=0.0)
    assert f.route(K, "r1") == "pyfc.work.a"
    # r1 is running when the next beat is taken: busy 1, which is ours, not foreign
    f.heard(beat("a", warm={K: 2}, busy={K: 1}), now=2.0)
    assert f.workers["a"].room(K) == 1
    assert f.route(K, "r2") == "pyfc.work.a"
    assert f.route(K, "r3") is None
    f.completed("r1", "a")
    f.completed("r2", "a")
    assert f.workers["a"].room(K) == 2


def test_a_beat_that_arrives_after_the_completion_of_work_it_saw() -> None:
    f = fleet()
    f.heard(beat("a", slots=1, warm={K: 1}), now=0.0)
    assert f.route(K, "r1") == "pyfc.work.a"
    f.completed("r1", "a")
    # taken while r1 ran, heard after its completion: nothing from the shared queue held
    f.heard(beat("a", slots=1, warm={K: 1}, busy={K: 1}), now=2.0)
    assert f.route(K, "r2") == "pyfc.work.a"


def test_work_we_did_not_route_counts_until_the_next_beat() -> None:
    f = fleet()
    f.heard(beat("a", warm={K: 2}, busy={K: 1}, held=1), now=0.0)
    assert f.workers["a"].room(K) == 1
    f.heard(beat("a", warm={K: 2}), now=2.0)
    assert f.workers["a"].room(K) == 2


def test_work_that_ran_elsewhere_marks_the_worker_until_it_beats() -> None:
    f = fleet()
    f.heard(beat("a", warm={K: 4}), now=0.0)
    assert f.route(K, "r1") == "pyfc.work.a"
    assert f.completed("r1", "b") is True  # it fell back: a is busy or gone
    assert f.route(K, "r2") is None
    f.heard(beat("a", warm={K: 4}), now=2.0)
    assert f.route(K, "r3") == "pyfc.work.a"


def test_silent_and_leaving_workers_are_forgotten() -> None:
    f = fleet()
    f.heard(beat("a", warm={K: 1}), now=0.0)
    f.heard(beat("b", warm={K: 1}), now=5.0)
    assert f.expire(now=8.0, holds=lambda _: True) == ["a"]
    assert f.route(K, "r1") == "pyfc.work.b"
    f.heard(beat("b", leaving=True), now=8.5)
    assert f.route(K, "r2") is None
    f.completed("r1", "b")  # completions of a forgotten worker's work are harmless


def test_a_beat_overtaken_by_a_newer_one_is_ignored() -> None:
    f = fleet()
    f.heard(beat("a", seq=3, warm={K: 1}), now=0.0)
    f.heard(beat("a", seq=2), now=0.1)  # built before the instance was, arrived after
    assert f.route(K, "r1") == "pyfc.work.a"
    f.heard(beat("a", seq=0), now=0.2)  # restarted under the same id: nothing warm now
    assert f.route(K, "r2") is None


def test_instances_gone_from_a_beat_are_no_longer_routed_to() -> None:
    f = fleet()
    f.heard(beat("a", seq=1, warm={K: 1, J: 1}), now=0.0)
    f.heard(beat("a", seq=2, warm={J: 1}), now=2.0)  # K's instance was reaped
    assert f.route(K, "r1") is None
    assert f.route(J, "r2") == "pyfc.work.a"


def test_routed_work_whose_slot_lapsed_gives_its_room_back() -> None:
    f = fleet()
    f.heard(beat("a", warm={K: 1}), now=0.0)
    assert f.route(K, "r1") == "pyfc.work.a"
    f.expire(now=1.0, holds=lambda rid: rid != "r1")  # its release was lost
    assert f.routed == 0
    assert f.route(K, "r2") == "pyfc.work.a"


def test_a_worker_with_nothing_warm_is_not_tracked() -> None:
    f = fleet()
    f.heard(beat("a"), now=0.0)
    assert f.workers == {}


@dataclass
class FakeInstance:
    spec: FunctionSpec
    alive: bool = True
    reserved: int = 0


def test_warm_room_counts_live_instances_requests() -> None:
    one = FunctionSpec(tenant="t", service="s", function="f")
    four = FunctionSpec(tenant="t", service="s", function="g", instance_concurrency=4)
    instances = [
        FakeInstance(one, reserved=1),
        FakeInstance(one),
        FakeInstance(one, alive=False),
        FakeInstance(four, reserved=3),
    ]
    capacity, busy = warm_room(instances)
    assert capacity == {one.instance_key: 2, four.instance_key: 4}
    assert busy == {one.instance_key: 1, four.instance_key: 3}


def death(reason: str, queue: str) -> dict[str, object]:
    return {"x-death": [{"count": 1, "reason": reason, "queue": queue, "exchange": ""}]}


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (None, None),
        ({}, None),
        ({"x-pyfc-tenant": "t"}, None),
        (death("expired", "ns.work.w-1"), "ns.work.w-1"),
        # turned away by a leaving worker: it never ran there
        (death("rejected", "ns.work.w-1"), None),
        # some other queue's dead letter
        (death("expired", "ns.delay.1000"), None),
        ({"x-death": "garbage"}, None),
        ({"x-death": []}, None),
    ],
)
def test_fell_back_from(headers: dict[str, object] | None, expected: str | None) -> None:
    assert fell_back_from(headers, "ns.work.") == expected
