"""A worker keeps running work through a lost broker connection and through a clean stop.

A broker restart used to cancel the worker's delivery handlers with their channel: the
function went on inside its instance, which the pool counted free again, and the copy the
broker gave back ran a second time. A SIGTERM cut running work short the same way.

A copy the worker does not run again still frees the concurrency slot the dispatcher may
have taken for it.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import aiohttp

from shared.models import InvocationRecord
from shared.store import Store
from tests.conftest import Client, StartStack, on_both_databases
from tests.helpers import async_invocation, deploy, enqueue, invoke, open_dir, wait_result
from tests.stack import Stack, wait_until
from tests.test_e2e_crash import SLOW
from tests.test_e2e_dispatch import PROBE, Probe, fire_async, tenant_client
from tests.test_e2e_reconnect import close_connections, stack_connections

# Long enough for rabbitmqctl to list and close the worker's connection while it runs
# (each rabbitmqctl call takes 1-3.5 s on a loaded machine; at 2 s the run could finish
# first, and no copy came back).
LONG = SLOW.replace("time.sleep(2)", "time.sleep(8)")


async def start_slow_async(
    stack: Stack, client: Client, marker_dir: str, code: str = SLOW
) -> tuple[str, ...]:
    """Deploy `code` (SLOW: 2 s), invoke it async and return once it runs: (service,
    function, request id, marker path)."""
    marker = open_dir(marker_dir) / "runs.txt"
    service, function = await deploy(client, {"index.py": code}, timeout=30)
    status, headers, _ = await invoke(
        client, service, function, str(marker).encode(), X_Fc_Invocation_Type="Async"
    )
    assert status == 202
    await asyncio.to_thread(
        wait_until, lambda: marker.exists() and marker.read_text().strip(), 30, "the run"
    )
    return service, function, headers["X-Fc-Request-Id"], str(marker)


async def test_a_lost_connection_neither_stops_nor_repeats_running_work(
    fresh_stack: StartStack,
) -> None:
    stack = fresh_stack(workers=1)
    _, key = stack.create_tenant()
    async with aiohttp.ClientSession() as session:
        client = Client(session, stack.url, key)
        service, function, request_id, marker = await start_slow_async(stack, client, "blip", LONG)
        pids = await asyncio.to_thread(
            stack_connections, stack.namespace, stack.worker_ids["worker-1"]
        )
        assert len(pids) == 1, pids
        await asyncio.to_thread(close_connections, pids)
        rec = await wait_result(client, service, function, request_id, timeout=60)
        assert rec["status"] == "Succeeded" and rec["result"] == "survived", rec
        # The broker gave the work back when the connection closed; the copy came back to
        # this worker, which did not run it again.
        await asyncio.to_thread(
            stack.wait_log, "worker-1", "ran here already; this copy is not run"
        )
        runs = Path(marker).read_text().split()
        assert len(runs) == 1, runs


async def test_a_clean_stop_lets_running_work_finish(fresh_stack: StartStack) -> None:
    stack = fresh_stack(workers=1)
    _, key = stack.create_tenant()
    async with aiohttp.ClientSession() as session:
        client = Client(session, stack.url, key)
        service, function, request_id, marker = await start_slow_async(stack, client, "stop")
        await asyncio.to_thread(stack.kill, "worker-1", signal.SIGTERM)
        assert stack.procs["worker-1"].returncode == 0, stack.logs("worker-1")
        # Finished and answered before the worker went: no worker is left to run it again.
        rec = await wait_result(client, service, function, request_id, timeout=30)
        assert rec["status"] == "Succeeded" and rec["result"] == "survived", rec
        runs = Path(marker).read_text().split()
        assert len(runs) == 1, runs


@on_both_databases
async def test_a_copy_not_run_again_frees_its_concurrency_slot(fresh_stack: StartStack) -> None:
    stack = fresh_stack(workers=1)
    async with aiohttp.ClientSession() as session:
        client = tenant_client(stack, session, concurrency=1)
        probe = Probe()
        service, function = await deploy(
            client, {"index.py": PROBE}, environmentVariables=probe.env()
        )
        inv = async_invocation(client.tenant, service, function)
        # Recorded as accepted, as the gateway or a trigger adapter records it.
        store = await Store.open(stack.database_url)
        try:
            await store.record_accepted(
                InvocationRecord(
                    request_id=inv.id, tenant=inv.tenant, service_name=service,
                    qualifier="LATEST", function_name=function,
                )
            )  # fmt: skip
        finally:
            await store.close()
        await enqueue(stack.env["PYFC_AMQP_URL"], stack.namespace, inv)
        rec = await wait_result(client, service, function, inv.id)
        assert rec["status"] == "Succeeded", rec
        # The same invocation again, after its run was concluded: the dispatcher admits it
        # (taking the tenant's only slot) and the worker, which answered it, does not run it.
        await enqueue(stack.env["PYFC_AMQP_URL"], stack.namespace, inv)
        await asyncio.to_thread(
            stack.wait_log, "worker-1", "ran here already; this copy is not run"
        )
        # The slot is free again: the tenant's next invocation runs.
        (request_id,) = await fire_async(client, service, function, 1)
        rec = await wait_result(client, service, function, request_id, timeout=30)
        assert rec["status"] == "Succeeded", rec
        assert probe.ids() == [inv.id, request_id]
