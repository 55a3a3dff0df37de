"""Log stores: what shipping costs an invocation, and how fast one request's lines are found.

Not a test: prints figures and ratios measured in the same run on this machine.
Targets (issue 16): warm sync invoke p50 of a function that logs one line per call with
the log store on <= 1.10x the same with it off (two stacks alike but for
PYFC_LOG_STORE, called in alternating blocks so a change of load falls on both); a query
by request id over a store of 100,000 lines, p99 <= 100 ms (HTTP, through the gateway).

    .venv/bin/python bench/logs.py [--n 2000] [--blocks 4] [--lines 100000] [--queries 100]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import uvloop

from bench.report import Result, Row, Target, p50, p99, table
from tests.stack import Stack, code_body

LOGGER = """
def handler(event, context):
    n = int(event or b"1")
    for i in range(n):
        print(f"line {i} of {context.request_id}")
    return "ok"
"""


async def deploy(stack: Stack) -> dict[str, str]:
    _, key = stack.create_tenant()
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(stack.url, headers=headers) as s:
        async with s.post("/v1/services", json={"serviceName": "bench"}) as r:
            assert r.status == 201, await r.text()
        body = {"functionName": "log", "code": code_body({"index.py": LOGGER})}
        async with s.post("/v1/services/bench/functions", json=body) as r:
            assert r.status == 201, await r.text()
    return headers


async def calls(stack: Stack, headers: dict[str, str], n: int, warm_up: int) -> list[float]:
    """`n` sequential warm sync invokes (after `warm_up` more), each logging one line."""
    samples = []
    async with aiohttp.ClientSession(stack.url, headers=headers) as s:
        for i in range(n + warm_up):
            t0 = time.perf_counter()
            async with s.post("/v1/services/bench/functions/log/invocations", data=b"1") as r:
                await r.read()
                assert r.status == 200
            if i >= warm_up:
                samples.append((time.perf_counter() - t0) * 1000)
    return samples


async def fill_and_query(
    stack: Stack, headers: dict[str, str], lines: int, queries: int
) -> tuple[list[float], int]:
    """Fill the store with `lines` lines (calls of 1,000 lines each), with a one-line call
    between them whose id is queried afterwards; the query latencies and the lines stored."""
    bulk = max(1, lines // 1000)
    probes: list[str] = []
    stored = 0
    async with aiohttp.ClientSession(stack.url, headers=headers) as s:
        path = "/v1/services/bench/functions/log"
        for i in range(max(bulk, queries)):
            if i < bulk:
                async with s.post(f"{path}/invocations", data=b"1000") as r:
                    assert r.status == 200
                stored += 1003
            if i < queries:
                async with s.post(f"{path}/invocations", data=b"1") as r:
                    assert r.status == 200
                    probes.append(r.headers["X-Fc-Request-Id"])
                stored += 4
        # Wait until the last call's lines are in the store.
        while True:
            async with s.get(f"{path}/logs", params={"requestId": probes[-1]}) as r:
                if r.status == 200 and len((await r.json())["logs"]) == 4:
                    break
            await asyncio.sleep(0.1)
        samples = []
        for rid in probes:
            t0 = time.perf_counter()
            async with s.get(f"{path}/logs", params={"requestId": rid}) as r:
                answer = await r.json()
            samples.append((time.perf_counter() - t0) * 1000)
            assert r.status == 200 and len(answer["logs"]) == 4, answer
    return samples, stored


def run(n: int = 2000, blocks: int = 4, lines: int = 100_000, queries: int = 100) -> Result:
    with contextlib.ExitStack() as cleanup:
        stacks = {}
        for name, store in (("on", "true"), ("off", "false")):
            tmp = cleanup.enter_context(tempfile.TemporaryDirectory())
            stack = Stack(Path(tmp), worker_slots=4)
            stack.env["PYFC_LOG_STORE"] = store
            cleanup.callback(stack.stop)
            stacks[name] = stack.start()
        headers = {name: uvloop.run(deploy(stack)) for name, stack in stacks.items()}
        samples: dict[str, list[float]] = {"on": [], "off": []}
        per_block = max(1, n // blocks)
        for block in range(blocks):
            order = ("on", "off") if block % 2 == 0 else ("off", "on")
            for name in order:
                warm_up = 200 if block < 2 else 50
                samples[name] += uvloop.run(
                    calls(stacks[name], headers[name], per_block, min(warm_up, n))
                )
        query, stored = uvloop.run(fill_and_query(stacks["on"], headers["on"], lines, queries))
    rows = [
        Row(
            "warm sync invoke, 1 log line, store on p50",
            p50(samples["on"]),
            "ms",
            baseline=p50(samples["off"]),
            baseline_name="store off, same blocks",
            target=Target("ratio", "<=", 1.10, "16"),
        ),
        Row(
            "warm sync invoke, 1 log line, store on p99",
            p99(samples["on"]),
            "ms",
            baseline=p99(samples["off"]),
            baseline_name="store off, same blocks",
        ),
        Row(
            f"logs by request id over {stored:,} stored lines p50",
            p50(query),
            "ms",
        ),
        Row(
            f"logs by request id over {stored:,} stored lines p99",
            p99(query),
            "ms",
            target=Target("value", "<=", 100.0, "16"),
        ),
    ]
    for row in rows:
        row.bench = "logs"
    return Result(
        rows=rows,
        samples={
            "round trip: warm invoke, log store on": samples["on"],
            "round trip: warm invoke, log store off": samples["off"],
            "logs query by request id": query,
        },
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=100)
    args = parser.parse_args()
    result = run(args.n, args.blocks, args.lines, args.queries)
    print(f"n={args.n} sequential calls in {args.blocks} blocks; {args.queries} queries")
    print(table(result.rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
