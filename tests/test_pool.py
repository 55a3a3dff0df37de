"""The instance pool: pure placement decisions (tables) and real instances behind them."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.instances import bootstrap_children, eventually, make_inv, make_spec, write_code
from worker.forking import Zygote
from worker.pool import InstancePool
from worker.pool_decisions import Decision, choose, expired, provision_slot


@dataclass(frozen=True)
class Idle:
    name: str
    last_used: float
    alive: bool = True
    reserved: int = 0
    concurrency: int = 1
    provisioned: bool = False

    @property
    def room(self) -> int:
        return self.concurrency - self.reserved


A1, A2, B1, C1 = Idle("a1", 10.0), Idle("a2", 20.0), Idle("b1", 5.0), Idle("c1", 1.0)
# instance_concurrency 5: partly busy (room left), full, and idle
P3 = Idle("p3", 3.0, reserved=3, concurrency=5)
P1 = Idle("p1", 30.0, reserved=1, concurrency=5)
PFULL = Idle("pfull", 40.0, reserved=5, concurrency=5)
PIDLE = Idle("pidle", 50.0, concurrency=5)
B_BUSY = Idle("b_busy", 0.5, reserved=2, concurrency=5)
# provisioned (kept warm by a provision config): serve, but never evicted or reaped
A_PROV = Idle("a_prov", 0.1, provisioned=True)
B_PROV = Idle("b_prov", 0.1, provisioned=True)


@pytest.mark.parametrize(
    ("key", "idle", "used", "capacity", "expected"),
    [
        # an idle instance of the function wins, the most recently used one
        ("a", {"a": [A1, A2]}, 2, 4, Decision("warm", A2)),
        ("a", {"a": [A2, A1]}, 2, 2, Decision("warm", A2)),
        # warm beats cold even with free slots, and beats evicting others when full
        ("a", {"a": [A1], "b": [B1]}, 4, 4, Decision("warm", A1)),
        # nothing idle for it: cold start while a slot is free
        ("a", {}, 0, 1, Decision("cold")),
        ("a", {"b": [B1]}, 3, 4, Decision("cold")),
        ("a", {"a": []}, 0, 1, Decision("cold")),
        # full: evict the least recently used idle instance of another function
        ("a", {"b": [B1], "c": [C1]}, 2, 2, Decision("evict", C1)),
        ("c", {"b": [B1], "c": []}, 2, 2, Decision("evict", B1)),
        # full and everything busy: wait
        ("a", {}, 2, 2, Decision("wait")),
        ("a", {"a": []}, 3, 2, Decision("wait")),
        # instance_concurrency > 1: a busy instance with room takes the request (warm),
        # the busiest one first so the others can go idle; a full one never does
        ("a", {"a": [P1, P3]}, 2, 2, Decision("warm", P3)),
        ("a", {"a": [PIDLE, P1]}, 2, 4, Decision("warm", P1)),
        ("a", {"a": [PFULL, PIDLE]}, 2, 4, Decision("warm", PIDLE)),
        # full instances only: a new instance while a slot is free (slots count instances)
        ("a", {"a": [PFULL]}, 1, 2, Decision("cold")),
        ("a", {"a": [PFULL]}, 1, 1, Decision("wait")),
        # partly busy instances of other functions are never evicted
        ("a", {"b": [B_BUSY]}, 1, 1, Decision("wait")),
        ("a", {"b": [B_BUSY, B1]}, 2, 2, Decision("evict", B1)),
        # provisioned instances take their function's work, and are never evicted
        ("a", {"a": [A_PROV]}, 1, 4, Decision("warm", A_PROV)),
        ("a", {"b": [B_PROV]}, 1, 1, Decision("wait")),
        ("a", {"b": [B_PROV, B1]}, 2, 2, Decision("evict", B1)),
    ],
)
def test_choose(
    key: str, idle: dict[str, list[Idle]], used: int, capacity: int, expected: Decision[Idle]
) -> None:
    assert choose(key, idle, used, capacity) == expected


@dataclass(frozen=True)
class Starting:
    name: str
    reserved: int  # the request that started it, and those that joined it
    concurrency: int

    @property
    def room(self) -> int:
        return self.concurrency - self.reserved


# instance_concurrency 4, starting: with room for 3 more, for 1 more, and none (joined by 3)
S1, S3, S4 = Starting("s1", 1, 4), Starting("s3", 3, 4), Starting("s4", 4, 4)
S1B = Starting("s1b", 1, 4)  # as S1, started after it
S_ONE = Starting("s_one", 1, 1)  # instance_concurrency 1: nobody can join it


@pytest.mark.parametrize(
    ("key", "idle", "starting", "used", "capacity", "expected"),
    [
        # a start of the function with room is joined rather than another started...
        ("a", {}, {"a": [S1]}, 1, 4, Decision("join", S1)),
        # ... even when no slot is free, or an idle instance of another could be evicted
        ("a", {}, {"a": [S1]}, 2, 2, Decision("join", S1)),
        ("a", {"b": [B1]}, {"a": [S1]}, 2, 2, Decision("join", S1)),
        # the fullest one with room first, then the one started first
        ("a", {}, {"a": [S1, S3]}, 2, 4, Decision("join", S3)),
        ("a", {}, {"a": [S4, S1, S1B]}, 3, 4, Decision("join", S1)),
        # a warm instance with room still wins: no waiting at all
        ("a", {"a": [P1]}, {"a": [S1]}, 2, 4, Decision("warm", P1)),
        # full starts, instance_concurrency 1, or another function's: as if none started
        ("a", {}, {"a": [S4]}, 1, 4, Decision("cold")),
        ("a", {}, {"a": [S_ONE]}, 1, 4, Decision("cold")),
        ("a", {}, {"b": [S1]}, 1, 4, Decision("cold")),
        ("a", {}, {"a": [S4]}, 1, 1, Decision("wait")),
        ("a", {"b": [B1]}, {"a": [S4]}, 2, 2, Decision("evict", B1)),
    ],
)
def test_choose_joins_a_starting_instance(
    key: str,
    idle: dict[str, list[Idle]],
    starting: dict[str, list[Starting]],
    used: int,
    capacity: int,
    expected: Decision[Idle | Starting],
) -> None:
    assert choose(key, idle, used, capacity, starting) == expected


DEAD = Idle("dead", 100.0, alive=False)
DEAD_A = Idle("dead_a", 100.0, alive=False)
DEAD_PROV = Idle("dead_prov", 0.1, alive=False, provisioned=True)


@pytest.mark.parametrize(
    ("idle", "now", "idle_seconds", "expected"),
    [
        ({}, 100.0, 10.0, []),
        ({"a": [A1, A2], "b": [B1]}, 25.0, 10.0, [A1, B1]),
        ({"a": [A1, A2]}, 30.0, 10.0, [A1, A2]),  # exactly idle_seconds counts
        ({"a": [A1, A2]}, 19.0, 10.0, []),
        ({"a": [DEAD]}, 100.0, 600.0, [DEAD]),  # dead ones go whatever their age
        ({"a": [P1, PIDLE]}, 1000.0, 10.0, [PIDLE]),  # never one with requests in flight
        ({"a": [A_PROV, A1]}, 1000.0, 10.0, [A1]),  # never a provisioned one
        ({"a": [DEAD_PROV]}, 1.0, 10.0, [DEAD_PROV]),  # unless it died
    ],
)
def test_expired(
    idle: dict[str, list[Idle]], now: float, idle_seconds: float, expected: list[Idle]
) -> None:
    assert expired(idle, now, idle_seconds) == expected


@pytest.mark.parametrize(
    ("key", "idle", "used", "capacity", "expected"),
    [
        # a warm instance of it that is not provisioned yet is adopted: no start at all
        ("a", {"a": [A1, A2]}, 2, 4, Decision("warm", A2)),
        ("a", {"a": [A_PROV, A1]}, 2, 2, Decision("warm", A1)),
        ("a", {"a": [DEAD_A, A1]}, 2, 2, Decision("warm", A1)),
        # else a free slot, else the least recently used idle unprovisioned one of others
        ("a", {"a": [A_PROV]}, 1, 2, Decision("cold")),
        ("a", {"b": [B1], "c": [C1]}, 2, 2, Decision("evict", C1)),
        ("a", {"a": [A_PROV], "b": [B_PROV]}, 2, 2, Decision("wait")),
        ("a", {"b": [B_BUSY]}, 1, 1, Decision("wait")),
    ],
)
def test_provision_slot(
    key: str, idle: dict[str, list[Idle]], used: int, capacity: int, expected: Decision[Idle]
) -> None:
    assert provision_slot(key, idle, used, capacity) == expected


COUNTER = """
import os, time
calls = 0
def handler(event, context):
    global calls
    calls += 1
    if event.startswith(b"sleep "):
        time.sleep(float(event[6:]))
    return {"calls": calls, "pid": os.getpid()}
