"""Object storage triggers end to end: real gateway, dispatcher, worker and `pyfc trigger
s3` processes, the real broker; events as MinIO documents them; runs counted inside the
function."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from tests.conftest import Client
from tests.helpers import deploy, open_dir, unique
from tests.s3_samples import minio_body
from tests.stack import AMQP_URL, Stack, wait_until

# Appends one JSON line per run: the event and the request id.
RECORD = (
    "import json, os\n"
    "def handler(event, context):\n"
    "    line = json.dumps({'event': json.loads(event), 'requestId': context.request_id,\n"
    "                       'mark': os.environ.get('MARK', ''),\n"
    "                       'hops': context.lineage.hops})\n"
    "    with open(os.environ['RUNS'], 'a') as f:\n"
    "        f.write(line + '\\n')\n"
    "    return 'ok'\n"
)


def runs(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def s3_key(run: dict[str, Any]) -> str:
    """The decoded key of a run's event, whichever format it got."""
    from urllib.parse import unquote_plus

    event = run["event"]
    if "events" in event:
        return str(event["events"][0]["oss"]["object"]["key"])
    return unquote_plus(event["Records"][0]["s3"]["object"]["key"])


async def record_function(client: Client, mark: str = "") -> tuple[str, str, Path]:
    runs_file = open_dir("s3") / f"{unique('runs')}.jsonl"
    service, function = await deploy(
        client,
        {"index.py": RECORD},
        environmentVariables={"RUNS": str(runs_file), "MARK": mark},
        timeout=30,
    )
    return service, function, runs_file


async def create_trigger(
    client: Client, service: str, function: str, name: str, trigger_type: str = "s3", **config: Any
) -> dict[str, Any]:
    body = {"triggerName": name, "triggerType": trigger_type, "triggerConfig": config}
    status, _, raw = await client.call(
        "POST", f"/v1/services/{service}/functions/{function}/triggers", json=body
    )
    assert status == 201, raw
    created: dict[str, Any] = json.loads(raw)
    return created


class MinioExchange:
    """Publishes as MinIO's AMQP target does: persistent JSON to a fanout, durable exchange."""

    def __init__(self, stack: Stack) -> None:
        self.namespace = stack.namespace
        self.name = f"{stack.namespace}.s3-events"

    async def __aenter__(self) -> MinioExchange:
        self.connection = await aio_pika.connect(AMQP_URL, timeout=10)
        self.channel = await self.connection.channel()
        self.exchange = await self.channel.declare_exchange(
            self.name, aio_pika.ExchangeType.FANOUT, durable=True
        )
        return self

    async def publish(self, body: bytes) -> None:
        message = aio_pika.Message(
            body, content_type="application/json", delivery_mode=aio_pika.DeliveryMode.PERSISTENT
        )
        await self.exchange.publish(message, routing_key="")

    async def parked(self) -> list[bytes]:
        queue = await self.channel.get_queue(f"{self.namespace}.s3.{self.name}.parked", ensure=True)
        bodies = []
        while (message := await queue.get(fail=False, timeout=5)) is not None:
            bodies.append(message.body)
            await message.ack()
        return bodies

    async def __aexit__(self, *exc: object) -> None:
        # The queues stay while the module's trigger process consumes them (`stack`
        # deletes them at the end): deleting one would cancel its consumer for good.
        await self.connection.close()


async def delete_event_queues(namespace: str) -> None:
    exchange = f"{namespace}.s3-events"
    connection = await aio_pika.connect(AMQP_URL, timeout=10)
    async with connection:
        channel = await connection.channel()
        for queue in (f"{namespace}.s3.{exchange}", f"{namespace}.s3.{exchange}.parked"):
            await channel.queue_delete(queue)
        await channel.exchange_delete(exchange)


@pytest.fixture
async def minio(stack: Stack) -> AsyncIterator[MinioExchange]:
    async with MinioExchange(stack) as exchange:
        yield exchange


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One stack (SQLite) with an s3 trigger process for the module's tests."""
    s = Stack(tmp_path_factory.mktemp("stack-s3"))
    try:
        s.start()
        s.start_trigger("s3")
        yield s
    finally:
        s.stop()
        asyncio.run(delete_event_queues(s.namespace))


