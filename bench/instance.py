"""Warm `Instance.invoke` round trip and cold start, beside a raw socketpair echo.

Not a test: prints figures and ratios measured in the same run on this machine. The raw
baseline is a child process echoing length-prefixed bytes over a socketpair, read by
asyncio in the parent: the floor any instance protocol pays for the process hop.

    .venv/bin/python bench/instance.py [--n 2000] [--starts 20] [--uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

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


async def main(n: int, starts: int) -> None:
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

    raw50, raw99 = percentiles(raw)
    w50, w99 = percentiles(warm)
    print(f"loop: {type(asyncio.get_running_loop()).__module__}")
    print(f"raw socketpair echo   p50 {raw50:.3f} ms  p99 {raw99:.3f} ms  (n={n})")
    print(f"Instance.invoke warm  p50 {w50:.3f} ms  p99 {w99:.3f} ms  (n={n})")
    print(f"ratio warm/raw        p50 {w50 / raw50:.2f}x  p99 {w99 / raw99:.2f}x")
    print(f"Instance.start cold   p50 {statistics.median(cold):.1f} ms  (n={starts})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--starts", type=int, default=20)
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args()
    if args.uvloop:
        import uvloop

        uvloop.run(main(args.n, args.starts))
    else:
        asyncio.run(main(args.n, args.starts))
