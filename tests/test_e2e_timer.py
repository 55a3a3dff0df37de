"""Timer triggers end to end: real gateway, dispatcher, worker and `pyfc trigger timer`
processes, the real broker and store; runs counted inside the function."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import Client, StartStack
from tests.helpers import deploy, open_dir, unique
from tests.stack import wait_until

# Appends one JSON line per run: the event, the request id, and when it ran.
RECORD = (
    "import json, os, time\n"
    "def handler(event, context):\n"
    "    started = time.time()\n"
    "    e = json.loads(event)\n"
    "    time.sleep(float(os.environ.get('SLEEP', '0')))\n"
    "    line = json.dumps({**e, 'requestId': context.request_id, 'started': started,\n"
    "                       'ended': time.time(), 'mark': os.environ.get('MARK', '')})\n"
    "    with open(os.environ['RUNS'], 'a') as f:\n"
    "        f.write(line + '\\n')\n"
    "    return 'ok'\n"
)


def runs(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def epoch(trigger_time: str) -> float:
    return datetime.fromisoformat(trigger_time.replace("Z", "+00:00")).timestamp()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def timer_function(
    client: Client, sleep: float = 0.0, **fields: Any
) -> tuple[str, str, Path]:
    runs_file = open_dir("timer") / f"{unique('runs')}.jsonl"
    service, function = await deploy(
        client,
        {"index.py": RECORD},
        environmentVariables={"RUNS": str(runs_file), "SLEEP": str(sleep)},
        timeout=30,
        **fields,
    )
    return service, function, runs_file


async def create_trigger(
    client: Client, service: str, function: str, name: str, **config: Any
) -> dict[str, Any]:
    body = {"triggerName": name, "triggerType": "timer", "triggerConfig": config}
    status, _, raw = await client.call(
        "POST", f"/v1/services/{service}/functions/{function}/triggers", json=body
    )
    assert status == 201, raw
    created: dict[str, Any] = json.loads(raw)
    return created


async def put_trigger(
    client: Client, service: str, function: str, name: str, **fields: Any
) -> None:
    status, _, raw = await client.call(
        "PUT", f"/v1/services/{service}/functions/{function}/triggers/{name}", json=fields
    )
    assert status == 200, raw


async def test_every_second_end_to_end_then_disable_enable_delete(
    fresh_stack: StartStack, session: aiohttp.ClientSession
) -> None:
    stack = fresh_stack(workers=1)
    stack.start_timers()
    _, key = stack.create_tenant()
    client = Client(session, stack.url, key)
    service, function, path = await timer_function(client)
    trigger = await create_trigger(
        client, service, function, "tick", cronExpression="@every 1s", payload="hello"
    )
    assert trigger["triggerId"] and trigger["enabled"] is True
    wait_until(lambda: len(runs(path)) >= 5, 20, "five runs")
    seen = runs(path)
    # FC's event shape, a trigger time to the second in UTC, one run a second.
    first = seen[0]
    assert set(first) >= {"triggerTime", "triggerName", "payload"}
    assert first["triggerName"] == "tick" and first["payload"] == "hello"
    assert first["triggerTime"].endswith("Z") and len(first["triggerTime"]) == 20
    times = sorted(epoch(r["triggerTime"]) for r in seen)
    assert times == [times[0] + i for i in range(len(times))], times
    # The async invocation record names the trigger that made it.
    status, _, raw = await client.call(
        "GET", f"/v1/services/{service}/functions/{function}/invocations/{first['requestId']}"
    )
    assert status == 200, raw
    record = json.loads(raw)
    assert record["origin"] == "timer:tick" and record["status"] == "Succeeded", record

    # Disabled: no run scheduled more than 1 s after the change.
    await put_trigger(client, service, function, "tick", enabled=False)
    disabled_at = time.time()
    await asyncio.sleep(3)
    after = [epoch(r["triggerTime"]) for r in runs(path) if epoch(r["triggerTime"]) > disabled_at]
    assert all(t <= disabled_at + 1 for t in after), after
    count = len(runs(path))
    # Enabled again: runs within a second or two, none for the disabled spell.
    await put_trigger(client, service, function, "tick", enabled=True)
    enabled_at = time.time()
    wait_until(lambda: len(runs(path)) > count, 5, "a run after enabling")
    new = [epoch(r["triggerTime"]) for r in runs(path)[count:]]
    assert min(new) >= enabled_at - 1 and min(new) <= enabled_at + 1.5, (enabled_at, new)
    # Deleted: nothing scheduled after the delete + 1 s.
    status, _, _ = await client.call(
        "DELETE", f"/v1/services/{service}/functions/{function}/triggers/tick"
    )
    assert status == 204
    deleted_at = time.time()
    await asyncio.sleep(3)
    late = [epoch(r["triggerTime"]) for r in runs(path) if epoch(r["triggerTime"]) > deleted_at]
    assert all(t <= deleted_at + 1 for t in late), late


async def test_a_timer_on_an_alias_runs_the_aliased_version(
    fresh_stack: StartStack, session: aiohttp.ClientSession
) -> None:
    """The trigger's qualifier is resolved like any invocation's: alias prod -> version 1
    runs version 1's config while LATEST has moved on."""
    stack = fresh_stack(workers=1)
    stack.start_timers()
    _, key = stack.create_tenant()
    client = Client(session, stack.url, key)
    runs_file = open_dir("timer") / f"{unique('runs')}.jsonl"
    service, function = await deploy(
        client,
        {"index.py": RECORD},
        environmentVariables={"RUNS": str(runs_file), "MARK": "v1"},
    )
    status, _, raw = await client.call("POST", f"/v1/services/{service}/versions", json={})
    assert status == 201 and json.loads(raw)["versionId"] == "1", raw
    status, _, raw = await client.call(
        "POST", f"/v1/services/{service}/aliases", json={"aliasName": "prod", "versionId": "1"}
    )
    assert status == 201, raw
    status, _, raw = await client.call(
        "PUT",
        f"/v1/services/{service}/functions/{function}",
        json={"environmentVariables": {"RUNS": str(runs_file), "MARK": "latest"}},
    )
    assert status == 200, raw
    body = {
        "triggerName": "onprod",
        "triggerType": "timer",
        "qualifier": "prod",
        "triggerConfig": {"cronExpression": "@every 1s"},
    }
    status, _, raw = await client.call(
        "POST", f"/v1/services/{service}/functions/{function}/triggers", json=body
    )
    assert status == 201 and json.loads(raw)["qualifier"] == "prod", raw
    wait_until(lambda: len(runs(runs_file)) >= 3, 20, "three runs")
    assert {r["mark"] for r in runs(runs_file)} == {"v1"}
    status, _, raw = await client.call(
        "GET",
        f"/v1/services/{service}/functions/{function}/invocations/"
        f"{runs(runs_file)[0]['requestId']}",
    )
    assert status == 200 and json.loads(raw)["qualifier"] == "prod", raw


