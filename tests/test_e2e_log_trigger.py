"""Log triggers end to end (`pyfc trigger log`, triggers/log.py): batches by size and by
window, in order and without gaps; a SIGKILLed replica's trigger taken over from its
checkpoint without a gap (duplicates counted); replay from a time; a function triggered
by its own store stopped by loop protection."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import Client, StartStack
from tests.helpers import invoke, open_dir
from tests.stack import code_body

PRODUCER = """
def handler(event, context):
    for i in range(int(event or b"0")):
        print(f"produced {i}")
    return "ok"
"""

# Keeps each event it gets as a file named by its request id.
CONSUMER = """
import json, os

def handler(event, context):
    with open(os.path.join(os.environ["OUT"], context.request_id + ".json"), "wb") as f:
        f.write(event)
    return "ok"
"""


async def create(client: Client, service: str, function: str, code: str, **fields: Any) -> None:
    status, _, body = await client.call("POST", "/v1/services", json={"serviceName": service})
    assert status in (201, 409), body
    payload = {"functionName": function, "code": code_body({"index.py": code}), **fields}
    status, _, body = await client.call("POST", f"/v1/services/{service}/functions", json=payload)
    assert status == 201, body


async def add_trigger(
    client: Client, service: str, function: str, name: str, **config: Any
) -> None:
    body = {"triggerName": name, "triggerType": "log", "triggerConfig": config}
    status, _, answer = await client.call(
        "POST", f"/v1/services/{service}/functions/{function}/triggers", json=body
    )
    assert status == 201, answer


def events(out: Path) -> list[dict[str, Any]]:
    found = []
    for path in out.glob("*.json"):
        try:
            found.append(json.loads(path.read_bytes()))
        except ValueError:
            continue  # being written
    return sorted(found, key=lambda e: tuple(int(x) for x in e["source"]["beginCursor"].split("-")))


async def wait_records(out: Path, want: int, timeout: float = 60.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        got = events(out)
        if sum(len(e["records"]) for e in got) >= want:
            return got
        assert time.monotonic() < deadline, (want, [len(e["records"]) for e in got])
        await asyncio.sleep(0.1)


async def test_batches_by_size_and_window_in_order(fresh_stack: StartStack) -> None:
    stack = fresh_stack()
    stack.start_trigger("log")
    async with aiohttp.ClientSession() as session:
        client = Client(session, stack.url, *reversed(stack.create_tenant()))
        out = open_dir("logtrigger")
        await create(client, "src", "producer", PRODUCER)
        await create(client, "sink", "consumer", CONSUMER, environmentVariables={"OUT": str(out)})
        await add_trigger(
            client, "sink", "consumer", "tail", logstore="src", batchSize=5, batchWindowSeconds=1.0
        )
        await asyncio.sleep(
            1.5
        )  # `latest`: lines after the trigger's creation (second granularity)
        status, _, _ = await invoke(client, "src", "producer", b"12")  # 15 records: 3 x 5
        assert status == 200
        got = await wait_records(out, 15)
        assert [len(e["records"]) for e in got] == [5, 5, 5]
        status, _, _ = await invoke(client, "src", "producer", b"0")  # 3 records: the window
        got = await wait_records(out, 18)
        assert [len(e["records"]) for e in got] == [5, 5, 5, 3]
        messages = [r["message"] for e in got for r in e["records"]]
        assert messages[1:13] == [f"produced {i}" for i in range(12)]
        assert messages[0].startswith("FC Invoke Start") and messages[15].startswith(
            "FC Invoke Start"
        )
        for e in got:
            assert e["source"]["logstore"] == "src"
            assert e["records"][0]["serviceName"] == "src"


def produced(got: list[dict[str, Any]]) -> list[str]:
    return [r["message"] for e in got for r in e["records"] if r["message"].startswith("produced")]


async def test_a_sigkilled_replica_is_taken_over_without_a_gap(fresh_stack: StartStack) -> None:
    stack = fresh_stack()
    first, second = stack.start_trigger("log", "log-1"), stack.start_trigger("log", "log-2")
    async with aiohttp.ClientSession() as session:
        client = Client(session, stack.url, *reversed(stack.create_tenant()))
        out = open_dir("logtrigger")
        await create(client, "src", "producer", PRODUCER_TAGGED)
        await create(client, "sink", "consumer", CONSUMER, environmentVariables={"OUT": str(out)})
        await add_trigger(
            client, "sink", "consumer", "tail", logstore="src", batchSize=10, batchWindowSeconds=0.2
        )
        expected: list[str] = []

        async def produce(calls: range) -> None:
            for call in calls:
                status, _, _ = await invoke(client, "src", "producer", str(call).encode())
                assert status == 200
                expected.extend(f"produced {i} of {call}" for i in range(20))

        await produce(range(10))
        await wait_records_with(out, lambda got: len(set(produced(got))) >= 100)
        active = next(name for name in (first, second) if "active, reading" in stack.logs(name))
        # Frozen, it still holds the lease: these lines wait unread in the store ...
        stack.procs[active].send_signal(signal.SIGSTOP)
        await produce(range(10, 15))
        # ... until its SIGKILL hands the checkpoint to the other replica, mid-stream.
        stack.kill(active)
        await produce(range(15, 20))
        got = await wait_records_with(out, lambda got: set(expected) <= set(produced(got)))
        lines = produced(got)
        duplicates = len(lines) - len(set(lines))
        print(f"{len(set(lines))} lines delivered, {duplicates} twice")
        assert set(lines) == set(expected)  # no gap
        standby = second if active == first else first
        assert "active, reading" in stack.logs(standby)


PRODUCER_TAGGED = """
def handler(event, context):
    call = int(event)
    for i in range(20):
        print(f"produced {i} of {call}")
    return "ok"
