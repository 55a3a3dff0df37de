"""The HTTP API's contract: a valid OpenAPI 3.1 document that lists every route, a live
stack fuzzed from it (schemathesis: no 5xx, every answer as documented), and a route-table
walk proving no tenant-scoped route serves another tenant, nor an invoke token outside its
grant."""

from __future__ import annotations

import asyncio
import io
import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from gateway.app import add_routes
from gateway.openapi import build
from tests.conftest import Client
from tests.helpers import ECHO, invoke, wait_result
from tests.stack import Stack, code_body

TOKEN_FN = "def handler(event, context):\n    return context.credentials.security_token\n"
BOOM = "def handler(event, context):\n    raise RuntimeError('boom')\n"
METHODS = ("get", "put", "post", "delete", "patch", "options")


def shape(path: str) -> str:
    """A route's path with its parameter names blanked: `{service}` and `{x}` compare equal."""
    return re.sub(r"{\w+}", "{}", path)


def documented() -> set[tuple[str, str]]:
    return {
        (method.upper(), shape(path))
        for path, item in build()["paths"].items()
        for method in item
        if method in METHODS
    }


def test_the_document_is_valid_openapi_3_1() -> None:
    doc = build()
    validate(doc)  # raises on any violation of the OpenAPI 3.1 schema
    assert doc["openapi"] == "3.1.0"
    for path, item in doc["paths"].items():
        declared = {p["name"] for p in item.get("parameters", []) if p["in"] == "path"}
        assert declared == set(re.findall(r"{(\w+)}", path)), path
        for method, op in item.items():
            if method in METHODS:
                assert op["summary"] and op["responses"], (method, path)
                assert any(code.startswith("2") for code in op["responses"]), (method, path)


def test_every_json_body_has_an_example_its_schema_accepts() -> None:
    doc = build()
    checked = 0
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method not in METHODS:
                continue
            media = op.get("requestBody", {}).get("content", {}).get("application/json")
            if media is None:
                continue
            assert "example" in media, (method, path)
            schema = {**media["schema"], "components": doc["components"]}
            errors = list(Draft202012Validator(schema).iter_errors(media["example"]))
            assert errors == [], (method, path, [e.message for e in errors])
            checked += 1
    assert checked >= 12


def test_every_route_is_documented_and_every_documented_route_exists() -> None:
    router = web.Application().router
    add_routes(router)
    served = {
        (route.method, shape(route.resource.canonical))
        for route in router.routes()
        if route.resource is not None
        and route.method != "HEAD"
        # The web console's static files are not API (tests/test_console.py).
        and not route.resource.canonical.startswith("/console")
    }
    assert served - documented() == set(), "routes missing from /v1/openapi.json"
    assert documented() - served == set(), "documented routes the gateway does not serve"


# --- a live stack: fuzzing, and tenants walled off on every route ------------------------


class World:
    """Tenant A's resources, one of each kind a route can name, and tenant B beside it."""

    service = "svc"
    function = "fn"
    failing = "boom"
    trigger = "tick"
    alias = "live"
    version = "1"
    request_id = ""  # an async invocation of A's
    dead_letter = ""  # a dead letter of A's
    token = ""  # an invoke token minted for A's function
    exchange = "contract-orders"  # exchanges are the broker's, not a tenant's resource


@pytest.fixture(scope="module")
def api_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("contract"))
    try:
        yield stack.start()
    finally:
        stack.stop()


@pytest.fixture
async def world(api_stack: Stack) -> AsyncIterator[tuple[Client, Client, World]]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        a_name, a_key = api_stack.create_tenant()
        b_name, b_key = api_stack.create_tenant()
        a, b = (
            Client(session, api_stack.url, a_key, a_name),
            Client(session, api_stack.url, b_key, b_name),
        )
        yield a, b, await seed(a)


async def ok(client: Client, method: str, path: str, want: int, **kw: Any) -> bytes:
    status, _, body = await client.call(method, path, **kw)
    assert status == want, (method, path, status, body)
    return body


