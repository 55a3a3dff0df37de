"""HTTP triggers end to end: a real Flask app (WSGI), an FC 3.0 HTTP event handler and an
ASGI app behind the gateway's proxy and their triggers' own URLs, on a real stack."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from tests.bootstraps import members, zip_code
from tests.conftest import Client
from tests.helpers import deploy
from tests.stack import Stack

MAX_EVENT_BYTES = 1024 * 1024

FLASK_APP = """
import io
from flask import Flask, jsonify, redirect, request, send_file, session, url_for

app = Flask(__name__)
app.secret_key = "not-a-secret"
# Errors reach the platform (else Flask answers its own 500 page): FC's 502 for them.
app.config["PROPAGATE_EXCEPTIONS"] = True


@app.get("/")
def hello():
    return "hello " + request.args.get("name", "")


@app.post("/form")
def form():
    return request.form["a"] + "+" + request.form["b"]


@app.get("/go")
def go():
    return redirect(url_for("hello"))


@app.get("/count")
def count():
    session["n"] = session.get("n", 0) + 1
    return str(session["n"])


@app.get("/bin")
def binary():
    data = bytes(range(256)) * 16
    return send_file(io.BytesIO(data), mimetype="application/octet-stream",
                     as_attachment=True, download_name="b.bin")


@app.post("/echo")
def echo():
    return request.get_data(), 200, {"Content-Type": "application/octet-stream"}


@app.get("/cookies")
def cookies():
    response = app.make_response("two")
    response.set_cookie("a", "1")
    response.set_cookie("b", "2")
    return response


@app.get("/env")
def env():
    e = request.environ
    return jsonify(script=e["SCRIPT_NAME"], path=e["PATH_INFO"], query=e["QUERY_STRING"],
                   uri=e["fc.request_uri"], rid=e["fc.context"].request_id,
                   header=e.get("HTTP_X_THING", ""))


@app.get("/boom")
def boom():
    raise RuntimeError("kaboom")


def handler(environ, start_response):
    return app(environ, start_response)
"""

EVENT_APP = """
import base64, json

def handler(event, context):
    e = json.loads(event)
    if e["rawPath"] == "/plain":
        return "plain " + e["requestContext"]["http"]["method"]
    body = base64.b64decode(e["body"]) if e["isBase64Encoded"] else e["body"].encode()
    return {
        "statusCode": 201,
        "headers": {"X-Echo": e["queryParameters"].get("q", ""), "X-Path": e["rawPath"]},
        "body": base64.b64encode(body[::-1]).decode(),
        "isBase64Encoded": True,
    }
"""

ASGI_APP = """
import asyncio
import json

async def handler(scope, receive, send):
    message = await receive()
    body = json.dumps({"path": scope["path"], "root": scope["root_path"],
                       "method": scope["method"], "length": len(message["body"]),
                       "query": scope["query_string"].decode()}).encode()
    await send({"type": "http.response.start", "status": 202,
                "headers": [(b"content-type", b"application/json"), (b"x-asgi", b"yes")]})
    await send({"type": "http.response.body", "body": body})
"""


# A custom runtime's server: what it was sent, as it came.
RAW_SERVER = rb"""
def handle(method, path, headers, body):
    return reply({"method": method, "path": path, "thing": headers.get("x-thing"),
                  "body": body.decode("latin-1"), "rid": headers.get("x-fc-request-id")}, 207)
