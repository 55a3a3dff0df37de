"""Functions invoking functions through the whole stack: the invoke token, its scope, and
the lineage it carries across the HTTP hop."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from shared import tokens
from tests import bootstraps
from tests.conftest import Client, StartStack
from tests.helpers import deploy, invoke, wait_result
from tests.stack import Stack

CALLEE = """
def handler(event, context):
    if event == b"fail":
        raise ValueError("callee failed")
    l = context.lineage
    return {"trace": l.trace_id, "hops": l.hops, "origin": l.origin, "event": event.decode()}
"""

CALLER = """
import json, os, time, urllib.request

def lineage(context):
    l = context.lineage
    return {"trace": l.trace_id, "hops": l.hops, "origin": l.origin}

def http(context, method, path, data=None, headers=None):
    h = {**context.lineage_headers(), **(headers or {})}
    req = urllib.request.Request(context.gateway_url + path, data=data, headers=h, method=method)
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read()

def handler(event, context):
    req = json.loads(event)
    mode, svc, fn = req["mode"], req.get("service"), req.get("function")
    me = lineage(context)
    path = f"/v1/services/{svc}/functions/{fn}/invocations"
    if mode == "sync":
        return {"me": me, "callee": json.loads(context.invoke(svc, fn, req.get("payload", "")))}
    if mode == "header":  # any HTTP client, with a rewritten X-Fc-Lineage
        answer = http(context, "POST", path, b"", {"X-Fc-Lineage": req["lineage"]})
        return {"me": me, "callee": json.loads(answer)}
    if mode == "async":
        rid = context.invoke(svc, fn, "later", invocation_type="Async")
        while True:  # the token may read the invocations it made
            record = json.loads(http(context, "GET", f"{path}/{rid}"))
            if record["status"] in ("Succeeded", "Failed"):
                return {"me": me, "requestId": rid, "record": record}
            time.sleep(0.05)
    if mode == "error":
        try:
            context.invoke(svc, fn, req.get("payload", ""))
        except context.InvokeError as e:
            return {"status": e.status, "code": e.error_code, "message": e.error_message}
        return {"status": None}
    if mode == "token":
        return {"token": context.credentials.security_token}
    if mode == "env":
        def read(path):
            try:
                with open(path, "rb") as f:
                    return f.read().decode("utf-8", "replace")
            except OSError as e:
                return f"unreadable: {e}"
        return {
            "environ": dict(os.environ),
            "proc_environ": read("/proc/self/environ"),
            "parent_environ": read(f"/proc/{os.getppid()}/environ"),
            "home": os.listdir(os.environ["HOME"]),
            "cwd": sorted(os.listdir(".")),
        }
    raise ValueError(mode)
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One sqlite stack with the default secret (the data dir's file) shared by its roles."""
    s = Stack(tmp_path_factory.mktemp("stack-fn-invoke"))
    try:
        s.start()
        yield s
    finally:
        s.stop()


def secret_of(stack: Stack) -> bytes:
    return (stack.root / "data" / "secret").read_bytes().strip()


async def call(client: Client, service: str, function: str, /, **request: Any) -> dict[str, Any]:
    status, headers, body = await invoke(client, service, function, json.dumps(request).encode())
    assert status == 200 and "X-Fc-Error-Type" not in headers, body
    answer: dict[str, Any] = json.loads(body)
    return answer


@pytest.fixture
async def pair(client: Client) -> tuple[str, str, str, str]:
    """A caller and a callee function, in two services of one tenant."""
    caller = await deploy(client, {"index.py": CALLER}, timeout=30)
    callee = await deploy(client, {"index.py": CALLEE}, timeout=30)
    return (*caller, *callee)


async def test_sync_invoke_is_one_hop_deeper(client: Client, pair: tuple[str, ...]) -> None:
    a_svc, a_fn, b_svc, b_fn = pair
    status, _, body = await invoke(
        client,
        a_svc,
        a_fn,
        json.dumps({"mode": "sync", "service": b_svc, "function": b_fn, "payload": "hi"}).encode(),
        X_Fc_Lineage="trace-e2e/2/test",
    )
    assert status == 200, body
    seen = json.loads(body)
    assert seen["me"] == {"trace": "trace-e2e", "hops": 3, "origin": "test"}
    assert seen["callee"] == {
        "trace": "trace-e2e",
        "hops": 4,
        "origin": f"function:{a_svc}/{a_fn}",
        "event": "hi",
    }


async def test_a_header_cannot_launder_the_depth(client: Client, pair: tuple[str, ...]) -> None:
    a_svc, a_fn, b_svc, b_fn = pair

    async def via_header(header: str) -> dict[str, Any]:
        request = {"mode": "header", "service": b_svc, "function": b_fn, "lineage": header}
        status, _, body = await invoke(
            client, a_svc, a_fn, json.dumps(request).encode(), X_Fc_Lineage="trace-l/5/test"
        )
        assert status == 200, body
        seen: dict[str, Any] = json.loads(body)
        assert seen["me"]["hops"] == 6
        return seen

    # Claiming a fresh chain (hops 0, another trace) does not shorten it ...
    shallower = (await via_header("fresh/0/http"))["callee"]
    assert (shallower["trace"], shallower["hops"]) == ("trace-l", 7)
    assert shallower["origin"] == f"function:{a_svc}/{a_fn}"
    # ... while a deeper claim is taken: depth only grows.
    deeper = (await via_header("any/9/x"))["callee"]
    assert (deeper["trace"], deeper["hops"]) == ("trace-l", 10)


async def test_async_invoke_and_status_from_a_function(
    client: Client, pair: tuple[str, ...]
) -> None:
    a_svc, a_fn, b_svc, b_fn = pair
    seen = await call(client, a_svc, a_fn, mode="async", service=b_svc, function=b_fn)
    record = seen["record"]
    assert (record["requestId"], record["status"]) == (seen["requestId"], "Succeeded")
    result = json.loads(record["result"])
    assert result["hops"] == seen["me"]["hops"] + 1 and result["event"] == "later"
    assert result["origin"] == f"function:{a_svc}/{a_fn}"
    # The tenant sees the same record with its API key.
    assert (await wait_result(client, b_svc, b_fn, seen["requestId"]))["result"] == record["result"]


async def test_invoke_errors_are_clear(client: Client, pair: tuple[str, ...]) -> None:
    a_svc, a_fn, b_svc, b_fn = pair
    missing = await call(client, a_svc, a_fn, mode="error", service=b_svc, function="nope")
    assert (missing["status"], missing["code"]) == (404, "FunctionNotFound")
    failed = await call(
        client, a_svc, a_fn, mode="error", service=b_svc, function=b_fn, payload="fail"
    )
    assert (failed["status"], failed["code"]) == (200, "UnhandledInvocationError")
    assert failed["message"] == "ValueError: callee failed"


async def test_token_is_scoped_to_invoking_its_tenant(
    client: Client, stack: Stack, session: aiohttp.ClientSession, pair: tuple[str, ...]
) -> None:
    a_svc, a_fn, b_svc, b_fn = pair
    token = (await call(client, a_svc, a_fn, mode="token"))["token"]
    holder = Client(session, stack.url, token)
    status, _, body = await invoke(holder, b_svc, b_fn, b"with the token")
    assert status == 200 and json.loads(body)["event"] == "with the token"
    fn_path = f"/v1/services/{b_svc}/functions/{b_fn}"
    for method, path in [
        ("GET", "/v1/services"),
        ("POST", "/v1/services"),
        ("GET", f"/v1/services/{b_svc}"),
        ("GET", fn_path),
        ("PUT", fn_path),
        ("DELETE", fn_path),
        ("GET", fn_path + "/code"),
        ("GET", "/v1/no-such-route"),
    ]:
        status, _, body = await holder.call(method, path, json={})
        assert status == 403, (method, path, body)
        assert json.loads(body)["errorCode"] == "AccessDenied"
    # Another tenant's invocations are out of its reach.
    _, other_key = stack.create_tenant()
    other = Client(session, stack.url, other_key)
    o_svc, o_fn = await deploy(other, {"index.py": CALLEE})
    status, headers, _ = await invoke(other, o_svc, o_fn, b"x", X_Fc_Invocation_Type="Async")
    assert status == 202
    rid = headers["X-Fc-Request-Id"]
    status, _, _ = await holder.call(
        "GET", f"/v1/services/{o_svc}/functions/{o_fn}/invocations/{rid}"
    )
    assert status == 404
    status, _, body = await invoke(holder, o_svc, o_fn)
    assert status == 404, body


async def test_forged_and_expired_tokens_are_refused(
    client: Client, stack: Stack, session: aiohttp.ClientSession, pair: tuple[str, ...]
) -> None:
    _, _, b_svc, b_fn = pair
    secret = secret_of(stack)

    def token(secret: bytes = secret, expires_at: float = time.time() + 60, **kw: Any) -> str:
        fields: dict[str, Any] = {
            "tenant": client.tenant,
            "trace_id": "t-forged",
            "hops": 0,
            "origin": "test",
        }
        return tokens.mint(secret, expires_at=expires_at, **(fields | kw))

    async def invoke_with(tok: str) -> tuple[int, bytes]:
        status, _, body = await invoke(Client(session, stack.url, tok), b_svc, b_fn, b"x")
        return status, body

    # The data dir's secret is what the roles share: a token made with it is good.
    status, body = await invoke_with(token())
    assert status == 200 and json.loads(body)["trace"] == "t-forged", body
    for bad, why in [
        (token(expires_at=time.time() - 1), "expired"),
        (token(secret=b"w" * 43), "signature"),
        (token(tenant="no-such-tenant"), "does not exist"),
        (token()[:-3] + "AAA", "signature"),
        ("pyfc1.garbage", "malformed"),
    ]:
        status, body = await invoke_with(bad)
        assert status == 401, (why, body)
        assert why in json.loads(body)["errorMessage"]


RECURSIVE = """
def handler(event, context):
    try:
        return context.invoke(context.service.name, context.function.name, event)
    except context.InvokeError as e:
        return {"code": e.error_code, "status": e.status, "stoppedBelow": context.lineage.hops}
"""


async def test_a_function_calling_itself_is_stopped_at_the_chain_limit(
    stack: Stack, session: aiohttp.ClientSession
) -> None:
    tenant, key = stack.create_tenant()
    stack.cli("tenant", "update", tenant, "--max-chain-depth", "3")
    client = Client(session, stack.url, key, tenant)
    service, function = await deploy(client, {"index.py": RECURSIVE}, timeout=30)
    # Hops 0, 1 and 2 run (three instances wait on each other); hop 3 is refused.
    status, _, body = await invoke(client, service, function, b"again")
    assert status == 200, body
    assert json.loads(body) == {"code": "RecursiveLoopDetected", "status": 508, "stoppedBelow": 2}


async def test_custom_runtime_invokes_with_its_headers(
    client: Client, pair: tuple[str, ...]
) -> None:
    _, _, b_svc, b_fn = pair
    code = bootstraps.zip_code(bootstraps.members(bootstraps.CALLER))
    n_svc, n_fn = await deploy(client, runtime="custom", code=code, timeout=30)
    status, _, body = await invoke(
        client,
        n_svc,
        n_fn,
        json.dumps({"service": b_svc, "function": b_fn}).encode(),
        X_Fc_Lineage="trace-custom/5/test",
    )
    assert status == 200, body
    seen = json.loads(body)
    assert seen["status"] == 200, seen
    assert seen["lineage"] == f"trace-custom/6/function:{n_svc}/{n_fn}"
    callee = json.loads(seen["callee"])
    assert callee == {
        "trace": "trace-custom",
        "hops": 7,
        "origin": f"function:{n_svc}/{n_fn}",
        "event": "from python",
    }


async def test_function_never_sees_the_secret(fresh_stack: StartStack) -> None:
    secret = f"s3cret-{uuid.uuid4().hex}-{uuid.uuid4().hex}"
    stack = fresh_stack(env={"PYFC_SECRET": secret})
    _, key = stack.create_tenant()
    async with aiohttp.ClientSession() as session:
        client = Client(session, stack.url, key)
        a_svc, a_fn = await deploy(client, {"index.py": CALLER}, timeout=30)
        b_svc, b_fn = await deploy(client, {"index.py": CALLEE}, timeout=30)
        seen = await call(client, a_svc, a_fn, mode="env")
        # The secret from the environment signs the tokens every role accepts.
        chained = await call(client, a_svc, a_fn, mode="sync", service=b_svc, function=b_fn)
        assert chained["callee"]["hops"] == 1
    # The worker that started the instance holds the secret: its absence below is the worker's
    # doing, not a secret that never reached the stack.
    (worker,) = (p for n, p in stack.procs.items() if n.startswith("worker"))
    assert f"PYFC_SECRET={secret}".encode() in Path(f"/proc/{worker.pid}/environ").read_bytes()
    assert not (stack.root / "data" / "secret").exists()
    assert not any(k.startswith("PYFC_") for k in seen["environ"]), seen["environ"]
    for where in ("environ", "proc_environ", "parent_environ", "home", "cwd"):
        assert secret not in json.dumps(seen[where]), where
    assert "PYFC_" not in seen["proc_environ"] + seen["parent_environ"]
    assert seen["home"] == [] and seen["cwd"] == ["index.py"]
