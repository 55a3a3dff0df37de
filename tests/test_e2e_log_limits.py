"""Log stores under pressure: a chatty function fills its own store's bounded buffer
(drops counted on /metrics and noted in the store) while another tenant's lines all
arrive; a worker SIGKILLed loses at most the lines of its last flush interval."""

from __future__ import annotations

import asyncio
import json
import re
import time

import aiohttp

from tests.conftest import Client, StartStack
from tests.helpers import deploy, invoke
from tests.stack import free_port

CHATTY = """
def handler(event, context):
    for i in range(int(event)):
        print(f"{i:06d} " + "x" * 93)
    return "chatted"
"""

QUIET = """
def handler(event, context):
    print("quiet", context.request_id)
    return "ok"
"""


async def lines_of(client: Client, service: str, function: str, **params: str) -> list[dict]:
    """Every page of a query."""
    out: list[dict] = []
    token = ""
    while True:
        query = {**params, "limit": "1000", **({"nextToken": token} if token else {})}
        status, _, body = await client.call(
            "GET", f"/v1/services/{service}/functions/{function}/logs", params=query
        )
        assert status == 200, body
        page = json.loads(body)
        out += page["logs"]
        token = page.get("nextToken", "")
        if not token:
            return out


async def until(predicate, timeout: float = 30.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not (value := await predicate()):
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)
    return value


async def test_a_chatty_function_drops_its_own_lines_counted_and_others_keep_theirs(
    fresh_stack: StartStack,
) -> None:
    port = free_port()
    stack = fresh_stack(
        env={
            "PYFC_WORKER_METRICS_PORT": str(port),
            # A flush a second, 300 K characters a store: 5,000 lines a call overflow it.
            "PYFC_LOG_FLUSH_SECONDS": "1.0",
            "PYFC_LOG_BUFFER_CHARS": "300000",
        }
    )
    async with aiohttp.ClientSession() as session:
        loud = Client(session, stack.url, *reversed(stack.create_tenant()))
        calm = Client(session, stack.url, *reversed(stack.create_tenant()))
        l_svc, l_fn = await deploy(loud, {"index.py": CHATTY})
        c_svc, c_fn = await deploy(calm, {"index.py": QUIET})

        async def chatter() -> None:
            for _ in range(4):
                status, _, body = await invoke(loud, l_svc, l_fn, b"5000")
                assert (status, body) == (200, b"chatted")

        async def quiet() -> list[str]:
            ids = []
            for _ in range(20):
                status, headers, _ = await invoke(calm, c_svc, c_fn)
                assert status == 200
                ids.append(headers["X-Fc-Request-Id"])
            return ids

        _, quiet_ids = await asyncio.gather(chatter(), quiet())
        # Drops are counted per function on the worker's /metrics ...
        async with session.get(f"http://127.0.0.1:{port}/metrics") as r:
            text = await r.text()
        dropped = {
            m[2]: float(m[3])
            for m in re.finditer(
                r'pyfc_worker_log_records_dropped_total\{function="([^"]+)",service="[^"]+",'
                r'tenant="([^"]+)"\} ([0-9.e+]+)',
                text,
            )
        }
        assert dropped.get(loud.tenant, 0) > 1000, text[-3000:]
        assert calm.tenant not in dropped
        # ... and noted in the chatty function's store.
        notes = await until(lambda: lines_of(loud, l_svc, l_fn, since="10m", q="were dropped"))
        noted = sum(int(n["message"].split()[1]) for n in notes)
        assert 0 < noted <= dropped[loud.tenant]
        # The other tenant's lines are all there.
        calm_lines = await until(lambda: _all_present(calm, c_svc, c_fn, quiet_ids))
        assert len(calm_lines) == 20


async def _all_present(client: Client, service: str, function: str, ids: list[str]) -> list[str]:
    lines = await lines_of(client, service, function, since="10m", q="quiet ")
    found = [line["message"] for line in lines]
    return found if len(found) == len(ids) else []


async def test_a_sigkilled_worker_loses_at_most_its_last_flush_interval(
    fresh_stack: StartStack,
) -> None:
    stack = fresh_stack(workers=1)
    async with aiohttp.ClientSession() as session:
        client = Client(session, stack.url, *reversed(stack.create_tenant()))
        service, function = await deploy(client, {"index.py": QUIET})
        answered: list[tuple[str, float]] = []  # (request id, when its answer arrived)
        killed = asyncio.Event()

        async def call_until_killed() -> None:
            while not killed.is_set():
                status, headers, _ = await invoke(client, service, function)
                if status != 200:
                    return
                answered.append((headers["X-Fc-Request-Id"], time.time()))

        caller = asyncio.create_task(call_until_killed())
        await until(lambda: _at_least(answered, 200))
        worker = next(name for name in stack.procs if name.startswith("worker"))
        stack.procs[worker].send_signal(9)
        kill_time = time.time()
        killed.set()
        await asyncio.wait_for(caller, 60)
        stack.procs[worker].wait(timeout=30)
        before = [(rid, at) for rid, at in answered if at < kill_time]
        await asyncio.sleep(1.0)  # nothing more comes: the worker is gone
        lines = await lines_of(client, service, function, since="10m", q="quiet ")
        stored = {line["message"].split()[1] for line in lines}
        lost = [(rid, at) for rid, at in before if rid not in stored]
        # Measured window: how long before the kill the first lost answer came.
        window = kill_time - min((at for _, at in lost), default=kill_time)
        print(f"answered {len(before)}, lost {len(lost)}, window {window * 1000:.0f} ms")
        # Lost lines are the last ones only (a flush interval, 0.2 s, plus the publish's
        # confirm round trip), never older ones.
        assert window < 1.0, (len(lost), window)
        assert len(lost) < len(before) / 2


async def _at_least(items: list[object], n: int) -> bool:
    return len(items) >= n
