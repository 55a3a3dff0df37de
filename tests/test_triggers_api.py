"""The trigger resource over HTTP (both store backends): CRUD, bad input, and deleting a
function that still has triggers; and the takeover of fires a dead replica left behind."""

from __future__ import annotations

import asyncio
import io
import json
import time
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import pytest

from shared.accept import Acceptor
from shared.protocol import Invocation, Lineage
from shared.store import Store
from shared.store_triggers import Fire
from shared.topology import Topology, declare_invoke
from shared.trigger_types import timer_event
from tests.conftest import Client, StartStack
from tests.helpers import deploy, open_dir, unique
from tests.stack import AMQP_URL, Stack, wait_until
from tests.test_e2e_timer import RECORD, runs
from triggers.adapter import event_id, iso_utc


def base(service: str, function: str) -> str:
    return f"/v1/services/{service}/functions/{function}/triggers"


def timer(name: str = "t1", **config: Any) -> dict[str, Any]:
    return {
        "triggerName": name,
        "triggerType": "timer",
        "triggerConfig": {"cronExpression": "0 0 4 * * *", **config},
    }


async def test_crud_and_partial_update(client: Client) -> None:
    service, function = await deploy(client)
    path = base(service, function)
    status, _, raw = await client.call(
        "POST", path, json=timer("nightly", timezone="Asia/Shanghai", payload="p")
    )
    assert status == 201, raw
    created = json.loads(raw)
    assert created["triggerName"] == "nightly" and created["qualifier"] == "LATEST"
    assert created["triggerConfig"] == {
        "cronExpression": "0 0 4 * * *",
        "timezone": "Asia/Shanghai",
        "payload": "p",
        "missedRuns": "skip",
        "overlap": "allow",
    }
    assert created["enabled"] is True and created["triggerId"] and created["createdTime"]
    status, _, raw = await client.call("POST", path, json=timer("nightly"))
    assert status == 409 and json.loads(raw)["errorCode"] == "AlreadyExists"
    # PUT is partial: only `enabled` changes.
    status, _, raw = await client.call("PUT", f"{path}/nightly", json={"enabled": False})
    assert status == 200, raw
    updated = json.loads(raw)
    assert updated["enabled"] is False and updated["triggerConfig"] == created["triggerConfig"]
    assert updated["triggerId"] == created["triggerId"]
    status, _, raw = await client.call(
        "PUT", f"{path}/nightly", json={"triggerConfig": {"cronExpression": "@every 5m"}}
    )
    assert status == 200 and json.loads(raw)["triggerConfig"]["cronExpression"] == "@every 5m"
    status, _, raw = await client.call("GET", path)
    assert status == 200 and [t["triggerName"] for t in json.loads(raw)["triggers"]] == ["nightly"]
    status, _, raw = await client.call("GET", f"{path}/nightly")
    assert status == 200 and json.loads(raw)["enabled"] is False
    # A function with triggers cannot be deleted (as FC); without them it can.
    status, _, raw = await client.call("DELETE", f"/v1/services/{service}/functions/{function}")
    assert status == 409 and "triggers" in json.loads(raw)["errorMessage"], raw
    status, _, _ = await client.call("DELETE", f"{path}/nightly")
    assert status == 204
    status, _, raw = await client.call("GET", f"{path}/nightly")
    assert status == 404 and json.loads(raw)["errorCode"] == "TriggerNotFound"
    status, _, _ = await client.call("DELETE", f"/v1/services/{service}/functions/{function}")
    assert status == 204