"""


@pytest.fixture(scope="module")
def http_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("http"))
    stack.env["PYFC_MAX_EVENT_BYTES"] = str(MAX_EVENT_BYTES)
    try:
        yield stack.start()
    finally:
        stack.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    jar = aiohttp.CookieJar(unsafe=True)  # cookies for 127.0.0.1
    async with aiohttp.ClientSession(cookie_jar=jar, timeout=aiohttp.ClientTimeout(total=60)) as s:
        yield s


async def http_function(
    client: Client, code: str, fmt: str, **config: Any
) -> tuple[str, str, dict[str, Any]]:
    service, function = await deploy(client, {"index.py": code}, timeout=10)
    body = {
        "triggerName": "web",
        "triggerType": "http",
        "triggerConfig": {"requestFormat": fmt, **config},
    }
    status, _, raw = await client.call(
        "POST", f"/v1/services/{service}/functions/{function}/triggers", json=body
    )
    assert status == 201, raw
    trigger: dict[str, Any] = json.loads(raw)
    assert trigger["urlPath"] == f"/v1/http/{trigger['triggerId']}/"
    return service, function, trigger


async def test_a_flask_app_behind_the_proxy(
    http_stack: Stack, session: aiohttp.ClientSession
) -> None:
    _, key = http_stack.create_tenant()
    client = Client(session, http_stack.url, key)
    service, function, _ = await http_function(client, FLASK_APP, "wsgi")
    base = f"/v1/proxy/{service}/{function}"

    status, _, raw = await client.call("GET", f"{base}/?name=pyfc")
    assert (status, raw) == (200, b"hello pyfc"), raw
    status, _, raw = await client.call("POST", f"{base}/form", data={"a": "1", "b": "two words"})
    assert (status, raw) == (200, b"1+two words"), raw
    async with session.get(
        http_stack.url + f"{base}/go",
        headers={"Authorization": f"Bearer {key}"},
        allow_redirects=False,
    ) as r:
        assert r.status == 302 and r.headers["Location"].endswith(f"{base}/"), r.headers
    # A cookie session: the client's jar carries it from call to call.
    counts = [(await client.call("GET", f"{base}/count"))[2] for _ in range(3)]
    assert counts == [b"1", b"2", b"3"], counts
    status, headers, raw = await client.call("GET", f"{base}/bin")
    assert status == 200 and raw == bytes(range(256)) * 16
    assert "attachment" in headers["Content-Disposition"], headers
    blob = bytes(range(256)) * 1000
    status, _, raw = await client.call("POST", f"{base}/echo", data=blob)
    assert status == 200 and raw == blob
    async with session.get(
        http_stack.url + f"{base}/cookies", headers={"Authorization": f"Bearer {key}"}
    ) as r:
        assert sorted(r.headers.getall("Set-Cookie"))[0].startswith("a=1"), r.headers
        assert len(r.headers.getall("Set-Cookie")) == 2, r.headers
    status, _, raw = await client.call("GET", f"{base}/env?x=1&y=%20", headers={"X-Thing": "t"})
    env = json.loads(raw)
    assert env["script"] == base and env["path"] == "/env" and env["query"] == "x=1&y=%20"
    assert env["uri"] == f"{base}/env?x=1&y=%20" and env["rid"] and env["header"] == "t", env
    # The app raises: FC's error body with a 502, and the instance serves the next call.
    status, headers, raw = await client.call("GET", f"{base}/boom")
    assert status == 502 and headers["X-Fc-Error-Type"] == "UnhandledInvocationError", raw
    error = json.loads(raw)
    assert error["errorType"] == "RuntimeError" and error["errorMessage"] == "kaboom", error
    assert (await client.call("GET", f"{base}/?name=again"))[2] == b"hello again"
    # Too big a request: 413 before anything runs.
    status, _, raw = await client.call(
        "POST", f"{base}/echo", data=io.BytesIO(b"x" * (MAX_EVENT_BYTES + 1))
    )
    assert status == 413, raw
    # Async: accepted, 202 with the request id.
    status, headers, _ = await client.call(
        "GET", f"{base}/", headers={"X-Fc-Invocation-Type": "Async"}
    )
    assert status == 202 and headers["X-Fc-Request-Id"]


async def test_event_and_asgi_handlers_auth_and_methods(
    http_stack: Stack, session: aiohttp.ClientSession
) -> None:
    _, key = http_stack.create_tenant()
    _, other_key = http_stack.create_tenant()
    client = Client(session, http_stack.url, key)
    stranger = Client(session, http_stack.url, other_key)
    anonymous = Client(session, http_stack.url, "")
    service, function, trigger = await http_function(
        client, EVENT_APP, "event", authType="function", methods=["GET", "POST"]
    )
    own = trigger["urlPath"].rstrip("/")

    # FC 3.0's event, answered with statusCode/headers/base64 body; binary both ways.
    raw_body = bytes(range(256))
    status, headers, raw = await client.call("POST", f"{own}/a/b?q=z", data=raw_body)
    assert status == 201 and raw == raw_body[::-1], raw
    assert headers["X-Echo"] == "z" and headers["X-Path"] == "/a/b", headers
    status, _, raw = await client.call("GET", f"/v1/proxy/{service}/{function}/plain")
    assert (status, raw) == (200, b"plain GET"), raw
    # authType function: a credential of the trigger's tenant, nothing else.
    status, _, raw = await anonymous.call("GET", f"{own}/plain", headers={"Authorization": ""})
    assert status == 401, raw
    status, _, raw = await stranger.call("GET", f"{own}/plain")
    assert status == 404, raw
    status, _, raw = await stranger.call("GET", f"/v1/proxy/{service}/{function}/plain")
    assert status == 404, raw
    # Methods filter.
    status, headers, raw = await client.call("PUT", f"{own}/plain")
    assert status == 405 and headers["Allow"] == "GET, POST", (headers, raw)
    # Disabled: 404 (within the gateway's 1 s trigger cache).
    status, _, raw = await client.call(
        "PUT",
        f"/v1/services/{service}/functions/{function}/triggers/web",
        json={"enabled": False},
    )
    assert status == 200, raw
    for _ in range(60):
        status, _, raw = await client.call("GET", f"{own}/plain")
        if status == 404:
            break
        await asyncio.sleep(0.1)
    assert status == 404 and json.loads(raw)["errorCode"] == "TriggerNotFound", raw

    # An ASGI app, anonymous: no credential needed on the trigger's URL.
    service, function, trigger = await http_function(client, ASGI_APP, "asgi", authType="anonymous")
    own = trigger["urlPath"].rstrip("/")
    async with session.post(http_stack.url + f"{own}/x/y?k=v", data=b"12345") as r:
        assert r.status == 202 and r.headers["X-Asgi"] == "yes", await r.read()
        answer = await r.json()
    assert answer == {
        "path": "/x/y",
        "root": own,
        "method": "POST",
        "length": 5,
        "query": "k=v",
    }, answer
    # The proxy route still needs a key, whatever the authType.
    status, _, _ = await anonymous.call(
        "GET", f"/v1/proxy/{service}/{function}/", headers={"Authorization": ""}
    )
    assert status == 401


async def test_a_custom_runtime_gets_the_request_as_it_came(
    http_stack: Stack, session: aiohttp.ClientSession
) -> None:
    _, key = http_stack.create_tenant()
    client = Client(session, http_stack.url, key)
    service, function = await deploy(
        client, runtime="custom", code=zip_code(members(RAW_SERVER)), timeout=10
    )
    body = {"triggerName": "web", "triggerType": "http", "triggerConfig": {}}
    status, _, raw = await client.call(
        "POST", f"/v1/services/{service}/functions/{function}/triggers", json=body
    )
    assert status == 201, raw
    status, headers, raw = await client.call(
        "PUT",
        f"/v1/proxy/{service}/{function}/a/b%20c?x=1",
        data=b"\x00\xffraw",
        headers={"X-Thing": "t"},
    )
    assert status == 207 and headers["X-Fc-Request-Id"], raw
    seen = json.loads(raw)
    assert seen["method"] == "PUT" and seen["path"] == "/a/b%20c?x=1", seen
    assert seen["thing"] == "t" and seen["body"] == "\x00\xffraw" and seen["rid"], seen


async def test_a_function_past_its_timeout_is_a_504(
    http_stack: Stack, session: aiohttp.ClientSession
) -> None:
    _, key = http_stack.create_tenant()
    client = Client(session, http_stack.url, key)
    slow = "import time\ndef handler(event, context):\n    time.sleep(5)\n    return 'late'\n"
    service, function = await deploy(client, {"index.py": slow}, timeout=1)
    body = {
        "triggerName": "web",
        "triggerType": "http",
        "triggerConfig": {"requestFormat": "event"},
    }
    status, _, raw = await client.call(
        "POST", f"/v1/services/{service}/functions/{function}/triggers", json=body
    )
    assert status == 201, raw
    status, headers, raw = await client.call("GET", f"/v1/proxy/{service}/{function}/")
    assert status == 504 and headers["X-Fc-Error-Type"] == "UnhandledInvocationError", raw
    assert "FunctionTimeout" in raw.decode() or "timed out" in raw.decode(), raw
