"""FC's `pre_stop(context)` runs before an instance goes away: when it is recycled idle, and
when its worker stops cleanly (a rolling restart), on real worker processes."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import Client, StartStack
from tests.helpers import deploy, invoke, open_dir, unique
from tests.stack import wait_until

# Each instance writes a line on pre_stop: the function's name and its instance id.
HOOKED = (
    "import os\n"
    "def handler(event, context):\n"
    "    return 'ok'\n"
    "def pre_stop(context):\n"
    "    with open(os.environ['MARKS'], 'a') as f:\n"
    "        f.write(context.function.name + '\\n')\n"
)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


async def test_pre_stop_runs_when_an_idle_instance_is_recycled(
    fresh_stack: StartStack, session: aiohttp.ClientSession
) -> None:
    stack = fresh_stack(env={"PYFC_INSTANCE_IDLE_SECONDS": "1"})
    _, key = stack.create_tenant()
    client = Client(session, stack.url, key)
    marks = open_dir("prestop") / f"{unique('marks')}.txt"
    service, function = await deploy(
        client, {"index.py": HOOKED}, environmentVariables={"MARKS": str(marks)}
    )
    status, _, body = await invoke(client, service, function, b"x")
    assert status == 200, body
    assert lines(marks) == []  # not while it is warm and in use
    await asyncio.to_thread(wait_until, lambda: lines(marks), 30, "pre_stop on idle recycle")
    assert lines(marks) == [function]


async def test_pre_stop_runs_when_the_worker_stops_cleanly(
    fresh_stack: StartStack, session: aiohttp.ClientSession
) -> None:
    stack = fresh_stack()
    _, key = stack.create_tenant()
    client = Client(session, stack.url, key)
    marks = open_dir("prestop") / f"{unique('marks')}.txt"
    service, function = await deploy(
        client, {"index.py": HOOKED}, environmentVariables={"MARKS": str(marks)}
    )
    status, _, body = await invoke(client, service, function, b"x")
    assert status == 200, body
    worker = next(name for name in stack.procs if name.startswith("worker"))
    await asyncio.to_thread(stack.kill, worker, signal.SIGTERM)
    assert stack.procs[worker].returncode == 0
    assert lines(marks) == [function]
