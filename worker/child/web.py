"""HTTP-trigger functions inside an instance: the request as the gateway sent it, run as a
WSGI app, an FC 3.0 HTTP event handler, or an ASGI app, and the response to send back.

The request and response travel msgpack-encoded in the invocation's payload and the
outcome's body (**contract** with `shared/http_trigger.py`, whose Structs encode the same
arrays; tests/test_http_trigger.py checks the two against each other). Imported by the
instance child: stdlib and msgspec only.
"""

from __future__ import annotations

import base64
import io
import sys
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, unquote

import msgspec

# FC answers these for a WSGI app that breaks the protocol (a bad status line, no
# start_response): the gateway turns the handler's exception into a 502.
_STATUS_RANGE = range(100, 600)


class HttpRequest(msgspec.Struct, array_like=True):
    method: str
    # The path under the function (`/` at least), still percent-encoded, and the query.
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes
    # The prefix the function is served under (WSGI SCRIPT_NAME, ASGI root_path).
    script_name: str
    # The full URI the client asked for (`fc.request_uri`).
    request_uri: str
    client_ip: str = ""
    scheme: str = "http"
    host: str = ""
    port: int = 80


class HttpResponse(msgspec.Struct, array_like=True):
    status: int
    headers: list[tuple[str, str]]
    body: bytes


_decode_request = msgspec.msgpack.Decoder(HttpRequest).decode
_encode = msgspec.msgpack.Encoder().encode


class BadResponse(Exception):
    """The app broke its protocol (a bad status, no start_response): a 502 for the client."""


def serve(kind: str, handler: Callable[..., Any], payload: bytes, context: Any, call: Any) -> bytes:
    """Run `handler` on the encoded request `payload` as `kind` (wsgi, event, asgi); the
    encoded response. `call` runs a callable to completion (awaiting a coroutine)."""
    req = _decode_request(payload)
    if kind == "wsgi":
        response = _wsgi(handler, req, context)
    elif kind == "event":
        response = _event(handler, req, context, call)
    elif kind == "asgi":
        response = _asgi(handler, req, call)
    else:
        raise BadResponse(f"unknown request format {kind!r}")
    return _encode(response)


def _wsgi(app: Callable[..., Any], req: HttpRequest, context: Any) -> HttpResponse:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": req.method,
        "SCRIPT_NAME": req.script_name,
        # PEP 3333: PATH_INFO is decoded, bytes carried as latin-1.
        "PATH_INFO": unquote(req.path, encoding="latin-1"),
        "QUERY_STRING": req.query,
        "SERVER_NAME": req.host or "localhost",
        "SERVER_PORT": str(req.port),
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": req.client_ip,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": req.scheme,
        "wsgi.input": io.BytesIO(req.body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "fc.context": context,
        "fc.request_uri": req.request_uri,
        "CONTENT_LENGTH": str(len(req.body)),
    }
    for name, value in req.headers:
        key = name.upper().replace("-", "_")
        if key == "CONTENT_TYPE":
            environ["CONTENT_TYPE"] = value
        elif key != "CONTENT_LENGTH":
            key = f"HTTP_{key}"
            environ[key] = f"{environ[key]},{value}" if key in environ else value
    started: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        if exc_info is not None and started:
            raise exc_info[1].with_traceback(exc_info[2])
        started[:] = [(status, list(headers))]
        return lambda data: chunks.append(bytes(data))

    chunks: list[bytes] = []
    result = app(environ, start_response)
    try:
        for chunk in result:
            chunks.append(bytes(chunk))
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    if not started:
        raise BadResponse("the WSGI app returned without calling start_response")
    status_line, headers = started[0]
    code = status_line.split(" ", 1)[0]
    if not code.isdigit() or int(code) not in _STATUS_RANGE:
        raise BadResponse(f"the WSGI app answered a bad status {status_line!r}")
    return HttpResponse(int(code), [(str(k), str(v)) for k, v in headers], b"".join(chunks))


