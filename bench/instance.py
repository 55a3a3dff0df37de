"""Warm `Instance.invoke` round trip and cold start, beside a raw socketpair echo.

Not a test: prints figures and ratios measured in the same run on this machine. The raw
baseline is a child process echoing length-prefixed bytes over a socketpair, read by
asyncio in the parent: the floor any instance protocol pays for the process hop.

    .venv/bin/python bench/instance.py [--n 2000] [--starts 20] [--uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import Result, Row, p50, p99
from shared.protocol import FunctionSpec, Invocation, Lineage
from worker.instance import Instance

ECHO = "def handler(event, context):\n    return event\n"

RAW_CHILD = """
import socket, struct, sys
s = socket.socket(fileno=int(sys.argv[1]))
r = s.makefile("rb")
while True:
    h = r.read(4)
    if len(h) < 4:
        break
    s.sendall(h + r.read(struct.unpack(">I", h)[0]))
"""


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[int(len(ordered) * 0.99) - 1]


async def raw_baseline(n: int, payload: bytes) -> list[float]:
    parent, child = socket.socketpair()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", RAW_CHILD, str(child.fileno()), pass_fds=(child.fileno(),)
    )
    child.close()
    reader, writer = await asyncio.open_connection(sock=parent)
    frame = len(payload).to_bytes(4, "big") + payload
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        writer.write(frame)
        await writer.drain()
        size = int.from_bytes(await reader.readexactly(4), "big")
        await reader.readexactly(size)
        samples.append((time.perf_counter() - t) * 1000)
    writer.close()
    await proc.wait()
    return samples


async def measure(n: int, starts: int) -> tuple[list[float], list[float], list[float], str]:
    code = Path(tempfile.mkdtemp(prefix="pyfc-bench-"))
    (code / "index.py").write_text(ECHO)
    spec = FunctionSpec(tenant="t", service="s", function="f", timeout=10)
    payload = b"x" * 64

    raw = await raw_baseline(n, payload)

    instance = await Instance.start(spec, code)
    warm = []
    for i in range(n + 100):
        inv = Invocation(
            id=f"r{i}",
            tenant="t",
            service="s",
            function="f",
            payload=payload,
            lineage=Lineage(trace_id="b"),
        )
        t = time.perf_counter()
        outcome = await instance.invoke(inv)
        if i >= 100:  # skip warm-up
            warm.append((time.perf_counter() - t) * 1000)
        assert outcome.body == payload
    await instance.stop()

    cold = []
    for _ in range(starts):
        t = time.perf_counter()
        instance = await Instance.start(spec, code)
        cold.append((time.perf_counter() - t) * 1000)
        await instance.stop()
    shutil.rmtree(code, ignore_errors=True)
    return raw, warm, cold, type(asyncio.get_running_loop()).__module__


def run(n: int = 2000, starts: int = 20, use_uvloop: bool = True) -> Result:
    if use_uvloop:
        import uvloop

        raw, warm, cold, loop = uvloop.run(measure(n, starts))
    else:
        raw, warm, cold, loop = asyncio.run(measure(n, starts))
    socketpair = "raw socketpair echo"
    rows = [
        Row("instance frame round trip p50", p50(warm), "ms", p50(raw), socketpair),
        Row("instance frame round trip p99", p99(warm), "ms", p99(raw), socketpair),
        Row("Instance.start, spawned interpreter p50", p50(cold), "ms"),
    ]
    for row in rows:
        row.bench = "instance"
    return Result(
        rows=rows,
        samples={
            "worker <-> instance frame: Instance.invoke warm": warm,
            "worker <-> instance frame: raw socketpair echo": raw,
        },
        extra={"instance": {"loop": loop}},
    )


def main(n: int, starts: int, use_uvloop: bool) -> None:
    result = run(n, starts, use_uvloop)
    s = result.samples
    raw = s["worker <-> instance frame: raw socketpair echo"]
    warm = s["worker <-> instance frame: Instance.invoke warm"]
    raw50, raw99 = percentiles(raw)
    w50, w99 = percentiles(warm)
    cold = result.rows[-1].value or 0.0
    print(f"loop: {result.extra['instance']['loop']}")
    print(f"raw socketpair echo   p50 {raw50:.3f} ms  p99 {raw99:.3f} ms  (n={n})")
    print(f"Instance.invoke warm  p50 {w50:.3f} ms  p99 {w99:.3f} ms  (n={n})")
    print(f"ratio warm/raw        p50 {w50 / raw50:.2f}x  p99 {w99 / raw99:.2f}x")
    print(f"Instance.start cold   p50 {cold:.1f} ms  (n={starts})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--starts", type=int, default=20)
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args()
    main(args.n, args.starts, args.uvloop)
