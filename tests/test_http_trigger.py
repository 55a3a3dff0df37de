"""HTTP triggers without a stack: the wire between the gateway and the instance, the
WSGI/event/ASGI adapters on bad apps, and the trigger's config rules."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from shared import http_trigger
from shared.errors import BadRequest
from shared.trigger_types import Limits, validate
from worker.child import web

REQUEST = http_trigger.HttpRequest(
    method="POST",
    path="/a%20b/c",
    query="x=1&x=2&y=",
    headers=[("Content-Type", "text/plain"), ("X-Many", "1"), ("X-Many", "2")],
    body=b"\xffbody",
    script_name="/v1/proxy/s/f",
    request_uri="/v1/proxy/s/f/a%20b/c?x=1&x=2&y=",
    client_ip="127.0.0.1",
    host="example.test",
    port=9000,
)


def call(fn: Any, *args: Any) -> Any:
    import asyncio

    value = fn(*args)
    return asyncio.run(value) if asyncio.iscoroutine(value) else value


def test_the_gateway_and_the_instance_speak_the_same_wire() -> None:
    payload = http_trigger.encode_request(REQUEST)
    seen: dict[str, Any] = {}

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.update(environ)
        start_response("201 Created", [("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")])
        return [b"ok"]

    answer = http_trigger.decode_response(web.serve("wsgi", app, payload, None, call))
    assert answer == http_trigger.HttpResponse(
        201, [("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")], b"ok"
    )
    assert seen["PATH_INFO"] == "/a b/c" and seen["SCRIPT_NAME"] == "/v1/proxy/s/f"
    assert seen["QUERY_STRING"] == "x=1&x=2&y=" and seen["CONTENT_TYPE"] == "text/plain"
    assert seen["HTTP_X_MANY"] == "1,2" and seen["wsgi.input"].read() == b"\xffbody"
    assert seen["fc.request_uri"] == REQUEST.request_uri
    assert msgspec.msgpack.encode(REQUEST) == msgspec.msgpack.encode(
        msgspec.msgpack.decode(payload, type=web.HttpRequest)
    )


def test_the_event_form() -> None:
    event = web.http_event(
        msgspec.msgpack.decode(http_trigger.encode_request(REQUEST), type=web.HttpRequest), "rid"
    )
    assert event["rawPath"] == "/a b/c" and event["isBase64Encoded"] is True
    assert event["queryParameters"] == {"x": ["1", "2"], "y": ""}
    assert event["headers"]["X-Many"] == "1,2" and event["requestContext"]["requestId"] == "rid"
    assert event["requestContext"]["http"]["method"] == "POST"


def bad_status(environ: Any, start_response: Any) -> list[bytes]:
    start_response("twohundred OK", [])
    return [b""]


def no_start(environ: Any, start_response: Any) -> list[bytes]:
    return [b"forgot"]


def bad_event(event: bytes, context: Any) -> dict[str, Any]:
    return {"statusCode": 99}


async def bad_asgi(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.body", "body": b"no start"})


@pytest.mark.parametrize(
    ("kind", "app"),
    [("wsgi", bad_status), ("wsgi", no_start), ("event", bad_event), ("asgi", bad_asgi)],
)
def test_an_app_that_breaks_its_protocol_is_an_error(kind: str, app: Any) -> None:
    with pytest.raises(web.BadResponse):
        web.serve(kind, app, http_trigger.encode_request(REQUEST), None, call)


@pytest.mark.parametrize(
    ("config", "names"),
    [
        ({"methods": ["GET", "FETCH"]}, "methods"),
        ({"methods": []}, "methods"),
        ({"methods": ["GET", "GET"]}, "methods"),
        ({"methods": ["get"]}, "methods"),
        ({"authType": "token"}, "authType"),
        ({"requestFormat": "cgi"}, "requestFormat"),
        ({"other": 1}, "other"),
    ],
)
def test_bad_http_configs(config: dict[str, Any], names: str) -> None:
    with pytest.raises(BadRequest, match=names):
        validate("http", config, Limits(max_event_bytes=1 << 20))


def test_http_defaults() -> None:
    assert validate("http", {}, Limits(max_event_bytes=1 << 20)) == {
        "authType": "function",
        "methods": ["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS"],
        "requestFormat": "wsgi",
    }
