"""An HTTP trigger's request and response on the wire (**contract** with the instance
side, `worker/child/web.py`, whose Structs encode the same msgpack arrays).

The gateway encodes the request into the invocation's payload (`Invocation.http` names
how the function takes it: wsgi, event, asgi) and decodes the response from the
outcome's body.
"""

from __future__ import annotations

import msgspec

from shared.errors import BadRequest


class HttpRequest(msgspec.Struct, array_like=True):
    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes
    script_name: str
    request_uri: str
    client_ip: str = ""
    scheme: str = "http"
    host: str = ""
    port: int = 80


class HttpResponse(msgspec.Struct, array_like=True):
    status: int
    headers: list[tuple[str, str]]
    body: bytes


_encoder = msgspec.msgpack.Encoder()
_request = msgspec.msgpack.Decoder(HttpRequest)
_response = msgspec.msgpack.Decoder(HttpResponse)


def encode_request(request: HttpRequest) -> bytes:
    return _encoder.encode(request)


def decode_response(body: bytes) -> HttpResponse:
    try:
        return _response.decode(body)
    except msgspec.DecodeError as e:
        raise BadRequest(f"not an HTTP trigger response: {e}") from e


def decode_request(payload: bytes) -> HttpRequest:
    """The request in an HTTP trigger's invocation (a custom runtime forwards it as is)."""
    try:
        return _request.decode(payload)
    except msgspec.DecodeError as e:
        raise BadRequest(f"not an HTTP trigger request: {e}") from e


def encode_response(response: HttpResponse) -> bytes:
    return _encoder.encode(response)
