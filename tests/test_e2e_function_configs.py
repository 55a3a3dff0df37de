"""Async config, provision config, reserved concurrency, the tenant view and the DLQ API,
through a real stack (gateway, dispatcher, worker processes; SQLite and PostgreSQL)."""

from __future__ import annotations

import base64
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from shared import codec
from shared.models import DeadLetter, InvocationRecord
from shared.protocol import Invocation, Lineage
from shared.settings import Settings
from shared.store import Store
from tests.conftest import Client
from tests.helpers import deploy, unique, wait_result
from tests.stack import Stack


def fn_path(service: str, function: str, qualifier: str = "") -> str:
    segment = f"{service}.{qualifier}" if qualifier else service
    return f"/v1/services/{segment}/functions/{function}"


async def get_json(client: Client, method: str, path: str, **kw: Any) -> tuple[int, Any]:
    status, _, body = await client.call(method, path, **kw)
    return status, json.loads(body) if body else None


@contextlib.asynccontextmanager
async def stack_store(stack: Stack) -> AsyncIterator[Store]:
    """The stack's own metadata database, as its roles see it."""
    store = await Store.open(Settings.from_env(stack.env).effective_database_url)
    try:
        yield store
    finally:
        await store.close()


def other_client(client: Client, stack: Stack) -> Client:
    name, key = stack.create_tenant()
    return Client(client.session, stack.url, key, name)


# --- async config -------------------------------------------------------------------------


async def test_async_config_crud_and_partial_update(client: Client) -> None:
    service, function = await deploy(client)
    path = fn_path(service, function, "LATEST") + "/async-config"
    status, err = await get_json(client, "GET", path)
    assert (status, err["errorCode"]) == (404, "AsyncConfigNotFound")

    status, cfg = await get_json(client, "PUT", path, json={"maxAsyncRetryAttempts": 1})
    assert status == 200, cfg
    assert cfg["maxAsyncRetryAttempts"] == 1 and cfg["maxAsyncEventAgeInSeconds"] == 86400
    assert (cfg["serviceName"], cfg["qualifier"], cfg["functionName"]) == (
        service,
        "LATEST",
        function,
    )
    assert cfg["destinationConfig"] == {}

    failure = {"destination": "mq:events/failed.orders"}
    status, cfg = await get_json(
        client, "PUT", path, json={"destinationConfig": {"onFailure": failure}}
    )
    assert status == 200 and cfg["maxAsyncRetryAttempts"] == 1
    assert cfg["destinationConfig"] == {"onFailure": failure}
    success = {"destination": f"function:{service}.LATEST/{function}"}
    status, cfg = await get_json(
        client,
        "PUT",
        path,
        json={"maxAsyncEventAgeInSeconds": 60, "destinationConfig": {"onSuccess": success}},
    )
    assert cfg["destinationConfig"] == {"onSuccess": success, "onFailure": failure}
    assert (cfg["maxAsyncRetryAttempts"], cfg["maxAsyncEventAgeInSeconds"]) == (1, 60)
    status, cfg = await get_json(
        client, "PUT", path, json={"destinationConfig": {"onFailure": None}}
    )
    assert cfg["destinationConfig"] == {"onSuccess": success}
    # Without ".LATEST" the path means LATEST too.
    status, same = await get_json(client, "GET", fn_path(service, function) + "/async-config")
    assert (status, same) == (200, cfg)

    assert (await client.call("DELETE", path))[0] == 204
    assert (await client.call("GET", path))[0] == 404
    status, err = await get_json(client, "DELETE", path)
    assert (status, err["errorCode"]) == (404, "AsyncConfigNotFound")


def bad_async_bodies(namespace: str) -> list[Any]:
    def dest(text: str) -> dict[str, Any]:
        return {"destinationConfig": {"onFailure": {"destination": text}}}

    return [
        b"",
        b"{not json",
        b"[]",
        {"maxAsyncRetryAttempts": 9},
        {"maxAsyncRetryAttempts": -1},
        {"maxAsyncRetryAttempts": "three"},
        {"maxAsyncEventAgeInSeconds": 0},
        {"maxAsyncEventAgeInSeconds": 86401},
        {"maxAsyncRetryAttempt": 2},  # a typo is not silently ignored
        {"destinationConfig": {"onFailure": {}}},
        {"destinationConfig": {"onFailure": "mq:x"}},
        dest(""),
        dest("http://example.com/hook"),
        dest("function:"),
        dest("function:svc"),
        dest("function:svc/"),
        dest("function:/fn"),
        dest("function:1svc/fn"),
        dest("function:svc./fn"),
        dest("function:svc/fn/extra"),
        dest("function:s v c/fn"),
        dest("mq:"),
        dest("mq:/key"),
        dest("mq:has space"),
        dest("mq:ex/key with space"),
        dest("mq:amq.direct"),
        dest("mq:AMQ.topic/key"),
        dest(f"mq:{namespace}.invoke"),
        dest(f"mq:{namespace}.control/x"),
        dest("mq:" + "x" * 256),
    ]