@pytest.mark.parametrize(
    ("body", "status", "names"),
    [
        (timer(cronExpression="61 * * * * *"), 400, "cronExpression"),
        (timer(cronExpression="* * *"), 400, "cronExpression"),
        (timer(cronExpression="@every 5parsecs"), 400, "duration"),
        (timer(cronExpression="@every 0s"), 400, "out of range"),
        (timer(timezone="Mars/Olympus"), 400, "timezone"),
        (timer(cronExpression="CRON_TZ=Nowhere/x 0 * * * * *"), 400, "time zone"),
        (timer(missedRuns="sometimes"), 400, "triggerConfig.missedRuns"),
        (timer(overlap="maybe"), 400, "triggerConfig.overlap"),
        (timer(cronExpression=5), 400, "triggerConfig.cronExpression"),
        (timer(payload={"a": 1}), 400, "triggerConfig.payload"),
        (timer(colour="blue"), 400, "colour"),
        ({**timer(), "triggerConfig": {}}, 400, "cronExpression"),
        ({**timer(), "triggerConfig": []}, 400, "triggerConfig"),
        ({**timer(), "triggerType": "pigeon"}, 400, "triggerType"),
        ({**timer(), "enabled": "yes"}, 400, "enabled"),
        ({**timer(), "extra": 1}, 400, "extra"),
        ({**timer(), "triggerName": "no spaces"}, 400, "triggerName"),
        ({**timer(), "qualifier": "bad.qualifier"}, 400, "qualifier"),
        ({**timer(), "qualifier": "7"}, 404, "7"),  # no such version (or alias)
        ({"triggerType": "timer"}, 400, "triggerName"),
    ],
)
async def test_bad_input_names_field_and_reason(
    client: Client, body: dict[str, Any], status: int, names: str
) -> None:
    service, function = await deploy(client)
    got, _, raw = await client.call("POST", base(service, function), json=body)
    assert got == status, raw
    assert names in json.loads(raw)["errorMessage"], raw
    # Nothing half-created.
    got, _, raw = await client.call("GET", base(service, function))
    assert got == 200 and json.loads(raw)["triggers"] == []


async def test_missing_function_or_service_is_404_and_big_payload_413(client: Client) -> None:
    service, function = await deploy(client)
    status, _, raw = await client.call("POST", base(service, "nope"), json=timer())
    assert status == 404 and json.loads(raw)["errorCode"] == "FunctionNotFound", raw
    status, _, raw = await client.call("POST", base("nope", function), json=timer())
    assert status == 404 and json.loads(raw)["errorCode"] == "ServiceNotFound", raw
    big = "x" * (6 * 1024 * 1024)  # the async event limit (PYFC_MAX_EVENT_BYTES)
    body = io.BytesIO(json.dumps(timer(payload=big)).encode())
    status, _, raw = await client.call(
        "POST", base(service, function), data=body, headers={"Content-Type": "application/json"}
    )
    assert status == 413 and "triggerConfig.payload" in json.loads(raw)["errorMessage"], raw
    status, _, raw = await client.call("PUT", f"{base(service, function)}/t1", json={})
    assert status == 404 and json.loads(raw)["errorCode"] == "TriggerNotFound", raw
    status, _, raw = await client.call("GET", base(service, function))
    assert json.loads(raw)["triggers"] == []


async def test_bad_updates(client: Client) -> None:
    service, function = await deploy(client)
    path = base(service, function)
    assert (await client.call("POST", path, json=timer()))[0] == 201
    for body, names in (
        ({}, "nothing to update"),
        ({"triggerName": "x"}, "triggerName"),
        ({"triggerConfig": {"cronExpression": "bad"}}, "cronExpression"),
        ({"enabled": 3}, "enabled"),
    ):
        status, _, raw = await client.call("PUT", f"{path}/t1", json=body)
        assert status == 400 and names in json.loads(raw)["errorMessage"], (body, raw)
    status, _, raw = await client.call("GET", f"{path}/t1")
    assert json.loads(raw)["triggerConfig"]["cronExpression"] == "0 0 4 * * *"


async def test_mq_trigger_hides_its_password_and_refuses_platform_exchanges(
    client: Client, stack: Stack
) -> None:
    service, function = await deploy(client)
    path = base(service, function)
    url = "amqp://bob:s3cret@127.0.0.1:5672/"
    body = {
        "triggerName": "orders",
        "triggerType": "mq",
        "triggerConfig": {"exchange": "orders", "routingKey": "eu.*", "amqpUrl": url},
    }
    status, _, raw = await client.call("POST", path, json=body)
    assert status == 201 and b"s3cret" not in raw, raw
    for route in (path, f"{path}/orders"):
        status, _, raw = await client.call("GET", route)
        assert status == 200 and b"s3cret" not in raw and b"bob:****@" in raw, raw
    shown = json.loads(raw)["triggerConfig"]
    status, _, raw = await client.call(
        "PUT", f"{path}/orders", json={"triggerConfig": {**shown, "batchSize": 10}}
    )
    assert (
        status == 200
        and b"s3cret" not in raw
        and json.loads(raw)["triggerConfig"]
        == {
            **shown,
            "batchSize": 10,
        }
    ), raw
    for exchange in (f"{stack.namespace}.invoke", "amq.topic"):
        status, _, raw = await client.call(
            "POST",
            path,
            json={
                "triggerName": "evil",
                "triggerType": "mq",
                "triggerConfig": {"exchange": exchange},
            },
        )
        assert status == 403 and "triggerConfig.exchange" in json.loads(raw)["errorMessage"], raw
    status, _, raw = await client.call(
        "POST",
        path,
        json={
            "triggerName": "bad",
            "triggerType": "mq",
            "triggerConfig": {"exchange": "o", "batchSize": 0},
        },
    )
    assert status == 400 and "batchSize" in json.loads(raw)["errorMessage"], raw


