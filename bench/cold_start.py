"""Cold start: an instance forked from the zygote, beside a fresh interpreter, same run.

Not a test: prints figures, ratios and whether each target is met on this machine.
Targets: p50 <= 3 ms and >= 10x `python -c` (issue "Worker fleet"); p50 <= 2 ms and
>= 40x `python -c` (issue 18, in the table at the end and in `python -m bench`).

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
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import Result, Row, Target, p50, p99, table
from shared.protocol import FunctionSpec, Invocation, Lineage
from shared.settings import Settings
from worker.child.isolation import TenantUsers, hidden_dirs
from worker.forking import Zygote
from worker.instance import Instance

ENTRY = "import time\ndef handler(event, context):\n    return repr(time.time())\n"
DEFAULT_HIDDEN = Settings(data_dir=Path(".")).instance_hidden_paths
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


async def cold_start_ms(
    spec: FunctionSpec, code: Path, zygote: Zygote | None, users: TenantUsers | None
) -> float:
    """Event arrival -> handler entry, for one new instance (stopped afterwards)."""
    arrived = time.time()
    instance = await Instance.start(spec, code, zygote=zygote, users=users)
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


async def hundred(
    spec: FunctionSpec, code: Path, zygote: Zygote | None, users: TenantUsers | None
) -> float:
    """Seconds until 100 concurrently started instances have each run one request."""

    async def one() -> Instance:
        instance = await Instance.start(spec, code, zygote=zygote, users=users)
        await instance.invoke(invocation())
        return instance

    began = time.perf_counter()
    instances = await asyncio.gather(*(one() for _ in range(100)))
    elapsed = time.perf_counter() - began
    await asyncio.gather(*(i.stop() for i in instances))
    return elapsed


async def idle_memory(
    spec: FunctionSpec, code: Path, zygote: Zygote | None, users: TenantUsers | None
) -> float:
    instance = await Instance.start(spec, code, zygote=zygote, users=users)
    await instance.invoke(invocation())
    await asyncio.sleep(0.2)  # idle, as a warm instance waiting for its next request
    mb = private_mb(instance.pid)
    await instance.stop()
    return mb


@dataclass
class Measured:
    forked: list[float]
    raw: list[float]
    spawned: list[float]
    hundred_forked: float
    hundred_spawned: float
    memory_forked: float
    memory_spawned: float
    cgroup: bool
    loop: str


async def measure(
    n: int, baseline_n: int, spawn_n: int, users: TenantUsers | None, hundred_n: bool = True
) -> Measured:
    code = Path(tempfile.mkdtemp(prefix="pyfc-bench-"))
    code.chmod(0o755)  # read by the instance's uid
    (code / "index.py").write_text(ENTRY)
    spec = FunctionSpec(tenant="t", service="s", function="f", timeout=10, tenant_number=1)
    zygote = Zygote(hidden=users.hidden if users is not None else ())
    await zygote.start()
    nan = float("nan")
    try:
        probe = await Instance.start(spec, code, zygote=zygote, users=users)
        cgroup = probe._memory_group is not None
        await probe.stop()
        for _ in range(10):  # warm-up: page cache, allocator, code caches
            await cold_start_ms(spec, code, zygote, users)
        forked = [await cold_start_ms(spec, code, zygote, users) for _ in range(n)]
        raw = [await baseline_ms() for _ in range(baseline_n)]
        spawned = [await cold_start_ms(spec, code, None, users) for _ in range(spawn_n)]
        hundred_forked = await hundred(spec, code, zygote, users) if hundred_n else nan
        hundred_spawned = await hundred(spec, code, None, users) if hundred_n else nan
        memory_forked = await idle_memory(spec, code, zygote, users)
        memory_spawned = await idle_memory(spec, code, None, users)
    finally:
        await zygote.close()
        shutil.rmtree(code, ignore_errors=True)
    loop = type(asyncio.get_running_loop()).__module__
    return Measured(
        forked,
        raw,
        spawned,
        hundred_forked,
        hundred_spawned,
        memory_forked,
        memory_spawned,
        cgroup,
        loop,
    )


def run(
    n: int = 200,
    baseline_n: int = 30,
    spawn_n: int = 30,
    uid_base: int = 100000,
    use_uvloop: bool = True,
    hundred_n: bool = True,
    hidden: str | None = None,
) -> Result:
    # As a root worker: the instance uid and the hidden socket directories (a mount
    # namespace per instance) of the default settings.
    hidden = DEFAULT_HIDDEN if hidden is None else hidden
    users = TenantUsers.for_worker(uid_base, hidden=hidden_dirs(hidden.split(",")))
    work = measure(n, baseline_n, spawn_n, users, hundred_n)
    if use_uvloop:
        import uvloop

        m = uvloop.run(work)
    else:
        m = asyncio.run(work)
    python_c = "python -c same imports"
    rows = [
        Row("cold start p50", p50(m.forked), "ms", target=Target("value", "<=", 2.0, "18")),
        Row(
            "cold start p50, x faster than python -c",
            p50(m.forked),
            "ms",
            baseline=p50(m.raw),
            baseline_name=python_c,
            ratio_kind="baseline/value",
            target=Target("ratio", ">=", 40, "18"),
        ),
        Row(
            "cold start p99",
            p99(m.forked),
            "ms",
            baseline=p99(m.raw),
            baseline_name=python_c,
            ratio_kind="baseline/value",
        ),
    ]
    if hundred_n:
        rows.append(
            Row(
                "0 -> 100 instances, forked",
                m.hundred_forked,
                "s",
                baseline=m.hundred_spawned,
                baseline_name="spawned",
                ratio_kind="baseline/value",
                target=Target("value", "<=", HUNDRED_TARGET_S, "Worker fleet"),
            )
        )
    rows.append(
        Row(
            "idle warm instance private memory",
            m.memory_forked,
            "MB",
            baseline=m.memory_spawned,
            baseline_name="spawned",
            target=Target("value", "<=", MEMORY_TARGET_MB, "Worker fleet"),
        )
    )
    for row in rows:
        row.bench = "cold_start"
    user = users.user(1) if users is not None else None
    return Result(
        rows=rows,
        samples={
            "cold start: forked from the zygote": m.forked,
            "cold start: spawned interpreter": m.spawned,
            "cold start: python -c same imports": m.raw,
        },
        extra={
            "cold_start": {
                "loop": m.loop,
                "memory_cgroup": m.cgroup,
                "instance_uid": user.uid if user else os.getuid(),
            }
        },
    )


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def report(args: argparse.Namespace) -> None:
    result = run(
        args.n, args.baseline, args.spawned, args.uid_base, args.uvloop, hidden=args.hidden
    )
    info = result.extra["cold_start"]
    s = result.samples
    forked = s["cold start: forked from the zygote"]
    raw = s["cold start: python -c same imports"]
    spawned = s["cold start: spawned interpreter"]
    rows = {row.metric: row for row in result.rows}
    hundred_row = rows["0 -> 100 instances, forked"]
    memory_row = rows["idle warm instance private memory"]
    f50, f99 = percentiles(forked)
    r50, r99 = percentiles(raw)
    s50, s99 = percentiles(spawned)
    print(f"loop: {info['loop']}; memory cgroup: {info['memory_cgroup']}", end="")
    print(f"; instance uid: {info['instance_uid']}")
    print("cold start, event arrival -> handler entry")
    print(f"  forked from zygote       p50 {f50:7.2f} ms  p99 {f99:7.2f} ms  (n={len(forked)})")
    print(f"  spawned (old path)       p50 {s50:7.2f} ms  p99 {s99:7.2f} ms  (n={len(spawned)})")
    print(f"  python -c same imports   p50 {r50:7.2f} ms  p99 {r99:7.2f} ms  (n={len(raw)})")
    print(f"  ratio python-c/forked    p50 {r50 / f50:6.1f}x  p99 {r99 / f99:6.1f}x")
    print(f"  ratio spawned/forked     p50 {s50 / f50:6.1f}x  p99 {s99 / f99:6.1f}x")
    print(f"  target p50 <= {P50_TARGET_MS:g} ms: {verdict(f50 <= P50_TARGET_MS)}")
    print(f"  target >= {RATIO_TARGET:g}x python -c: {verdict(r50 / f50 >= RATIO_TARGET)}")
    print("0 -> 100 instances (concurrent start + first request)")
    hf, hs = hundred_row.value or 0.0, hundred_row.baseline or 0.0
    print(f"  forked  {hf:6.3f} s   spawned {hs:6.3f} s   ratio {hs / hf:.1f}x")
    print(f"  target <= {HUNDRED_TARGET_S:g} s: {verdict(hf <= HUNDRED_TARGET_S)}")
    print("idle warm instance, private memory (Private_Clean + Private_Dirty)")
    print(f"  forked  {memory_row.value:6.2f} MB   spawned {memory_row.baseline:6.2f} MB")
    mf = memory_row.value or 0.0
    print(f"  target <= {MEMORY_TARGET_MB:g} MB: {verdict(mf <= MEMORY_TARGET_MB)}")
    print("\nissue 18 targets (p50 <= 2 ms, >= 40x python -c):")
    print(table(result.rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--baseline", type=int, default=30)
    parser.add_argument("--spawned", type=int, default=30)
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--uid-base", type=int, default=100000)
    parser.add_argument("--hidden", default=DEFAULT_HIDDEN, help="PYFC_INSTANCE_HIDDEN_PATHS")
    report(parser.parse_args())
