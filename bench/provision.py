"""First invocation of a function with a slow initializer: provisioned against on demand.

Not a test: prints figures and ratios measured in the same run on this machine. Each round
deploys two fresh functions whose initializer sleeps `--init` seconds (loading a model,
opening connections). One gets a provision config (target 1) and is invoked once its
instance is ready (observed on the worker metrics endpoint); the other is invoked cold.
Baseline: a warm invoke of the same function right after.

    .venv/bin/python bench/provision.py [--rounds 10] [--init 0.3]
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

import aiohttp

from bench.report import Result, Row
from tests.stack import Stack, code_body, free_port

SLOW_INIT = (
    "import time\n"
    "def init(context):\n"
    "    time.sleep({init})\n"
    "def handler(event, context):\n"
    "    return event\n"
)


class Bench:
    def __init__(self, session: aiohttp.ClientSession, stack: Stack, key: str, port: int) -> None:
        self.session, self.stack, self.port = session, stack, port
        self.headers = {"Authorization": f"Bearer {key}"}
        self.service = f"bench_{uuid.uuid4().hex[:6]}"

    async def call(self, method: str, path: str, **kw: object) -> tuple[int, bytes]:
        url = self.stack.url + path
        async with self.session.request(method, url, headers=self.headers, **kw) as r:
            return r.status, await r.read()

    async def deploy(self, init: float) -> str:
        function = f"fn_{uuid.uuid4().hex[:8]}"
        body = {
            "functionName": function,
            "code": code_body({"index.py": SLOW_INIT.format(init=init)}),
            "initializer": "index.init",
            "initializationTimeout": 30,
        }
        status, text = await self.call("POST", f"/v1/services/{self.service}/functions", json=body)
        assert status == 201, text
        return function

    async def invoke_ms(self, function: str) -> float:
        began = time.perf_counter()
        status, text = await self.call(
            "POST", f"/v1/services/{self.service}/functions/{function}/invocations", data=b"x"
        )
        assert status == 200, text
        return (time.perf_counter() - began) * 1000

    async def provisioned(self, function: str) -> float:
        async with self.session.get(f"http://127.0.0.1:{self.port}/metrics") as r:
            text = await r.text()
        for line in text.splitlines():
            if line.startswith("pyfc_worker_instances_provisioned{") and (
                f'function="{function}"' in line
            ):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    async def provision_ms(self, function: str) -> float:
        """PUT target 1 -> the instance is ready (initializer done) on the worker."""
        began = time.perf_counter()
        path = f"/v1/services/{self.service}.LATEST/functions/{function}/provision-config"
        status, text = await self.call("PUT", path, json={"target": 1})
        assert status == 200, text
        while True:  # polled: the metrics endpoint is all a client can see
            if await self.provisioned(function) >= 1:
                return (time.perf_counter() - began) * 1000
            await asyncio.sleep(0.005)


def median(samples: list[float]) -> float:
    return statistics.median(samples)


async def measure(stack: Stack, port: int, rounds: int, init: float) -> dict[str, list[float]]:
    _, key = stack.create_tenant()
    async with aiohttp.ClientSession() as session:
        bench = Bench(session, stack, key, port)
        status, text = await bench.call("POST", "/v1/services", json={"serviceName": bench.service})
        assert status == 201, text
        out: dict[str, list[float]] = {
            kind: [] for kind in ("warm", "cold", "provisioned", "again", "ready")
        }
        for _ in range(rounds):
            on_demand = await bench.deploy(init)
            out["cold"].append(await bench.invoke_ms(on_demand))
            out["warm"].append(await bench.invoke_ms(on_demand))
            kept = await bench.deploy(init)
            out["ready"].append(await bench.provision_ms(kept))
            out["provisioned"].append(await bench.invoke_ms(kept))
            out["again"].append(await bench.invoke_ms(kept))
            for function in (on_demand, kept):  # leave the slots free again
                await bench.call("DELETE", f"/v1/services/{bench.service}/functions/{function}")
    return out


def start_stack(root: Path, metrics_port: int, worker_slots: int = 8) -> Stack:
    """A stack whose one worker serves its metrics on `metrics_port` (provisioned
    instances are seen there)."""
    stack = Stack(root, worker_slots=worker_slots)
    try:
        stack.spawn("gateway", "gateway")
        stack.wait_healthy()
        stack.spawn("dispatcher", "dispatcher")
        stack.start_worker({"PYFC_WORKER_METRICS_PORT": str(metrics_port)})
        stack.wait_log("dispatcher", "ready")
    except BaseException:
        stack.stop()
        raise
    return stack


def run(
    rounds: int = 10,
    init: float = 0.3,
    stack: Stack | None = None,
    metrics_port: int | None = None,
) -> Result:
    """A stack of its own unless `stack` (with its worker's `metrics_port`) is given."""
    with contextlib.ExitStack() as cleanup:
        if stack is None or metrics_port is None:
            tmp = cleanup.enter_context(tempfile.TemporaryDirectory())
            metrics_port = free_port()
            stack = start_stack(Path(tmp), metrics_port)
            cleanup.callback(stack.stop)
        samples = asyncio.run(measure(stack, metrics_port, rounds, init))
    warm = median(samples["warm"])
    first = median(samples["provisioned"])
    rows = [
        Row("warm invoke, single calls (median)", warm, "ms"),
        Row("first invoke, on demand (median)", median(samples["cold"]), "ms", warm, "warm"),
        Row("first invoke, provisioned (median)", first, "ms", warm, "warm"),
        Row("PUT provision-config -> ready (median)", median(samples["ready"]), "ms"),
    ]
    for row in rows:
        row.bench = "provision"
    rows[1].note = f"initializer sleeps {init:g} s; {rounds} rounds"
    return Result(rows=rows, extra={"provision_ms": samples})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--init", type=float, default=0.3)
    args = parser.parse_args()
    samples = run(args.rounds, args.init).extra["provision_ms"]
    base = median(samples["warm"])
    print(f"initializer sleeps {args.init:g} s; {args.rounds} rounds; medians (min-max)")
    for name, kind in (
        ("warm invoke (baseline)", "warm"),
        ("first invoke, on demand (cold)", "cold"),
        ("first invoke, provisioned", "provisioned"),
        ("second invoke, provisioned", "again"),
        ("PUT provision-config -> instance ready", "ready"),
    ):
        got = samples[kind]
        print(
            f"  {name:40s} {median(got):8.1f} ms ({min(got):.1f}-{max(got):.1f})"
            f"  {median(got) / base:6.1f}x warm"
        )


if __name__ == "__main__":
    main()
