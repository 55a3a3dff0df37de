"""Classic vs quorum queues (PYFC_QUEUE_TYPE) in the same run: what replication costs.

Not a test: prints figures and ratios measured in this run on this machine. For each
queue type, on the same broker: raw confirmed persistent publish -> consume of one
durable queue of that type, the async no-op end to end on the trigger path
(`bench/dispatch.py`'s), and warm sync call latency over HTTP (sequential). The quorum
stack replies to sync calls through the gateway's own exclusive queue, the classic one
by direct reply-to (docs/high-availability.md says why), so the sync rows measure that
too. With `--cluster` the quorum stack runs on a private three-node cluster
(tests/rabbit_cluster.py) instead: the replication a deployment pays, on one machine.

    .venv/bin/python bench/queue_types.py [--n 2000] [--reps 2] [--sync 300] [--cluster]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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

from bench.dispatch import PAYLOAD, deploy_noop, trigger_path
from bench.report import Result, Row, p50, p99, table
from shared.broker import connect
from shared.topology import Topology, declare_durable
from tests.rabbit_cluster import RabbitCluster
from tests.stack import AMQP_URL, Stack


async def raw_throughput(url: str, queue_type: str, n: int) -> float:
    """Persistent, confirmed publish -> consume with manual ack, one durable queue."""
    connection = await connect(url, "bench-queue-types")
    async with connection:
        publish = await connection.channel(publisher_confirms=True)
        consume = await connection.channel()
        await consume.set_qos(prefetch_count=256)
        topo = Topology(f"bench{uuid.uuid4().hex[:8]}", queue_type)  # type: ignore[arg-type]
        queue = await declare_durable(consume, topo, topo.work_queue)
        done = asyncio.Event()
        count = 0

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal count
            await message.ack()
            count += 1
            if count == n:
                done.set()

        tag = await queue.consume(on_message)
        started = time.perf_counter()
        for start in range(0, n, 500):
            await asyncio.gather(
                *(
                    publish.default_exchange.publish(
                        aio_pika.Message(PAYLOAD, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                        routing_key=queue.name,
                    )
                    for _ in range(min(500, n - start))
                )
            )
        await done.wait()
        rate = n / (time.perf_counter() - started)
        await queue.cancel(tag)
        await queue.delete(if_unused=False, if_empty=False)
        return rate


async def sync_latency(stack: Stack, n: int, warm_up: int = 50) -> list[float]:
    """Milliseconds per warm sync no-op call over HTTP, one after another."""
    _, key = await deploy_noop(stack)
    headers = {"Authorization": f"Bearer {key}"}
    url = "/v1/services/bench/functions/noop/invocations"
    samples = []
    async with aiohttp.ClientSession(stack.url, headers=headers) as s:
        for i in range(warm_up + n):
            started = time.perf_counter()
            async with s.post(url, data=PAYLOAD) as r:
                assert r.status == 200, await r.text()
                await r.read()
            if i >= warm_up:
                samples.append((time.perf_counter() - started) * 1000)
    return samples


class Figures:
    def __init__(self) -> None:
        self.raw: list[float] = []
        self.trigger: list[float] = []
        self.sync: list[float] = []


def run(n: int = 2000, reps: int = 2, sync: int = 300, cluster: bool = False) -> Result:
    figures = {"classic": Figures(), "quorum": Figures()}
    with contextlib.ExitStack() as cleanup:
        tmp = Path(cleanup.enter_context(tempfile.TemporaryDirectory()))
        urls = {"classic": AMQP_URL, "quorum": AMQP_URL}
        if cluster:
            rabbits = RabbitCluster()
            cleanup.callback(rabbits.close)
            rabbits.start()
            urls["quorum"] = rabbits.url
        stacks = {}
        for kind in ("classic", "quorum"):
            stack = Stack(tmp / kind, worker_slots=16, amqp_url=urls[kind])
            stack.env["PYFC_QUEUE_TYPE"] = kind
            cleanup.callback(stack.stop)
            stacks[kind] = stack.start()
        for _ in range(reps):  # alternate, so load on the machine hits both alike
            for kind, stack in stacks.items():
                figures[kind].raw.append(uvloop.run(raw_throughput(urls[kind], kind, n)))
                figures[kind].trigger.append(uvloop.run(trigger_path(stack, n)))
                figures[kind].sync.extend(uvloop.run(sync_latency(stack, sync)))
    classic, quorum = figures["classic"], figures["quorum"]
    where = "3-node cluster" if cluster else "same node"
    rows = [
        Row(
            f"raw confirmed publish->consume, quorum ({where})",
            statistics.median(quorum.raw),
            "/s",
            baseline=statistics.median(classic.raw),
            baseline_name="same, classic queue",
        ),
        Row(
            f"async no-op e2e trigger path, quorum ({where})",
            statistics.median(quorum.trigger),
            "/s",
            baseline=statistics.median(classic.trigger),
            baseline_name="same, classic queues",
        ),
        Row(
            "async no-op e2e trigger path, quorum, vs raw quorum",
            statistics.median(quorum.trigger),
            "/s",
            baseline=statistics.median(quorum.raw),
            baseline_name="raw quorum publish->consume",
        ),
        Row(
            f"warm sync p50, quorum + reply queue ({where})",
            p50(quorum.sync),
            "ms",
            baseline=p50(classic.sync),
            baseline_name="classic + direct reply-to",
        ),
        Row(
            f"warm sync p99, quorum + reply queue ({where})",
            p99(quorum.sync),
            "ms",
            baseline=p99(classic.sync),
            baseline_name="classic + direct reply-to",
        ),
    ]
    for row in rows:
        row.bench = "queue_types"
    per_rep = {
        kind: {"raw": f.raw, "trigger": f.trigger, "sync_p50": p50(f.sync)}
        for kind, f in figures.items()
    }
    return Result(rows=rows, extra={"queue_types": per_rep})


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--sync", type=int, default=300)
    parser.add_argument("--cluster", action="store_true")
    args = parser.parse_args()
    result = run(args.n, args.reps, args.sync, args.cluster)
    print(
        f"{args.reps} repetitions of {args.n} async no-op invocations and {args.sync} warm "
        "sync calls per queue type, 64-byte payload"
    )
    print(table(result.rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