"""


async def wait_records_with(out: Path, done: Any, timeout: float = 60.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        got = events(out)
        if done(got):
            return got
        assert time.monotonic() < deadline, len(got)
        await asyncio.sleep(0.1)


async def test_replay_from_a_time(fresh_stack: StartStack) -> None:
    stack = fresh_stack()
    stack.start_trigger("log")
    async with aiohttp.ClientSession() as session:
        client = Client(session, stack.url, *reversed(stack.create_tenant()))
        out = open_dir("logtrigger")
        await create(client, "src", "producer", PRODUCER_TAGGED)
        await create(client, "sink", "consumer", CONSUMER, environmentVariables={"OUT": str(out)})
        before = time.time()
        for call in range(3):  # written before the trigger exists
            assert (await invoke(client, "src", "producer", str(call).encode()))[0] == 200
        await add_trigger(
            client,
            "sink",
            "consumer",
            "tail",
            logstore="src",
            batchSize=100,
            batchWindowSeconds=0.2,
        )
        assert (await invoke(client, "src", "producer", b"3"))[0] == 200
        got = await wait_records_with(out, lambda got: "produced 19 of 3" in produced(got))
        assert {line.split()[-1] for line in produced(got)} == {"3"}  # latest: after creation
        # Replay from before the first call: a new generation reads it all again.
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(before - 1))
        status, _, body = await client.call(
            "PUT",
            "/v1/services/sink/functions/consumer/triggers/tail",
            json={
                "triggerConfig": {
                    "logstore": "src",
                    "batchSize": 100,
                    "batchWindowSeconds": 0.2,
                    "startFrom": since,
                }
            },
        )
        assert status == 200, body
        want = {f"produced {i} of {c}" for c in range(4) for i in range(20)}
        got = await wait_records_with(out, lambda got: want <= set(produced(got)))
        assert produced(got).count("produced 0 of 3") == 2  # once live, once replayed


SELFISH = """
def handler(event, context):
    print("I log, so I run again")
    return "ok"
"""


async def test_a_function_triggered_by_its_own_store_is_stopped(fresh_stack: StartStack) -> None:
    stack = fresh_stack()
    stack.start_trigger("log")
    name, key = stack.create_tenant()
    stack.cli("tenant", "update", name, "--max-chain-depth", "3")
    async with aiohttp.ClientSession() as session:
        client = Client(session, stack.url, key, name)
        await create(client, "loop", "selfish", SELFISH)
        await add_trigger(
            client, "loop", "selfish", "me", logstore="loop", batchSize=1000, batchWindowSeconds=0.3
        )
        assert (await invoke(client, "loop", "selfish"))[0] == 200
        deadline = time.monotonic() + 60
        while True:
            status, _, body = await client.call("GET", "/v1/dlq")
            letters = json.loads(body)["deadLetters"] if status == 200 else []
            if any(d["reason"] == "RecursiveLoopDetected" for d in letters):
                break
            assert time.monotonic() < deadline, body
            await asyncio.sleep(0.2)
        [letter] = [d for d in letters if d["reason"] == "RecursiveLoopDetected"]
        assert letter["functionName"] == "selfish"
