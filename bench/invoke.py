"""Warm sync invoke latency over HTTP, beside a raw aio-pika direct reply-to RPC round trip.

Not a test: prints figures and ratios measured in the same run on this machine.
Targets (issue "Spine"): pyfc warm sync p50 <= 3 ms and <= 3x the raw RPC p50.

    .venv/bin/python bench/invoke.py [--n 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
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


async def rpc_server(
    queue_name: str, stop: asyncio.Event | None = None, ready: asyncio.Event | None = None
) -> None:
    """Reply to every message on `queue_name` via its direct reply-to address."""
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(queue_name, auto_delete=True)

        async def serve(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            await channel.default_exchange.publish(
                aio_pika.Message(message.body, correlation_id=message.correlation_id),
                routing_key=message.reply_to or "",
                mandatory=False,
            )

        await queue.consume(serve, no_ack=True)
        if stop is None:  # a child process: tell the parent it can start
            print("serving", flush=True)
        if ready is not None:
            ready.set()
        await (stop or asyncio.Event()).wait()


async def raw_rpc(n: int, separate_process: bool) -> list[float]:
    """Client publishes to a queue; a server consumer replies via direct reply-to.

    The server runs in this process (the tightest baseline) or in its own process, as
    pyfc's roles do.
    """
    queue_name = f"bench-rpc-{uuid.uuid4().hex[:8]}"
    stop, ready = asyncio.Event(), asyncio.Event()
    if separate_process:
        server = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--serve-rpc", queue_name, stdout=subprocess.PIPE
        )
        assert server.stdout is not None
        await server.stdout.readline()
    else:
        task = asyncio.create_task(rpc_server(queue_name, stop, ready))
        await ready.wait()
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
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
                routing_key=queue_name,
            )
            await fut
            if i >= 200:
                samples.append((time.perf_counter() - t0) * 1000)
    if separate_process:
        server.kill()
        await server.wait()
    else:
        stop.set()
        await task
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
    parser.add_argument("--serve-rpc", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_rpc:
        uvloop.run(rpc_server(args.serve_rpc))
        return 0
    raw = uvloop.run(raw_rpc(args.n, separate_process=False))
    raw_x = uvloop.run(raw_rpc(args.n, separate_process=True))
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(Path(tmp), worker_slots=4)
        try:
            stack.start()
            warm = uvloop.run(pyfc_invoke(stack, args.n))
        finally:
            stack.stop()
    raw_p50, raw_p99 = summary(raw)
    rawx_p50, rawx_p99 = summary(raw_x)
    p50, p99 = summary(warm)
    print(f"n={args.n} sequential calls after 200 warm-up, 64-byte payload")
    print(f"raw RPC, server in-process        : p50 {raw_p50:6.2f} ms  p99 {raw_p99:6.2f} ms")
    print(f"raw RPC, server in its own process: p50 {rawx_p50:6.2f} ms  p99 {rawx_p99:6.2f} ms")
    print(f"pyfc warm sync invoke over HTTP   : p50 {p50:6.2f} ms  p99 {p99:6.2f} ms")
    print(f"ratio p50 pyfc / raw in-process   : {p50 / raw_p50:.2f}x  (target <= 3x)")
    print(f"ratio p50 pyfc / raw cross-process: {p50 / rawx_p50:.2f}x")
    print(f"absolute p50 target (<= 3 ms)     : {'met' if p50 <= 3.0 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
