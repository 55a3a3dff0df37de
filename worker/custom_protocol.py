"""FC's custom-runtime HTTP contract as the worker speaks it: the request headers, how
a non-2xx answer becomes FC's error shape, and the bound on an answer's size.
"""

from __future__ import annotations

import json
import socket

import aiohttp

from shared.protocol import FunctionSpec, Lineage
from worker.child.frames import MAX_FRAME_BYTES
from worker.credentials import caller_origin
from worker.output import LOG_TAIL_BYTES

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on HOST that nothing listens on now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def request_headers(spec: FunctionSpec, request_id: str) -> dict[str, str]:
    """FC's custom-runtime request headers for `spec`."""
    return {
        "x-fc-request-id": request_id,
        "x-fc-function-name": spec.function,
        "x-fc-function-handler": spec.handler,
        "x-fc-function-memory": str(spec.memory_size),
        "x-fc-function-timeout": f"{spec.timeout:g}",
        "x-fc-function-initializer": spec.initializer or "",
        "x-fc-initialization-timeout": f"{spec.initialization_timeout:g}",
        "x-fc-service-name": spec.service,
        "x-fc-service-logstore": spec.log_store,
        "x-fc-qualifier": spec.qualifier,
        "x-fc-version-id": spec.version,
        "x-fc-region": "local",
    }


def credential_headers(spec: FunctionSpec, lineage: Lineage, token: str) -> dict[str, str]:
    """Per-invocation headers for calling back into pyfc (FC's names for the credentials).

    `x-fc-security-token` is the invoke token; the function sends it as `Authorization:
    Bearer <token>` and `x-fc-lineage` as `X-Fc-Lineage` to `$FC_GATEWAY_URL`.
    """
    return {
        "x-fc-access-key-id": spec.tenant,
        "x-fc-access-key-secret": "",
        "x-fc-security-token": token,
        "x-fc-lineage": f"{lineage.trace_id}/{lineage.hops}/{caller_origin(spec)}",
    }


def error_from_response(status: int, body: bytes) -> tuple[str, str, list[str]]:
    """(errorType, errorMessage, stackTrace) of a non-2xx answer.

    A JSON body in FC's error shape speaks for itself; any other body becomes the message
    of an `HTTP <status>` error.
    """
    try:
        value = json.loads(body)
    except ValueError:
        value = None
    text = body.decode("utf-8", "replace")[:LOG_TAIL_BYTES]
    if isinstance(value, dict) and isinstance(value.get("errorType"), str):
        message = value.get("errorMessage")
        trace = value.get("stackTrace")
        return (
            value["errorType"],
            message if isinstance(message, str) else text,
            [str(line) for line in trace] if isinstance(trace, list) else [],
        )
    return f"HTTP {status}", text, []


class ResponseTooLarge(Exception):
    """The answer is over MAX_FRAME_BYTES, the bound Python instances' frames have too."""


async def read_capped(response: aiohttp.ClientResponse) -> bytes:
    if (response.content_length or 0) > MAX_FRAME_BYTES:
        raise ResponseTooLarge(f"response of {response.content_length} bytes")
    body = bytearray()
    async for chunk in response.content.iter_chunked(1024 * 1024):
        body += chunk
        if len(body) > MAX_FRAME_BYTES:
            raise ResponseTooLarge(f"response over {MAX_FRAME_BYTES} bytes")
    return bytes(body)
