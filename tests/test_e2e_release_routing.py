"""Gray release end to end, each on a private stack: weighted routing, an alias change on
two gateway replicas, retries keeping their version, automatic rollback of a canary."""

from __future__ import annotations

import asyncio
import collections
import json
import math
import time
from pathlib import Path
from typing import Any

import aiohttp

from shared.models import InvocationRecord
from shared.store import Store
from tests.conftest import Client, StartStack
from tests.helpers import async_invocation, deploy, enqueue, invoke, open_dir, wait_result
from tests.instances import eventually
from tests.stack import Stack, code_body, free_port

TAGGED = "def handler(event, context):\n    return {tag!r}\n"
FAILING = "def handler(event, context):\n    raise RuntimeError('canary broke')\n"


async def api(client: Client, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    status, _, raw = await client.call(method, path, json=body)
    return status, (json.loads(raw) if raw else None)


async def versions(client: Client, *sources: str) -> tuple[str, str]:
    """A service whose function has one version per source (ids 1, 2, ...)."""
    svc, fn = await deploy(client, {"index.py": sources[0]})
    for i, source in enumerate(sources):
        if i:
            status, body = await api(
                client,
                "PUT",
                f"/v1/services/{svc}/functions/{fn}",
                {"code": code_body({"index.py": source})},
            )
            assert status == 200, body
        status, body = await api(client, "POST", f"/v1/services/{svc}/versions", {})
        assert (status, body["versionId"]) == (201, str(i + 1)), body
    return svc, fn


def client_of(stack: Stack, session: aiohttp.ClientSession, url: str = "") -> Client:
    tenant, key = stack.create_tenant()
    return Client(session, url or stack.url, key, tenant)


async def ran(client: Client, svc: str, fn: str) -> str:
    status, headers, body = await invoke(client, svc, fn)
    assert status == 200, body
    return headers["X-Fc-Invocation-Service-Version"]


async def test_weighted_routing_follows_the_weights(
    fresh_stack: StartStack, session: aiohttp.ClientSession
) -> None:
    """10% to version 2 over 2,000 calls: within 6 sigma of the binomial mean (a false
    failure has probability ~2e-9), and each version answered with its own code."""
    stack = fresh_stack(workers=1, worker_slots=4)
    client = client_of(stack, session)
    svc, fn = await versions(client, TAGGED.format(tag="one"), TAGGED.format(tag="two"))
    status, body = await api(
        client, "POST", f"/v1/services/{svc}/aliases",
        {"aliasName": "prod", "versionId": "1", "additionalVersionWeight": {"2": 0.1}},
    )  # fmt: skip
    assert status == 201, body
    n, p = 2000, 0.1
    limit = asyncio.Semaphore(16)
    seen: collections.Counter[tuple[str, bytes]] = collections.Counter()

    async def call() -> None:
        async with limit:
            status, headers, body = await invoke(client, svc + ".prod", fn)
            assert status == 200, body
            seen[headers["X-Fc-Invocation-Service-Version"], body] += 1

    await asyncio.gather(*(call() for _ in range(n)))
    assert set(seen) <= {("1", b"one"), ("2", b"two")}, seen
    extra = seen["2", b"two"]
    sigma = math.sqrt(n * p * (1 - p))
    print(f"version 2 ran {extra} of {n} calls (expected {n * p:.0f} +- {sigma:.1f})")
    assert abs(extra - n * p) < 6 * sigma, seen


async def test_a_rollback_reaches_two_gateways_within_a_second(
    fresh_stack: StartStack, session: aiohttp.ClientSession
) -> None:
    stack = fresh_stack(workers=1)
    second = stack.start_gateway("gateway-2")
    client = client_of(stack, session)
    other = Client(session, second, client.key, client.tenant)
    svc, fn = await versions(client, TAGGED.format(tag="one"), TAGGED.format(tag="two"))
    status, body = await api(
        client, "POST", f"/v1/services/{svc}/aliases", {"aliasName": "prod", "versionId": "2"}
    )
    assert status == 201, body
    # Both gateways and the dispatcher have the alias cached (and a warm instance of each
    # version exists).
    for gateway in (client, other):
        assert await ran(gateway, svc + ".prod", fn) == "2"
        assert await ran(gateway, svc + ".1", fn) == "1"
    assert await trigger_version(stack, client, svc, fn, "prod") == "2"
    status, body = await api(client, "PUT", f"/v1/services/{svc}/aliases/prod", {"versionId": "1"})
    assert status == 200, body
    changed = time.monotonic()
    took: dict[str, float] = {}
    for name, gateway in (("gateway", client), ("gateway-2", other)):
        while await ran(gateway, svc + ".prod", fn) != "1":
            assert time.monotonic() - changed < 1.0, f"{name} still runs version 2 after 1 s"
        took[name] = time.monotonic() - changed
    # The dispatcher resolves what arrives unresolved (a trigger's or destination's call).
    while await trigger_version(stack, client, svc, fn, "prod") != "1":
        assert time.monotonic() - changed < 1.0, "the dispatcher still runs version 2 after 1 s"
    took["dispatcher"] = time.monotonic() - changed
    print(f"the rollback took effect after {took} (s since the PUT answered)")
    for gateway in (client, other):  # and stays
        assert {await ran(gateway, svc + ".prod", fn) for _ in range(20)} == {"1"}


async def trigger_version(stack: Stack, client: Client, svc: str, fn: str, qualifier: str) -> str:
    """Run `svc.qualifier/fn` as a trigger adapter would (recorded, then enqueued with no
    version: the dispatcher resolves it); the version that ran."""
    inv = async_invocation(client.tenant, svc, fn)
    inv.qualifier = qualifier
    store = await Store.open(f"sqlite+aiosqlite:///{stack.root}/data/pyfc.db")
    try:
        await store.record_accepted(
            InvocationRecord(
                request_id=inv.id, tenant=inv.tenant, service_name=svc, qualifier=qualifier,
                function_name=fn,
            )
        )  # fmt: skip
    finally:
        await store.close()
    await enqueue(stack.env["PYFC_AMQP_URL"], stack.namespace, inv)
    rec = await wait_result(client, svc, fn, inv.id)
    assert rec["status"] == "Succeeded", rec
    return str(rec["version"])


RETRIED = """
import os, time
MARKS = {marks!r}
def handler(event, context):
    with open(os.path.join(MARKS, 'ran'), 'a') as f:
        f.write('{tag}\\n')
    if {tag!r} == 'one':
        # The first attempt waits until the test moved the alias, then fails.
        deadline = time.time() + 30
        while not os.path.exists(os.path.join(MARKS, 'go')) and time.time() < deadline:
            time.sleep(0.01)
        raise RuntimeError('version one fails')
    return 'two'
"""


async def test_retries_run_the_version_first_chosen(
    fresh_stack: StartStack, session: aiohttp.ClientSession
) -> None:
    stack = fresh_stack(workers=1)
    client = client_of(stack, session)
    marks = open_dir("marks")
    svc, fn = await versions(
        client,
        RETRIED.format(marks=str(marks), tag="one"),
        RETRIED.format(marks=str(marks), tag="two"),
    )
    status, body = await api(
        client, "POST", f"/v1/services/{svc}/aliases", {"aliasName": "prod", "versionId": "1"}
    )
    assert status == 201, body
    status, body = await api(
        client, "PUT", f"/v1/services/{svc}.prod/functions/{fn}/async-config",
        {"maxAsyncRetryAttempts": 2},
    )  # fmt: skip
    assert status == 200, body
    status, headers, _ = await invoke(client, svc + ".prod", fn, X_Fc_Invocation_Type="Async")
    assert (status, headers["X-Fc-Invocation-Service-Version"]) == (202, "1")
    ran_file = Path(marks) / "ran"
    await eventually(ran_file.exists)
    # The alias moves while the first attempt runs; the gateway sees the move at once.
    status, body = await api(client, "PUT", f"/v1/services/{svc}/aliases/prod", {"versionId": "2"})
    assert status == 200, body
    deadline = time.monotonic() + 5
    while await ran(client, svc + ".prod", fn) != "2":
        assert time.monotonic() < deadline, "the alias did not move"
    before = ran_file.read_text().split()
    (Path(marks) / "go").touch()
    rec = await wait_result(client, svc, fn, headers["X-Fc-Request-Id"])
    assert (rec["status"], rec["attempt"], rec["version"]) == ("Failed", 3, "1"), rec
    assert "version one fails" in rec["errorMessage"]
    # Three attempts of version 1 (the sync calls that checked the move ran version 2).
    runs = ran_file.read_text().split()
    assert runs.count("one") == 3 and before.count("one") == 1, runs


async def test_auto_rollback_trips_on_a_failing_canary_only(
    fresh_stack: StartStack, session: aiohttp.ClientSession
) -> None:
    port = free_port()
    stack = fresh_stack(workers=1, env={"PYFC_DISPATCHER_METRICS_PORT": str(port)})
    client = client_of(stack, session)
    svc, fn = await versions(client, TAGGED.format(tag="one"), FAILING, TAGGED.format(tag="three"))
    guard = {"maxErrorRate": 0.2, "windowSeconds": 60, "minInvocations": 10}
    for alias, canary in (("prod", "2"), ("blue", "3")):
        status, body = await api(
            client, "POST", f"/v1/services/{svc}/aliases",
            {"aliasName": alias, "versionId": "1", "additionalVersionWeight": {canary: 0.5},
             "autoRollback": guard},
        )  # fmt: skip
        assert status == 201, body
    # The healthy canary: 200 calls, half of them on version 3, all fine: never rolled back.
    healthy = collections.Counter([await ran(client, svc + ".blue", fn) for _ in range(200)])
    assert healthy["3"] > 50, healthy
    status, blue = await api(client, "GET", f"/v1/services/{svc}/aliases/blue")
    assert blue["additionalVersionWeight"] == {"3": 0.5} and blue["lastRollback"] is None, blue
    # The failing canary: rolled back once its error rate passes 20% over 10+ calls.
    failures = 0
    for _ in range(200):
        status, headers, _ = await invoke(client, svc + ".prod", fn)
        failures += "X-Fc-Error-Type" in headers
        status, prod = await api(client, "GET", f"/v1/services/{svc}/aliases/prod")
        if prod["additionalVersionWeight"] == {"2": 0.0}:
            break
    else:
        raise AssertionError(f"not rolled back after 200 calls ({failures} failed): {prod}")
    record = prod["lastRollback"]
    assert record["versionId"] == "2" and record["invocations"] >= 10, record
    assert record["errorRate"] > 0.2 and "maxErrorRate" in record["reason"], record
    assert record["rolledBackTime"].endswith("Z")
    print(f"rolled back after {failures} failed calls: {record['reason']}")
    # From now on the alias runs version 1 only, and the rollback was logged and counted.
    await eventually(lambda: "auto-rollback: alias" in stack.logs("dispatcher"))
    assert {await ran(client, svc + ".prod", fn) for _ in range(30)} == {"1"}
    async with session.get(f"http://127.0.0.1:{port}/metrics") as r:
        text = await r.text()
    assert (
        f'pyfc_dispatcher_auto_rollbacks_total{{alias="prod",service="{svc}",'
        f'tenant="{client.tenant}",version="2"}} 1.0'
    ) in text, text
    status, blue = await api(client, "GET", f"/v1/services/{svc}/aliases/blue")
    assert blue["additionalVersionWeight"] == {"3": 0.5}, blue


async def test_auto_rollback_watches_async_outcomes_too(
    fresh_stack: StartStack, session: aiohttp.ClientSession
) -> None:
    stack = fresh_stack(workers=1)
    client = client_of(stack, session)
    svc, fn = await versions(client, TAGGED.format(tag="one"), FAILING)
    status, body = await api(
        client, "POST", f"/v1/services/{svc}/aliases",
        {"aliasName": "batch", "versionId": "1", "additionalVersionWeight": {"2": 0.5},
         "autoRollback": {"maxErrorRate": 0.3, "windowSeconds": 120, "minInvocations": 6}},
    )  # fmt: skip
    assert status == 201, body
    status, body = await api(
        client, "PUT", f"/v1/services/{svc}.batch/functions/{fn}/async-config",
        {"maxAsyncRetryAttempts": 0},
    )  # fmt: skip
    assert status == 200, body
    ids = []
    for _ in range(40):
        status, headers, _ = await invoke(client, svc + ".batch", fn, X_Fc_Invocation_Type="Async")
        assert status == 202
        ids.append((headers["X-Fc-Request-Id"], headers["X-Fc-Invocation-Service-Version"]))
    records = [await wait_result(client, svc, fn, request_id) for request_id, _ in ids]
    assert [r["version"] for r in records] == [version for _, version in ids]
    assert {r["status"] for r in records if r["version"] == "2"} == {"Failed"}
    status, alias = await api(client, "GET", f"/v1/services/{svc}/aliases/batch")
    assert alias["additionalVersionWeight"] == {"2": 0.0}, alias
    assert alias["lastRollback"]["invocations"] >= 6, alias
