from __future__ import annotations

import asyncio
import functools
import json
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aio_pika

from shared.broker import persistent_invocation
from shared.protocol import Invocation, Lineage
from shared.topology import Topology, declare_invoke, invoke_routing_key
from tests.conftest import Client
from tests.stack import code_body

ECHO = "def handler(event, context):\n    return event\n"


@functools.cache
def _open_base() -> Path:
    base = Path(tempfile.mkdtemp(prefix="pyfc-tests-"))
    base.chmod(0o711)
    return base


def open_dir(name: str = "dir") -> Path:
    """A fresh directory (mode 0777) that functions can write to: a root worker runs them
    as other uids, and pytest's tmp_path sits under 0700 directories. Removed at the end
    of the session (`remove_open_dirs`)."""
    path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=_open_base()))
    path.chmod(0o777)
    return path


def remove_open_dirs() -> None:
    if _open_base.cache_info().currsize:
        shutil.rmtree(_open_base(), ignore_errors=True)
        _open_base.cache_clear()


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


def async_invocation(tenant: str, service: str, function: str) -> Invocation:
    """A new async invocation envelope, as a trigger adapter makes one."""
    return Invocation(
        id=str(uuid.uuid4()),
        tenant=tenant,
        service=service,
        function=function,
        kind="async",
        created_at=time.time(),
        lineage=Lineage(trace_id=uuid.uuid4().hex),
    )


async def enqueue(amqp_url: str, namespace: str, inv: Invocation) -> None:
    """Publish `inv` to the invoke exchange (persistent, confirmed), as a trigger adapter
    does: no gateway, no accepted record."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await declare_invoke(channel, Topology(namespace))
        await exchange.publish(
            persistent_invocation(inv), routing_key=invoke_routing_key(inv.tenant)
        )
