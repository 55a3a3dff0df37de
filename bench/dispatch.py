"""Dispatcher figures: the admission decision's cost, and sustained async throughput.

Not a test: prints figures measured in this run on this machine.
Targets: async no-op end to end >= 0.95x raw persistent, confirmed publish->consume
measured in the same run, on both paths (issue 18); admission decision p99 <= 50 us and
>= 1,000 invocations/s end to end (issue "Dispatcher").

    .venv/bin/python bench/dispatch.py [--n 4000] [--reps 3]

End to end is measured twice:
- trigger path: invocations published to the invoke exchange (as trigger adapters do),
  until every outcome is recorded Succeeded in the metadata store;
- HTTP path: async invokes through the gateway (202 = recorded and confirmed), until
  every outcome is recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sqlite3
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

from bench.report import Result, Row, Target, p50, percentile, spread_of, table
from dispatcher.service import Dispatcher
from shared import codec
from shared.models import Function, InvocationRecord, Service
from shared.protocol import Invocation, Lineage
from shared.store import Store
from shared.topology import HDR_KIND, HDR_TENANT, Topology, invoke_routing_key
from tests.stack import AMQP_URL, Stack, code_body, delete_namespace

PAYLOAD = b"x" * 64


async def admission_us(n: int) -> list[float]:
    """Time `Dispatcher.decide` (cache hits, as in steady state) for a mix of tenants."""
    with tempfile.TemporaryDirectory() as tmp:
        store = await Store.open(f"sqlite+aiosqlite:///{tmp}/bench.db")
        await store.migrate()
        tenants = [f"t{i}" for i in range(50)]
        for tenant in tenants:
            await store.create_tenant(tenant, 100)
            await store.create_service(tenant, Service(service_name="s"))
            await store.create_function(
                tenant, "s", Function(function_name="f", service_name="s", code_checksum="0" * 64)
            )
        connection = await aio_pika.connect_robust(AMQP_URL)
        topo = Topology(f"bench{uuid.uuid4().hex[:8]}")
        dispatcher = await Dispatcher.open(connection, store, topo, retry_steps_ms=[1000])
        invs = [
            Invocation(
                id=str(uuid.uuid4()),
                tenant=tenants[i % len(tenants)],
                service="s",
                function="f",
                kind="async" if i % 2 else "sync",
                deadline=time.time() + 60,
                lineage=Lineage(trace_id="x"),
            )
            for i in range(n + 1000)
        ]
        samples = []
        for i, inv in enumerate(invs):
            t0 = time.perf_counter_ns()
            decision = await dispatcher.decide(inv)
            elapsed = time.perf_counter_ns() - t0
            assert decision.verdict == "run", decision.verdict
            dispatcher.admission.release(inv.id)
            if i >= 1000:  # the first calls fill the caches
                samples.append(elapsed / 1000)
        await dispatcher.close()
        await connection.close()
        await store.close()
        await delete_namespace(topo.namespace)
        return samples


async def raw_throughput(n: int, body: bytes = PAYLOAD) -> float:
    """Persistent, confirmed publish -> consume with manual ack, one durable queue."""
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        publish = await connection.channel(publisher_confirms=True)
        consume = await connection.channel()
        await consume.set_qos(prefetch_count=256)
        name = f"bench-raw-{uuid.uuid4().hex[:8]}"
        queue = await consume.declare_queue(name, durable=True)
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
                        aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                        routing_key=name,
                    )
                    for _ in range(min(500, n - start))
                )
            )
        await done.wait()
        rate = n / (time.perf_counter() - started)
        await queue.cancel(tag)
        await queue.delete(if_unused=False, if_empty=False)
        return rate


def succeeded(db: Path, tenant: str) -> int:
    with sqlite3.connect(db, timeout=30) as conn:
        row = conn.execute(
            "SELECT count(*) FROM invocations WHERE tenant = ? AND status = 'Succeeded'",
            (tenant,),
        ).fetchone()
    return int(row[0])


async def wait_succeeded(db: Path, tenant: str, n: int, timeout: float = 300) -> float:
    deadline = time.monotonic() + timeout
    while (done := succeeded(db, tenant)) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {done}/{n} succeeded")
        await asyncio.sleep(0.05)
    return time.perf_counter()


async def deploy_noop(stack: Stack) -> tuple[str, str]:
    tenant, key = stack.create_tenant()
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(stack.url, headers=headers) as s:
        async with s.post("/v1/services", json={"serviceName": "bench"}) as r:
            assert r.status == 201, await r.text()
        body = {
            "functionName": "noop",
            "code": code_body({"index.py": "def handler(e, c):\n    return b''\n"}),
            "instanceConcurrency": 8,
        }
        async with s.post("/v1/services/bench/functions", json=body) as r:
            assert r.status == 201, await r.text()
        # One sync call so the instance is warm and the caches are filled.
        async with s.post("/v1/services/bench/functions/noop/invocations") as r:
            assert r.status == 200, await r.text()
    return tenant, key


async def trigger_path(stack: Stack, n: int) -> float:
    tenant, _ = await deploy_noop(stack)
    db = stack.root / "data" / "pyfc.db"
    store = await Store.open(f"sqlite+aiosqlite:///{db}")
    invs = [
        Invocation(
            id=str(uuid.uuid4()),
            tenant=tenant,
            service="bench",
            function="noop",
            kind="async",
            source="cron",
            payload=PAYLOAD,
            created_at=time.time(),
            lineage=Lineage(trace_id="bench"),
        )
        for _ in range(n)
    ]
    for inv in invs:  # as the status API expects; not part of the measured path
        await store.record_accepted(
            InvocationRecord(
                request_id=inv.id,
                tenant=tenant,
                service_name="bench",
                qualifier="LATEST",
                function_name="noop",
            )
        )
    await store.close()
    connection = await aio_pika.connect(stack.env["PYFC_AMQP_URL"].split(",")[0])
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(Topology(stack.namespace).invoke_exchange)
        started = time.perf_counter()
        for start in range(0, n, 500):
            await asyncio.gather(
                *(
                    exchange.publish(
                        aio_pika.Message(
                            codec.encode(inv),
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                            headers={HDR_TENANT: tenant, HDR_KIND: "async"},
                        ),
                        routing_key=invoke_routing_key(tenant),
                    )
                    for inv in invs[start : start + 500]
                )
            )
        finished = await wait_succeeded(db, tenant, n)
    return n / (finished - started)


async def http_path(stack: Stack, n: int, senders: int = 32) -> tuple[float, float]:
    tenant, key = await deploy_noop(stack)
    db = stack.root / "data" / "pyfc.db"
    url = "/v1/services/bench/functions/noop/invocations"
    headers = {"Authorization": f"Bearer {key}", "X-Fc-Invocation-Type": "Async"}
    remaining = iter(range(n))
    async with aiohttp.ClientSession(stack.url, headers=headers) as s:

        async def sender() -> None:
            for _ in remaining:
                async with s.post(url, data=PAYLOAD) as r:
                    assert r.status == 202, await r.text()

        started = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(senders)))
        accepted = time.perf_counter()
        finished = await wait_succeeded(db, tenant, n + 0)
    return n / (accepted - started), n / (finished - started)


def run(
    n: int = 4000,
    decisions: int = 20000,
    reps: int = 3,
    stack: Stack | None = None,
) -> Result:
    """Admission decisions, then `reps` repetitions of raw, trigger path and HTTP path
    (each repetition a fresh tenant) on a stack of its own unless `stack` is given."""
    admission = uvloop.run(admission_us(decisions))
    raws, triggers, accepts, https = [], [], [], []
    with contextlib.ExitStack() as cleanup:
        if stack is None:
            tmp = cleanup.enter_context(tempfile.TemporaryDirectory())
            stack = Stack(Path(tmp), worker_slots=16)
            cleanup.callback(stack.stop)
            stack.start()
        for _ in range(reps):
            raws.append(uvloop.run(raw_throughput(n)))
            triggers.append(uvloop.run(trigger_path(stack, n)))
            accept, http = uvloop.run(http_path(stack, n))
            accepts.append(accept)
            https.append(http)
    raw = statistics.median(raws)
    baseline = "raw confirmed publish->consume"

    def ratios(rates: list[float]) -> str:
        each = [rate / base for rate, base in zip(rates, raws, strict=True)]
        return f"ratio per repetition {min(each):.2f}-{max(each):.2f}x" if reps > 1 else ""

    rows = [
        Row(
            "async no-op e2e, trigger path",
            statistics.median(triggers),
            "/s",
            baseline=raw,
            baseline_name=baseline,
            target=Target("ratio", ">=", 0.95, "18"),
            spread=spread_of(triggers),
            note=ratios(triggers),
        ),
        Row(
            "async no-op e2e, HTTP path",
            statistics.median(https),
            "/s",
            baseline=raw,
            baseline_name=baseline,
            target=Target("ratio", ">=", 0.95, "18"),
            spread=spread_of(https),
            note=ratios(https),
        ),
        Row(
            "async no-op e2e, slower path, absolute",
            statistics.median([min(t, h) for t, h in zip(triggers, https, strict=True)]),
            "/s",
            target=Target("value", ">=", 1000, "Dispatcher"),
        ),
        Row(
            "async HTTP accept rate (202s)",
            statistics.median(accepts),
            "/s",
            baseline=raw,
            baseline_name=baseline,
            spread=spread_of(accepts),
        ),
        Row(
            "admission decision p99",
            percentile(admission, 0.99),
            "us",
            target=Target("value", "<=", 50, "Dispatcher"),
        ),
    ]
    for row in rows:
        row.bench = "dispatch"
    per_rep = {"raw": raws, "trigger": triggers, "http": https, "accept": accepts}
    return Result(
        rows=rows,
        extra={"admission_us": {"p50": p50(admission)}, "dispatch_repetitions": per_rep},
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--decisions", type=int, default=20000)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    result = run(args.n, args.decisions, args.reps)
    print(f"{args.reps} repetitions of {args.n} async no-op invocations, 64-byte payload;")
    print(f"admission: {args.decisions} decisions (Dispatcher.decide), 50 tenants")
    print(table(result.rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
