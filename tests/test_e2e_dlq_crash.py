"""A DLQ redrive interrupted by a crash (README, docs/architecture.md "Dead letters"): the
gateway SIGKILLed after the redriven invocation was published and confirmed but before its
dead letter was deleted. The invocation runs, and the letter is kept, never lost; a second
redrive runs it again (at least once) and deletes it.

The crash point is made deterministic on PostgreSQL: the test holds the dead letter's row
lock, so the gateway's DELETE waits there, after the confirm, until it is killed.
"""

from __future__ import annotations

import asyncio
import signal
import time

import aiohttp
import asyncpg
import pytest

from tests.conftest import Client, StartStack
from tests.helpers import deploy, wait_result
from tests.test_e2e_dispatch import (
    PROBE,
    Probe,
    fire_async,
    put_async_config,
    tenant_client,
    wait_dead_letter,
)


async def until(predicate: object, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"not within {within}s: {what}"
        await asyncio.sleep(0.05)


async def waiting_deletes(db: asyncpg.Connection) -> int:
    """Sessions whose DELETE of a dead letter waits on a lock."""
    return int(
        await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND query ILIKE 'DELETE FROM dead_letters%'"
        )
    )


# PostgreSQL only: SQLite has no row lock to hold the gateway at that point.
@pytest.mark.parametrize("fresh_stack", ["postgres"], indirect=True)
async def test_a_redrive_cut_by_a_crash_runs_once_more_and_keeps_the_letter(
    fresh_stack: StartStack,
) -> None:
    stack = fresh_stack(workers=1)
    assert stack.pg is not None
    async with aiohttp.ClientSession() as session:
        client = tenant_client(stack, session, concurrency=10)
        probe = Probe()
        service, function = await deploy(
            client, {"index.py": PROBE}, environmentVariables=probe.env(FAIL="1")
        )
        await put_async_config(client, service, function, maxAsyncRetryAttempts=0)
        (request_id,) = await fire_async(client, service, function, 1)
        await wait_dead_letter(client, service, function)
        (probe.dir / "healed").touch()  # the redriven run succeeds

        db = await asyncpg.connect(stack.pg.url.replace("postgresql+asyncpg", "postgresql"))
        try:
            lock = db.transaction()
            await lock.start()
            await db.execute(
                "SELECT 1 FROM dead_letters WHERE tenant = $1 AND request_id = $2 FOR UPDATE",
                client.tenant,
                request_id,
            )
            redrive = asyncio.create_task(client.call("POST", f"/v1/dlq/{request_id}/redrive"))
            # Published and confirmed: it runs; the gateway waits to delete the letter.
            await until(lambda: probe.ids().count(request_id) == 2, 30, "the redriven run")
            while not await waiting_deletes(db):
                assert not redrive.done(), await redrive
                await asyncio.sleep(0.05)
            await asyncio.to_thread(stack.kill, "gateway", signal.SIGKILL)
            await lock.rollback()
        finally:
            await db.close()
        outcome = await asyncio.gather(redrive, return_exceptions=True)
        assert isinstance(outcome[0], aiohttp.ClientError), outcome  # no answer: it crashed

        stack.spawn("gateway", "gateway")
        await asyncio.to_thread(stack.wait_healthy)
        client = Client(session, stack.url, client.key, client.tenant)
        rec = await wait_result(client, service, function, request_id)
        assert rec["status"] == "Succeeded", rec
        status, _, body = await client.call("GET", f"/v1/dlq/{request_id}")
        assert status == 200, body  # the letter is kept
        # Redriven again: it runs once more and the letter goes.
        status, _, body = await client.call("POST", f"/v1/dlq/{request_id}/redrive")
        assert status == 202, body
        await until(lambda: probe.ids().count(request_id) == 3, 30, "the second redrive")
        status, _, _ = await client.call("GET", f"/v1/dlq/{request_id}")
        assert status == 404