async def seed(a: Client) -> World:
    w = World()
    svc = f"/v1/services/{w.service}"
    await ok(a, "POST", "/v1/services", 201, json={"serviceName": w.service})
    for name, code in ((w.function, TOKEN_FN), (w.failing, BOOM)):
        body = {"functionName": name, "code": code_body({"index.py": code})}
        await ok(a, "POST", f"{svc}/functions", 201, json=body)
    await ok(a, "POST", f"{svc}/versions", 201, json={})
    await ok(a, "POST", f"{svc}/aliases", 201, json={"aliasName": w.alias, "versionId": "1"})
    timer = {
        "triggerName": w.trigger,
        "triggerType": "timer",
        "enabled": False,
        "triggerConfig": {"cronExpression": "@every 1h"},
    }
    await ok(a, "POST", f"{svc}/functions/{w.function}/triggers", 201, json=timer)
    for name, retries in ((w.failing, 0), (w.function, 1)):
        config = {"maxAsyncRetryAttempts": retries}
        await ok(a, "PUT", f"{svc}/functions/{name}/async-config", 200, json=config)
    await ok(a, "PUT", f"{svc}/functions/{w.function}/provision-config", 200, json={"target": 1})
    status, headers, body = await invoke(a, w.service, w.function, b"x")
    assert status == 200, body
    w.token = body.decode()
    status, headers, _ = await invoke(a, w.service, w.function, X_Fc_Invocation_Type="Async")
    assert status == 202
    w.request_id = headers["X-Fc-Request-Id"]
    await wait_result(a, w.service, w.function, w.request_id)
    status, headers, _ = await invoke(a, w.service, w.failing, X_Fc_Invocation_Type="Async")
    assert status == 202
    w.dead_letter = headers["X-Fc-Request-Id"]
    for _ in range(600):
        status, _, _ = await a.call("GET", f"/v1/dlq/{w.dead_letter}")
        if status == 200:
            break
        await asyncio.sleep(0.05)
    assert status == 200, "the failing invocation never reached the dead-letter store"
    return w


def concrete(path: str, w: World) -> str:
    values = {
        "service": w.service,
        "function": w.function,
        "trigger": w.trigger,
        "alias": w.alias,
        "version": w.version,
        "exchange": w.exchange,
        "path": "/",
        "requestId": w.dead_letter if path.startswith("/v1/dlq/") else w.request_id,
    }
    return re.sub(r"{(\w+)}", lambda m: values[m.group(1)], path)


# A valid body for each body-taking route: a refusal must come from the tenant wall, not
# from validation.
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("PUT", "/v1/services/{}"): {"description": "b was here"},
    ("POST", "/v1/services/{}/functions"): {
        "functionName": "planted",
        "code": code_body({"index.py": ECHO}),
    },
    ("PUT", "/v1/services/{}/functions/{}"): {"description": "b was here"},
    ("POST", "/v1/services/{}/versions"): {},
    ("POST", "/v1/services/{}/aliases"): {"aliasName": "planted", "versionId": "1"},
    ("PUT", "/v1/services/{}/aliases/{}"): {"description": "b was here"},
    ("POST", "/v1/services/{}/functions/{}/triggers"): {
        "triggerName": "planted",
        "triggerType": "timer",
        "triggerConfig": {"cronExpression": "@every 1h"},
    },
    ("PUT", "/v1/services/{}/functions/{}/triggers/{}"): {"enabled": True},
    ("PUT", "/v1/services/{}/functions/{}/async-config"): {"maxAsyncRetryAttempts": 2},
    ("PUT", "/v1/services/{}/functions/{}/provision-config"): {"target": 1},
    ("POST", "/v1/services/{}/functions/{}/logs"): {"records": [{"message": "b was here"}]},
}


def routes_naming_a_resource() -> list[tuple[str, str]]:
    return sorted(
        (method.upper(), path)
        for path, item in build()["paths"].items()
        for method in item
        # An exchange is the broker's, not a tenant's: publishing has its own tests
        # (tests/test_e2e_mq_publish.py: the platform's exchanges and the allow-list).
        # Nor is an http trigger's own URL (anonymous by design; tests/test_e2e_http.py
        # walls off authType function ones).
        if method in METHODS and "{" in path and not path.startswith(("/v1/messages/", "/v1/http/"))
    )


