"""Bad input gets a clear 4xx and changes nothing."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from tests.conftest import Client
from tests.helpers import ECHO, deploy, invoke, unique, wait_result
from tests.stack import Stack, code_body, make_zip


def fn_body(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"functionName": unique("fn"), "code": code_body({"index.py": ECHO})}
    body.update(over)
    return body


corrupt = bytearray(make_zip({"index.py": ECHO * 50}))
corrupt[60:90] = b"\x00" * 30

BAD_FUNCTIONS: list[tuple[str, bytes, int, str]] = [
    ("malformed json", b"{not json", 400, "InvalidArgument"),
    ("empty body", b"", 400, "InvalidArgument"),
    ("json array", b"[]", 400, "InvalidArgument"),
    ("missing code", json.dumps({"functionName": "f1"}).encode(), 400, "InvalidArgument"),
    (
        "missing name",
        json.dumps({"code": code_body({"index.py": ECHO})}).encode(),
        400,
        "InvalidArgument",
    ),
    ("bad name", json.dumps(fn_body(functionName="1 bad/name")).encode(), 400, "InvalidArgument"),
    ("memory too small", json.dumps(fn_body(memorySize=64)).encode(), 400, "InvalidArgument"),
    ("timeout negative", json.dumps(fn_body(timeout=-1)).encode(), 400, "InvalidArgument"),
    ("concurrency 0", json.dumps(fn_body(instanceConcurrency=0)).encode(), 400, "InvalidArgument"),
    ("wrong type", json.dumps(fn_body(timeout="soon")).encode(), 400, "InvalidArgument"),
    ("unknown runtime", json.dumps(fn_body(runtime="cobol85")).encode(), 400, "InvalidArgument"),
    ("not base64", json.dumps(fn_body(code={"zipFile": "@@@"})).encode(), 400, "InvalidArgument"),
    (
        "not a zip",
        json.dumps(fn_body(code={"zipFile": base64.b64encode(b"hello").decode()})).encode(),
        400,
        "InvalidCodePackage",
    ),
    (
        "corrupt zip",
        json.dumps(fn_body(code={"zipFile": base64.b64encode(bytes(corrupt)).decode()})).encode(),
        400,
        "InvalidCodePackage",
    ),
    (
        "handler module missing",
        json.dumps(fn_body(handler="main.handler")).encode(),
        400,
        "InvalidCodePackage",
    ),
    (
        "handler function missing",
        json.dumps(fn_body(handler="index.nope")).encode(),
        400,
        "InvalidCodePackage",
    ),
    (
        "syntax error",
        json.dumps(fn_body(code=code_body({"index.py": "def handler(:\n"}))).encode(),
        400,
        "InvalidCodePackage",
    ),
]


@pytest.mark.parametrize(
    ("case", "raw", "status", "code"), BAD_FUNCTIONS, ids=[c[0] for c in BAD_FUNCTIONS]
)
async def test_bad_function_bodies_are_rejected_and_change_nothing(
    client: Client, case: str, raw: bytes, status: int, code: str
) -> None:
    service = unique("svc")
    assert (await client.call("POST", "/v1/services", json={"serviceName": service}))[0] == 201
    got, _, body = await client.call(
        "POST",
        f"/v1/services/{service}/functions",
        data=raw,
        headers={"Content-Type": "application/json"},
    )
    err = json.loads(body)
    assert (got, err["errorCode"]) == (status, code), err
    assert err["errorMessage"]
    _, _, listing = await client.call("GET", f"/v1/services/{service}/functions")
    assert json.loads(listing)["functions"] == []


async def test_bad_service_bodies(client: Client) -> None:
    for raw in (
        b"{",
        b"{}",
        json.dumps({"serviceName": "has space"}).encode(),
        json.dumps({"serviceName": "ok", "environmentVariables": {"1BAD": "x"}}).encode(),
    ):
        status, _, body = await client.call("POST", "/v1/services", data=raw)
        assert status == 400, body
    name = unique("svc")
    assert (await client.call("POST", "/v1/services", json={"serviceName": name}))[0] == 201
    status, _, body = await client.call("POST", "/v1/services", json={"serviceName": name})
    assert status == 409 and json.loads(body)["errorCode"] == "AlreadyExists"


async def test_bad_update_keeps_the_function_working(client: Client) -> None:
    service, function = await deploy(client)
    path = f"/v1/services/{service}/functions/{function}"
    for update in (
        {"handler": "index.missing"},
        {"code": {"zipFile": "bm90emlw"}},
        {"memorySize": 99999},
        {},
    ):
        status, _, body = await client.call("PUT", path, json=update)
        assert status == 400, (update, body)
    _, _, body = await client.call("GET", path)
    assert json.loads(body)["revision"] == 1
    assert (await invoke(client, service, function, b"still"))[2] == b"still"


async def test_unknown_service_and_function_are_404(client: Client) -> None:
    service, _ = await deploy(client)
    for path, code in (
        ("/v1/services/nosuch", "ServiceNotFound"),
        ("/v1/services/nosuch/functions/f", "ServiceNotFound"),
        (f"/v1/services/{service}/functions/nosuch", "FunctionNotFound"),
    ):
        status, _, body = await client.call("GET", path)
        assert (status, json.loads(body)["errorCode"]) == (404, code)
    status, _, body = await invoke(client, service, "nosuch")
    assert status == 404 and json.loads(body)["errorCode"] == "FunctionNotFound"
    status, _, body = await invoke(client, "nosuch", "f", X_Fc_Invocation_Type="Async")
    assert status == 404


async def test_auth_missing_wrong_and_cross_tenant(client: Client, stack: Stack) -> None:
    service, function = await deploy(client)
    path = f"/v1/services/{service}/functions/{function}"
    async with client.session.get(stack.url + path) as r:
        assert r.status == 401
        assert (await r.json())["errorCode"] == "Unauthorized"
    async with client.session.get(
        stack.url + path, headers={"Authorization": "Bearer pyfc_wrong"}
    ) as r:
        assert r.status == 401
    _, other_key = stack.create_tenant()
    other = Client(client.session, stack.url, other_key)
    assert (await other.call("GET", path))[0] == 404
    assert (await invoke(other, service, function, b"x"))[0] == 404
    assert (await other.call("DELETE", path))[0] == 404
    _, _, listing = await other.call("GET", "/v1/services")
    assert json.loads(listing)["services"] == []
    assert (await invoke(client, service, function, b"mine"))[2] == b"mine"


async def test_bad_invoke_headers(client: Client) -> None:
    service, function = await deploy(client)
    status, _, body = await invoke(client, service, function, X_Fc_Invocation_Type="Sometimes")
    assert status == 400, body
    status, _, body = await invoke(client, service, function, X_Fc_Lineage="not a lineage!")
    assert status == 400, body


async def test_unknown_route_and_method(client: Client) -> None:
    assert (await client.call("GET", "/v1/nothing"))[0] == 404
    assert (await client.call("PATCH", "/v1/services"))[0] == 405


async def test_undecodable_broker_messages_are_dropped_and_work_goes_on(
    client: Client, stack: Stack
) -> None:
    import aio_pika

    from shared.topology import Topology
    from tests.stack import AMQP_URL

    topo = Topology(stack.namespace)
    service, function = await deploy(client)
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(topo.invoke_exchange)
        for garbage in (b"", b"\xc1", b"not msgpack at all", b"\x81\xa1x\x01"):
            await exchange.publish(aio_pika.Message(garbage), routing_key=client.tenant)
            done = aio_pika.Message(garbage, type="done")
            await exchange.publish(done, routing_key=client.tenant)
            await channel.default_exchange.publish(
                aio_pika.Message(garbage), routing_key=topo.work_queue
            )
        # An async call passes through the same queues after the garbage (FIFO per queue).
        status, headers, _ = await invoke(
            client, service, function, b"after garbage", X_Fc_Invocation_Type="Async"
        )
        assert status == 202
        rec = await wait_result(client, service, function, headers["X-Fc-Request-Id"])
        assert rec["result"] == "after garbage"
        for name in (*topo.shard_queues, topo.work_queue):
            queue = await channel.declare_queue(name, durable=True, passive=True)
            assert queue.declaration_result.message_count == 0, name
