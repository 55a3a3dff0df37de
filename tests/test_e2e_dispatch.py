"""The dispatcher's promises with real processes: caps across replicas, 429, backpressure,
fairness, retries by error class, max age, destinations, dead letters and loop protection.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import signal
import subprocess
import time
import uuid
from typing import Any

import aio_pika
import aiohttp
import pytest

from shared import codec
from shared.protocol import Invocation, InvocationBatch, Lineage
from shared.topology import MSG_INVOKE_BATCH, Topology, invoke_routing_key
from tests.conftest import Client, StartStack, on_both_databases
from tests.helpers import deploy, invoke, open_dir, same_shard_names, unique, wait_result
from tests.stack import AMQP_URL, Stack

# Counts runs and concurrent runs across all instances and workers (flock on one file);
# appends every request id it runs, so duplicates can be counted.
PROBE = """
import fcntl, json, os, time

DIR = os.environ["PROBE_DIR"]


def _update(delta, request_id=""):
    with open(os.path.join(DIR, "state"), "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        raw = f.read()
        state = json.loads(raw) if raw else {"now": 0, "max": 0, "runs": 0}
        state["now"] += delta
        state["max"] = max(state["max"], state["now"])
        if delta > 0:
            state["runs"] += 1
        f.seek(0)
        f.truncate()
        f.write(json.dumps(state))
    if request_id:
        with open(os.path.join(DIR, "ids"), "a") as f:
            f.write(request_id + "\\n")


def handler(event, context):
    _update(1, context.request_id)
    try:
        time.sleep(float(os.environ.get("SLEEP", "0")))
        if os.environ.get("FAIL") and not os.path.exists(os.path.join(DIR, "healed")):
            raise RuntimeError("probe told to fail")
        return event
    finally:
        _update(-1)
"""


class Probe:
    def __init__(self) -> None:
        self.dir = open_dir("probe")  # the function writes to it, as its tenant's uid

    def env(self, **extra: str) -> dict[str, str]:
        return {"PROBE_DIR": str(self.dir), **extra}

    def state(self) -> dict[str, int]:
        try:
            raw = (self.dir / "state").read_text()
        except FileNotFoundError:
            return {"now": 0, "max": 0, "runs": 0}
        return json.loads(raw) if raw else {"now": 0, "max": 0, "runs": 0}

    def ids(self) -> list[str]:
        try:
            return (self.dir / "ids").read_text().split()
        except FileNotFoundError:
            return []

    async def wait(self, predicate: Any, timeout: float = 60.0, what: str = "") -> dict[str, int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.state()
            if predicate(state):
                return state
            await asyncio.sleep(0.05)
        raise TimeoutError(f"probe never reached {what}: {self.state()}")


def tenant_client(
    stack: Stack, session: aiohttp.ClientSession, concurrency: int, name: str = ""
) -> Client:
    name = name or f"tenant-{uuid.uuid4().hex[:8]}"
    out = json.loads(
        stack.cli("tenant", "create", name, "--concurrency", str(concurrency), "--json").stdout
    )
    return Client(session, stack.url, out["apiKey"], name)


async def put_async_config(client: Client, service: str, function: str, **body: Any) -> None:
    status, _, raw = await client.call(
        "PUT", f"/v1/services/{service}.LATEST/functions/{function}/async-config", json=body
    )
    assert status == 200, raw


async def dead_letters(client: Client, service: str, function: str) -> list[dict[str, Any]]:
    status, _, raw = await client.call(
        "GET", f"/v1/dlq?serviceName={service}&functionName={function}"
    )
    assert status == 200, raw
    items: list[dict[str, Any]] = json.loads(raw)["deadLetters"]
    return items


async def wait_dead_letter(
    client: Client, service: str, function: str, timeout: float = 30.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        items = await dead_letters(client, service, function)
        if items:
            return items[0]
        await asyncio.sleep(0.1)
    raise TimeoutError(f"no dead letter for {service}/{function}")


async def fire_async(client: Client, service: str, function: str, n: int) -> list[str]:
    async def one(i: int) -> str:
        status, headers, body = await invoke(
            client, service, function, f"e{i}".encode(), X_Fc_Invocation_Type="Async"
        )
        assert status == 202, body
        return headers["X-Fc-Request-Id"]

    return list(await asyncio.gather(*(one(i) for i in range(n))))


@pytest.fixture
def two_dispatchers(fresh_stack: StartStack) -> Stack:
    stack = fresh_stack(workers=1, worker_slots=8)
    stack.spawn("dispatcher", "dispatcher-2")
    stack.wait_log("dispatcher-2", "ready")
    return stack


async def test_tenant_cap_holds_across_two_dispatchers(
    two_dispatchers: Stack, session: aiohttp.ClientSession
) -> None:
    """Two replicas, one active per shard (single active consumer): the cap holds and a
    sync call over it is refused at once."""
    stack = two_dispatchers
    client = tenant_client(stack, session, concurrency=3)
    probe = Probe()
    service, function = await deploy(
        client,
        {"index.py": PROBE},
        environmentVariables=probe.env(SLEEP="0.6"),
        timeout=30,
    )
    ids = await fire_async(client, service, function, 20)
    # The cap is full and 17 wait: a sync call is refused at once, not queued.
    await probe.wait(lambda s: s["now"] == 3, what="3 running")
    started = time.monotonic()
    status, _, body = await invoke(client, service, function, b"sync")
    assert status == 429, body
    assert json.loads(body)["errorCode"] == "ThrottlingException"
    assert time.monotonic() - started < 1.0
    # Every async invocation over the cap completes later (backpressure, not loss).
    for request_id in ids:
        rec = await wait_result(client, service, function, request_id)
        assert rec["status"] == "Succeeded", rec
    state = probe.state()
    assert state["max"] == 3, state
    assert state["runs"] == 20 and sorted(probe.ids()) == sorted(ids)


def restart_max(probe: Probe) -> int:
    """Start the probe's high-water mark afresh from what runs now; returns that."""
    with open(probe.dir / "state", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        state = json.loads(f.read())
        state["max"] = state["now"]
        f.seek(0)
        f.truncate()
        f.write(json.dumps(state))
    return int(state["now"])


@on_both_databases
async def test_a_standby_taking_over_mid_burst_overshoots_the_cap_at_most_twice(
    two_dispatchers: Stack, session: aiohttp.ClientSession
) -> None:
    """The active dispatcher SIGKILLed with the cap full and work waiting: the standby takes
    its shards over with empty counters, so the tenant runs at most 2x its cap while the
    predecessor's runs finish, and within the cap after that (docs/architecture.md "Cap
    overshoot on failover")."""
    stack = two_dispatchers
    cap, run_seconds = 2, 2.0
    client = tenant_client(stack, session, concurrency=cap)
    probe = Probe()
    # One worker of 8 slots: async work may take 6, more than 2x the cap, so the fleet
    # limit does not hide an overshoot past 2x.
    service, function = await deploy(
        client,
        {"index.py": PROBE},
        environmentVariables=probe.env(SLEEP=str(run_seconds)),
        timeout=30,
    )
    ids = await fire_async(client, service, function, 12)
    await probe.wait(lambda s: s["now"] == cap, what="the cap full")
    predecessors = probe.ids()
    # The first dispatcher registered first, so it is the active consumer of the shards.
    stack.kill("dispatcher", signal.SIGKILL)
    # Its runs go on: meanwhile the standby admits up to its own cap. Their outcomes,
    # concluded by the standby, mark their end.
    for request_id in predecessors:
        await wait_result(client, service, function, request_id, timeout=30)
    during = probe.state()["max"]
    restart_max(probe)
    for request_id in ids:
        rec = await wait_result(client, service, function, request_id, timeout=90)
        assert rec["status"] == "Succeeded", rec
    after = probe.state()["max"]
    print(f"\ncap {cap}: at most {during} running during the takeover, {after} after it")
    assert cap <= during <= 2 * cap, during
    assert after <= cap, after
    assert "-> Succeeded" in stack.logs("dispatcher-2")
    assert sorted(set(probe.ids())) == sorted(ids)


async def test_reserved_concurrency_caps_one_function(
    fresh_stack: StartStack, session: aiohttp.ClientSession
) -> None:
    stack = fresh_stack(workers=1, worker_slots=8)
    client = tenant_client(stack, session, concurrency=6)
    probe = Probe()
    service, function = await deploy(
        client,
        {"index.py": PROBE},
        environmentVariables=probe.env(SLEEP="0.4"),
        reservedConcurrency=2,
        timeout=30,
    )
    ids = await fire_async(client, service, function, 8)
    for request_id in ids:
        assert (await wait_result(client, service, function, request_id))["status"] == "Succeeded"
    assert probe.state()["max"] == 2


async def test_a_flooding_tenant_does_not_delay_another(
    fresh_stack: StartStack, session: aiohttp.ClientSession
) -> None:
    stack = fresh_stack(workers=1, worker_slots=8)
    # On one dispatcher shard, so head-of-line blocking there would show in every run.
    quiet_name, noisy_name = await same_shard_names(2)
    quiet = tenant_client(stack, session, concurrency=10, name=quiet_name)
    q_service, q_function = await deploy(quiet)

    async def quiet_latencies(n: int) -> list[float]:
        out = []
        for _ in range(n):
            started = time.perf_counter()
            status, _, _ = await invoke(quiet, q_service, q_function, b"hi")
            assert status == 200
            out.append(time.perf_counter() - started)
        return sorted(out)

    await quiet_latencies(3)  # warm
    baseline = await quiet_latencies(20)
    noisy = tenant_client(stack, session, concurrency=4, name=noisy_name)
    probe = Probe()
    n_service, n_function = await deploy(
        noisy, {"index.py": PROBE}, environmentVariables=probe.env(SLEEP="0.5"), timeout=30
    )
    flood = await fire_async(noisy, n_service, n_function, 200)
    await probe.wait(lambda s: s["now"] == 4, what="the flood running")
    during = await quiet_latencies(20)
    assert probe.state()["now"] == 4  # still flooding while we measured
    # Medians within noise of each other; nothing near the flood's queueing time.
    assert during[10] < baseline[10] * 3 + 0.02, (baseline, during)
    assert during[-1] < 1.0, during
    assert len(flood) == 200


async def test_function_errors_are_retried_then_dead_lettered(client: Client) -> None:
    probe = Probe()
    service, function = await deploy(
        client, {"index.py": PROBE}, environmentVariables=probe.env(FAIL="1")
    )
    await put_async_config(client, service, function, maxAsyncRetryAttempts=2)
    (request_id,) = await fire_async(client, service, function, 1)
    rec = await wait_result(client, service, function, request_id)
    assert rec["status"] == "Failed" and rec["attempt"] == 3, rec
    assert probe.state()["runs"] == 3
    letter = await wait_dead_letter(client, service, function)
    assert letter["requestId"] == request_id
    assert letter["reason"] == "RetriesExhausted" and letter["attempts"] == 3
    # Redrive runs the event again: it succeeds now.
    (probe.dir / "healed").touch()
    status, _, body = await client.call("POST", f"/v1/dlq/{request_id}/redrive")
    assert status == 202, body
    rec = await wait_result(client, service, function, request_id)
    assert rec["status"] == "Succeeded" and rec["result"] == "e0", rec
    assert probe.state()["runs"] == 4
    assert await dead_letters(client, service, function) == []


async def test_zero_retries_means_one_attempt(client: Client) -> None:
    probe = Probe()
    service, function = await deploy(
        client, {"index.py": PROBE}, environmentVariables=probe.env(FAIL="1")
    )
    await put_async_config(client, service, function, maxAsyncRetryAttempts=0)
    (request_id,) = await fire_async(client, service, function, 1)
    rec = await wait_result(client, service, function, request_id)
    assert rec["status"] == "Failed" and rec["attempt"] == 1
    assert probe.state()["runs"] == 1


async def test_system_errors_retry_until_max_age(client: Client, stack: Stack) -> None:
    # A function whose code blob vanished: every attempt is a 5xx system error.
    service, function = await deploy(client, {"index.py": "def handler(e, c):\n    return e\n"})
    _, _, raw = await client.call("GET", f"/v1/services/{service}/functions/{function}")
    digest = json.loads(raw)["codeChecksum"]
    blobs = [p for p in (stack.root / "data" / "blobs").rglob(f"*{digest}*") if p.is_file()]
    assert blobs, "code blob not found on disk"
    for blob in blobs:
        blob.unlink()
    await put_async_config(
        client, service, function, maxAsyncRetryAttempts=0, maxAsyncEventAgeInSeconds=2
    )
    (request_id,) = await fire_async(client, service, function, 1)
    rec = await wait_result(client, service, function, request_id, timeout=30)
    assert rec["status"] == "Failed", rec
    # Retried although maxAsyncRetryAttempts is 0 (system errors), then stopped by age.
    assert rec["attempt"] >= 3, rec
    letter = await wait_dead_letter(client, service, function)
    assert letter["reason"] == "EventAgeExceeded"


async def test_destinations_get_the_record(client: Client) -> None:
    probe = Probe()
    # onSuccess: another function, which writes the record it receives to the probe dir.
    sink_code = (
        "import os\n"
        "def handler(event, context):\n"
        "    path = os.path.join(os.environ['PROBE_DIR'], 'record-' + context.request_id)\n"
        "    open(path, 'wb').write(event)\n"
        "    return b'ok'\n"
    )
    sink_service, sink = await deploy(
        client, {"index.py": sink_code}, environmentVariables=probe.env()
    )
    service, function = await deploy(client, {"index.py": PROBE}, environmentVariables=probe.env())
    # onFailure: an MQ exchange of the tenant's, read by the test.
    exchange_name = unique("dest")
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(exchange_name, auto_delete=True)
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(exchange, routing_key="failed")
        failing_service, failing = await deploy(
            client, {"index.py": "def handler(e, c):\n    raise ValueError('no')\n"}
        )
        await put_async_config(
            client,
            service,
            function,
            destinationConfig={"onSuccess": {"destination": f"function:{sink_service}/{sink}"}},
        )
        await put_async_config(
            client,
            failing_service,
            failing,
            maxAsyncRetryAttempts=1,
            destinationConfig={"onFailure": {"destination": f"mq:{exchange_name}/failed"}},
        )
        (ok_id,) = await fire_async(client, service, function, 1)
        (bad_id,) = await fire_async(client, failing_service, failing, 1)
        message = await queue.get(timeout=30, fail=False)
        deadline = time.monotonic() + 30
        while message is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            message = await queue.get(fail=False)
        assert message is not None, "no onFailure record"
        failure = json.loads(message.body)
        assert message.headers["x-pyfc-hops"] == 1
        await message.ack()
    assert failure["requestContext"]["requestId"] == bad_id
    assert failure["requestContext"]["condition"] == "RetriesExhausted"
    assert failure["requestContext"]["approximateInvokeCount"] == 2
    assert failure["responseContext"]["functionError"] == "UnhandledInvocationError"
    assert "no" in failure["responsePayload"]

    await probe.wait(lambda _: list(probe.dir.glob("record-*")), 30, "the onSuccess record")
    (path,) = probe.dir.glob("record-*")
    success = json.loads(path.read_bytes())
    assert success["requestContext"]["requestId"] == ok_id
    assert success["requestContext"]["condition"] == "Success"
    assert success["requestPayload"] == "e0" and success["responsePayload"] == "e0"


async def test_a_destination_loop_stops_at_the_depth_limit(client: Client) -> None:
    probe = Probe()
    service, function = await deploy(client, {"index.py": PROBE}, environmentVariables=probe.env())
    # Its own onSuccess destination: every success invokes it again, one hop deeper.
    await put_async_config(
        client,
        service,
        function,
        destinationConfig={"onSuccess": {"destination": f"function:{service}/{function}"}},
    )
    (first,) = await fire_async(client, service, function, 1)
    letter = await wait_dead_letter(client, service, function, timeout=60)
    assert letter["reason"] == "RecursiveLoopDetected"
    assert letter["hops"] == 16
    state = probe.state()
    assert state["runs"] == 16, state  # hops 0..15 ran; hop 16 did not
    status, _, raw = await client.call("GET", f"/v1/dlq/{letter['requestId']}")
    assert status == 200 and json.loads(raw)["traceId"] == first


async def test_sync_chain_too_deep_is_refused(client: Client) -> None:
    service, function = await deploy(client)
    status, _, body = await invoke(client, service, function, b"x", X_Fc_Lineage="trace-1/15")
    assert status == 508, body
    assert json.loads(body)["errorCode"] == "RecursiveLoopDetected"
    status, _, body = await invoke(client, service, function, b"x", X_Fc_Lineage="trace-1/14")
    assert status == 200 and body == b"x"


SELF_ASYNC = """
import os


def handler(event, context):
    with open(os.path.join(os.environ["PROBE_DIR"], "ids"), "a") as f:
        f.write(f"{context.lineage.hops}\\n")
    context.invoke(context.service.name, context.function.name, event, invocation_type="Async")
    return b"ok"
"""


async def test_a_function_invoking_itself_async_stops_at_hop_16(client: Client) -> None:
    probe = Probe()
    service, function = await deploy(
        client, {"index.py": SELF_ASYNC}, environmentVariables=probe.env(), timeout=10
    )
    (first,) = await fire_async(client, service, function, 1)
    letter = await wait_dead_letter(client, service, function, timeout=60)
    assert letter["reason"] == "RecursiveLoopDetected" and letter["hops"] == 16, letter
    assert letter["traceId"] == first
    assert sorted(int(h) for h in probe.ids()) == list(range(16))  # hops 0..15 ran once


async def test_an_async_flood_does_not_hold_up_another_tenants_async_work(
    fresh_stack: StartStack, session: aiohttp.ClientSession
) -> None:
    # One worker with 4 slots: async work may take 3 of them (one is kept for sync calls).
    stack = fresh_stack(workers=1, worker_slots=4)
    stack.wait_log("dispatcher", "async work limited to 3 slots")
    # On one dispatcher shard, so head-of-line blocking there would show in every run.
    noisy_name, quiet_name = await same_shard_names(2)
    noisy = tenant_client(stack, session, concurrency=100, name=noisy_name)
    probe = Probe()
    n_service, n_function = await deploy(
        noisy, {"index.py": PROBE}, environmentVariables=probe.env(SLEEP="0.5"), timeout=30
    )
    flood = await fire_async(noisy, n_service, n_function, 40)  # ~7 s of work for 3 slots
    await probe.wait(lambda s: s["now"] == 3, what="the flood running")
    quiet = tenant_client(stack, session, concurrency=10, name=quiet_name)
    q_service, q_function = await deploy(quiet)
    # A sync call finds the slot kept free at once.
    started = time.monotonic()
    status, _, _ = await invoke(quiet, q_service, q_function, b"now")
    assert status == 200 and time.monotonic() - started < 1.5  # measured 0.10-0.13 s
    # Async calls wait their turn beside the flood, not behind all of it.
    started = time.monotonic()
    for request_id in await fire_async(quiet, q_service, q_function, 3):
        rec = await wait_result(quiet, q_service, q_function, request_id)
        assert rec["status"] == "Succeeded"
    # Measured 0.2-1.6 s; behind the flood they would take ~7 s.
    assert time.monotonic() - started < 4.0
    assert probe.state()["now"] > 0  # the flood was still running meanwhile
    for request_id in flood:
        assert (await wait_result(noisy, n_service, n_function, request_id))[
            "status"
        ] == "Succeeded"
    assert probe.state()["max"] == 3


def unacked_on_shards(namespace: str) -> int:
    out = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "name", "messages_unacknowledged"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    rows = (line.split() for line in out.splitlines())
    return sum(int(n) for name, n in rows if name.startswith(f"{namespace}.dispatch."))


async def test_an_invocation_batch_is_admitted_one_invocation_at_a_time(
    client: Client, stack: Stack
) -> None:
    """A batch of accepted invocations (as the gateway sends several calls accepted at
    once) mixing one that runs, one too deep and one for no such function: each gets its
    own fate, and the delivery is acked once all are settled."""
    probe = Probe()
    service, function = await deploy(client, {"index.py": PROBE}, environmentVariables=probe.env())
    await put_async_config(client, service, function, maxAsyncRetryAttempts=0)

    def inv(fn: str, hops: int = 0) -> Invocation:
        return Invocation(
            id=str(uuid.uuid4()),
            tenant=client.tenant,
            service=service,
            function=fn,
            kind="async",
            payload=b"batched",
            created_at=time.time(),
            lineage=Lineage(trace_id="batch-test", hops=hops),
        )

    runs, deep, missing = inv(function), inv(function, hops=16), inv("no_such_function")
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(Topology(stack.namespace).invoke_exchange)
        await exchange.publish(
            aio_pika.Message(
                codec.encode(InvocationBatch(invocations=[runs, deep, missing])),
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                type=MSG_INVOKE_BATCH,
            ),
            routing_key=invoke_routing_key(client.tenant),
        )
    await probe.wait(lambda state: state["runs"] >= 1, what="the batched run")
    letter = await wait_dead_letter(client, service, function)
    assert letter["requestId"] == deep.id and letter["reason"] == "RecursiveLoopDetected"
    gone = await wait_dead_letter(client, service, "no_such_function")
    assert gone["requestId"] == missing.id and gone["reason"] == "NotRetryable"
    assert probe.ids() == [runs.id]
    deadline = time.monotonic() + 30
    while unacked_on_shards(stack.namespace):
        assert time.monotonic() < deadline, "the batch delivery was never acked"
        await asyncio.sleep(0.2)