async def test_bad_async_config_bodies_change_nothing(client: Client, stack: Stack) -> None:
    service, function = await deploy(client)
    path = fn_path(service, function) + "/async-config"
    status, before = await get_json(client, "PUT", path, json={"maxAsyncRetryAttempts": 2})
    assert status == 200
    for bad in bad_async_bodies(stack.namespace):
        raw = bad if isinstance(bad, bytes) else json.dumps(bad).encode()
        status, err = await get_json(
            client, "PUT", path, data=raw, headers={"Content-Type": "application/json"}
        )
        assert (status, err["errorCode"]) == (400, "InvalidArgument"), (bad, err)
        assert err["errorMessage"]
    assert await get_json(client, "GET", path) == (200, before)


async def test_configs_of_other_qualifiers_and_missing_functions_are_404(client: Client) -> None:
    service, function = await deploy(client)
    for kind, body in (("async-config", {}), ("provision-config", {"target": 1})):
        for method in ("PUT", "GET", "DELETE"):
            # A qualifier that names no alias or version of the service.
            for qualifier, code in (("prod", "AliasNotFound"), ("3", "VersionNotFound")):
                path = fn_path(service, function, qualifier) + "/" + kind
                status, err = await get_json(client, method, path, json=body)
                assert (status, err["errorCode"]) == (404, code), (kind, method)
                assert qualifier in err["errorMessage"]
        status, err = await get_json(
            client, "PUT", fn_path(service, "nosuch") + "/" + kind, json=body
        )
        assert (status, err["errorCode"]) == (404, "FunctionNotFound")
        status, err = await get_json(client, "GET", fn_path("nosuch", function) + "/" + kind)
        assert (status, err["errorCode"]) == (404, "ServiceNotFound")
    # The configs go with their function.
    await client.call("PUT", fn_path(service, function) + "/async-config", json={})
    assert (await client.call("DELETE", fn_path(service, function)))[0] == 204
    await deploy_named(client, service, function)
    assert (await client.call("GET", fn_path(service, function) + "/async-config"))[0] == 404


async def deploy_named(client: Client, service: str, function: str, **fields: Any) -> Any:
    from tests.helpers import ECHO
    from tests.stack import code_body

    body = {"functionName": function, "code": code_body({"index.py": ECHO}), **fields}
    return await get_json(client, "POST", f"/v1/services/{service}/functions", json=body)


# --- provision config ---------------------------------------------------------------------


async def test_provision_config_crud(client: Client) -> None:
    service, function = await deploy(client)
    path = fn_path(service, function, "LATEST") + "/provision-config"
    status, err = await get_json(client, "GET", path)
    assert (status, err["errorCode"]) == (404, "ProvisionConfigNotFound")
    status, cfg = await get_json(client, "PUT", path, json={"target": 2})
    assert status == 200 and cfg["target"] == 2 and cfg["functionName"] == function
    for bad in ({}, {"target": 101}, {"target": -1}, {"target": "two"}, {"target": 1, "x": 1}):
        status, _ = await get_json(client, "PUT", path, json=bad)
        assert status == 400, bad
    assert await get_json(client, "GET", path) == (200, cfg)
    status, cfg = await get_json(client, "PUT", path, json={"target": 0})
    assert cfg["target"] == 0
    assert (await client.call("DELETE", path))[0] == 204
    assert (await client.call("GET", path))[0] == 404


# --- reserved concurrency and the tenant --------------------------------------------------