"""


@pytest.fixture
async def pool() -> AsyncIterator[InstancePool]:
    p = InstancePool(max_instances=2, stop_grace=1.0)
    yield p
    await p.close()
    await eventually(lambda: not bootstrap_children())


def result(body: bytes) -> dict[str, int]:
    value = json.loads(body)
    assert isinstance(value, dict)
    return value


async def test_warm_and_cold_starts(tmp_path: Path, pool: InstancePool) -> None:
    spec, code = make_spec(), write_code(tmp_path, COUNTER)
    outcomes = [await pool.invoke(spec, code, make_inv()) for _ in range(3)]
    assert [o.cold_start for o in outcomes] == [True, False, False]
    assert [result(o.body)["calls"] for o in outcomes] == [1, 2, 3]
    assert (pool.stats.cold_starts, pool.stats.warm_starts) == (1, 2)
    assert pool.stats.last_init_ms > 0
    assert (pool.instances_alive, pool.instances_busy, pool.instances_idle) == (1, 0, 1)


async def test_concurrent_calls_get_their_own_instances(tmp_path: Path, pool: InstancePool) -> None:
    spec, code = make_spec(), write_code(tmp_path, COUNTER)
    first, second = await asyncio.gather(
        pool.invoke(spec, code, make_inv(b"sleep 0.3")),
        pool.invoke(spec, code, make_inv(b"sleep 0.3")),
    )
    assert result(first.body)["pid"] != result(second.body)["pid"]
    assert pool.instances_alive == 2


async def test_full_pool_waits_for_a_slot(tmp_path: Path) -> None:
    pool = InstancePool(max_instances=1, stop_grace=1.0)
    try:
        spec, code = make_spec(), write_code(tmp_path, COUNTER)
        slow = asyncio.create_task(pool.invoke(spec, code, make_inv(b"sleep 0.3")))
        await eventually(lambda: pool.instances_busy == 1)
        waiting = await pool.invoke(spec, code, make_inv())
        assert (await slow).status == waiting.status == "succeeded"
        assert result(waiting.body)["calls"] == 2  # ran on the same, now warm, instance
        # A caller whose deadline passes while waiting gets a 504 without running.
        slow = asyncio.create_task(pool.invoke(spec, code, make_inv(b"sleep 0.5")))
        await eventually(lambda: pool.instances_busy == 1)
        late = await pool.invoke(spec, code, make_inv(deadline=time.time() + 0.1))
        assert (late.status, late.error_type, late.http_status) == (
            "system_error",
            "DeadlineExceeded",
            504,
        )
        await slow
    finally:
        await pool.close()


async def test_idle_instance_of_another_function_is_evicted(tmp_path: Path) -> None:
    pool = InstancePool(max_instances=1, stop_grace=1.0)
    try:
        code = write_code(tmp_path, COUNTER)
        a, b = make_spec(function="a"), make_spec(function="b")
        first = result((await pool.invoke(a, code, make_inv())).body)
        second = result((await pool.invoke(b, code, make_inv())).body)
        assert first["pid"] != second["pid"]
        assert pool.stats.evictions == 1 and pool.instances_alive == 1
        assert bootstrap_children() == [second["pid"]]
    finally:
        await pool.close()


async def test_dead_instance_is_never_reused(tmp_path: Path, pool: InstancePool) -> None:
    spec, code = make_spec(timeout=0.5), write_code(tmp_path, COUNTER)
    first = result((await pool.invoke(spec, code, make_inv())).body)
    timed_out = await pool.invoke(spec, code, make_inv(b"sleep 30"))
    assert timed_out.http_status == 504 and pool.instances_alive == 0
    after = await pool.invoke(spec, code, make_inv())
    assert after.cold_start and result(after.body)["pid"] != first["pid"]
    assert pool.stats.cold_starts == 2


async def test_start_failure_becomes_an_outcome(tmp_path: Path, pool: InstancePool) -> None:
    code = write_code(tmp_path, "def init(context):\n    raise KeyError('cfg')\n" + COUNTER)
    outcome = await pool.invoke(make_spec(initializer="index.init"), code, make_inv())
    assert (outcome.status, outcome.error_type) == ("function_error", "UnhandledInvocationError")
    body = json.loads(outcome.body)
    assert body["errorType"] == "KeyError" and "cfg" in body["errorMessage"]
    assert isinstance(body["stackTrace"], list)
    assert pool.stats.start_failures == 1
    assert pool.instances_alive == pool.instances_starting == 0
    missing = await pool.invoke(make_spec(handler="index.nope"), code, make_inv())
    assert json.loads(missing.body)["errorType"] == "FunctionNotFound"


async def test_reap_idle_and_close(tmp_path: Path) -> None:
    pool = InstancePool(max_instances=2, stop_grace=1.0)
    code = write_code(tmp_path, COUNTER)
    await pool.invoke(make_spec(function="a"), code, make_inv())
    await pool.invoke(make_spec(function="b"), code, make_inv())
    await pool.reap_idle(3600)
    assert pool.instances_alive == 2
    await pool.reap_idle(0)
    assert pool.instances_alive == 0 and pool.stats.reaped == 2
    assert not bootstrap_children()
    await pool.invoke(make_spec(function="a"), code, make_inv())
    await pool.close()
    assert not bootstrap_children()
    closed = await pool.invoke(make_spec(function="a"), code, make_inv())
    assert (closed.status, closed.http_status) == ("system_error", 503)


async def test_provisioned_instances(tmp_path: Path) -> None:
    """Started ahead of work, they serve warm, outlive idle reaping and other functions'
    demand, and go when unprovisioned; a warm instance is adopted rather than started."""
    pool = InstancePool(max_instances=2, stop_grace=1.0)
    try:
        code = write_code(tmp_path, COUNTER)
        a, b = make_spec(function="a"), make_spec(function="b")
        first = await pool.provision(a, code)
        assert first is not None and first.provisioned
        assert pool.stats.provisioned_starts == 1 and pool.provisioned() == [first]
        outcome = await pool.invoke(a, code, make_inv())
        assert not outcome.cold_start and outcome.instance_id == first.instance_id
        await pool.reap_idle(0)
        assert pool.provisioned() == [first]
        # the other slot: b's on-demand instance; b cannot evict the provisioned one
        assert (await pool.invoke(b, code, make_inv())).cold_start
        busy = asyncio.create_task(pool.invoke(b, code, make_inv(b"sleep 0.3")))
        await eventually(lambda: pool.instances_busy == 1)
        late = await pool.invoke(b, code, make_inv(deadline=time.time() + 0.1))
        assert late.error_type == "DeadlineExceeded"
        await busy
        # full of a provisioned and a busy instance: no slot for another provisioned one
        busy = asyncio.create_task(pool.invoke(b, code, make_inv(b"sleep 0.3")))
        await eventually(lambda: pool.instances_busy == 1)
        assert await pool.provision(a, code) is None
        await busy
        # b's idle instance is evicted for a provisioned one of a
        second = await pool.provision(a, code)
        assert second is not None and pool.stats.evictions == 1
        assert sorted(i.instance_id for i in pool.provisioned()) == sorted(
            [first.instance_id, second.instance_id]
        )
        # a dead provisioned instance leaves the pool; its slot is free again
        os.kill(second.pid, signal.SIGKILL)
        await eventually(lambda: not second.alive)
        assert pool.provisioned() == [first]
        await pool.unprovision(first)
        assert pool.provisioned() == [] and not first.alive
        # an on-demand warm instance is adopted (no start)
        warm = await pool.invoke(b, code, make_inv())
        adopted = await pool.provision(b, code)
        assert adopted is not None and adopted.instance_id == warm.instance_id
        assert pool.stats.provisioned_starts == 2
    finally:
        await pool.close()
    assert not bootstrap_children()


SHARED = """
import os, time
def init(context):
    time.sleep(0.2)  # a start long enough for every concurrent call to arrive during it

