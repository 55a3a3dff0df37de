"""Warm sync invoke latency over HTTP, beside a raw aio-pika direct reply-to RPC round trip.

Not a test: prints figures and ratios measured in the same run on this machine.
Targets: pyfc warm sync p50 <= 2.0x the raw RPC p50 with the server in its own process,
p99 <= 3x (issue 18); p50 <= 3 ms and <= 3x the in-process raw RPC p50 (issue "Spine").
Also CPU milliseconds per call of each process (from /proc), and the same calls through
an alias (`bench.prod`, one version) and a weighted alias (`bench.gray`, 10% to a second
version) in the same blocks: resolving a qualifier must not cost (issue 13); and the same
echo as a WSGI app behind an HTTP trigger (`/v1/proxy/bench/web/`): its p50 within 10% of
the plain invoke's (issue 15).

    .venv/bin/python bench/invoke.py [--n 2000] [--blocks 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
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

from bench.cpu import CpuMeter
from bench.report import Result, Row, Target, p50, p99, table
from tests.stack import AMQP_URL, Stack, code_body

PAYLOAD = b"x" * 64
# The same echo function, called as LATEST, through an alias and through a weighted alias.
ALIASES = {"alias": "bench.prod", "weighted alias": "bench.gray"}
# The echo as a WSGI app behind an HTTP trigger.
WSGI_ECHO = (
    "def handler(environ, start_response):\n"
    "    start_response('200 OK', [('Content-Type', 'application/octet-stream')])\n"
    "    return [environ['wsgi.input'].read()]\n"
)
HTTP_TRIGGER_PATH = "/v1/proxy/bench/web/echo"


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


async def raw_rpc(
    n: int, separate_process: bool, warm_up: int = 200, cpu: dict[str, float] | None = None
) -> list[float]:
    """Client publishes to a queue; a server consumer replies via direct reply-to.

    The server runs in this process (the tightest baseline) or in its own process, as
    pyfc's roles do. `cpu`, if given, gets the CPU milliseconds per call of each process
    over the measured calls.
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
        meter = CpuMeter(
            {"bench client": os.getpid()} | ({"server": server.pid} if separate_process else {})
        )
        samples = []
        for i in range(n + warm_up):
            if i == warm_up:
                meter.start()
            cid = uuid.uuid4().hex
            fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
            pending[cid] = fut
            t0 = time.perf_counter()
            await client_ch.default_exchange.publish(
                aio_pika.Message(PAYLOAD, reply_to="amq.rabbitmq.reply-to", correlation_id=cid),
                routing_key=queue_name,
            )
            await fut
            if i >= warm_up:
                samples.append((time.perf_counter() - t0) * 1000)
        meter.stop()
        if cpu is not None:
            cpu.update(meter.per_call_ms(n))
    if separate_process:
        server.kill()
        await server.wait()
    else:
        stop.set()
        await task
    return samples


async def deploy_echo(stack: Stack) -> dict[str, str]:
    """A fresh tenant with an echo function; its request headers."""
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
        for description in ("v1", "v2"):  # two versions of it, and aliases to them
            update = {"description": description}
            async with s.put("/v1/services/bench/functions/echo", json=update) as r:
                assert r.status == 200, await r.text()
            async with s.post("/v1/services/bench/versions", json={}) as r:
                assert r.status == 201, await r.text()
        web = {"functionName": "web", "code": code_body({"index.py": WSGI_ECHO})}
        async with s.post("/v1/services/bench/functions", json=web) as r:
            assert r.status == 201, await r.text()
        trigger = {"triggerName": "web", "triggerType": "http", "triggerConfig": {}}
        async with s.post("/v1/services/bench/functions/web/triggers", json=trigger) as r:
            assert r.status == 201, await r.text()
        for alias in (
            {"aliasName": "prod", "versionId": "1"},
            {"aliasName": "gray", "versionId": "1", "additionalVersionWeight": {"2": 0.1}},
        ):
            async with s.post("/v1/services/bench/aliases", json=alias) as r:
                assert r.status == 201, await r.text()
    return headers


async def pyfc_invoke(
    stack: Stack,
    n: int,
    headers: dict[str, str] | None = None,
    warm_up: int = 200,
    cpu: dict[str, float] | None = None,
    service: str = "bench",
    path: str = "",
) -> list[float]:
    """`n` sequential warm sync invokes over HTTP (after `warm_up` more) of
    `service[.qualifier]/echo`; `cpu`, if given, gets the CPU milliseconds per call of each
    role over the measured calls."""
    headers = headers or await deploy_echo(stack)
    roles = {name: stack.procs[name].pid for name in ("gateway", "dispatcher")}
    workers = {name: proc.pid for name, proc in stack.procs.items() if name.startswith("worker")}
    meter = CpuMeter({**roles, **workers, "bench client": os.getpid()}, trees=frozenset(workers))
    async with aiohttp.ClientSession(stack.url, headers=headers) as s:
        samples = []
        for i in range(n + warm_up):
            if i == warm_up:
                meter.start()
            t0 = time.perf_counter()
            async with s.post(
                path or f"/v1/services/{service}/functions/echo/invocations", data=PAYLOAD
            ) as r:
                await r.read()
                assert r.status == 200
            if i >= warm_up:
                samples.append((time.perf_counter() - t0) * 1000)
    meter.stop()
    if cpu is not None:
        cpu.update(meter.per_call_ms(n))
    return samples


