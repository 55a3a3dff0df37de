"""Cold start: an instance forked from the zygote, beside a fresh interpreter, same run.

Not a test: prints figures, ratios and whether each target is met on this machine.

- cold start = event arrival at the worker -> handler entry: `time.time()` before
  `Instance.start` + first `invoke`, against the `time.time()` the handler records on entry;
- baseline = `python -c "import asyncio, uvloop, msgspec; print(time.time())"` from
  exec to that print (what a spawned instance pays before it can even read its Init);
- 0 -> 100: 100 instances started concurrently, each having run its first request;
- idle private memory: Private_Clean + Private_Dirty of a warm idle instance.

Run as root, instances run as a tenant's uid (`--uid-base`, as a root worker does:
workdir chown at take, the drop in the child); `--uid-base 0` keeps them root.

    .venv/bin/python bench/cold_start.py [--n 200] [--baseline 30] [--uvloop] [--uid-base N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.protocol import FunctionSpec, Invocation, Lineage
from worker.child.isolation import TenantUsers
from worker.forking import Zygote
from worker.instance import Instance

ENTRY = "import time\ndef handler(event, context):\n    return repr(time.time())\n"
BASELINE = "import time, asyncio, uvloop, msgspec; print(repr(time.time()), flush=True)"

P50_TARGET_MS = 3.0
RATIO_TARGET = 10.0
HUNDRED_TARGET_S = 1.0
MEMORY_TARGET_MB = 10.0


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[max(0, int(len(ordered) * 0.99) - 1)]


def invocation() -> Invocation:
    return Invocation(
        id=f"r-{uuid.uuid4().hex[:12]}",
        tenant="t",
        service="s",
        function="f",
        payload=b"",
        lineage=Lineage(trace_id="bench"),
    )


def private_mb(pid: int) -> float:
    kb = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                kb += int(line.split()[1])
    return kb / 1024


USERS: TenantUsers | None = None  # set by main from --uid-base


async def cold_start_ms(spec: FunctionSpec, code: Path, zygote: Zygote | None) -> float:
    """Event arrival -> handler entry, for one new instance (stopped afterwards)."""
    arrived = time.time()
    instance = await Instance.start(spec, code, zygote=zygote, users=USERS)
    outcome = await instance.invoke(invocation())
    entered = float(outcome.body)
    await instance.stop()
    return (entered - arrived) * 1000


async def baseline_ms() -> float:
    began = time.time()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", BASELINE, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    return (float(out) - began) * 1000


async def hundred(spec: FunctionSpec, code: Path, zygote: Zygote | None) -> float:
    """Seconds until 100 concurrently started instances have each run one request."""

    async def one() -> Instance:
        instance = await Instance.start(spec, code, zygote=zygote, users=USERS)
        await instance.invoke(invocation())
        return instance

    began = time.perf_counter()
    instances = await asyncio.gather(*(one() for _ in range(100)))
    elapsed = time.perf_counter() - began
    await asyncio.gather(*(i.stop() for i in instances))
    return elapsed


async def idle_memory(spec: FunctionSpec, code: Path, zygote: Zygote | None) -> float:
    instance = await Instance.start(spec, code, zygote=zygote, users=USERS)
    await instance.invoke(invocation())
    await asyncio.sleep(0.2)  # idle, as a warm instance waiting for its next request
    mb = private_mb(instance.pid)
    await instance.stop()
    return mb


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


async def main(n: int, baseline_n: int, spawn_n: int) -> None:
    code = Path(tempfile.mkdtemp(prefix="pyfc-bench-"))
    code.chmod(0o755)  # read by the instance's uid
    (code / "index.py").write_text(ENTRY)
    spec = FunctionSpec(tenant="t", service="s", function="f", timeout=10, tenant_number=1)
    zygote = Zygote()
    await zygote.start()
    try:
        probe = await Instance.start(spec, code, zygote=zygote, users=USERS)
        cgroup = probe._memory_group is not None
        await probe.stop()
        for _ in range(10):  # warm-up: page cache, allocator, code caches
            await cold_start_ms(spec, code, zygote)
        forked = [await cold_start_ms(spec, code, zygote) for _ in range(n)]
        raw = [await baseline_ms() for _ in range(baseline_n)]
        spawned = [await cold_start_ms(spec, code, None) for _ in range(spawn_n)]
        hundred_forked = await hundred(spec, code, zygote)
        hundred_spawned = await hundred(spec, code, None)
        memory_forked = await idle_memory(spec, code, zygote)
        memory_spawned = await idle_memory(spec, code, None)
    finally:
        await zygote.close()

    f50, f99 = percentiles(forked)
    r50, r99 = percentiles(raw)
    s50, s99 = percentiles(spawned)
    user = USERS.user(1) if USERS is not None else None
    print(f"loop: {type(asyncio.get_running_loop()).__module__}; memory cgroup: {cgroup}", end="")
    print(f"; instance uid: {user.uid if user else os.getuid()}")
    print("cold start, event arrival -> handler entry")
    print(f"  forked from zygote       p50 {f50:7.2f} ms  p99 {f99:7.2f} ms  (n={n})")
    print(f"  spawned (old path)       p50 {s50:7.2f} ms  p99 {s99:7.2f} ms  (n={spawn_n})")
    print(f"  python -c same imports   p50 {r50:7.2f} ms  p99 {r99:7.2f} ms  (n={baseline_n})")
    print(f"  ratio python-c/forked    p50 {r50 / f50:6.1f}x  p99 {r99 / f99:6.1f}x")
    print(f"  ratio spawned/forked     p50 {s50 / f50:6.1f}x  p99 {s99 / f99:6.1f}x")
    print(f"  target p50 <= {P50_TARGET_MS:g} ms: {verdict(f50 <= P50_TARGET_MS)}")
    print(f"  target >= {RATIO_TARGET:g}x python -c: {verdict(r50 / f50 >= RATIO_TARGET)}")
    print("0 -> 100 instances (concurrent start + first request)")
    print(f"  forked  {hundred_forked:6.3f} s   spawned {hundred_spawned:6.3f} s", end="")
    print(f"   ratio {hundred_spawned / hundred_forked:.1f}x")
    print(f"  target <= {HUNDRED_TARGET_S:g} s: {verdict(hundred_forked <= HUNDRED_TARGET_S)}")
    print("idle warm instance, private memory (Private_Clean + Private_Dirty)")
    print(f"  forked  {memory_forked:6.2f} MB   spawned {memory_spawned:6.2f} MB")
    print(f"  target <= {MEMORY_TARGET_MB:g} MB: {verdict(memory_forked <= MEMORY_TARGET_MB)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--baseline", type=int, default=30)
    parser.add_argument("--spawned", type=int, default=30)
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--uid-base", type=int, default=100000)
    args = parser.parse_args()
    USERS = TenantUsers.for_worker(args.uid_base)
    run = main(args.n, args.baseline, args.spawned)
    if args.uvloop:
        import uvloop

        uvloop.run(run)
    else:
        asyncio.run(run)