async def test_reserved_concurrency_never_exceeds_the_tenant_cap(client: Client) -> None:
    status, tenant = await get_json(client, "GET", "/v1/tenant")
    assert status == 200
    assert tenant == {
        "name": client.tenant,
        "concurrency": 100,
        "maxChainDepth": 16,
        "reservedConcurrency": 0,
        "createdTime": tenant["createdTime"],
    }
    service, first = await deploy(client, reservedConcurrency=60)
    status, fn = await get_json(client, "GET", fn_path(service, first))
    assert fn["reservedConcurrency"] == 60 and fn["revision"] == 1

    second = unique("fn")
    status, err = await deploy_named(client, service, second, reservedConcurrency=41)
    assert (status, err["errorCode"]) == (409, "ReservedConcurrencyExceeded"), err
    assert (await client.call("GET", fn_path(service, second)))[0] == 404
    status, fn2 = await deploy_named(client, service, second, reservedConcurrency=40)
    assert status == 201 and fn2["reservedConcurrency"] == 40

    path = fn_path(service, first)
    for value, code in ((61, 409), (101, 400), (-1, 400), ("many", 400)):
        status, err = await get_json(client, "PUT", path, json={"reservedConcurrency": value})
        assert status == code, (value, err)
    assert (await get_json(client, "GET", path))[1]["reservedConcurrency"] == 60
    status, fn = await get_json(client, "PUT", path, json={"reservedConcurrency": None})
    assert status == 200 and fn["reservedConcurrency"] is None
    assert fn["revision"] == 1  # an admission setting: warm instances stay
    status, fn = await get_json(client, "PUT", path, json={"reservedConcurrency": 0})
    assert fn["reservedConcurrency"] == 0
    assert (await get_json(client, "GET", "/v1/tenant"))[1]["reservedConcurrency"] == 40


async def test_tenant_update_cli(client: Client, stack: Stack) -> None:
    out = stack.cli(
        "tenant", "update", client.tenant, "--concurrency", "7", "--max-chain-depth", "5", "--json"
    )
    assert json.loads(out.stdout) == {
        "tenant": client.tenant,
        "concurrency": 7,
        "maxChainDepth": 5,
        "reservedConcurrency": 0,
    }
    _, tenant = await get_json(client, "GET", "/v1/tenant")
    assert (tenant["concurrency"], tenant["maxChainDepth"]) == (7, 5)
    out = stack.cli("tenant", "update", client.tenant, "--max-chain-depth", "9")
    assert f"tenant {client.tenant} updated: concurrency 7".encode() in out.stdout
    assert b"max chain depth 9" in out.stdout

    await deploy(client, reservedConcurrency=5)
    low = stack.cli("tenant", "update", client.tenant, "--concurrency", "4", check=False)
    assert low.returncode == 5 and b"ReservedConcurrencyExceeded" in low.stderr  # conflict
    for args in ((), ("--concurrency", "0")):
        bad = stack.cli("tenant", "update", client.tenant, *args, check=False)
        assert bad.returncode == 2 and b"InvalidArgument" in bad.stderr
    missing = stack.cli("tenant", "update", "no-such-tenant", "--concurrency", "3", check=False)
    assert missing.returncode == 4 and b"NotFound" in missing.stderr


# --- dead letters -------------------------------------------------------------------------


def dead_letter(
    tenant: str, service: str, function: str, payload: bytes = b"event", **over: Any
) -> DeadLetter:
    rid = over.pop("request_id", None) or str(uuid.uuid4())
    envelope = Invocation(
        id=rid,
        tenant=tenant,
        service=service,
        function=function,
        kind="async",
        payload=payload,
        attempt=4,
        lineage=Lineage(trace_id=rid, hops=1, origin="http"),
    )
    fields: dict[str, Any] = {
        "request_id": rid,
        "service_name": service,
        "qualifier": "LATEST",
        "function_name": function,
        "reason": "RetriesExhausted",
        "error_type": "UnhandledInvocationError",
        "error_message": "boom",
        "attempts": 4,
        "hops": 1,
        "trace_id": rid,
        "payload": payload,
        "response": b'{"errorMessage": "boom"}',
        "envelope": codec.encode(envelope),
        **over,
    }
    return DeadLetter(**fields)