async def test_minio_amqp_events_run_matching_triggers_once_and_park_malformed(
    stack: Stack, client: Client, minio: MinioExchange
) -> None:
    bucket = unique("images").replace("_", "-")
    service, function, path = await record_function(client)
    await create_trigger(
        client,
        service,
        function,
        "jpgs-in",
        bucket=bucket,
        events=["s3:ObjectCreated:*"],
        filter={"key": {"prefix": "in/", "suffix": ".jpg"}},
    )
    # FC's name for the type, FC's event names and format, overlapping the first trigger.
    oss = await create_trigger(
        client,
        service,
        function,
        "all-oss",
        trigger_type="oss",
        bucket=bucket,
        events=["oss:ObjectCreated:PutObject", "oss:ObjectRemoved:DeleteObject"],
        eventFormat="oss",
    )
    assert oss["triggerType"] == "s3"
    stack.wait_log("s3-1", f"consuming exchange {minio.name}")

    keys = ["in/a b.jpg", "in/100%+ü.jpg", "in/skip.png", "out/x.jpg"]
    for i, key in enumerate(keys):
        await minio.publish(minio_body(bucket, key, sequencer=f"{i:016X}"))
    await minio.publish(b"this is not an event")
    await minio.publish(json.dumps({"Records": [{"eventName": "s3:ObjectCreated:Put"}]}).encode())
    # Delivered twice (a sender's retry): runs once per trigger.
    await minio.publish(minio_body(bucket, "in/twice.jpg", sequencer="T"))
    await minio.publish(minio_body(bucket, "in/twice.jpg", sequencer="T"))
    # Removal: only the oss trigger asked for it. Another bucket: nobody.
    await minio.publish(
        minio_body(bucket, "in/a b.jpg", name="s3:ObjectRemoved:Delete", sequencer="R")
    )
    await minio.publish(minio_body(bucket + "-x", "in/a.jpg", sequencer="X"))

    # jpgs-in: a b, 100%+ü, twice (3); all-oss: all four keys, twice, removal (6).
    wait_until(lambda: len(runs(path)) >= 9, 30, "nine runs")
    await minio.publish(minio_body(bucket, "in/sentinel.jpg", sequencer="S"))
    wait_until(lambda: len(runs(path)) >= 11, 30, "the sentinel's two runs")
    seen = runs(path)
    s3_runs = sorted(s3_key(r) for r in seen if "Records" in r["event"])
    oss_runs = sorted(s3_key(r) for r in seen if "events" in r["event"])
    assert s3_runs == sorted(["in/a b.jpg", "in/100%+ü.jpg", "in/twice.jpg", "in/sentinel.jpg"])
    assert oss_runs == sorted([*keys, "in/twice.jpg", "in/a b.jpg", "in/sentinel.jpg"])
    assert len({r["requestId"] for r in seen}) == len(seen)
    # The s3 format is MinIO's record as sent; the oss one FC's event.
    record = next(r["event"]["Records"][0] for r in seen if "Records" in r["event"])
    assert record["eventSource"] == "minio:s3" and record["s3"]["bucket"]["name"] == bucket
    removal = [r["event"]["events"][0] for r in seen if "events" in r["event"]]
    assert {e["eventName"] for e in removal} == {
        "ObjectCreated:PutObject",
        "ObjectRemoved:DeleteObject",
    }
    assert all(e["eventSource"] == "acs:oss" for e in removal)
    # Invocation records name the trigger.
    status, _, raw = await client.call(
        "GET", f"/v1/services/{service}/functions/{function}/invocations/{seen[0]['requestId']}"
    )
    assert status == 200 and json.loads(raw)["origin"] in ("s3:jpgs-in", "s3:all-oss"), raw
    # The two foreign messages were parked, not retried, and nothing else.
    parked = await minio.parked()
    assert sorted(parked) == sorted(
        [
            b"this is not an event",
            json.dumps({"Records": [{"eventName": "s3:ObjectCreated:Put"}]}).encode(),
        ]
    )


