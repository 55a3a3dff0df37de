"""An accepted async invocation survives a worker killed with SIGKILL mid-run."""

from __future__ import annotations

import os

import aiohttp
import pytest

from tests.conftest import Client, StartStack, on_both_databases
from tests.helpers import deploy, invoke, open_dir, wait_result
from tests.stack import Stack, wait_until

SLOW = (
    "import os, time\n"
    "def handler(event, context):\n"
    "    with open(event.decode(), 'a') as f:\n"
    "        f.write(f'{os.getpid()}\\n')\n"
    "    time.sleep(2)\n"
    "    return b'survived'\n"
)


@pytest.fixture
def crash_stack(fresh_stack: StartStack) -> Stack:
    return fresh_stack(workers=1)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@on_both_databases
async def test_async_invocation_survives_worker_sigkill(crash_stack: Stack) -> None:
    _, key = crash_stack.create_tenant()
    marker = open_dir("crash") / "runs.txt"
    async with aiohttp.ClientSession() as session:
        client = Client(session, crash_stack.url, key)
        service, function = await deploy(client, {"index.py": SLOW}, timeout=30)
        status, headers, _ = await invoke(
            client, service, function, str(marker).encode(), X_Fc_Invocation_Type="Async"
        )
        assert status == 202
        request_id = headers["X-Fc-Request-Id"]
        # The function is running once it wrote its pid; then kill its worker.
        wait_until(lambda: marker.exists() and marker.read_text().strip(), 30, "first run")
        instance_pid = int(marker.read_text().split()[0])
        crash_stack.kill("worker-1")
        # The instance dies with its worker (no orphan keeps running the function).
        wait_until(lambda: not pid_alive(instance_pid), 10, "instance to die with its worker")
        crash_stack.start_worker()
        rec = await wait_result(client, service, function, request_id, timeout=60)
        assert rec["status"] == "Succeeded", rec
        assert rec["result"] == "survived"
        runs = marker.read_text().split()
        assert len(runs) == 2, runs  # first (killed) run + the redelivered one


async def test_sync_caller_gets_prompt_error_when_worker_dies(crash_stack: Stack) -> None:
    _, key = crash_stack.create_tenant()
    marker = open_dir("crash") / "sync-runs.txt"
    import asyncio

    async with aiohttp.ClientSession() as session:
        client = Client(session, crash_stack.url, key)
        service, function = await deploy(client, {"index.py": SLOW}, timeout=30)
        call = asyncio.create_task(invoke(client, service, function, str(marker).encode()))
        await asyncio.to_thread(
            wait_until, lambda: marker.exists() and marker.read_text().strip(), 30, "sync run"
        )
        crash_stack.kill("worker-1")
        crash_stack.start_worker()
        status, _, body = await asyncio.wait_for(call, 30)
        assert status == 502, body
        assert b"WorkerLost" in body
        assert len(marker.read_text().split()) == 1  # sync work is never run twice
