"""Every role survives the broker closing its connection: it reconnects and work goes on."""

from __future__ import annotations

import asyncio
import subprocess

import aiohttp
import pytest

from tests.conftest import Client, StartStack, on_both_databases
from tests.helpers import deploy, invoke, open_dir, wait_result
from tests.instances import eventually
from tests.stack import Stack


def stack_connections(namespace: str, role: str = "") -> list[str]:
    """Broker-side pids of the connections named `...<role>@<namespace>`."""
    out = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "pid", "client_properties"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return [line.split("\t")[0] for line in out.splitlines() if f"{role}@{namespace}" in line]


def close_connections(pids: list[str]) -> None:
    for pid in pids:
        subprocess.run(
            ["rabbitmqctl", "-q", "close_connection", pid, "pyfc test: forced close"],
            capture_output=True,
            check=True,
            timeout=30,
        )


@pytest.fixture
def own_stack(fresh_stack: StartStack) -> Stack:
    return fresh_stack(workers=1)


@on_both_databases
async def test_roles_reconnect_after_the_broker_closes_their_connections(own_stack: Stack) -> None:
    _, key = own_stack.create_tenant()
    async with aiohttp.ClientSession() as session:
        client = Client(session, own_stack.url, key)
        service, function = await deploy(client)
        assert (await invoke(client, service, function, b"before"))[2] == b"before"
        pids = stack_connections(own_stack.namespace)
        assert len(pids) == 3, pids  # gateway, dispatcher, worker
        close_connections(pids)
        # Robust connections come back by themselves (aio-pika retries every few seconds);
        # poll until a sync call goes through end to end again, bounded.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while True:
            status, _, body = await invoke(client, service, function, b"after")
            if status == 200:
                assert body == b"after"
                break
            # While the connection is being restored callers get a clear answer, never a 500:
            # 503 when the publish fails, 504 when a call's reply was lost with the connection.
            assert status in (503, 504), (status, body)
            assert loop.time() < deadline, (status, body)
            await asyncio.sleep(0.1)  # each try is a real call: the stack answers 503 at once
        # Consumers below aio-pika (replies, dispatch, work, done) were re-registered too.
        assert len(stack_connections(own_stack.namespace)) == 3
        status, headers, _ = await invoke(
            client, service, function, b"async after", X_Fc_Invocation_Type="Async"
        )
        assert status == 202
        rec = await wait_result(client, service, function, headers["X-Fc-Request-Id"], timeout=60)
        assert rec["result"] == "async after"
        for _ in range(20):
            assert (await invoke(client, service, function, b"again"))[2] == b"again"


async def test_a_sync_call_whose_reply_channel_is_lost_fails_fast(own_stack: Stack) -> None:
    _, key = own_stack.create_tenant()
    # The function runs until the test lets it end: the call is surely in flight while
    # the connection is closed, however slow rabbitmqctl is on a loaded machine.
    markers = open_dir("reply-lost")
    slow = (
        "import os, time\n"
        "def handler(event, context):\n"
        f"    open({str(markers / 'started')!r}, 'w').close()\n"
        f"    while not os.path.exists({str(markers / 'release')!r}):\n"
        "        time.sleep(0.01)\n"
        "    return event\n"
    )
    async with aiohttp.ClientSession() as session:
        client = Client(session, own_stack.url, key)
        service, function = await deploy(client, {"index.py": slow}, timeout=30)
        gateway = stack_connections(own_stack.namespace, "pyfc-gateway")
        assert len(gateway) == 1, gateway
        call = asyncio.create_task(invoke(client, service, function, b"lost"))
        try:
            await eventually(lambda: (markers / "started").exists(), within=20)
            close_connections(gateway)  # rabbitmqctl: seconds on a loaded machine
            loop = asyncio.get_running_loop()
            closed = loop.time()
            status, _, body = await call
            # Not the 30 s + 10 s deadline: the caller learns at once that the reply is lost.
            assert status == 503, body
            assert loop.time() - closed < 2.5
        finally:
            (markers / "release").touch()
