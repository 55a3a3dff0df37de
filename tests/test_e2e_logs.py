"""Log stores end to end: what functions print and log, and FC's per-invocation lines,
land in the service's stream (shared/logstore.py, worker/logship.py)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable

import aio_pika
import aiormq
import pytest

from shared import codec
from shared.logstore import LogBatch, LogRecord, stream_queue
from tests.conftest import Client
from tests.helpers import deploy, invoke
from tests.stack import AMQP_URL, Stack

CHATTY = """
import logging, sys

def handler(event, context):
    if event == b"boom":
        raise ValueError("boom")
    if event == b"huge":
        print("x" * (10 * 1024 * 1024))
        sys.stdout.buffer.write(bytes(range(256)) + b"\\n")
        return "huge"
    print("printed", context.request_id)
    logging.getLogger().warning("logged %s", context.request_id)
    print("no newline at the end", end="")
    return "ok"
"""


async def read_store(
    queue: str, done: Callable[[list[LogRecord]], bool], timeout: float = 30.0
) -> list[LogRecord]:
    """Every record of a store's stream, from its first, once `done(records)` holds."""
    records: list[LogRecord] = []
    seen = asyncio.Event()
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        deadline = time.monotonic() + timeout

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            records.extend(codec.decode(message.body, LogBatch).records)
            await message.ack()
            if done(records):
                seen.set()

        # The stream exists once a worker shipped to it, and takes consumers once its
        # replica on the node started ("does not have a replica on the local node").
        while True:
            channel = await connection.channel()
            try:
                stream = await channel.declare_queue(queue, passive=True)
                await channel.set_qos(prefetch_count=100)
                await stream.consume(on_message, arguments={"x-stream-offset": "first"})
                break
            except (aio_pika.exceptions.ChannelClosed, aiormq.exceptions.AMQPError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        await asyncio.wait_for(seen.wait(), max(0.1, deadline - time.monotonic()))
    return records


def of_request(records: list[LogRecord], request_id: str) -> list[LogRecord]:
    return [r for r in records if r.request_id == request_id]


def ended(request_id: str) -> Callable[[list[LogRecord]], bool]:
    return lambda records: any(
        r.kind == "platform" and r.message.startswith("RequestId: " + request_id) for r in records
    )


async def test_lines_and_fc_invocation_lines_land_in_the_service_store(
    client: Client, stack: Stack
) -> None:
    service, function = await deploy(client, {"index.py": CHATTY}, memorySize=256)
    status, headers, body = await invoke(client, service, function, b"hi")
    assert status == 200, body
    rid = headers["X-Fc-Request-Id"]
    queue = stream_queue(stack.namespace, client.tenant, service)
    lines = of_request(await read_store(queue, ended(rid)), rid)
    messages = [r.message for r in lines]
    assert messages[0] == f"FC Invoke Start RequestId: {rid}"
    assert messages[1] == f"printed {rid}"
    assert re.fullmatch(rf"\S+Z {rid} \[WARNING\] logged {rid}", messages[2]), messages[2]
    assert lines[2].level == "WARNING" and lines[1].level == ""
    assert messages[3] == "no newline at the end"
    assert messages[4] == f"FC Invoke End RequestId: {rid}"
    report = re.fullmatch(
        rf"RequestId: {rid} Duration: ([\d.]+) ms Billed Duration: (\d+) ms"
        r" Memory Size: 256 MB Max Memory Used: ([\d.]+) MB",
        messages[5],
    )
    assert report, messages[5]
    assert int(report[2]) >= float(report[1]) and int(report[2]) - float(report[1]) < 1
    assert 1 < float(report[3]) < 256
    assert len(lines) == 6
    for r in lines:
        assert (r.service, r.function, r.qualifier, r.version) == (
            service,
            function,
            "LATEST",
            "LATEST",
        )
        assert r.instance_id and abs(r.time - time.time()) < 60
    assert [r.kind for r in lines] == ["platform", *["function"] * 3, "platform", "platform"]
    assert lines[0].time <= lines[1].time <= lines[4].time


async def test_a_failed_invocation_logs_its_error(client: Client, stack: Stack) -> None:
    service, function = await deploy(client, {"index.py": CHATTY})
    status, headers, _ = await invoke(client, service, function, b"boom")
    assert status == 200 and headers["X-Fc-Error-Type"] == "UnhandledInvocationError"
    rid = headers["X-Fc-Request-Id"]
    queue = stream_queue(stack.namespace, client.tenant, service)
    lines = of_request(await read_store(queue, ended(rid)), rid)
    errors = [r for r in lines if r.level == "ERROR"]
    assert [r.message for r in errors] == [
        f"FC Invoke Error RequestId: {rid} UnhandledInvocationError: ValueError: boom"
    ]


async def test_a_10_mb_line_and_binary_garbage_are_cut_and_marked(
    client: Client, stack: Stack
) -> None:
    service, function = await deploy(client, {"index.py": CHATTY}, memorySize=512)
    status, headers, body = await invoke(client, service, function, b"huge")
    assert (status, body) == (200, b"huge")
    rid = headers["X-Fc-Request-Id"]
    queue = stream_queue(stack.namespace, client.tenant, service)
    lines = of_request(await read_store(queue, ended(rid)), rid)
    function_lines = [r.message for r in lines if r.kind == "function"]
    assert function_lines[0] == "x" * 16384 + f" ...[truncated {10 * 1024 * 1024 - 16384} chars]"
    assert any("\ufffd" in line for line in function_lines[1:])  # replaced, no crash
    # The worker still serves.
    status, _, body = await invoke(client, service, function, b"hi")
    assert (status, body) == (200, b"ok")


@pytest.mark.parametrize("stack", ["sqlite"], indirect=True)
async def test_a_service_logstore_names_the_store(client: Client, stack: Stack) -> None:
    store = f"store-{time.monotonic_ns()}"
    service = f"svc_{time.monotonic_ns()}"
    status, _, body = await client.call(
        "POST", "/v1/services", json={"serviceName": service, "logConfig": {"logstore": store}}
    )
    assert status == 201, body
    from tests.stack import code_body

    status, _, body = await client.call(
        "POST",
        f"/v1/services/{service}/functions",
        json={"functionName": "f", "code": code_body({"index.py": CHATTY})},
    )
    assert status == 201, body
    status, headers, _ = await invoke(client, service, "f", b"hi")
    rid = headers["X-Fc-Request-Id"]
    queue = stream_queue(stack.namespace, client.tenant, store)
    lines = of_request(await read_store(queue, ended(rid)), rid)
    assert lines[1].message == f"printed {rid}"