async def snapshot(a: Client, w: World) -> dict[str, bytes]:
    """Everything A can read about its resources (volatile counters aside)."""
    out = {}
    for method, path in routes_naming_a_resource():
        # A function's logs and stats change with every call and every second: not
        # compared. A proxy route runs an app and reads no resource (B's 404 there is checked).
        if (
            method == "GET"
            and not path.endswith(("/code", "/logs", "/stats"))
            and not path.startswith("/v1/proxy/")
        ):
            url = concrete(path, w)
            out[url] = await ok(a, "GET", url, 200)
    for listing in ("/v1/services", "/v1/dlq"):
        out[listing] = await ok(a, "GET", listing, 200)
    return out


async def test_no_route_serves_another_tenants_resources(
    world: tuple[Client, Client, World],
) -> None:
    a, b, w = world
    before = await snapshot(a, w)
    assert len(before) >= 15
    for method, path in routes_naming_a_resource():
        url = concrete(path, w)
        body = BODIES.get((method, shape(path)))
        kw: dict[str, Any] = {"json": body} if body is not None else {}
        if path.endswith("/invocations"):
            kw = {"data": b"from b"}
        status, _, answer = await b.call(method, url, **kw)
        assert status == 404, (method, url, status, answer)
        assert w.service.encode() not in answer or b"not found" in answer, answer
    # The routes that name no resource act on B's own: B's purge and redrive leave A's.
    for method, path in (("DELETE", "/v1/dlq"), ("POST", "/v1/dlq/redrive")):
        await ok(b, method, path, 200)
    assert json.loads(await ok(b, "GET", "/v1/services", 200))["services"] == []
    assert json.loads(await ok(b, "GET", "/v1/dlq", 200))["deadLetters"] == []
    assert await snapshot(a, w) == before


async def test_an_invoke_token_opens_only_invoke_and_its_results(
    world: tuple[Client, Client, World],
) -> None:
    a, _, w = world
    holder = Client(a.session, a.base, w.token)
    invoke_routes = {
        ("POST", "/v1/services/{service}/functions/{function}/invocations"),
        ("GET", "/v1/services/{service}/functions/{function}/invocations/{requestId}"),
    }
    before = await snapshot(a, w)
    for method, path in [*routes_naming_a_resource(), ("GET", "/v1/services"), ("GET", "/v1/dlq")]:
        if (method, path) in invoke_routes:
            continue
        body = BODIES.get((method, shape(path)))
        status, _, answer = await holder.call(
            method, concrete(path, w), **({"json": body} if body is not None else {})
        )
        assert status == 403, (method, path, status, answer)
    # Within its grant the token works, on its own tenant's functions only.
    status, _, _ = await invoke(holder, w.service, w.function, b"x")
    assert status == 200
    await ok(holder, "GET", concrete(sorted(invoke_routes)[0][1], w), 200)
    assert await snapshot(a, w) == before


SCHEMATHESIS_TOML = """
[generation]
max-examples = {examples}

[dictionaries.service]
values = ["{service}"]
[dictionaries.function]
values = ["{function}", "{failing}"]
[dictionaries.trigger]
values = ["{trigger}"]
[dictionaries.alias]
values = ["{alias}"]
[dictionaries.version]
values = ["{version}"]
[dictionaries.request]
values = ["{request_id}", "{dead_letter}"]

[parameters]
"path.service" = {{ dictionary = "service", probability = 0.7 }}
"path.function" = {{ dictionary = "function", probability = 0.7 }}
"path.trigger" = {{ dictionary = "trigger", probability = 0.7 }}
"path.alias" = {{ dictionary = "alias", probability = 0.7 }}
"path.version" = {{ dictionary = "version", probability = 0.7 }}
"path.requestId" = {{ dictionary = "request", probability = 0.7 }}
"""

# Every check but two: `positive_data_acceptance` (a body valid by schema may still break a
# rule no JSON Schema states: a known trigger type, the destination grammar, "nothing to
# update") and `allow_header_conformance` (`/v1/dlq/redrive` also matches the template
# `/v1/dlq/{requestId}`, so its 405 rightly names the methods of both).
EXCLUDED_CHECKS = "positive_data_acceptance,allow_header_conformance"


