"""Soak: mixed load on a real stack for a long time; every role's memory must stay flat and
nothing may leak (instances, workdirs, memory cgroups, queues).

Not a test (it runs for 30 minutes by default); figures go in the notes:

    .venv/bin/python bench/soak.py [--minutes 30] [--json bench/results/soak.json]

The stack: gateway, dispatcher, two workers (SQLite, the machine's RabbitMQ, a namespace
of its own). The load, all at once for the whole run:
- sync calls to an echo function (4 callers);
- async calls (~20/s) to the echo function and to a function that always fails (one retry,
  then the dead-letter store; the dead letters are purged every minute);
- cold starts: every 20 s a function's environment changes, so its next call starts a
  fresh instance, and the old ones are recycled;
- a throttled tenant (concurrency 1) called by 4 callers at once, so most of its calls
  are answered 429.

RSS of every role is sampled each minute; "flat" compares the mean of the last 5 samples
with the mean of the 5 after warm-up (the first 3 minutes are warm-up). At the end the
load stops, the stack drains, and the leak checks run: instance processes (children of
the workers) back to at most the warm pools, no workdir or memory cgroup without its
instance, no queue or message left in the namespace beyond the stack's own.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp

from tests.stack import Stack, code_body

ECHO = "def handler(event, context):\n    return event\n"
FAIL = "def handler(event, context):\n    raise RuntimeError('always')\n"
WARMUP_MINUTES = 3


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def queues(namespace: str) -> dict[str, int]:
    """The namespace's queues and their ready + unacked messages; streams left out (a log
    stream keeps its lines by design, bounded by its retention)."""
    out = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "name", "type", "messages", "--no-table-headers"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    found = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].startswith(namespace) and parts[1] != "stream":
            found[parts[0]] = int(parts[2])
    return found


class Soak:
    def __init__(self, stack: Stack, session: aiohttp.ClientSession) -> None:
        self.stack, self.session = stack, session
        self.counts: Counter[str] = Counter()
        self.stopping = False

    async def call(
        self, key: str, path: str, data: bytes = b"", headers: dict[str, str] | None = None
    ) -> int:
        h = {"Authorization": f"Bearer {key}", **(headers or {})}
        try:
            async with self.session.post(self.stack.url + path, data=data, headers=h) as r:
                await r.read()
                return r.status
        except aiohttp.ClientError:
            return -1

    async def api(self, key: str, method: str, path: str, body: Any = None) -> Any:
        h = {"Authorization": f"Bearer {key}"}
        async with self.session.request(method, self.stack.url + path, json=body, headers=h) as r:
            raw = await r.read()
            if r.status >= 300:
                raise RuntimeError(f"{method} {path}: {r.status} {raw[:300]!r}")
            return json.loads(raw) if raw else None

    async def deploy(self, key: str, service: str, functions: dict[str, str]) -> None:
        await self.api(key, "POST", "/v1/services", {"serviceName": service})
        for name, code in functions.items():
            body = {"functionName": name, "code": code_body({"index.py": code})}
            await self.api(key, "POST", f"/v1/services/{service}/functions", body)

    async def loop(self, label: str, key: str, path: str, pause: float, **kw: Any) -> None:
        while not self.stopping:
            status = await self.call(key, path, **kw)
            self.counts[f"{label} {status}"] += 1
            if pause:
                await asyncio.sleep(pause)

    async def cold_starts(self, key: str, fn: str) -> None:
        for i in itertools.count():
            await asyncio.sleep(20)
            if self.stopping:
                return
            body = {"environmentVariables": {"ROUND": str(i)}}
            await self.api(key, "PUT", fn, body)
            self.counts["cold-start updates"] += 1

    async def purge(self, key: str) -> None:
        while not self.stopping:
            await asyncio.sleep(60)
            got = await self.api(key, "DELETE", "/v1/dlq")
            self.counts["dead letters purged"] += int(got["purged"])


def role_pids(stack: Stack) -> dict[str, int]:
    return {name: proc.pid for name, proc in stack.procs.items() if proc.poll() is None}


def leak_report(stack: Stack, namespace: str) -> dict[str, Any]:
    worker_pids = [p.pid for n, p in stack.procs.items() if n.startswith("worker")]
    kids = [kid for pid in worker_pids for kid in children(pid)]
    kinds = Counter(
        Path(f"/proc/{kid}/cmdline").read_bytes().replace(b"\0", b" ")[:80].decode(errors="replace")
        for kid in kids
        if Path(f"/proc/{kid}/cmdline").exists()
    )
    workdirs = [
        d
        for pid in worker_pids
        for d in (Path(tempfile.gettempdir()) / f"pyfc-w-{pid}").glob("pyfc-*")
    ]
    cgroups = [
        d
        for pid in worker_pids
        for d in Path("/sys/fs/cgroup/memory").rglob(f"pyfc-{pid}/*")
        if d.is_dir()
    ]
    found = queues(namespace)
    return {
        "worker_children": len(kids),
        "worker_children_by_command": dict(kinds),
        "instance_workdirs": len(workdirs),
        "instance_cgroups": len(cgroups),
        "queues": len(found),
        "messages_left": sum(found.values()),
        "queues_with_messages": {name: n for name, n in found.items() if n},
    }


async def run(minutes: float) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="pyfc-soak-"))
    stack = Stack(root, worker_slots=8)
    stack.env["PYFC_INSTANCE_IDLE_SECONDS"] = "30"  # idle recycle happens during the soak
    stack.start(workers=2)
    try:
        baseline = leak_report(stack, stack.namespace)
        main_tenant, main_key = stack.create_tenant()
        created = stack.cli("tenant", "create", f"throttled-{os.getpid()}", "--concurrency", "1",
                            "--json")  # fmt: skip
        slow_key = json.loads(created.stdout)["apiKey"]
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            soak = Soak(stack, session)
            await soak.deploy(main_key, "soak", {"echo": ECHO, "fail": FAIL, "cold": ECHO})
            await soak.deploy(slow_key, "slow", {"echo": ECHO})
            await soak.api(
                main_key,
                "PUT",
                "/v1/services/soak/functions/fail/async-config",
                {"maxAsyncRetryAttempts": 1},
            )
            fn = "/v1/services/soak/functions/{}/invocations"
            asynchronous = {"X-Fc-Invocation-Type": "Async"}
            tasks = [
                *(
                    asyncio.create_task(
                        soak.loop("sync", main_key, fn.format("echo"), 0, data=b"x")
                    )
                    for _ in range(4)
                ),
                asyncio.create_task(
                    soak.loop("async", main_key, fn.format("echo"), 0.1, headers=asynchronous)
                ),
                asyncio.create_task(
                    soak.loop("async-fail", main_key, fn.format("fail"), 0.2, headers=asynchronous)
                ),
                asyncio.create_task(soak.loop("cold", main_key, fn.format("cold"), 0.5)),
                asyncio.create_task(soak.cold_starts(main_key, "/v1/services/soak/functions/cold")),
                asyncio.create_task(soak.purge(main_key)),
                *(
                    asyncio.create_task(
                        soak.loop(
                            "throttled",
                            slow_key,
                            "/v1/services/slow/functions/echo/invocations",
                            0.05,
                        )
                    )
                    for _ in range(4)
                ),
            ]
            samples: list[dict[str, int]] = []
            began = time.monotonic()
            for minute in itertools.count(1):
                await asyncio.sleep(max(0.0, began + 60 * minute - time.monotonic()))
                sample = {name: rss_kb(pid) for name, pid in role_pids(stack).items()}
                samples.append(sample)
                print(f"minute {minute}: rss kB {sample} calls {dict(soak.counts)}", flush=True)
                if minute >= minutes:
                    break
            soak.stopping = True
            await asyncio.gather(*tasks, return_exceptions=True)
            # Drain: async work done, idle instances recycled (idle 30 s + a sweep).
            await asyncio.sleep(75)
            leaks = leak_report(stack, stack.namespace)
        early = samples[WARMUP_MINUTES : WARMUP_MINUTES + 5] or samples[:1]
        late = samples[-5:]
        memory = {}
        for name in samples[-1]:
            a = sum(s.get(name, 0) for s in early) / len(early)
            b = sum(s.get(name, 0) for s in late) / len(late)
            memory[name] = {"after_warmup_kb": round(a), "end_kb": round(b),
                            "growth_pct": round(100 * (b - a) / a, 1) if a else None}  # fmt: skip
        return {
            "minutes": minutes,
            "calls": dict(soak.counts),
            "memory": memory,
            "at_start": baseline,
            "after_drain": leaks,
            "load_average": os.getloadavg(),
            "tenant": main_tenant,
        }
    finally:
        await asyncio.to_thread(stack.stop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    result = asyncio.run(run(args.minutes))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