async def test_two_replicas_one_sigkilled_no_double_no_miss(
    fresh_stack: StartStack, session: aiohttp.ClientSession
) -> None:
    stack = fresh_stack(workers=1, worker_slots=8)
    stack.start_timers("timer-a")
    stack.start_timers("timer-b")
    _, key = stack.create_tenant()
    client = Client(session, stack.url, key)
    service, function, path = await timer_function(client)
    await create_trigger(client, service, function, "beat", cronExpression="@every 1s")
    wait_until(lambda: len(runs(path)) >= 8, 30, "runs from both replicas")
    stack.kill("timer-a", signal.SIGKILL)  # whatever it held: claimed, published or not
    wait_until(lambda: len(runs(path)) >= 20, 40, "runs after the SIGKILL")
    stack.start_timers("timer-a2")  # a restart joins in again
    wait_until(lambda: len(runs(path)) >= 28, 40, "runs after the restart")
    stack.kill("timer-b", signal.SIGKILL)
    wait_until(lambda: len(runs(path)) >= 36, 40, "runs after the second SIGKILL")
    await put_trigger(client, service, function, "beat", enabled=False)
    await asyncio.sleep(8)  # a lapsed claim is taken over within lease + sweep (6 s)
    seen = runs(path)
    counts = Counter(r["triggerTime"] for r in seen)
    assert [t for t, n in counts.items() if n > 1] == [], "a scheduled time ran twice"
    times = sorted(epoch(t) for t in counts)
    assert len(times) >= 30
    missing = sorted(set(range(int(times[0]), int(times[-1]) + 1)) - {int(t) for t in times})
    assert missing == [], f"scheduled times never run: {missing}"
    # Every run is its own invocation (request ids are per scheduled time).
    assert len({r["requestId"] for r in seen}) == len(seen)