def handler(event, context):
    time.sleep(0.1)
    return {"pid": os.getpid()}
"""


FAILING = """
import time
def init(context):
    time.sleep(0.1)
    raise KeyError("cfg")

def handler(event, context):
    return "never"
"""


@pytest.fixture
async def forking_pool() -> AsyncIterator[InstancePool]:
    zygote = Zygote()
    p = InstancePool(max_instances=8, stop_grace=1.0, zygote=zygote)
    yield p
    await p.close()
    await zygote.close()
    await eventually(lambda: not bootstrap_children())


@pytest.mark.parametrize(("concurrency", "instances"), [(8, 1), (4, 2), (1, 8)])
async def test_concurrent_first_calls_share_a_start(
    tmp_path: Path, forking_pool: InstancePool, concurrency: int, instances: int
) -> None:
    """8 calls at once to a function nobody runs yet: its instances start once for every
    instance_concurrency calls, not once per call, though 8 slots are free."""
    pool = forking_pool
    spec = make_spec(instance_concurrency=concurrency, initializer="index.init")
    code = write_code(tmp_path, SHARED)
    outcomes = await asyncio.gather(*(pool.invoke(spec, code, make_inv()) for _ in range(8)))
    assert [o.status for o in outcomes] == ["succeeded"] * 8, [o.body for o in outcomes]
    by_instance: dict[str, int] = {}
    for outcome in outcomes:
        by_instance[outcome.instance_id] = by_instance.get(outcome.instance_id, 0) + 1
    assert sorted(by_instance.values()) == [concurrency] * instances
    assert len({result(o.body)["pid"] for o in outcomes}) == instances
    assert (pool.stats.cold_starts, pool.stats.joined_starts) == (instances, 8 - instances)
    assert sum(o.cold_start for o in outcomes) == instances  # one cold start per instance
    assert (pool.instances_alive, pool.instances_starting) == (instances, 0)


async def test_calls_that_joined_a_failed_start_fail_with_it(
    tmp_path: Path, forking_pool: InstancePool
) -> None:
    """The start's error is theirs too: one failed start, not one per call."""
    pool = forking_pool
    code = write_code(tmp_path, FAILING)
    spec = make_spec(instance_concurrency=4, initializer="index.init")
    outcomes = await asyncio.gather(*(pool.invoke(spec, code, make_inv()) for _ in range(4)))
    errors = [json.loads(o.body) for o in outcomes]
    assert [(o.status, e["errorType"]) for o, e in zip(outcomes, errors, strict=True)] == [
        ("function_error", "KeyError")
    ] * 4
    assert (pool.stats.start_failures, pool.stats.joined_starts) == (1, 3)
    assert pool.instances_alive == pool.instances_starting == 0
    # Nothing is left joinable: the next call starts afresh (and fails the same way).
    again = await pool.invoke(spec, code, make_inv())
    assert json.loads(again.body)["errorType"] == "KeyError"
    assert pool.stats.start_failures == 2


