"""Several worker processes share the work of one function."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.conftest import Client, StartStack
from tests.helpers import deploy, invoke
from tests.stack import Stack

WHO = (
    "import os, time\n"
    "def parent(pid):\n"
    "    with open(f'/proc/{pid}/stat') as f:\n"
    "        return int(f.read().rsplit(')', 1)[1].split()[1])\n"
    "def handler(event, context):\n"
    "    time.sleep(0.3)\n"
    "    # The worker hosting this instance: its parent, or the parent of its zygote.\n"
    "    return f'{os.getppid()} {parent(os.getppid())}'\n"
)


@pytest.fixture
def two_workers(fresh_stack: StartStack) -> Stack:
    return fresh_stack(workers=2, worker_slots=4)


async def test_two_workers_both_serve_one_function_under_load(two_workers: Stack) -> None:
    _, key = two_workers.create_tenant()
    worker_pids = {str(p.pid) for name, p in two_workers.procs.items() if name.startswith("worker")}
    async with aiohttp.ClientSession() as session:
        client = Client(session, two_workers.url, key)
        service, function = await deploy(client, {"index.py": WHO}, timeout=10)
        results = await asyncio.gather(*(invoke(client, service, function) for _ in range(16)))
    assert all(status == 200 for status, _, _ in results), results
    served_by = {
        next(p for p in body.decode().split() if p in worker_pids) for _, _, body in results
    }
    assert served_by == worker_pids


async def test_worker_metrics_per_function(fresh_stack: StartStack) -> None:
    from tests.stack import free_port

    stack = fresh_stack(workers=0)
    port = free_port()
    stack.start_worker({"PYFC_WORKER_METRICS_PORT": str(port)})
    _, key = stack.create_tenant()
    async with aiohttp.ClientSession() as session:
        client = Client(session, stack.url, key)
        service, function = await deploy(client)
        for _ in range(3):
            assert (await invoke(client, service, function, b"m"))[0] == 200
        async with session.get(f"http://127.0.0.1:{port}/metrics") as r:
            assert r.status == 200
            text = await r.text()
    lines = text.splitlines()

    def value(metric: str, **labels: str) -> float:
        want = {"function": function, "service": service, **labels}
        for line in lines:
            name, _, rest = line.partition("{")
            if name == metric and all(f'{k}="{v}"' in rest for k, v in want.items()):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"{metric} {want} not in metrics:\n{text}")

    assert value("pyfc_worker_starts_total", kind="cold") == 1.0
    assert value("pyfc_worker_starts_total", kind="warm") == 2.0
    assert value("pyfc_worker_instances") == 1.0
    assert value("pyfc_worker_instances_busy") == 0.0
    assert value("pyfc_worker_instance_init_seconds_count") == 1.0
    assert value("pyfc_worker_invocations_total", outcome="succeeded") == 3.0
