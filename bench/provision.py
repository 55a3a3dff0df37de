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
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp

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


def run(rounds: int, init: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(Path(tmp), worker_slots=8)
        try:
            stack.spawn("gateway", "gateway")
            stack.wait_healthy()
            stack.spawn("dispatcher", "dispatcher")
            port = free_port()
            stack.start_worker({"PYFC_WORKER_METRICS_PORT": str(port)})
            stack.wait_log("dispatcher", "ready")
            samples = asyncio.run(measure(stack, port, rounds, init))
        finally:
            stack.stop()
    base = median(samples["warm"])
    print(f"initializer sleeps {init:g} s; {rounds} rounds; medians (min-max)")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--init", type=float, default=0.3)
    args = parser.parse_args()
    run(args.rounds, args.init)


if __name__ == "__main__":
    main()