def http_event(req: HttpRequest, request_id: str) -> dict[str, Any]:
    """FC 3.0's HTTP trigger event."""
    headers: dict[str, str] = {}
    for name, value in req.headers:
        key = "-".join(part.capitalize() for part in name.split("-"))
        headers[key] = f"{headers[key]},{value}" if key in headers else value
    query: dict[str, Any] = {}
    for name, value in parse_qsl(req.query, keep_blank_values=True):
        if name in query:
            prior = query[name]
            query[name] = [*prior, value] if isinstance(prior, list) else [prior, value]
        else:
            query[name] = value
    try:
        body, encoded = req.body.decode("utf-8"), False
    except UnicodeDecodeError:
        body, encoded = base64.b64encode(req.body).decode(), True
    now = time.time()
    return {
        "version": "v1",
        "rawPath": unquote(req.path),
        "headers": headers,
        "queryParameters": query,
        "body": body,
        "isBase64Encoded": encoded,
        "requestContext": {
            "accountId": "",
            "domainName": req.host,
            "domainPrefix": req.host.split(".")[0],
            "http": {
                "method": req.method,
                "path": unquote(req.path),
                "protocol": "HTTP/1.1",
                "sourceIp": req.client_ip,
                "userAgent": headers.get("User-Agent", ""),
            },
            "requestId": request_id,
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": str(int(now * 1000)),
        },
    }


def _event(handler: Callable[..., Any], req: HttpRequest, context: Any, call: Any) -> HttpResponse:
    event = msgspec.json.encode(http_event(req, getattr(context, "request_id", "")))
    value = call(handler, event, context)
    if isinstance(value, dict) and "statusCode" in value:
        status = value["statusCode"]
        if not isinstance(status, int) or status not in _STATUS_RANGE:
            raise BadResponse(f"statusCode {status!r} is not an HTTP status")
        headers = [(str(k), str(v)) for k, v in (value.get("headers") or {}).items()]
        raw = value.get("body", b"")
        if value.get("isBase64Encoded"):
            body = base64.b64decode(raw)
        elif isinstance(raw, str):
            body = raw.encode()
        elif isinstance(raw, bytes):
            body = raw
        else:
            body = msgspec.json.encode(raw)
        return HttpResponse(status, headers, body)
    # A plain return value is a 200 body (FC's rule for the value's type).
    if isinstance(value, bytes | bytearray):
        return HttpResponse(200, [], bytes(value))
    if isinstance(value, str):
        return HttpResponse(200, [("Content-Type", "text/plain; charset=utf-8")], value.encode())
    if value is None:
        return HttpResponse(200, [], b"")
    return HttpResponse(200, [("Content-Type", "application/json")], msgspec.json.encode(value))


def _asgi(app: Callable[..., Any], req: HttpRequest, call: Any) -> HttpResponse:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": req.method,
        "scheme": req.scheme,
        "path": unquote(req.path),
        "raw_path": req.path.encode("latin-1"),
        "query_string": req.query.encode("latin-1"),
        "root_path": req.script_name,
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in req.headers],
        "client": (req.client_ip, 0),
        "server": (req.host or "localhost", req.port),
        "state": {},
    }
    sent: dict[str, Any] = {"status": 0, "headers": [], "body": []}
    received = False

    async def receive() -> dict[str, Any]:
        nonlocal received
        if not received:
            received = True
            return {"type": "http.request", "body": req.body, "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            sent["status"] = message["status"]
            sent["headers"] = [
                (bytes(k).decode("latin-1"), bytes(v).decode("latin-1"))
                for k, v in message.get("headers", [])
            ]
        elif message["type"] == "http.response.body":
            sent["body"].append(bytes(message.get("body", b"")))

    async def run() -> None:
        await app(scope, receive, send)

    call(run)
    status = sent["status"]
    if not isinstance(status, int) or status not in _STATUS_RANGE:
        raise BadResponse(f"the ASGI app answered no valid status ({status!r})")
    return HttpResponse(status, sent["headers"], b"".join(sent["body"]))
