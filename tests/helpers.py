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


async def same_shard_names(count: int, prefix: str = "tenant", amqp_url: str = "") -> list[str]:
    """`count` fresh tenant names that the invoke exchange hashes onto one dispatcher shard.

    RabbitMQ's consistent-hash exchange picks a bucket by jump consistent hash of the
    routing key over the bucket count, buckets numbered in binding order (weight each): the
    queues' names play no part. So a private exchange with DISPATCH_SHARDS queues bound as
    `declare_invoke` binds the shards (weight "1", in order) maps names as every stack does.
    """
    from shared.topology import CONSISTENT_HASH, DISPATCH_SHARDS
    from tests.stack import AMQP_URL

    connection = await aio_pika.connect(amqp_url or AMQP_URL)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.declare_exchange(
            unique("shard-probe"),
            CONSISTENT_HASH,
            auto_delete=True,  # type: ignore[arg-type]
        )
        queues = []
        for _ in range(DISPATCH_SHARDS):
            queue = await channel.declare_queue(exclusive=True)
            await queue.bind(exchange, routing_key="1")
            queues.append(queue)
        candidates = [f"{prefix}-{uuid.uuid4().hex[:8]}" for _ in range(8 * count)]
        for name in candidates:
            await exchange.publish(aio_pika.Message(name.encode()), routing_key=name)
        by_shard: list[list[str]] = []
        for queue in queues:
            names = []
            while (message := await queue.get(no_ack=True, fail=False)) is not None:
                names.append(message.body.decode())
            by_shard.append(names)
        await exchange.delete()
    assert sum(map(len, by_shard)) == len(candidates), by_shard
    fullest = max(by_shard, key=len)
    assert len(fullest) >= count, by_shard
    return fullest[:count]
