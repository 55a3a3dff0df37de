"""Log stores end to end: what functions print and log, and FC's per-invocation lines,
land in the service's stream (shared/logstore.py, worker/logship.py)."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import aio_pika
import aiohttp
import aiormq
import pytest

from shared import codec
from shared.logstore import LogBatch, LogRecord, stream_queue
from tests.conftest import Client
from tests.helpers import deploy, invoke, wait_result
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
        r" Memory Size: 256 MB Max Memory Used: ([\d.]+) MB Init Duration: ([\d.]+) ms",
        messages[5],
    )
    assert report, messages[5]  # the first call: a cold start, with its init duration
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


SPAM = """
import logging

def handler(event, context):
    n = int(event or b"1")
    for i in range(n):
        print(f"line {i} of {context.request_id}")
    if n == 1:
        logging.getLogger().error("an error of %s", context.request_id)
    return str(n)
"""


async def get_logs(client: Client, service: str, function: str, **params: str) -> tuple[int, dict]:
    status, _, body = await client.call(
        "GET", f"/v1/services/{service}/functions/{function}/logs", params=params
    )
    return status, json.loads(body)


async def wait_logs(
    client: Client, service: str, function: str, done: Callable[[dict], bool], **params: str
) -> dict:
    """Query until `done(answer)`: lines reach the store a flush (0.2 s) after the call."""
    deadline = time.monotonic() + 30
    while True:
        status, answer = await get_logs(client, service, function, **params)
        if status == 200 and done(answer):
            return answer
        assert status in (200, 404), answer
        if time.monotonic() > deadline:
            raise TimeoutError(f"logs never matched: {status} {str(answer)[:2000]}")
        await asyncio.sleep(0.1)


def has_report(rid: str) -> Callable[[dict], bool]:
    return lambda answer: any(
        line["message"].startswith(f"RequestId: {rid} Duration") for line in answer["logs"]
    )


async def test_one_request_found_by_id_among_10000_lines_of_others(client: Client) -> None:
    service, function = await deploy(client, {"index.py": SPAM})
    others = []
    for _ in range(5):  # 5 x 1,000 lines before and after
        status, headers, _ = await invoke(client, service, function, b"1000")
        assert status == 200
        others.append(headers["X-Fc-Request-Id"])
    status, headers, _ = await invoke(client, service, function, b"3")
    rid = headers["X-Fc-Request-Id"]
    for _ in range(5):
        status, headers, _ = await invoke(client, service, function, b"1000")
        others.append(headers["X-Fc-Request-Id"])
    # Everything shipped: the last call's report is in the store.
    last = others[-1]
    await wait_logs(client, service, function, has_report(last), requestId=last, q="Duration")
    answer = await wait_logs(client, service, function, has_report(rid), requestId=rid)
    messages = [line["message"] for line in answer["logs"]]
    assert messages[0] == f"FC Invoke Start RequestId: {rid}"
    assert messages[1:4] == [f"line {i} of {rid}" for i in range(3)]
    assert messages[4] == f"FC Invoke End RequestId: {rid}"
    assert messages[5].startswith(f"RequestId: {rid} Duration: ")
    assert len(messages) == 6 and "nextToken" not in answer
    assert {line["requestId"] for line in answer["logs"]} == {rid}
    # 1,000 lines of one request, in pages of 300.
    other, seen, token = others[3], [], ""
    while True:
        params = {"requestId": other, "limit": "300", **({"nextToken": token} if token else {})}
        status, page = await get_logs(client, service, function, **params)
        assert status == 200, page
        seen += [line["message"] for line in page["logs"]]
        token = page.get("nextToken", "")
        if not token:
            break
    assert seen[1:1001] == [f"line {i} of {other}" for i in range(1000)] and len(seen) == 1003


async def test_time_text_and_level_filters(client: Client) -> None:
    service, function = await deploy(client, {"index.py": SPAM})
    _, headers, _ = await invoke(client, service, function, b"1")
    first = headers["X-Fc-Request-Id"]
    await wait_logs(client, service, function, has_report(first), requestId=first)
    boundary = time.time()
    await asyncio.sleep(0.05)
    _, headers, _ = await invoke(client, service, function, b"1")
    second = headers["X-Fc-Request-Id"]
    await wait_logs(client, service, function, has_report(second), requestId=second)
    # since / until split the two requests.
    _, after = await get_logs(client, service, function, since=str(boundary), q="line 0")
    assert [line["message"] for line in after["logs"]] == [f"line 0 of {second}"]
    until = datetime.fromtimestamp(boundary, UTC).isoformat()
    _, before = await get_logs(client, service, function, since="10m", until=until, q="line 0")
    assert [line["message"] for line in before["logs"]] == [f"line 0 of {first}"]
    # level: at least ERROR (the logging line and no print).
    _, errors = await get_logs(client, service, function, since="10m", level="error")
    assert [line["message"].split(" [ERROR] ")[-1] for line in errors["logs"]] == [
        f"an error of {first}",
        f"an error of {second}",
    ]
    # limit and paging across requests.
    _, page = await get_logs(client, service, function, since="10m", limit="3")
    assert len(page["logs"]) == 3 and page["nextToken"]
    _, rest = await get_logs(
        client, service, function, since="10m", limit="1000", nextToken=page["nextToken"]
    )
    assert len(page["logs"]) + len(rest["logs"]) == 2 * 5  # start, 2 lines, end, report
    assert rest["logs"][0]["message"] != page["logs"][-1]["message"]


async def test_bad_queries_are_400_and_unknown_ids_404(client: Client) -> None:
    service, function = await deploy(client, {"index.py": SPAM})
    for params, reason in [
        ({"limit": "0"}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-13-45T00:00:00Z"}, "until"),
        ({"since": "1h", "until": "2h"}, "since is after until"),
        ({"level": "LOUD"}, "level"),
        ({"nextToken": "garbage"}, "nextToken"),
        ({"requestId": "x" * 200}, "requestId"),
    ]:
        status, answer = await get_logs(client, service, function, **params)
        assert status == 400, (params, answer)
        assert reason in answer["errorMessage"], (params, answer)
    status, answer = await get_logs(client, service, function, requestId="no-such-request")
    assert status == 404 and answer["errorCode"] == "InvocationNotFound", answer
    unknown = "01900000-0000-7000-8000-000000000000"  # a uuid7 of 2024 with no lines
    status, answer = await get_logs(client, service, function, requestId=unknown)
    assert status == 404, answer
    status, answer = await get_logs(client, service, "nofunction")
    assert status == 404, answer


async def test_follow_shows_a_new_line_within_a_second(client: Client) -> None:
    service, function = await deploy(client, {"index.py": SPAM})
    url = f"{client.base}/v1/services/{service}/functions/{function}/logs"
    headers = {"Authorization": f"Bearer {client.key}"}
    async with client.session.get(url, params={"follow": "true"}, headers=headers) as stream:
        assert stream.status == 200
        assert stream.headers["Content-Type"].startswith("application/x-ndjson")
        delays = []
        for _ in range(3):
            _, answered, _ = await invoke(client, service, function, b"1")
            rid, at = answered["X-Fc-Request-Id"], time.monotonic()
            while True:
                line = await asyncio.wait_for(stream.content.readline(), 10)
                if line.strip() and json.loads(line)["message"] == f"line 0 of {rid}":
                    delays.append(time.monotonic() - at)
                    break
        assert max(delays) < 1.0, delays


async def test_tenants_append_their_own_records(client: Client) -> None:
    service, function = await deploy(client, {"index.py": SPAM})
    path = f"/v1/services/{service}/functions/{function}/logs"
    records = [{"message": "deployed build 42", "level": "info", "requestId": "build-42"}]
    status, _, body = await client.call("POST", path, json={"records": records})
    assert status == 200 and json.loads(body) == {"appended": 1}
    _, answer = await get_logs(client, service, function, since="1m", q="build 42")
    [line] = answer["logs"]
    assert (line["kind"], line["level"], line["requestId"]) == ("user", "INFO", "build-42")
    for bad in [
        {},
        {"records": []},
        {"records": [{"level": "INFO"}]},
        {"records": [{"message": "x", "level": "LOUD"}]},
        {"records": [{"message": "x", "extra": 1}]},
    ]:
        status, _, body = await client.call("POST", path, json=bad)
        assert status == 400, (bad, body)


async def test_an_async_request_is_found_by_its_id(client: Client) -> None:
    service, function = await deploy(client, {"index.py": SPAM})
    status, headers, _ = await invoke(client, service, function, b"2", X_Fc_Invocation_Type="Async")
    assert status == 202
    rid = headers["X-Fc-Request-Id"]
    await wait_result(client, service, function, rid)
    answer = await wait_logs(client, service, function, has_report(rid), requestId=rid)
    assert [line["message"] for line in answer["logs"]][1:3] == [
        f"line {i} of {rid}" for i in range(2)
    ]


def test_pyfc_logs_prints_a_request_and_follows(stack: Stack, tenant: tuple[str, str]) -> None:
    async def prepare() -> tuple[str, str, str]:
        async with aiohttp.ClientSession() as session:
            client = Client(session, stack.url, tenant[1], tenant[0])
            service, function = await deploy(client, {"index.py": SPAM})
            _, headers, _ = await invoke(client, service, function, b"2")
            rid = headers["X-Fc-Request-Id"]
            await wait_logs(client, service, function, has_report(rid), requestId=rid)
            return service, function, rid

    service, function, rid = asyncio.run(prepare())
    base = ["--endpoint", stack.url, "--api-key", tenant[1]]
    out = stack.cli("logs", f"{service}/{function}", "--request-id", rid, *base).stdout.decode()
    lines = out.splitlines()
    assert len(lines) == 5, out  # start, 2 lines, end, report
    assert re.fullmatch(rf"\S+Z {rid} line 0 of {rid}", lines[1]), lines[1]
    out = stack.cli("logs", f"{service}/{function}", "--since", "10m", "-q", "line 1", *base)
    assert out.stdout.decode().splitlines()[0].endswith(f"line 1 of {rid}")
    bad = stack.cli("logs", f"{service}/{function}", "--since", "never", *base, check=False)
    assert bad.returncode != 0 and b"since" in bad.stderr
    follower = subprocess.Popen(
        [sys.executable, "-m", "pyfc", "logs", f"{service}/{function}", "-f", *base],
        env=stack.env,
        stdout=subprocess.PIPE,
    )
    try:

        async def call_until_seen() -> None:
            async with aiohttp.ClientSession() as session:
                client = Client(session, stack.url, tenant[1], tenant[0])
                for _ in range(50):  # until the follower is attached and prints
                    await invoke(client, service, function, b"1")
                    if seen:
                        return
                    await asyncio.sleep(0.2)

        seen: list[bytes] = []
        reader = threading.Thread(target=lambda: seen.append(follower.stdout.readline()))  # type: ignore[union-attr]
        reader.start()
        asyncio.run(call_until_seen())
        reader.join(timeout=30)
        assert seen and b"FC Invoke Start RequestId" in seen[0], seen
    finally:
        follower.terminate()
        follower.wait(timeout=10)
        follower.stdout.close()  # type: ignore[union-attr]
