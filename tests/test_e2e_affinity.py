"""Calls go to the worker that has a warm instance for them; work a worker cannot take in
time (busy, or dead) falls back to the shared queue and runs elsewhere.

The function reports the pid of the instance that ran it and of its worker (the
instance's parent, or its zygote's parent); each worker's metrics count its cold starts.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import Client, StartStack
from tests.helpers import deploy, invoke, wait_result
from tests.stack import Stack, free_port, wait_until
from tests.test_e2e_provision import provision, provisioned_on, scrape, until, value

WHO = (
    "import os, pathlib, time\n"
    "def parent(pid):\n"
    "    with open(f'/proc/{pid}/stat') as f:\n"
    "        return int(f.read().rsplit(')', 1)[1].split()[1])\n"
    "def handler(event, context):\n"
    "    # event: '<seconds to sleep> [<directory for a marker per run>]'\n"
    "    args = event.decode().split()\n"
    "    if len(args) > 1:\n"
    "        with open(pathlib.Path(args[1]) / context.request_id, 'a') as f:\n"
    "            f.write(f'{os.getpid()} {time.time()}\\n')\n"
    "    time.sleep(float(args[0]) if args else 0)\n"
    "    return f'{os.getpid()} {os.getppid()} {parent(os.getppid())}'\n"
)


def start_worker(stack: Stack, slots: int = 4) -> tuple[str, int]:
    port = free_port()
    env = {"PYFC_WORKER_METRICS_PORT": str(port), "PYFC_WORKER_SLOTS": str(slots)}
    return stack.start_worker(env), port


def ran_on(stack: Stack, body: bytes) -> tuple[int, str]:
    """(instance pid, worker process name) from the function's answer."""
    instance, *parents = (int(p) for p in body.split())
    for name, proc in stack.procs.items():
        if name.startswith("worker") and proc.pid in parents:
            return instance, name
    raise AssertionError(f"no worker of {parents} in {list(stack.procs)}")


async def starts(session: aiohttp.ClientSession, port: int, function: str, kind: str) -> float:
    text = await scrape(session, port)
    return value(text, "pyfc_worker_starts_total", function=function, kind=kind)


def runs(markers: Path) -> dict[str, list[tuple[int, float]]]:
    """request id -> [(instance pid, start time)] of every run."""
    found = {}
    for marker in markers.iterdir():
        lines = marker.read_text().split("\n")
        found[marker.name] = [(int(p), float(t)) for p, t in (x.split() for x in lines if x)]
    return found