# Open finding: red about once in four runs: one of the 500 events never concluded (510 of
# 511 invocations of the module succeeded in the dispatcher's log, 2026-12-08 03:31); not
# diagnosed yet. Run it with `pytest -m open_bug tests/test_e2e_s3.py`.
@pytest.mark.open_bug
@pytest.mark.timeout(240)
async def test_500_events_with_the_adapter_sigkilled_midway_all_run(
    stack: Stack, client: Client, minio: MinioExchange
) -> None:
    """Acked only after acceptance: a SIGKILLed adapter's unacked messages go to its
    successor, and every event runs at least once (duplicates counted and reported)."""
    bucket = unique("bulk").replace("_", "-")
    service, function, path = await record_function(client)
    await create_trigger(
        client, service, function, "all", bucket=bucket, events=["s3:ObjectCreated:*"]
    )
    stack.wait_log("s3-1", f"consuming exchange {minio.name}")
    keys = [f"up/{i:04d} ü+%.bin" for i in range(500)]
    for i, key in enumerate(keys):
        await minio.publish(minio_body(bucket, key, sequencer=f"{i:016X}"))
    wait_until(lambda: len(runs(path)) >= 50, 60, "50 runs before the kill")
    stack.kill("s3-1")
    killed_at = len(runs(path))
    stack.start_trigger("s3", "s3-2")
    wait_until(lambda: len({s3_key(r) for r in runs(path)}) >= 500, 180, "every event to run")
    seen = runs(path)
    distinct = {s3_key(r) for r in seen}
    assert distinct == set(keys)
    duplicates = len(seen) - len(distinct)
    print(f"500 events, SIGKILL after {killed_at} runs: {len(seen)} runs, {duplicates} duplicates")
    assert killed_at < 500, "the kill came after every run: nothing was tested"


async def test_a_functions_write_continues_its_chain_and_a_loop_stops_at_the_limit(
    stack: Stack, client: Client, minio: MinioExchange
) -> None:
    """The lineage mark in an object's metadata (MinIO's records carry user metadata):
    the event continues the writer's chain one hop deeper; at the tenant's limit (16) it
    is stopped with a record saying why; a foreign mark starts a new chain."""
    from shared import s3events, tokens
    from shared.settings import Settings
    from triggers.adapter import event_id

    secret = Settings.from_env(stack.env).token_secret()
    bucket = unique("loop").replace("_", "-")
    service, function, path = await record_function(client)
    trigger = await create_trigger(
        client, service, function, "thumbs", bucket=bucket, events=["s3:ObjectCreated:*"]
    )
    alive = [n for n, p in stack.procs.items() if n.startswith("s3-") and p.poll() is None]
    stack.wait_log(alive[-1], f"consuming exchange {minio.name}")

    def marked(key: str, hops: int, tenant: str = client.tenant, seq: str = "1") -> bytes:
        token = tokens.mint(
            secret, tenant=tenant, trace_id="trace-1", hops=hops, origin="function:s/f",
            expires_at=0,
        )  # fmt: skip
        meta = {"X-Amz-Meta-Pyfc-Lineage": tokens.mark_of(token)}
        return minio_body(bucket, key, sequencer=seq, metadata=meta)

    # The exchange is consumed already (the module's first test), so nothing says when the
    # s3 process has loaded this new trigger: publish again until both ran. A copy has the
    # same event id, so it runs once however often it is sent.
    first = [marked("out/a.jpg", hops=2), marked("out/foreign.jpg", hops=2, tenant="someone-else")]
    for _ in range(15):
        for body in first:
            await minio.publish(body)
        try:
            await asyncio.to_thread(wait_until, lambda: len(runs(path)) >= 2, 2, "two runs")
            break
        except TimeoutError:
            continue
    assert len(runs(path)) >= 2, "the two marked objects never ran"
    hops = {s3_key(r): r["hops"] for r in runs(path)}
    assert hops == {"out/a.jpg": 3, "out/foreign.jpg": 0}, hops

    body = marked("out/loop.jpg", hops=15)
    await minio.publish(body)
    [event] = s3events.parse(body)
    request_id = event_id(trigger["triggerId"], event.dedup_key)
    url = f"/v1/services/{service}/functions/{function}/invocations/{request_id}"

    async def concluded() -> dict[str, Any]:
        for _ in range(300):
            status, _, raw = await client.call("GET", url)
            if status == 200 and json.loads(raw)["status"] not in ("Enqueued", "Running"):
                return dict(json.loads(raw))
            await asyncio.sleep(0.1)
        raise TimeoutError(raw)

    record = await concluded()
    assert record["status"] == "Failed" and "16 hops" in json.dumps(record), record
    assert "out/loop.jpg" not in {s3_key(r) for r in runs(path)}