async def test_lapsed_claims_are_taken_over_and_run_once(
    fresh_stack: StartStack, tmp_path: Path
) -> None:
    """What a SIGKILLed replica leaves: a claim it published but did not mark, and one it
    never published. A live replica's sweep completes both; each runs exactly once (the
    second copy of the first is refused by the dispatcher's first-admission check)."""
    stack: Stack = fresh_stack(workers=1)
    tenant, key = stack.create_tenant()
    async with aiohttp.ClientSession() as session:
        client = Client(session, stack.url, key)
        runs_file = open_dir("takeover") / f"{unique('runs')}.jsonl"
        service, function = await deploy(
            client, {"index.py": RECORD}, environmentVariables={"RUNS": str(runs_file)}
        )
        status, _, raw = await client.call(
            "POST", base(service, function), json=timer("yearly", cronExpression="0 0 0 1 1 *")
        )
        assert status == 201, raw
        trigger_id = json.loads(raw)["triggerId"]
    store = await Store.open(f"sqlite+aiosqlite:///{stack.root / 'data' / 'pyfc.db'}")
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel(publisher_confirms=True)
        acceptor = Acceptor(store, await declare_invoke(channel, Topology(stack.namespace)))
        now = time.time()
        published_ms, lost_ms = int(now - 20) * 1000, int(now - 10) * 1000
        fires = [
            Fire(trigger_id, ms, tenant, event_id(trigger_id, str(ms)))
            for ms in (published_ms, lost_ms)
        ]
        claimed = await store.claim_fires(fires, "dead-replica", lease_until=now - 1)
        assert claimed == fires
        # The dead replica had published the first (recorded + confirmed), not marked it.
        first = fires[0]
        await acceptor.accept(
            Invocation(
                id=first.request_id,
                tenant=tenant,
                service=service,
                function=function,
                kind="async",
                source="cron",
                payload=timer_event(iso_utc(published_ms / 1000), "yearly", ""),
                created_at=now,
                lineage=Lineage(trace_id=first.request_id, origin="timer:yearly"),
                once=True,
            )
        )
        wait_until(lambda: len(runs(runs_file)) == 1, 30, "the published fire's run")
        stack.start_timers()
        wait_until(lambda: len(runs(runs_file)) >= 2, 30, "the lost fire's run")
        await asyncio.sleep(3)  # time for a wrong second run of the first to show
        seen = sorted(r["triggerTime"] for r in runs(runs_file))
        assert seen == [iso_utc(published_ms / 1000), iso_utc(lost_ms / 1000)], seen
        assert "took over 2 timer fires" in stack.logs("timer-1")
        assert await store.finish_fires(fires, "dead-replica", "published") == 0
    finally:
        await connection.close()
        await store.close()


async def test_s3_trigger_oss_name_secrets_and_bad_config(client: Client) -> None:
    service, function = await deploy(client)
    path = base(service, function)
    source = {
        "type": "sqs",
        "queueUrl": "http://127.0.0.1:1/123456789012/q",
        "accessKeyId": "AKID",
        "secretAccessKey": "very-secret",
    }
    body = {
        "triggerName": "up",
        "triggerType": "oss",
        "triggerConfig": {"bucket": "images", "events": ["oss:ObjectCreated:*"], "source": source},
    }
    status, _, raw = await client.call("POST", path, json=body)
    assert status == 201, raw
    assert b"very-secret" not in raw
    created = json.loads(raw)
    assert created["triggerType"] == "s3"  # FC's name is stored as the type's own
    assert created["triggerConfig"]["eventFormat"] == "s3"
    assert created["triggerConfig"]["source"]["accessKeyId"] == "AKID"
    for url in (f"{path}/up", path):
        status, _, raw = await client.call("GET", url)
        assert status == 200 and b"very-secret" not in raw, raw
    bad = {**body, "triggerName": "bad", "triggerConfig": {"bucket": "images", "events": ["x"]}}
    status, _, raw = await client.call("POST", path, json=bad)
    assert status == 400 and "triggerConfig.events" in json.loads(raw)["errorMessage"], raw