@pytest.fixture
def markers() -> Iterator[Path]:
    # Outside pytest's private tmp tree, writable by all: instances may run as another uid.
    path = Path(tempfile.mkdtemp(prefix="pyfc-markers-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_calls_go_to_the_worker_that_warmed_the_function(fresh_stack: StartStack) -> None:
    stack = fresh_stack(workers=0)
    workers = dict([start_worker(stack), start_worker(stack)])
    _, key = stack.create_tenant()
    async with aiohttp.ClientSession() as session:
        client = Client(session, stack.url, key)
        service, function = await deploy(client, {"index.py": WHO}, timeout=10)
        status, _, body = await invoke(client, service, function, b"0")
        assert status == 200, body
        instance, warm = ran_on(stack, body)  # a cold start on one of the two
        for _ in range(30):
            status, _, body = await invoke(client, service, function, b"0")
            assert status == 200, body
            assert ran_on(stack, body) == (instance, warm)
        for name, port in workers.items():
            assert await starts(session, port, function, "cold") == (name == warm)
        assert await starts(session, workers[warm], function, "warm") == 30


async def test_calls_go_to_the_worker_with_the_provisioned_instance(
    fresh_stack: StartStack,
) -> None:
    stack = fresh_stack(workers=0)
    workers = dict([start_worker(stack), start_worker(stack)])
    _, key = stack.create_tenant()
    async with aiohttp.ClientSession() as session:
        client = Client(session, stack.url, key)
        service, function = await deploy(client, {"index.py": WHO}, timeout=10)
        await provision(client, service, function, 1)

        host = ""

        async def placed() -> bool:
            nonlocal host
            for name, port in workers.items():
                if await provisioned_on(session, port, function) == 1:
                    host = name
                    return True
            return False

        await until(placed, 15, "a provisioned instance")
        # The worker tells the fleet before it logs the instance ready.
        stack.wait_log(host, "provisioned instance")
        seen = set()
        for _ in range(20):
            status, _, body = await invoke(client, service, function, b"0")
            assert status == 200, body
            seen.add(ran_on(stack, body))
        assert len(seen) == 1 and next(iter(seen))[1] == host, seen
        for port in workers.values():  # never a cold start, on either worker
            assert await starts(session, port, function, "cold") == 0


async def test_a_busy_worker_does_not_hold_up_the_next_call(
    fresh_stack: StartStack, markers: Path
) -> None:
    stack = fresh_stack(workers=0)
    busy, _ = start_worker(stack, slots=1)
    _, key = stack.create_tenant()
    async with aiohttp.ClientSession() as session:
        client = Client(session, stack.url, key)
        service, function = await deploy(client, {"index.py": WHO}, timeout=10)
        status, _, body = await invoke(client, service, function, b"0")
        assert ran_on(stack, body)[1] == busy  # warm there, and it has one slot only
        other, _ = start_worker(stack)
        long_call = asyncio.create_task(invoke(client, service, function, f"3 {markers}".encode()))
        # Running on the busy worker (its marker written), so that worker is full.
        await asyncio.to_thread(
            wait_until, lambda: any(markers.iterdir()) or long_call.done(), 10, "long call"
        )
        started = time.monotonic()
        status, _, body = await invoke(client, service, function, b"0")
        took = time.monotonic() - started
        assert status == 200, body
        assert ran_on(stack, body)[1] == other
        assert took < 2.0, f"the second call waited {took:.2f}s behind the busy worker"
        status, _, body = await long_call
        assert status == 200 and ran_on(stack, body)[1] == busy


async def test_work_a_full_worker_cannot_take_falls_back(
    fresh_stack: StartStack, markers: Path
) -> None:
    """Async work is routed as 1/instanceConcurrency of a slot; sent one message each, only
    one fits the worker's single prefetch slot: the others expire out of its queue (TTL)
    and run on the other worker, without waiting for the first to finish."""
    metrics_port = free_port()
    stack = fresh_stack(workers=0, env={"PYFC_DISPATCHER_METRICS_PORT": str(metrics_port)})
    full, _ = start_worker(stack, slots=1)
    _, key = stack.create_tenant()
    async with aiohttp.ClientSession() as session:
        client = Client(session, stack.url, key)
        service, function = await deploy(
            client, {"index.py": WHO}, timeout=10, instanceConcurrency=3
        )
        status, _, body = await invoke(client, service, function, b"0")
        instance, host = ran_on(stack, body)
        assert host == full
        start_worker(stack)

        async def routed_to_affinity() -> float:
            text = await scrape(session, metrics_port)
            return value(text, "pyfc_dispatcher_routed_total", route="affinity")

        sent = {}
        for _ in range(3):
            before = await routed_to_affinity()

            async def routed(before: float = before) -> bool:
                return await routed_to_affinity() > before

            event = f"4 {markers}".encode()
            status, headers, _ = await invoke(
                client, service, function, event, X_Fc_Invocation_Type="Async"
            )
            assert status == 202
            sent[headers["X-Fc-Request-Id"]] = time.time()
            # One message each: the next is accepted once this one was routed.
            await until(routed, 10, "routed")
        for request_id in sent:
            rec = await wait_result(client, service, function, request_id, timeout=30)
            assert rec["status"] == "Succeeded", json.dumps(rec)
        started = {rid: r[0][1] - sent[rid] for rid, r in runs(markers).items()}
        # None waited for the 4 s run: the others start once the affinity TTL (1 s) runs
        # out, measured 1.01-1.22 s after they were sent.
        assert max(started.values()) < 3.0, started
        pids = [r[0][0] for r in runs(markers).values()]
        assert pids.count(instance) == 1, pids  # the others ran on the other worker
        text = await scrape(session, metrics_port)
        [missed] = [
            float(line.split()[1])
            for line in text.splitlines()
            if line.startswith("pyfc_dispatcher_affinity_missed_total ")
        ]
        assert missed == 2  # the dispatcher saw where they ran


async def test_async_work_of_a_killed_worker_falls_back(
    fresh_stack: StartStack, markers: Path
) -> None:
    stack = fresh_stack(workers=0)
    victim, _ = start_worker(stack)
    _, key = stack.create_tenant()
    async with aiohttp.ClientSession() as session:
        client = Client(session, stack.url, key)
        service, function = await deploy(
            client, {"index.py": WHO}, timeout=10, instanceConcurrency=4
        )
        status, _, body = await invoke(client, service, function, b"0")
        instance, host = ran_on(stack, body)
        assert host == victim
        start_worker(stack)
        ids = []
        for _ in range(4):
            status, headers, _ = await invoke(
                client, service, function, f"2 {markers}".encode(), X_Fc_Invocation_Type="Async"
            )
            assert status == 202
            ids.append(headers["X-Fc-Request-Id"])
        # Routed to the warm worker's queue; kill it while they run there.
        await asyncio.to_thread(
            wait_until,
            lambda: any(pid == instance for r in runs(markers).values() for pid, _ in r),
            10,
            "a run on the warm instance",
        )
        stack.kill(victim)
        for request_id in ids:
            rec = await wait_result(client, service, function, request_id, timeout=30)
            assert rec["status"] == "Succeeded", rec
        # Every one ran to the end elsewhere; those cut short on the victim ran twice.
        assert all(r[-1][0] != instance for r in runs(markers).values())
        assert set(runs(markers)) == set(ids)


async def test_a_sync_call_on_a_killed_worker_is_not_run_again(
    fresh_stack: StartStack, markers: Path
) -> None:
    stack = fresh_stack(workers=0)
    victim, _ = start_worker(stack)
    _, key = stack.create_tenant()
    async with aiohttp.ClientSession() as session:
        client = Client(session, stack.url, key)
        service, function = await deploy(client, {"index.py": WHO}, timeout=10)
        status, _, body = await invoke(client, service, function, b"0")
        assert ran_on(stack, body)[1] == victim
        start_worker(stack)
        call = asyncio.create_task(invoke(client, service, function, f"5 {markers}".encode()))
        await asyncio.to_thread(wait_until, lambda: runs(markers), 10, "the sync run")
        stack.kill(victim)
        status, _, body = await asyncio.wait_for(call, 15)
        assert status == 502, body
        assert b"WorkerLost" in body
        [run] = runs(markers).values()
        assert len(run) == 1  # sync work is never run twice
