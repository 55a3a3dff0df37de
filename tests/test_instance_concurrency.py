"""instanceConcurrency: one instance serving several requests at once (threads / one loop)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.instances import bootstrap_children, eventually, make_inv, make_spec, write_code
from worker.instance import Instance
from worker.pool import InstancePool

# Every request waits on a barrier of 5: if the requests do not run at once, the barrier
# times out (2 s) and the handler raises, so the test fails fast instead of hanging.
SYNC_BARRIER = """
import logging, os, threading, time
barrier = threading.Barrier(5, timeout=2.0)
lock = threading.Lock()
running = peak = 0

def handler(event, context):
    global running, peak
    if event == b"warm":
        return {}
    with lock:
        running += 1
        peak = max(peak, running)
    try:
        print(f"start {context.request_id}")
        barrier.wait()
        logging.info("logged by %s", context.request_id)
        time.sleep(0.05)
        print(f"end {context.request_id}")
        return {"peak": peak, "pid": os.getpid(), "thread": threading.get_ident(),
                "request": context.request_id, "instance": context.instance_id}
    finally:
        with lock:
            running -= 1
"""

ASYNC_BARRIER = """
import asyncio, logging, os, threading
running = peak = 0
arrived = None

async def handler(event, context):
    global running, peak, arrived
    if event == b"warm":
        return {}
    if arrived is None:
        arrived = asyncio.Event()
    running += 1
    peak = max(peak, running)
    try:
        print(f"start {context.request_id}")
        if running == 5:
            arrived.set()
        await asyncio.wait_for(arrived.wait(), 2.0)
        logging.info("logged by %s", context.request_id)
        await asyncio.sleep(0.05)
        print(f"end {context.request_id}")
        return {"peak": peak, "pid": os.getpid(), "loop": id(asyncio.get_running_loop()),
                "request": context.request_id, "instance": context.instance_id}
    finally:
        running -= 1
"""


@pytest.fixture
async def pool() -> AsyncIterator[InstancePool]:
    p = InstancePool(max_instances=4, stop_grace=1.0)
    yield p
    await p.close()
    await eventually(lambda: not bootstrap_children())


def assert_own_log(log: bytes, request_id: str, others: list[str]) -> None:
    text = log.decode()
    assert f"start {request_id}\n" in text and f"end {request_id}\n" in text
    assert re.search(rf"Z {request_id} \[INFO\] logged by {request_id}$", text, re.MULTILINE)
    assert not [o for o in others if o != request_id and o in text]


@pytest.mark.parametrize("source", [SYNC_BARRIER, ASYNC_BARRIER], ids=["sync", "async"])
async def test_five_requests_share_one_instance(
    tmp_path: Path, pool: InstancePool, source: str
) -> None:
    spec, code = make_spec(instance_concurrency=5), write_code(tmp_path, source)
    # One cold start first, so all five calls find the instance warm.
    assert (await pool.invoke(spec, code, make_inv(b"warm"))).status == "succeeded"
    invs = [make_inv() for _ in range(5)]
    outcomes = await asyncio.gather(*(pool.invoke(spec, code, inv) for inv in invs))
    assert [o.status for o in outcomes] == ["succeeded"] * 5, [o.body for o in outcomes]
    results = [json.loads(o.body) for o in outcomes]
    assert {o.instance_id for o in outcomes} == {results[0]["instance"]}
    assert len({r["pid"] for r in results}) == 1
    assert max(r["peak"] for r in results) == 5
    assert [r["request"] for r in results] == [inv.id for inv in invs]
    if source is SYNC_BARRIER:
        assert len({r["thread"] for r in results}) == 5
    else:
        assert len({r["loop"] for r in results}) == 1
    ids = [inv.id for inv in invs]
    for inv, outcome in zip(invs, outcomes, strict=True):
        assert_own_log(outcome.log_tail, inv.id, ids)
    assert pool.instances_alive == 1 and pool.stats.cold_starts == 1


async def test_concurrency_one_still_gets_separate_instances(
    tmp_path: Path, pool: InstancePool
) -> None:
    spec = make_spec(instance_concurrency=1)
    code = write_code(
        tmp_path,
        "import time, os\ndef handler(e, c):\n    time.sleep(0.2)\n    return str(os.getpid())\n",
    )
    first, second = await asyncio.gather(
        pool.invoke(spec, code, make_inv()), pool.invoke(spec, code, make_inv())
    )
    assert first.body != second.body and pool.instances_alive == 2


async def test_capacity_counts_instances_not_requests(tmp_path: Path) -> None:
    pool = InstancePool(max_instances=1, stop_grace=1.0)
    try:
        spec = make_spec(instance_concurrency=3)
        code = write_code(
            tmp_path,
            "import time, os\n"
            "def handler(e, c):\n"
            "    time.sleep(float(e or 0))\n"
            "    return str(os.getpid())\n",
        )
        await pool.invoke(spec, code, make_inv())
        began = time.monotonic()
        outcomes = await asyncio.gather(
            *(pool.invoke(spec, code, make_inv(b"0.3")) for _ in range(6))
        )
        elapsed = time.monotonic() - began
        assert {o.body for o in outcomes} == {outcomes[0].body}  # one instance throughout
        # Three at a time: two rounds of 0.3 s, not six, and not one.
        assert 0.55 < elapsed < 1.5
        assert pool.instances_alive == 1
    finally:
        await pool.close()


SLEEPY = """
import time
def handler(event, context):
    time.sleep(float(event))
    return "awake"
"""


async def test_other_requests_learn_why_the_instance_died(tmp_path: Path) -> None:
    instance = await Instance.start(
        make_spec(instance_concurrency=2, timeout=30), write_code(tmp_path, SLEEPY)
    )
    try:
        doomed = asyncio.create_task(instance.invoke(make_inv(b"30", deadline=time.time() + 0.3)))
        bystander = asyncio.create_task(instance.invoke(make_inv(b"30")))
        timed_out, crashed = await doomed, await bystander
    finally:
        await instance.stop(grace=1.0)
    assert timed_out.http_status == 504
    assert (crashed.status, crashed.http_status) == ("function_error", 502)
    body = json.loads(crashed.body)
    assert body["errorType"] == "InstanceCrashed"
    assert "timed out" in body["errorMessage"] and timed_out.request_id in body["errorMessage"]
    assert not instance.alive
