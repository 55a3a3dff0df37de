"""Provisioned instances through the whole stack: warm before any event, restarted when they
die, retired when the target drops, shared by workers and taken over from a dead one.

Instances are observed two ways: each worker's metrics endpoint, and marker files the
function's initializer writes (named by the instance's pid) into a directory given in its
environment.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import Client, StartStack, on_both_databases
from tests.helpers import deploy, invoke, open_dir
from tests.instances import process_gone
from tests.stack import Stack, free_port

MARKED = (
    "import os, pathlib\n"
    "def init(context):\n"
    "    marker = pathlib.Path(os.environ['MARKERS']) / str(os.getpid())\n"
    "    marker.write_text(os.environ.get('GENERATION', ''))\n"
    "def handler(event, context):\n"
    "    return str(os.getpid())\n"
)
# Time a worker takes to notice a silent peer (3 missed 2 s beats + 1 s) plus a start.
TAKEOVER_BOUND = 20.0
# A worker unheard for 3 beats (2 s) + 1 s is dropped from the fleet (worker/provision.py);
# a clean stop announces leaving, so its share moves well before that: measured 0.07-0.42 s
# (SIGTERM to the survivor's 2 more instances ready, 2 cores shared by several stacks).
HANDOVER_FALLBACK = 7.0
HANDOVER_BOUND = 4.0


def live_instances(markers: Path) -> dict[int, str]:
    """pid -> generation of every instance whose initializer ran and that still runs."""
    found = {}
    for marker in markers.iterdir():
        pid = int(marker.name)
        if not process_gone(pid):
            found[pid] = marker.read_text()
    return found


async def scrape(session: aiohttp.ClientSession, port: int) -> str:
    async with session.get(f"http://127.0.0.1:{port}/metrics") as r:
        assert r.status == 200
        return await r.text()


def value(text: str, name: str, **labels: str) -> float:
    """A sample's value in Prometheus text, 0 when absent."""
    for line in text.splitlines():
        metric_name, _, rest = line.partition("{")
        if metric_name == name and all(f'{k}="{v}"' in rest for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def provisioned_on(session: aiohttp.ClientSession, port: int, function: str) -> float:
    text = await scrape(session, port)
    return value(text, "pyfc_worker_instances_provisioned", function=function)


async def until(predicate: Callable[[], Awaitable[bool]], within: float, what: str) -> float:
    """Poll `predicate` until it holds; the seconds it took."""
    started = time.monotonic()
    while not await predicate():
        if time.monotonic() - started > within:
            raise AssertionError(f"not within {within}s: {what}")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def start_workers(stack: Stack, n: int) -> list[tuple[str, int]]:
    started = []
    for _ in range(n):
        port = free_port()
        started.append((stack.start_worker({"PYFC_WORKER_METRICS_PORT": str(port)}), port))
    return started


async def provision(client: Client, service: str, function: str, target: int) -> None:
    path = f"/v1/services/{service}.LATEST/functions/{function}/provision-config"
    status, _, body = await client.call("PUT", path, json={"target": target})
    assert status == 200, body


@pytest.fixture
def markers() -> Path:
    return open_dir("markers")  # instances write to it, as their tenant's uid


@on_both_databases
async def test_provisioned_instances_on_one_worker(fresh_stack: StartStack, markers: Path) -> None:
    stack = fresh_stack(workers=0)
    [(_, port)] = start_workers(stack, 1)
    _, key = stack.create_tenant()
    async with aiohttp.ClientSession() as session:
        client = Client(session, stack.url, key)
        service, function = await deploy(
            client,
            {"index.py": MARKED},
            initializer="index.init",
            environmentVariables={"MARKERS": str(markers), "GENERATION": "1"},
        )

        async def provisioned(n: int, without: int = 0) -> bool:
            live = live_instances(markers)
            gauge = await provisioned_on(session, port, function)
            return gauge == n and len(live) == n and without not in live

        # Before any event: the target's instances start and run their initializer.
        await provision(client, service, function, 2)
        took = await until(lambda: provisioned(2), 15, "2 provisioned instances")
        print(f"\nPUT target 2 -> 2 instances ready in {took * 1000:.0f} ms")
        pids = set(live_instances(markers))

        # The first invocation runs warm on one of them.
        status, _, body = await invoke(client, service, function)
        assert status == 200 and int(body) in pids
        text = await scrape(session, port)
        assert value(text, "pyfc_worker_starts_total", function=function, kind="warm") == 1
        assert value(text, "pyfc_worker_starts_total", function=function, kind="cold") == 0

        # A provisioned instance that dies is replaced.
        victim = min(pids)
        os.kill(victim, signal.SIGKILL)
        took = await until(lambda: provisioned(2, without=victim), 15, "a replacement")
        print(f"SIGKILL of an instance -> replaced in {took * 1000:.0f} ms")

        # A new revision replaces them (the old ones would run old code).
        path = f"/v1/services/{service}/functions/{function}"
        env = {"MARKERS": str(markers), "GENERATION": "2"}
        status, _, body = await client.call("PUT", path, json={"environmentVariables": env})
        assert status == 200, body

        async def new_generation() -> bool:
            return await provisioned(2) and set(live_instances(markers).values()) == {"2"}

        took = await until(new_generation, 15, "instances of the new revision")
        print(f"function update -> 2 instances of the new revision in {took * 1000:.0f} ms")

        # Target 0: retired.
        await provision(client, service, function, 0)
        await until(lambda: provisioned(0), 15, "provisioned instances retired")
        assert live_instances(markers) == {}


async def test_workers_share_a_target_and_take_over(fresh_stack: StartStack, markers: Path) -> None:
    stack = fresh_stack(workers=0, worker_slots=5)  # 4 provisioned + 1 on-demand each
    workers = start_workers(stack, 2)
    _, key = stack.create_tenant()
    async with aiohttp.ClientSession() as session:
        client = Client(session, stack.url, key)
        service, function = await deploy(
            client,
            {"index.py": MARKED},
            initializer="index.init",
            environmentVariables={"MARKERS": str(markers)},
        )

        async def shares(expected: list[int]) -> bool:
            running = [(n, p) for n, p in workers if stack.procs[n].poll() is None]
            got = [await provisioned_on(session, port, function) for _, port in running]
            return got == expected and len(live_instances(markers)) == sum(expected)

        await provision(client, service, function, 4)
        took = await until(lambda: shares([2, 2]), 15, "2 instances on each worker")
        print(f"\nPUT target 4 over 2 workers -> 2 + 2 ready in {took * 1000:.0f} ms")

        # SIGKILL one worker: its instances die with it, the other takes its share over.
        stack.kill(workers[0][0])
        took = await until(lambda: shares([4]), TAKEOVER_BOUND, "the survivor keeping 4")
        print(f"worker SIGKILL -> the other keeps all 4 after {took * 1000:.0f} ms")

        # A joining worker takes a share; the fleet never has fewer than 4 ready meanwhile.
        workers.append(*start_workers(stack, 1))
        lowest = len(live_instances(markers))

        async def rebalanced() -> bool:
            nonlocal lowest
            lowest = min(lowest, len(live_instances(markers)))
            return await shares([2, 2])

        took = await until(rebalanced, 15, "a share on the new worker")
        print(f"worker joins -> 2 + 2 after {took * 1000:.0f} ms; fewest ready meanwhile {lowest}")
        assert lowest >= 4

        # A worker stopping cleanly says so: the other takes over without waiting for beats
        # (the fallback, a worker unheard for 3 beats + 1 s, would take HANDOVER_FALLBACK).
        (leaving, _), (survivor, survivor_port) = workers[1], workers[2]
        stack.procs[leaving].send_signal(signal.SIGTERM)

        async def survivor_keeps_4() -> bool:
            return await provisioned_on(session, survivor_port, function) == 4

        took = await until(survivor_keeps_4, HANDOVER_BOUND, "the survivor keeping 4 again")
        print(f"worker SIGTERM -> the other keeps all 4 after {took * 1000:.0f} ms")
        assert f"fleet: worker {stack.worker_ids[leaving]} left" in stack.logs(survivor)
        stack.procs[leaving].wait(timeout=30)
        await until(lambda: shares([4]), 10, "the leaving worker's instances gone")
