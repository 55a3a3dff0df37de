"""MQ triggers end to end: real gateway, dispatcher, worker and `pyfc trigger mq`
processes on the real broker; runs counted inside the function."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import pytest

from tests.conftest import Client, StartStack
from tests.helpers import deploy, open_dir, unique
from tests.stack import AMQP_URL, Stack, wait_until
from triggers.mq import dead_letter_name, queue_name

# Appends one JSON line per run: the event as text, the request id, when it ran.
RECORD = (
    "import json, os, time\n"
    "def handler(event, context):\n"
    "    line = json.dumps({'event': event.decode(), 'requestId': context.request_id,\n"
    "                       'time': time.time()})\n"
    "    with open(os.environ['RUNS'], 'a') as f:\n"
    "        f.write(line + '\\n')\n"
    "    return 'ok'\n"
)


def runs(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def start_mq(stack: Stack, name: str) -> str:
    stack.spawn("triggers", name, args=["mq"])
    stack.wait_log(name, "mq triggers ready")
    return name


async def mq_function(client: Client, **fields: Any) -> tuple[str, str, Path]:
    runs_file = open_dir("mq") / f"{unique('runs')}.jsonl"
    service, function = await deploy(
        client, {"index.py": RECORD}, environmentVariables={"RUNS": str(runs_file)}, **fields
    )
    return service, function, runs_file


async def mq_trigger(
    client: Client, service: str, function: str, name: str, **config: Any
) -> dict[str, Any]:
    body = {"triggerName": name, "triggerType": "mq", "triggerConfig": config}
    status, _, raw = await client.call(
        "POST", f"/v1/services/{service}/functions/{function}/triggers", json=body
    )
    assert status == 201, raw
    created: dict[str, Any] = json.loads(raw)
    return created


async def publish(
    exchange: str, messages: list[tuple[str, bytes, str]], *, topic: bool = True
) -> None:
    """Publish (routing key, body, message id) persistent and confirmed."""
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        target = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        await asyncio.gather(
            *(
                target.publish(
                    aio_pika.Message(
                        body, message_id=mid or None, delivery_mode=aio_pika.DeliveryMode.PERSISTENT
                    ),
                    routing_key=key,
                )
                for key, body, mid in messages
            )
        )


async def queue_depth(name: str) -> int:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(name, passive=True)
        return int(queue.declaration_result.message_count or 0)


async def delete_exchange(name: str) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        await channel.exchange_delete(name)


async def wait_consuming(stack: Stack, name: str, trigger: dict[str, Any]) -> None:
    queue = queue_name(stack.namespace, trigger["triggerId"])
    await asyncio.to_thread(wait_until, lambda: queue in stack.logs(name), 30, f"{name} consuming")


async def test_thousand_messages_survive_a_sigkilled_adapter(
    fresh_stack: StartStack, session: aiohttp.ClientSession
) -> None:
    """1,000 messages → 1,000 runs while the adapter is SIGKILLed midway and another
    replica takes over; messages the routing key does not match never run."""
    stack = fresh_stack(workers=1, worker_slots=8)
    _, key = stack.create_tenant()
    client = Client(session, stack.url, key)
    service, function, path = await mq_function(client, instanceConcurrency=4)
    exchange = unique("orders")
    start_mq(stack, "mq-1")
    trigger = await mq_trigger(
        client, service, function, "orders", exchange=exchange, routingKey="eu.*"
    )
    await wait_consuming(stack, "mq-1", trigger)
    try:
        # Half with a message id (as `pyfc publish` sets), half identified by content.
        wanted = [
            ("eu.paid", json.dumps({"n": n}).encode(), str(uuid.uuid4()) if n % 2 else "")
            for n in range(1000)
        ]
        unmatched = [("us.paid", json.dumps({"n": -n}).encode(), "") for n in range(1, 51)]
        await publish(exchange, wanted[:500] + unmatched + wanted[500:])
        await asyncio.to_thread(
            wait_until, lambda: len(runs(path)) >= 200, 120, "runs before the SIGKILL"
        )
        stack.kill("mq-1")
        killed_at = len(runs(path))
        start_mq(stack, "mq-2")
        await asyncio.to_thread(
            wait_until,
            lambda: len({r["event"] for r in runs(path)}) >= 1000,
            240,
            "every message's run",
        )
        await asyncio.sleep(3)  # time for a duplicate or an unmatched message to show
        seen = Counter(json.loads(r["event"])["n"] for r in runs(path))
        duplicates = sum(c - 1 for c in seen.values())
        print(f"runs at the SIGKILL: {killed_at}; duplicates: {duplicates}")
        assert set(seen) == set(range(1000)), sorted(set(range(1000)) - set(seen))[:10]
        assert duplicates == 0, [n for n, c in seen.items() if c > 1][:10]
        # One request id per message, whoever accepted it.
        assert len({r["requestId"] for r in runs(path)}) == 1000
        assert await queue_depth(queue_name(stack.namespace, trigger["triggerId"])) == 0
        status, _, raw = await client.call(
            "GET",
            f"/v1/services/{service}/functions/{function}/invocations/{runs(path)[0]['requestId']}",
        )
        assert status == 200 and json.loads(raw)["origin"] == "mq:orders", raw
    finally:
        await delete_exchange(exchange)


async def test_batches_poison_and_pause(
    fresh_stack: StartStack, session: aiohttp.ClientSession
) -> None:
    stack = fresh_stack(workers=1, env={"PYFC_MAX_EVENT_BYTES": str(64 * 1024)})
    _, key = stack.create_tenant()
    client = Client(session, stack.url, key)
    service, function, path = await mq_function(client)
    exchange = unique("events")
    start_mq(stack, "mq-1")
    window = 2.0
    trigger = await mq_trigger(
        client,
        service,
        function,
        "batched",
        exchange=exchange,
        batchSize=5,
        batchWindowSeconds=window,
    )
    await wait_consuming(stack, "mq-1", trigger)
    try:
        # 12 messages: two full batches at once, the last 2 when the window closes.
        published = time.time()
        await publish(exchange, [("k", f"m{i}".encode(), "") for i in range(12)])
        await asyncio.to_thread(wait_until, lambda: len(runs(path)) >= 3, 30, "three batches")
        batches = [json.loads(r["event"]) for r in runs(path)]
        assert sorted(len(b) for b in batches) == [2, 5, 5], batches
        bodies = sorted(item["data"]["body"] for b in batches for item in b)
        assert bodies == sorted(f"m{i}" for i in range(12))
        item = batches[0][0]["data"]
        assert item["envelope"]["exchange"] == exchange and item["envelope"]["routingKey"] == "k"
        assert set(item["envelope"]) == {"exchange", "routingKey", "deliveryTag", "redeliver"}
        last = max(runs(path), key=lambda r: r["time"])
        assert len(json.loads(last["event"])) == 2
        assert last["time"] - published >= window - 0.1, last["time"] - published
        full = [r["time"] - published for r in runs(path) if len(json.loads(r["event"])) == 5]
        print(
            f"full batches ran after {full}; the partial one after {last['time'] - published:.2f}s"
        )

        # A message too big to be an event is parked in the trigger's DLQ, counted.
        count = len(runs(path))
        await publish(exchange, [("k", b"x" * (80 * 1024), "")])
        dlq = dead_letter_name(stack.namespace, trigger["triggerId"])
        await asyncio.to_thread(
            wait_until, lambda: "dead-lettered" in stack.logs("mq-1"), 30, "the poison parked"
        )
        assert await queue_depth(dlq) == 1
        await asyncio.sleep(window + 1)
        assert len(runs(path)) == count

        # Disabled: messages wait in the queue; enabled again, they run.
        status, _, raw = await client.call(
            "PUT",
            f"/v1/services/{service}/functions/{function}/triggers/batched",
            json={"enabled": False},
        )
        assert status == 200, raw
        await asyncio.to_thread(
            wait_until, lambda: "batched: consumer stopped" in stack.logs("mq-1"), 30, "stopped"
        )
        await publish(exchange, [("k", f"later{i}".encode(), "") for i in range(3)])
        queue = queue_name(stack.namespace, trigger["triggerId"])
        await asyncio.sleep(window + 1)
        assert len(runs(path)) == count and await queue_depth(queue) == 3
        status, _, raw = await client.call(
            "PUT",
            f"/v1/services/{service}/functions/{function}/triggers/batched",
            json={"enabled": True},
        )
        assert status == 200, raw
        await asyncio.to_thread(
            wait_until, lambda: len(runs(path)) > count, 30, "runs after enable"
        )
        later = json.loads(runs(path)[-1]["event"])
        assert sorted(i["data"]["body"] for i in later) == ["later0", "later1", "later2"]

        # Deleted: its queues go.
        status, _, _ = await client.call(
            "DELETE", f"/v1/services/{service}/functions/{function}/triggers/batched"
        )
        assert status == 204
        await asyncio.to_thread(
            wait_until, lambda: "its queues are gone" in stack.logs("mq-1"), 30, "queues deleted"
        )
        with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
            await queue_depth(queue)
    finally:
        await delete_exchange(exchange)


async def test_a_trigger_on_the_tenants_own_broker(
    fresh_stack: StartStack, session: aiohttp.ClientSession
) -> None:
    """`amqpUrl`: the adapter connects to that broker (here the local node again, through
    a connection of its own) and consumes there; GET never shows the password."""
    stack = fresh_stack(workers=1)
    _, key = stack.create_tenant()
    client = Client(session, stack.url, key)
    service, function, path = await mq_function(client)
    exchange = unique("theirs")
    start_mq(stack, "mq-1")
    trigger = await mq_trigger(
        client, service, function, "theirs", exchange=exchange, amqpUrl=AMQP_URL
    )
    assert trigger["triggerConfig"]["amqpUrl"] == "amqp://guest:****@127.0.0.1:5672/", trigger
    await wait_consuming(stack, "mq-1", trigger)
    try:
        await publish(exchange, [("any.key", b"from their broker", "m-1")])
        await asyncio.to_thread(wait_until, lambda: len(runs(path)) == 1, 30, "the run")
        assert runs(path)[0]["event"] == "from their broker"
        assert "guest:guest" not in stack.logs("mq-1")
    finally:
        await delete_exchange(exchange)
