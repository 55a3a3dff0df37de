"""Warm sync invoke latency over HTTP, beside a raw aio-pika direct reply-to RPC round trip.

Not a test: prints figures and ratios measured in the same run on this machine.
Targets (issue "Spine"): pyfc warm sync p50 <= 3 ms and <= 3x the raw RPC p50.

    .venv/bin/python bench/invoke.py [--n 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aio_pika
import aiohttp
import uvloop

from tests.stack import AMQP_URL, Stack, code_body


def summary(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[int(len(ordered) * 0.99) - 1]


async def raw_rpc(n: int) -> list[float]:
    """Client publishes to a queue; a server consumer replies via direct reply-to."""
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        server_ch = await connection.channel()
        queue = await server_ch.declare_queue(f"bench-rpc-{uuid.uuid4().hex[:8]}", auto_delete=True)

        async def serve(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            await server_ch.default_exchange.publish(
                aio_pika.Message(message.body, correlation_id=message.correlation_id),
                routing_key=message.reply_to or "",
                mandatory=False,
            )

        await queue.consume(serve, no_ack=True)
        client_ch = await connection.channel(publisher_confirms=False)
        replies = await client_ch.get_queue("amq.rabbitmq.reply-to", ensure=False)
        pending: dict[str, asyncio.Future[bytes]] = {}

        async def on_reply(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            pending.pop(message.correlation_id or "").set_result(message.body)

        await replies.consume(on_reply, no_ack=True)
        samples = []
        for i in range(n + 200):
            cid = uuid.uuid4().hex
            fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
            pending[cid] = fut
            t0 = time.perf_counter()
            await client_ch.default_exchange.publish(
                aio_pika.Message(b"x" * 64, reply_to="amq.rabbitmq.reply-to", correlation_id=cid),
                routing_key=queue.name,
            )
            await fut
            if i >= 200:
                samples.append((time.perf_counter() - t0) * 1000)
        return samples


async def pyfc_invoke(stack: Stack, n: int) -> list[float]:
    _, key = stack.create_tenant()
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(stack.url, headers=headers) as s:
        async with s.post("/v1/services", json={"serviceName": "bench"}) as r:
            assert r.status == 201, await r.text()
        body = {
            "functionName": "echo",
            "code": code_body({"index.py": "def handler(e, c):\n    return e\n"}),
        }
        async with s.post("/v1/services/bench/functions", json=body) as r:
            assert r.status == 201, await r.text()
        samples = []
        for i in range(n + 200):
            t0 = time.perf_counter()
            async with s.post("/v1/services/bench/functions/echo/invocations", data=b"x" * 64) as r:
                await r.read()
                assert r.status == 200
            if i >= 200:
                samples.append((time.perf_counter() - t0) * 1000)
        return samples


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    args = parser.parse_args()
    raw = uvloop.run(raw_rpc(args.n))
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(Path(tmp), worker_slots=4)
        try:
            stack.start()
            warm = uvloop.run(pyfc_invoke(stack, args.n))
        finally:
            stack.stop()
    raw_p50, raw_p99 = summary(raw)
    p50, p99 = summary(warm)
    print(f"raw aio-pika direct reply-to RPC : p50 {raw_p50:6.2f} ms  p99 {raw_p99:6.2f} ms")
    print(f"pyfc warm sync invoke over HTTP  : p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  (n={args.n})")
    print(f"ratio p50 pyfc/raw               : {p50 / raw_p50:.2f}x  (target <= 3x, p50 <= 3 ms)")
    ok = p50 <= 3.0 and p50 <= 3 * raw_p50
    print("target met" if ok else "target NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