@pytest.mark.timeout(600)  # ~50 operations x 8 examples, and the stateful phase
async def test_fuzzing_the_live_api_finds_no_5xx_and_no_undocumented_answer(
    world: tuple[Client, Client, World], api_stack: Stack, tmp_path: Path
) -> None:
    a, _, w = world
    config = tmp_path / "schemathesis.toml"
    names = ("service", "function", "failing", "trigger", "alias", "version")
    values = {name: getattr(w, name) for name in (*names, "request_id", "dead_letter")}
    config.write_text(SCHEMATHESIS_TOML.format(examples=8, **values))
    st = Path(sys.executable).parent / "st"
    proc = await asyncio.to_thread(
        subprocess.run,
        [
            str(st),
            "--config-file",
            str(config),
            "run",
            f"{api_stack.url}/v1/openapi.json",
            "--header",
            f"Authorization: Bearer {a.key}",
            "--checks",
            "all",
            "--exclude-checks",
            EXCLUDED_CHECKS,
            "--workers",
            "1",
            "--max-failures",
            "20",
            # HTTP triggers answer whatever the app does (documented as `default`), and
            # tests/test_e2e_http.py covers them; fuzzing their six methods would double
            # this run for nothing.
            "--exclude-path-regex",
            "^/v1/(proxy|http)/",
            "--request-timeout",
            "30",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, report[-20000:]
    assert re.search(r"Tested: +\d+", report), report[-3000:]
    # The stack took the beating: it still deploys and runs a function (A's own may now be
    # throttled or changed: the fuzzer was free to reconfigure it).
    fresh = {"functionName": "after", "code": code_body({"index.py": ECHO})}
    await ok(a, "POST", "/v1/services", 201, json={"serviceName": "afterwards"})
    await ok(a, "POST", "/v1/services/afterwards/functions", 201, json=fresh)
    status, _, body = await invoke(a, "afterwards", "after", b"x")
    assert (status, body) == (200, b"x")
    assert "InternalError" not in api_stack.logs("gateway")


def body_routes() -> list[tuple[str, str]]:
    return sorted(
        (method.upper(), path)
        for path, item in build()["paths"].items()
        for method, op in item.items()
        if method in METHODS and "application/json" in op.get("requestBody", {}).get("content", {})
    )


BAD_BODIES = {
    "bad json": b'{"description": ',
    "bad utf-8": b'{"description": "\xff\xfe"}',
    "badly typed": b'{"description": 12, "serviceName": [], "functionName": {}}',
    "nested too deep": b'{"description": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "not an object": b'"just a string"',
    "too large": b'{"description": "' + b"x" * (80 * 1024 * 1024) + b'"}',
}


async def test_bad_bodies_on_every_route_get_a_4xx_with_the_reason_and_store_nothing(
    world: tuple[Client, Client, World],
) -> None:
    a, _, w = world
    before = await snapshot(a, w)
    routes = body_routes()
    assert len(routes) >= 11
    for method, path in routes:
        for case, raw in BAD_BODIES.items():
            headers = {"Content-Type": "application/json"}
            body = io.BytesIO(raw)  # aiohttp streams it (raw bytes this large would block)
            status, _, answer = await a.call(method, concrete(path, w), data=body, headers=headers)
            assert 400 <= status < 500, (case, method, path, status, answer[:300])
            error = json.loads(answer)
            assert error["errorCode"] and error["errorMessage"], (case, method, path, error)
    # Bad headers: a malformed credential, and invocation headers with no valid meaning.
    for auth in ("Bearer", "Basic Zm9vOmJhcg==", "Bearer pyfc1.forged", "Bearer " + "k" * 10_000):
        status, _, answer = await a.call("GET", "/v1/services", headers={"Authorization": auth})
        assert status in (400, 401), (auth[:20], status, answer)
    for header, value in (("X-Fc-Invocation-Type", "Sometimes"), ("X-Fc-Lineage", "{{{")):
        status, _, answer = await invoke(a, w.service, w.function, b"x", **{header: value})
        assert status == 400, (header, status, answer)
    assert await snapshot(a, w) == before