async def test_missed_runs_after_downtime(
    fresh_stack: StartStack, session: aiohttp.ClientSession
) -> None:
    """With no timer process for ~6 s: skip fires nothing missed, once the latest, all each."""
    stack = fresh_stack(workers=1, worker_slots=8)
    _, key = stack.create_tenant()
    client = Client(session, stack.url, key)
    service, function, path = await timer_function(client)
    for policy in ("skip", "once", "all"):
        await create_trigger(
            client, service, function, policy, cronExpression="@every 1s", missedRuns=policy
        )
    created_at = time.time()
    await asyncio.sleep(6)
    started_at = time.time()
    stack.start_timers()
    wait_until(lambda: len({r["triggerName"] for r in runs(path)}) == 3, 20, "all three ran")
    await asyncio.sleep(2)
    times: dict[str, list[float]] = {"skip": [], "once": [], "all": []}
    for r in runs(path):
        times[r["triggerName"]].append(epoch(r["triggerTime"]))
    for name in times:
        times[name].sort()
        assert len(set(times[name])) == len(times[name]), times
    # The three were loaded together: skip starts after the load, once adds the single
    # latest missed run right before that, all adds every one since the trigger's creation.
    assert times["skip"][0] >= started_at, (started_at, times["skip"])
    assert times["once"][0] == times["skip"][0] - 1, times
    assert times["once"][1] == times["skip"][0], times
    assert times["all"][0] <= created_at + 1, (created_at, times["all"])
    expected = list(range(int(times["all"][0]), int(times["all"][-1]) + 1))
    assert [int(t) for t in times["all"]] == expected, times["all"]


@pytest.mark.parametrize("policy", ["skip", "queue", "allow"])
async def test_overlap(
    fresh_stack: StartStack, session: aiohttp.ClientSession, policy: str
) -> None:
    """A 2.5 s function on a 1 s timer: skip and queue never overlap runs (queue keeps one
    waiting and starts it when the previous ends); allow does."""
    stack = fresh_stack(workers=1, worker_slots=8)
    stack.start_timers()
    _, key = stack.create_tenant()
    client = Client(session, stack.url, key)
    service, function, path = await timer_function(client, sleep=2.5)
    await create_trigger(
        client, service, function, "slow", cronExpression="@every 1s", overlap=policy
    )
    wait_until(lambda: len(runs(path)) >= 4, 40, "four runs")
    await put_trigger(client, service, function, "slow", enabled=False)
    seen = sorted(runs(path), key=lambda r: r["started"])
    overlapping = sum(1 for a, b in itertools.pairwise(seen) if b["started"] < a["ended"] - 0.05)
    if policy == "allow":
        assert overlapping >= 2, seen
        return
    assert overlapping == 0, seen
    gaps = [b["started"] - a["ended"] for a, b in itertools.pairwise(seen)]
    if policy == "queue":
        # The waiting fire is published as soon as the previous run is recorded finished.
        assert max(gaps) < 1.5, gaps
    else:
        # skip: the next run is the first fire after the previous ended (within ~1 s).
        assert max(gaps) < 2.0, gaps
