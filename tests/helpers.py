from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from tests.conftest import Client
from tests.stack import code_body

ECHO = "def handler(event, context):\n    return event\n"


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


async def deploy(
    client: Client, files: dict[str, str | bytes] | None = None, **fields: Any
) -> tuple[str, str]:
    """Create a fresh service and function; return their names."""
    service, function = unique("svc"), unique("fn")
    status, _, body = await client.call("POST", "/v1/services", json={"serviceName": service})
    assert status == 201, body
    payload = {"functionName": function, "code": code_body(files or {"index.py": ECHO}), **fields}
    status, _, body = await client.call("POST", f"/v1/services/{service}/functions", json=payload)
    assert status == 201, body
    return service, function


async def invoke(
    client: Client, service: str, function: str, event: bytes = b"", **headers: str
) -> tuple[int, dict[str, str], bytes]:
    return await client.call(
        "POST",
        f"/v1/services/{service}/functions/{function}/invocations",
        data=event,
        headers={k.replace("_", "-"): v for k, v in headers.items()},
    )


async def wait_result(
    client: Client, service: str, function: str, request_id: str, timeout: float = 60.0
) -> dict[str, Any]:
    """Poll the async status endpoint until the invocation finished."""
    deadline = time.monotonic() + timeout
    while True:
        status, _, body = await client.call(
            "GET", f"/v1/services/{service}/functions/{function}/invocations/{request_id}"
        )
        assert status == 200, body
        rec: dict[str, Any] = json.loads(body)
        if rec["status"] in ("Succeeded", "Failed"):
            return rec
        if time.monotonic() > deadline:
            raise TimeoutError(f"invocation {request_id} still {rec['status']}")
        await asyncio.sleep(0.05)