def mean_of(blocks: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(sum(b[k] for b in blocks) / len(blocks), 4) for k in blocks[0]}


def run(n: int = 2000, blocks: int = 3, stack: Stack | None = None) -> Result:
    """Raw RPC (server in its own process, and in this one) and pyfc's warm sync invoke,
    measured in `blocks` alternating blocks of n/blocks calls each (so a change of load
    during the run falls on both alike); a stack of its own unless `stack` is given."""
    with contextlib.ExitStack() as cleanup:
        if stack is None:
            tmp = cleanup.enter_context(tempfile.TemporaryDirectory())
            stack = Stack(Path(tmp), worker_slots=4)
            cleanup.callback(stack.stop)
            stack.start()
        headers = uvloop.run(deploy_echo(stack))
        raw: list[float] = []
        raw_x: list[float] = []
        warm: list[float] = []
        aliased: dict[str, list[float]] = {name: [] for name in ALIASES}
        http_trigger: list[float] = []
        cpu_raw: list[dict[str, float]] = []
        cpu_pyfc: list[dict[str, float]] = []
        per_block = max(1, n // blocks)
        for block in range(blocks):
            warm_up = 200 if block == 0 else 50
            cpu_raw.append({})
            cpu_pyfc.append({})
            raw_x += uvloop.run(raw_rpc(per_block, True, warm_up=min(warm_up, n), cpu=cpu_raw[-1]))
            warm += uvloop.run(
                pyfc_invoke(stack, per_block, headers, min(warm_up, n), cpu=cpu_pyfc[-1])
            )
            raw += uvloop.run(raw_rpc(per_block, False, warm_up=min(warm_up, n)))
            for name, service in ALIASES.items():
                aliased[name] += uvloop.run(
                    pyfc_invoke(stack, per_block, headers, min(warm_up, n), service=service)
                )
            http_trigger += uvloop.run(
                pyfc_invoke(stack, per_block, headers, min(warm_up, n), path=HTTP_TRIGGER_PATH)
            )
    spine = "Spine"
    rows = [
        Row(
            "warm sync invoke over HTTP p50",
            p50(warm),
            "ms",
            baseline=p50(raw_x),
            baseline_name="raw RPC x-proc",
            target=Target("ratio", "<=", 2.0, "18"),
        ),
        Row(
            "warm sync invoke over HTTP p99",
            p99(warm),
            "ms",
            baseline=p99(raw_x),
            baseline_name="raw RPC x-proc",
            target=Target("ratio", "<=", 3.0, "18"),
        ),
        Row(
            "warm sync invoke p50, absolute",
            p50(warm),
            "ms",
            target=Target("value", "<=", 3.0, spine),
        ),
        Row(
            "warm sync invoke p50 vs in-process RPC",
            p50(warm),
            "ms",
            baseline=p50(raw),
            baseline_name="raw RPC in-process",
            target=Target("ratio", "<=", 3.0, spine),
        ),
    ]
    rows += [
        Row(
            f"warm sync invoke through a{'n' if name == 'alias' else ''} {name} p50",
            p50(samples),
            "ms",
            baseline=p50(warm),
            baseline_name="LATEST, same blocks",
            target=Target("ratio", "<=", 1.1, "13"),
        )
        for name, samples in aliased.items()
    ]
    rows.append(
        Row(
            "warm HTTP trigger (WSGI echo) p50",
            p50(http_trigger),
            "ms",
            baseline=p50(warm),
            baseline_name="plain invoke, same blocks",
            target=Target("ratio", "<=", 1.1, "15"),
        )
    )
    for row in rows:
        row.bench = "invoke"
    return Result(
        rows=rows,
        samples={
            "round trip: pyfc warm sync invoke over HTTP": warm,
            "round trip: raw aio-pika RPC, server in its own process": raw_x,
            "round trip: raw aio-pika RPC, server in-process": raw,
            **{f"round trip: pyfc through {ALIASES[k]}": v for k, v in aliased.items()},
            "round trip: HTTP trigger, WSGI echo": http_trigger,
        },
        extra={
            "cpu_ms_per_call": {
                "pyfc warm sync invoke": mean_of(cpu_pyfc),
                "raw RPC x-proc": mean_of(cpu_raw),
            }
        },
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--blocks", type=int, default=3)
    parser.add_argument("--serve-rpc", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_rpc:
        uvloop.run(rpc_server(args.serve_rpc))
        return 0
    result = run(args.n, args.blocks)
    print(f"n={args.n} sequential calls in {args.blocks} blocks, 64-byte payload")
    print(table(result.rows))
    for what, cpu in result.extra["cpu_ms_per_call"].items():
        print(f"CPU ms per call, {what}: " + ", ".join(f"{k} {v:.3f}" for k, v in cpu.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
