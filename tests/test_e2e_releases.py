"""Versions and aliases end to end (gateway, dispatcher, worker as processes; SQLite and
PostgreSQL): immutability, which version ran, every source honouring the qualifier, bad input."""

from __future__ import annotations

import json
from typing import Any

from dispatcher.destinations import derived_id
from dispatcher.verdict import SUCCESS
from shared.models import InvocationRecord
from shared.store import Store
from tests.conftest import Client
from tests.helpers import async_invocation, deploy, enqueue, invoke, wait_result
from tests.stack import Stack, code_body

VERSIONED = (
    "import os\n"
    "TAG = {tag!r}\n"
    "def handler(event, context):\n"
    "    return '%s|%s|%s|%s' % (TAG, os.environ.get('COLOR', ''), context.service.version_id,"
    " os.environ['FC_INSTANCE_ID'])\n"
)


def tagged(tag: str) -> dict[str, str | bytes]:
    return {"index.py": VERSIONED.format(tag=tag)}


async def api(client: Client, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    status, _, raw = await client.call(method, path, json=body)
    return status, (json.loads(raw) if raw else None)


async def publish(client: Client, service: str, description: str = "") -> str:
    status, body = await api(
        client, "POST", f"/v1/services/{service}/versions", {"description": description}
    )
    assert status == 201, body
    return str(body["versionId"])


async def update_code(client: Client, service: str, function: str, tag: str, **fields: Any) -> None:
    status, body = await api(
        client,
        "PUT",
        f"/v1/services/{service}/functions/{function}",
        {"code": code_body(tagged(tag)), **fields},
    )
    assert status == 200, body


async def run(client: Client, service: str, function: str) -> tuple[list[str], str]:
    status, headers, body = await invoke(client, service, function)
    assert status == 200, body
    return body.decode().split("|"), headers["X-Fc-Invocation-Service-Version"]


async def test_a_version_keeps_its_code_and_config(stack: Stack, client: Client) -> None:
    svc, fn = await deploy(client, tagged("one"), environmentVariables={"COLOR": "red"})
    assert await publish(client, svc, "first") == "1"
    status, body = await api(client, "POST", f"/v1/services/{svc}/versions", {})
    assert (status, body["errorCode"]) == (400, "VersionExists"), body  # nothing changed
    await update_code(client, svc, fn, "two", environmentVariables={"COLOR": "blue"})
    assert await publish(client, svc) == "2"
    await update_code(client, svc, fn, "three", environmentVariables={"COLOR": "green"})
    # LATEST edited after both versions: each keeps what it was published with.
    v1, header1 = await run(client, svc + ".1", fn)
    v2, header2 = await run(client, svc + ".2", fn)
    latest, header_latest = await run(client, svc, fn)
    assert (v1[:3], header1) == (["one", "red", "1"], "1")
    assert (v2[:3], header2) == (["two", "blue", "2"], "2")
    assert (latest[:3], header_latest) == (["three", "green", "LATEST"], "LATEST")
    # An alias runs its version on that version's warm instance (instances are keyed by
    # version, not by the qualifier that reached them).
    status, body = await api(
        client, "POST", f"/v1/services/{svc}/aliases", {"aliasName": "prod", "versionId": "1"}
    )
    assert status == 201, body
    via_alias, header = await run(client, svc + ".prod", fn)
    assert (via_alias, header) == (v1, "1")
    status, body = await api(client, "PUT", f"/v1/services/{svc}/aliases/prod", {"versionId": 2})
    assert (status, body["versionId"]) == (200, "2"), body
    via_alias, header = await run(client, svc + ".prod", fn)
    assert (via_alias, header) == (v2, "2")
    # Listing, newest first, and the alias as GET shows it.
    status, body = await api(client, "GET", f"/v1/services/{svc}/versions")
    assert [v["versionId"] for v in body["versions"]] == ["2", "1"]
    assert body["versions"][1]["description"] == "first"
    status, body = await api(client, "GET", f"/v1/services/{svc}/versions?limit=1")
    assert [v["versionId"] for v in body["versions"]] == ["2"] and body["nextToken"] == "1"
    status, body = await api(client, "GET", f"/v1/services/{svc}/aliases")
    assert [(a["aliasName"], a["versionId"]) for a in body["aliases"]] == [("prod", "2")]


async def test_every_source_honours_the_qualifier(stack: Stack, client: Client) -> None:
    """Async HTTP calls record the version at accept; an envelope with no version (a
    trigger, a destination) is resolved once by the dispatcher, which records it."""
    svc, fn = await deploy(client, tagged("one"))
    await publish(client, svc)
    await update_code(client, svc, fn, "two")
    await publish(client, svc)
    await update_code(client, svc, fn, "three")
    status, body = await api(
        client, "POST", f"/v1/services/{svc}/aliases", {"aliasName": "prod", "versionId": "2"}
    )
    assert status == 201, body
    status, headers, _ = await invoke(client, svc + ".prod", fn, X_Fc_Invocation_Type="Async")
    assert (status, headers["X-Fc-Invocation-Service-Version"]) == (202, "2")
    rec = await wait_result(client, svc, fn, headers["X-Fc-Request-Id"])
    assert (rec["status"], rec["qualifier"], rec["version"]) == ("Succeeded", "prod", "2")
    assert rec["result"].startswith("two|")
    # As a trigger adapter accepts it: no gateway, no version in the record or envelope.
    inv = async_invocation(client.tenant, svc, fn)
    inv.qualifier = "prod"
    store = await Store.open(
        stack.pg.url if stack.pg else f"sqlite+aiosqlite:///{stack.root}/data/pyfc.db"
    )
    try:
        await store.record_accepted(
            InvocationRecord(
                request_id=inv.id, tenant=inv.tenant, service_name=svc, qualifier="prod",
                function_name=fn,
            )
        )  # fmt: skip
    finally:
        await store.close()
    await enqueue(stack.env["PYFC_AMQP_URL"], stack.namespace, inv)
    rec = await wait_result(client, svc, fn, inv.id)
    assert (rec["status"], rec["version"]) == ("Succeeded", "2")
    assert rec["result"].startswith("two|")
    # A destination function:svc.prod/fn goes through the same resolution.
    status, body = await api(
        client,
        "PUT",
        f"/v1/services/{svc}/functions/{fn}/async-config",
        {"destinationConfig": {"onSuccess": {"destination": f"function:{svc}.1/{fn}"}}},
    )
    assert status == 200, body
    status, headers, _ = await invoke(client, svc, fn, X_Fc_Invocation_Type="Async")
    rec = await wait_result(client, svc, fn, headers["X-Fc-Request-Id"])
    assert (rec["status"], rec["version"]) == ("Succeeded", "LATEST")
    forwarded = derived_id(headers["X-Fc-Request-Id"], SUCCESS)
    rec = await wait_result(client, svc, fn, forwarded)
    assert (rec["status"], rec["qualifier"], rec["version"]) == ("Succeeded", "1", "1")
    assert rec["result"].startswith("one|")


async def test_bad_input_is_refused_and_nothing_half_made(stack: Stack, client: Client) -> None:
    svc, fn = await deploy(client, tagged("one"))
    status, body = await api(client, "POST", "/v1/services", {"serviceName": svc + "_empty"})
    assert status == 201, body
    status, body = await api(client, "POST", f"/v1/services/{svc}_empty/versions", {})
    assert (status, body["errorCode"]) == (400, "InvalidArgument") and "no functions" in str(body)
    assert await publish(client, svc) == "1"
    await update_code(client, svc, fn, "two")
    assert await publish(client, svc) == "2"
    # Unknown version or alias in an invoke URL: 404 naming it.
    status, _, raw = await invoke(client, svc + ".7", fn)
    assert status == 404 and "version 7" in raw.decode(), raw
    status, _, raw = await invoke(client, svc + ".nope", fn)
    assert status == 404 and "'nope'" in raw.decode() and b"AliasNotFound" in raw, raw
    aliases = f"/v1/services/{svc}/aliases"
    for body, reason in [
        ({"aliasName": "a", "versionId": "1", "additionalVersionWeight": {"2": 1.5}}, "0..1"),
        ({"aliasName": "a", "versionId": "1", "additionalVersionWeight": {"2": -1}}, "0..1"),
        ({"aliasName": "a", "versionId": "1", "additionalVersionWeight": {"1": 0.5}}, "own"),
        ({"aliasName": "a", "versionId": "9"}, "version 9"),
        ({"aliasName": "a", "versionId": "1", "additionalVersionWeight": {"8": 0.5}}, "version 8"),
        ({"aliasName": "1a", "versionId": "1"}, "alias name"),
        ({"aliasName": "LATEST", "versionId": "1"}, "alias name"),
        ({"aliasName": "a"}, "versionId"),
        ({"aliasName": "a", "versionId": "x"}, "versionId"),
        ({"aliasName": "a", "versionId": "1", "autoRollback": {"maxErrorRate": 2}}, "maxErrorRate"),
    ]:
        status, answer = await api(client, "POST", aliases, body)
        assert status == 400 and reason in answer["errorMessage"], (body, answer)
    status, body = await api(client, "GET", aliases)
    assert body["aliases"] == []  # nothing half-created
    status, body = await api(
        client, "POST", aliases, {"aliasName": "prod", "versionId": "1",
                                  "additionalVersionWeight": {"2": 0.5}}
    )  # fmt: skip
    assert status == 201, body
    status, body = await api(client, "POST", aliases, {"aliasName": "prod", "versionId": "1"})
    assert status == 409, body
    status, body = await api(client, "PUT", aliases + "/prod", {"versionId": "2"})
    assert status == 400 and "own versionId" in body["errorMessage"], body
    status, body = await api(client, "PUT", aliases + "/nope", {"versionId": "2"})
    assert status == 404 and "'nope'" in body["errorMessage"], body
    # Deleting a version an alias uses (main or weighted): 409 naming the alias.
    for version in ("1", "2"):
        status, body = await api(client, "DELETE", f"/v1/services/{svc}/versions/{version}")
        assert (status, body["errorCode"]) == (409, "VersionInUse") and "prod" in str(body)
    status, body = await api(client, "GET", f"/v1/services/{svc}/versions/3")
    assert status == 404 and "version 3" in body["errorMessage"], body
    status, body = await api(client, "GET", f"/v1/services/{svc}/versions/abc")
    assert status == 400, body
    # Configs per qualifier exist for versions and aliases; unknown ones are 404.
    status, body = await api(
        client, "PUT", f"/v1/services/{svc}.prod/functions/{fn}/async-config",
        {"maxAsyncRetryAttempts": 1},
    )  # fmt: skip
    assert (status, body["qualifier"]) == (200, "prod"), body
    status, body = await api(client, "PUT", f"/v1/services/{svc}.9/functions/{fn}/async-config", {})
    assert status == 404 and "version 9" in body["errorMessage"], body
    # A service with versions and aliases is not deleted from under them.
    status, body = await api(client, "DELETE", f"/v1/services/{svc}/functions/{fn}")
    assert status == 204, body
    status, body = await api(client, "DELETE", f"/v1/services/{svc}")
    assert status == 409, body
    # The version still runs although LATEST's function is gone.
    fields, header = await run(client, svc + ".prod", fn)
    assert fields[0] in ("one", "two") and header in ("1", "2")


async def test_openapi_describes_versions_and_aliases(stack: Stack, client: Client) -> None:
    _, doc = await api(client, "GET", "/v1/openapi.json")
    svc = "/v1/services/{service}"
    for path, methods in (
        (svc + "/versions", {"post", "get"}),
        (svc + "/versions/{version}", {"get", "delete"}),
        (svc + "/aliases", {"post", "get"}),
        (svc + "/aliases/{alias}", {"get", "put", "delete"}),
    ):
        assert set(doc["paths"][path]) - {"parameters"} == methods, path
    schemas = doc["components"]["schemas"]
    assert {"aliasName", "versionId", "additionalVersionWeight", "autoRollback"} <= set(
        schemas["AliasCreate"]["properties"]
    )
    assert schemas["AutoRollback"]["properties"]["maxErrorRate"]["exclusiveMaximum"] == 1
    assert "lastRollback" in schemas["Alias"]["properties"]