async def test_dlq_list_show_delete_purge_and_isolation(client: Client, stack: Stack) -> None:
    service = unique("svc")
    letters = [
        dead_letter(client.tenant, service, "f", b"\x00\xffbinary", request_id="a-" + service),
        dead_letter(client.tenant, service, "f", b"text", request_id="b-" + service),
        dead_letter(client.tenant, service, "g", request_id="c-" + service),
    ]
    async with stack_store(stack) as store:
        for dl in letters:
            await store.add_dead_letter(client.tenant, dl)

    status, page = await get_json(client, "GET", f"/v1/dlq?serviceName={service}")
    assert status == 200
    assert [d["requestId"] for d in page["deadLetters"]] == [dl.request_id for dl in letters]
    first = page["deadLetters"][0]
    assert "payload" not in first and "envelope" not in first
    assert (first["reason"], first["attempts"], first["errorMessage"]) == (
        "RetriesExhausted",
        4,
        "boom",
    )
    status, page = await get_json(client, "GET", f"/v1/dlq?serviceName={service}&limit=2")
    assert len(page["deadLetters"]) == 2 and page["nextToken"] == letters[2].request_id
    status, page = await get_json(
        client, "GET", f"/v1/dlq?serviceName={service}&startKey={page['nextToken']}"
    )
    assert [d["requestId"] for d in page["deadLetters"]] == [letters[2].request_id]
    assert "nextToken" not in page
    status, page = await get_json(client, "GET", f"/v1/dlq?serviceName={service}&functionName=g")
    assert [d["requestId"] for d in page["deadLetters"]] == [letters[2].request_id]
    assert (await client.call("GET", "/v1/dlq?limit=0"))[0] == 400

    status, shown = await get_json(client, "GET", f"/v1/dlq/{letters[0].request_id}")
    assert status == 200 and "envelope" not in shown
    assert base64.b64decode(shown["payload"]) == b"\x00\xffbinary"
    assert "payloadText" not in shown
    assert shown["responseText"] == '{"errorMessage": "boom"}'
    _, shown = await get_json(client, "GET", f"/v1/dlq/{letters[1].request_id}")
    assert shown["payloadText"] == "text"
    status, err = await get_json(client, "GET", "/v1/dlq/nosuch")
    assert (status, err["errorCode"]) == (404, "DeadLetterNotFound")

    # Another tenant sees none of them, and cannot touch them.
    other = other_client(client, stack)
    _, page = await get_json(other, "GET", "/v1/dlq")
    assert page["deadLetters"] == []
    rid = letters[0].request_id
    for method, path in (
        ("GET", f"/v1/dlq/{rid}"),
        ("DELETE", f"/v1/dlq/{rid}"),
        ("POST", f"/v1/dlq/{rid}/redrive"),
    ):
        assert (await other.call(method, path))[0] == 404, (method, path)
    assert await get_json(other, "DELETE", "/v1/dlq") == (200, {"purged": 0})
    _, redriven = await get_json(other, "POST", "/v1/dlq/redrive")
    assert redriven == {"redriven": []}

    assert (await client.call("DELETE", f"/v1/dlq/{rid}"))[0] == 204
    assert (await client.call("DELETE", f"/v1/dlq/{rid}"))[0] == 404
    purge = f"/v1/dlq?serviceName={service}&functionName=g"
    assert await get_json(client, "DELETE", purge) == (200, {"purged": 1})
    assert await get_json(client, "DELETE", f"/v1/dlq?serviceName={service}") == (
        200,
        {"purged": 1},
    )
    _, page = await get_json(client, "GET", f"/v1/dlq?serviceName={service}")
    assert page["deadLetters"] == []


async def test_dlq_redrive_runs_the_invocation_again(client: Client, stack: Stack) -> None:
    service, function = await deploy(client)
    dl = dead_letter(client.tenant, service, function, b"redriven!")
    async with stack_store(stack) as store:
        # As the dispatcher leaves it: the invocation failed, the dead letter kept.
        await store.record_accepted(
            InvocationRecord(
                request_id=dl.request_id,
                tenant=client.tenant,
                service_name=service,
                qualifier="LATEST",
                function_name=function,
            )
        )
        await store.record_outcome(
            client.tenant,
            dl.request_id,
            status="Failed",
            attempt=4,
            result=b"",
            error_type="UnhandledInvocationError",
            error_message="boom",
        )
        await store.add_dead_letter(client.tenant, dl)

    status, headers, body = await client.call("POST", f"/v1/dlq/{dl.request_id}/redrive")
    assert status == 202, body
    assert json.loads(body) == {"requestId": dl.request_id}
    assert headers["X-Fc-Request-Id"] == dl.request_id
    assert (await client.call("GET", f"/v1/dlq/{dl.request_id}"))[0] == 404
    rec = await wait_result(client, service, function, dl.request_id)
    assert (rec["status"], rec["result"]) == ("Succeeded", "redriven!"), rec