async def test_a_joined_call_waits_no_longer_than_its_deadline(
    tmp_path: Path, forking_pool: InstancePool
) -> None:
    pool = forking_pool
    spec = make_spec(instance_concurrency=2, initializer="index.init")
    # A 1 s start, far from the 0.05 s deadline: measured 50-63 ms to the answer (16 runs).
    code = write_code(tmp_path, SHARED.replace("time.sleep(0.2)", "time.sleep(1.0)"))
    first = asyncio.create_task(pool.invoke(spec, code, make_inv()))
    await eventually(lambda: pool.instances_starting == 1)
    began = time.monotonic()
    hurried = await pool.invoke(spec, code, make_inv(deadline=time.time() + 0.05))
    assert (hurried.error_type, hurried.http_status) == ("DeadlineExceeded", 504)
    took = time.monotonic() - began
    assert 0.05 <= took < 0.5, took  # the deadline, not the whole start
    # It gave its place back: a later call joins (or finds warm) the same instance.
    second = await pool.invoke(spec, code, make_inv())
    assert (await first).instance_id == second.instance_id
    assert pool.stats.cold_starts == 1


async def test_calls_that_joined_an_abandoned_start_choose_again(
    tmp_path: Path, forking_pool: InstancePool
) -> None:
    pool = forking_pool
    spec = make_spec(instance_concurrency=2, initializer="index.init")
    code = write_code(tmp_path, SHARED)
    starter = asyncio.create_task(pool.invoke(spec, code, make_inv()))
    await eventually(lambda: pool.instances_starting == 1)
    joined = asyncio.create_task(pool.invoke(spec, code, make_inv()))
    await eventually(lambda: pool.stats.joined_starts == 1)
    starter.cancel()
    outcome = await joined
    assert (outcome.status, outcome.cold_start) == ("succeeded", True)  # it started its own
    assert starter.cancelled()
    assert (pool.stats.cold_starts, pool.instances_alive, pool.instances_starting) == (1, 1, 0)
