"""Publishing (`POST /v1/messages/{exchange}`) end to end: to an MQ trigger's exchange,
refused for the platform's exchanges and outside the operator's allow-list, bad input
named; and a function that publishes to the exchange that triggers it, stopped at the
chain limit."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.conftest import Client, StartStack
from tests.helpers import deploy, open_dir, unique
from tests.stack import wait_until
from tests.test_e2e_mq import (
    delete_exchange,
    mq_function,
    mq_trigger,
    runs,
    start_mq,
    wait_consuming,
)

# Records its run (hops and the event), then publishes the event on to its own exchange.
LOOP = (
    "import json, os, urllib.request\n"
    "def handler(event, context):\n"
    "    with open(os.environ['RUNS'], 'a') as f:\n"
    "        f.write(json.dumps({'hops': context.lineage.hops, 'event': event.decode()}) + '\\n')\n"
    "    body = json.dumps({'routingKey': 'again', 'body': event.decode()}).encode()\n"
    "    request = urllib.request.Request(\n"
    "        context.gateway_url + '/v1/messages/' + os.environ['EXCHANGE'], data=body,\n"
    "        headers={**context.lineage_headers(), 'Content-Type': 'application/json'})\n"
    "    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request) as r:\n"
    "        return r.read()\n"
)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def post(client: Client, exchange: str, **body: Any) -> tuple[int, dict[str, Any]]:
    status, _, raw = await client.call("POST", f"/v1/messages/{exchange}", json=body)
    return status, json.loads(raw)


async def test_publish_to_a_trigger_and_what_is_refused(
    fresh_stack: StartStack, session: aiohttp.ClientSession
) -> None:
    stack = fresh_stack(
        workers=1,
        env={"PYFC_MQ_EXCHANGES": "{tenant}.*,shared-events", "PYFC_MAX_EVENT_BYTES": "65536"},
    )
    tenant, key = stack.create_tenant()
    client = Client(session, stack.url, key)
    service, function, path = await mq_function(client)
    exchange = f"{tenant}.{unique('orders')}"
    start_mq(stack, "mq-1")
    # Nothing binds it yet: the exchange does not exist.
    status, answer = await post(client, exchange, routingKey="eu.paid", body="early")
    assert status == 404 and answer["errorCode"] == "ExchangeNotFound", answer
    trigger = await mq_trigger(
        client, service, function, "orders", exchange=exchange, routingKey="eu.*"
    )
    await wait_consuming(stack, "mq-1", trigger)
    try:
        status, answer = await post(
            client, exchange, routingKey="eu.paid", body="hello", messageId="m-1"
        )
        assert status == 200 and answer == {"messageId": "m-1", "routed": True}, answer
        raw = bytes(range(256))
        status, answer = await post(
            client,
            exchange,
            routingKey="eu.refund",
            body=base64.b64encode(raw).decode(),
            isBase64Encoded=True,
            headers={"kind": "binary"},
        )
        assert status == 200 and answer["routed"] is True and answer["messageId"], answer
        # No queue binds `us.*`: confirmed, but routed nowhere.
        status, answer = await post(client, exchange, routingKey="us.paid", body="lost")
        assert status == 200 and answer["routed"] is False, answer
        # RECORD decodes the event as text: the binary one fails there, the text one runs.
        wait_until(lambda: any(r["event"] == "hello" for r in runs(path)), 30, "the run")
        (run,) = [r for r in runs(path) if r["event"] == "hello"]
        status, _, rec = await client.call(
            "GET", f"/v1/services/{service}/functions/{function}/invocations/{run['requestId']}"
        )
        assert status == 200 and json.loads(rec)["origin"] == "mq:orders", rec

        # `pyfc mq publish`, the same through the CLI.
        out = stack.cli(
            "mq",
            "publish",
            exchange,
            "-k",
            "eu.cli",
            "--body",
            "via-cli",
            "--json",
            "--endpoint",
            stack.url,
            "--api-key",
            key,
        )
        assert json.loads(out.stdout)["routed"] is True, out
        wait_until(lambda: any(r["event"] == "via-cli" for r in runs(path)), 30, "the CLI's run")

        refused = [
            (f"{stack.namespace}.invoke", {}, 403, "platform"),
            ("amq.topic", {}, 403, "platform"),
            (f"other-{tenant}.orders", {}, 403, "PYFC_MQ_EXCHANGES"),
            ("bad name!", {}, 400, "exchange"),
            (exchange, {"routingKey": "eu.*"}, 400, "routingKey"),
            (exchange, {"headers": {"x-pyfc-hops": "0"}}, 400, "headers"),
            (exchange, {"body": "%%%", "isBase64Encoded": True}, 400, "base64"),
            (exchange, {"body": "x" * 70000}, 413, "limit"),
            (exchange, {"routingKey": 5}, 400, "routingKey"),
            (exchange, {"extra": 1}, 400, "extra"),
        ]
        for name, body, want, names in refused:
            status, _, raw_answer = await client.call("POST", f"/v1/messages/{name}", json=body)
            assert status == want, (name, body, status, raw_answer)
            if names:
                assert names in json.loads(raw_answer)["errorMessage"], raw_answer
        # Binding outside the allow-list is refused like publishing there.
        status, _, raw_answer = await client.call(
            "POST",
            f"/v1/services/{service}/functions/{function}/triggers",
            json={"triggerName": "x", "triggerType": "mq", "triggerConfig": {"exchange": "orders"}},
        )
        assert status == 403 and "PYFC_MQ_EXCHANGES" in json.loads(raw_answer)["errorMessage"]
    finally:
        await delete_exchange(exchange)


async def test_a_self_publishing_function_is_stopped_at_the_chain_limit(
    fresh_stack: StartStack, session: aiohttp.ClientSession
) -> None:
    stack = fresh_stack(workers=1)
    _, key = stack.create_tenant()
    client = Client(session, stack.url, key)
    exchange = unique("loop")
    runs_file = open_dir("mq") / f"{unique('runs')}.jsonl"
    service, function = await deploy(
        client,
        {"index.py": LOOP},
        environmentVariables={"RUNS": str(runs_file), "EXCHANGE": exchange},
    )
    start_mq(stack, "mq-1")
    trigger = await mq_trigger(client, service, function, "loop", exchange=exchange)
    await wait_consuming(stack, "mq-1", trigger)
    try:
        status, answer = await post(client, exchange, routingKey="start", body="ping")
        assert status == 200 and answer["routed"] is True, answer
        wait_until(
            lambda: "recursive loop stopped" in stack.logs("dispatcher"), 90, "the loop stopped"
        )
        hops = sorted(r["hops"] for r in runs(runs_file))
        # The first run is hop 0 (published by the tenant); each publish is one hop deeper;
        # the hop at the limit (16) is not run.
        assert hops == list(range(16)), hops
        status, _, raw = await client.call("GET", f"/v1/dlq?functionName={function}")
        assert status == 200, raw
        (letter,) = json.loads(raw)["deadLetters"]
        assert "16 hops deep" in json.dumps(letter), letter
    finally:
        await delete_exchange(exchange)