async def test_dlq_redrive_refusals_keep_the_dead_letter(client: Client, stack: Stack) -> None:
    service, function = await deploy(client)
    gone = dead_letter(client.tenant, service, "deleted_fn")
    broken = dead_letter(client.tenant, service, function, envelope=b"\xc1not msgpack")
    foreign_env = codec.decode(dead_letter(client.tenant, service, function).envelope, Invocation)
    foreign_env.tenant = "someone-else"
    foreign = dead_letter(
        client.tenant,
        service,
        function,
        envelope=codec.encode(foreign_env),
        request_id=foreign_env.id,
    )
    async with stack_store(stack) as store:
        for dl in (gone, broken, foreign):
            await store.add_dead_letter(client.tenant, dl)
    for dl, status, code in (
        (gone, 404, "FunctionNotFound"),
        (broken, 409, "Conflict"),
        (foreign, 409, "Conflict"),
    ):
        got, err = await get_json(client, "POST", f"/v1/dlq/{dl.request_id}/redrive")
        assert (got, err["errorCode"]) == (status, code), err
        assert (await client.call("GET", f"/v1/dlq/{dl.request_id}"))[0] == 200


async def test_dlq_bulk_redrive_and_cli(client: Client, stack: Stack) -> None:
    service, function = await deploy(client)
    good = [dead_letter(client.tenant, service, function, f"bulk {i}".encode()) for i in range(3)]
    gone = dead_letter(client.tenant, service, "deleted_fn")
    async with stack_store(stack) as store:
        for dl in (*good, gone):
            await store.add_dead_letter(client.tenant, dl)
    base = ["--endpoint", stack.url, "--api-key", client.key]

    out = stack.cli("dlq", "list", "--service", service, *base).stdout.decode()
    assert all(dl.request_id in out for dl in (*good, gone)) and "RetriesExhausted" in out
    listed = json.loads(stack.cli("dlq", "list", "--service", service, "--json", *base).stdout)
    assert len(listed["deadLetters"]) == 4
    shown = stack.cli("dlq", "show", good[0].request_id, *base).stdout.decode()
    assert "bulk 0" in shown and "UnhandledInvocationError: boom" in shown

    # Batches of 2: the CLI follows nextToken; the one whose function is gone stays.
    status, result = await get_json(
        client, "POST", f"/v1/dlq/redrive?serviceName={service}&functionName={function}&limit=2"
    )
    assert status == 200 and len(result["redriven"]) == 2 and result["nextToken"]
    redrive = stack.cli("dlq", "redrive", "--all", "--service", service, *base, check=False)
    assert redrive.returncode == 1  # one could not be redriven
    assert b"redriven 1 dead letters" in redrive.stdout
    assert gone.request_id.encode() in redrive.stdout and b"FunctionNotFound" in redrive.stdout
    for dl in good:
        rec = await wait_result(client, service, function, dl.request_id)
        assert rec["result"] == dl.payload.decode()

    one = dead_letter(client.tenant, service, function, b"one")
    async with stack_store(stack) as store:
        await store.add_dead_letter(client.tenant, one)
    out = stack.cli("dlq", "redrive", one.request_id, *base).stdout.decode()
    assert f"redriven: request id {one.request_id}" in out
    assert (await wait_result(client, service, function, one.request_id))["result"] == "one"
    missing = stack.cli("dlq", "show", "nosuch", *base, check=False)
    assert missing.returncode == 4 and b"DeadLetterNotFound" in missing.stderr
    out = stack.cli("dlq", "purge", "--service", service, *base).stdout.decode()
    assert out.strip() == "purged 1 dead letters"
    assert (
        "no dead letters" in stack.cli("dlq", "list", "--service", service, *base).stdout.decode()
    )


async def test_openapi_covers_the_new_routes(client: Client) -> None:
    _, doc = await get_json(client, "GET", "/v1/openapi.json")
    fn = "/v1/services/{service}/functions/{function}"
    for path, methods in (
        (fn + "/async-config", {"put", "get", "delete"}),
        (fn + "/provision-config", {"put", "get", "delete"}),
        ("/v1/tenant", {"get"}),
        ("/v1/dlq", {"get", "delete"}),
        ("/v1/dlq/redrive", {"post"}),
        ("/v1/dlq/{requestId}", {"get", "delete"}),
        ("/v1/dlq/{requestId}/redrive", {"post"}),
    ):
        assert set(doc["paths"][path]) - {"parameters"} == methods, path
    fields = doc["components"]["schemas"]["AsyncConfigUpdate"]["properties"]
    assert fields["maxAsyncRetryAttempts"]["anyOf"][0]["maximum"] == 8
