"""Control traffic as the fleet grows: heartbeats and provision snapshots with 2 and 20
(light, simulated) workers beside a real stack.

Not a test: prints figures measured in this run on this machine. A simulated worker is
the worker's own heartbeat and provisioning part (`worker.provision.Provisioner`, the code
a real worker runs) with an empty instance pool, all in this process on one connection; so
the messages are the product's own, whatever its design, and only the instances and the
work consumers are left out. Measured over a window after the fleet has settled:

- control deliveries per second to each simulated worker (beats and snapshots it receives),
  and heartbeats published per second by all of them;
- CPU of the real dispatcher (and of the shared RabbitMQ node, noisy: others use it too).

Target (issue 18): control traffic O(workers), i.e. what each worker receives per second
stays flat as the fleet grows: at 20 workers <= 1.5x what it is at 2.

    .venv/bin/python bench/control.py [--workers 2,20] [--window 6]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from bench.cpu import CpuMeter
from bench.report import Result, Row, Target, table
from shared.blobs import LocalBlobStore
from shared.topology import Topology
from tests.stack import AMQP_URL, Stack
from worker.codecache import CodeCache
from worker.pool import InstancePool
from worker.provision import Provisioner

SETTLE_SECONDS = 1.5  # first beats answered, snapshots sent


class Counted(Provisioner):
    """A worker's Provisioner that counts the control messages it receives."""

    received = 0  # across all of them (one simulation at a time)

    async def _on_beat(self, message: AbstractIncomingMessage) -> None:
        Counted.received += 1
        await super()._on_beat(message)

    async def _on_snapshot(self, message: AbstractIncomingMessage) -> None:
        Counted.received += 1
        await super()._on_snapshot(message)


async def simulate(
    namespace: str, workers: int, window: float, dispatcher_pid: int, root: Path, settle: float
) -> dict[str, float]:
    """`workers` simulated workers join the namespace's fleet; figures over `window`."""
    connection = await aio_pika.connect_robust(AMQP_URL, timeout=10)
    code = CodeCache(LocalBlobStore(root / "blobs"), root / "code")
    fleet: list[tuple[Provisioner, InstancePool]] = []
    try:
        for _ in range(workers):
            pool = InstancePool(max_instances=4, memory_cgroups=False)
            provisioner = await Counted.open(
                connection,
                Topology(namespace),
                pool,
                code,
                worker_id=f"sim-{uuid.uuid4().hex[:8]}",
                slots=4,
            )
            fleet.append((provisioner, pool))
        await asyncio.sleep(settle)
        meter = CpuMeter({"dispatcher": dispatcher_pid})
        Counted.received, beats = 0, sum(p._seq for p, _ in fleet)
        began = time.monotonic()
        meter.start()
        await asyncio.sleep(window)
        used = meter.stop()
        elapsed = time.monotonic() - began
        beats = sum(p._seq for p, _ in fleet) - beats
        return {
            "workers": workers,
            "window_s": round(elapsed, 3),
            "received_per_s": Counted.received / elapsed,
            "received_per_worker_per_s": Counted.received / elapsed / workers,
            "beats_published_per_s": beats / elapsed,
            "dispatcher_cpu_ms_per_s": used["dispatcher"] / elapsed * 1000,
            "rabbitmq_cpu_ms_per_s": used.get("rabbitmq (shared)", float("nan")) / elapsed * 1000,
        }
    finally:
        for provisioner, pool in fleet:
            await provisioner.close()
            await pool.close()
        await connection.close()


def run(
    sizes: tuple[int, ...] = (2, 20),
    window: float = 6.0,
    stack: Stack | None = None,
    settle: float = SETTLE_SECONDS,
) -> Result:
    """Each fleet size in turn beside a stack of its own unless `stack` is given (its real
    worker beats too, so the fleet is one larger than the simulated part)."""
    figures: list[dict[str, float]] = []
    with contextlib.ExitStack() as cleanup:
        tmp = Path(cleanup.enter_context(tempfile.TemporaryDirectory()))
        if stack is None:
            stack = Stack(tmp / "stack")
            cleanup.callback(stack.stop)
            stack.start()
        pid = stack.procs["dispatcher"].pid
        for size in sizes:
            figures.append(asyncio.run(simulate(stack.namespace, size, window, pid, tmp, settle)))
    small, large = figures[0], figures[-1]
    rows = []
    if len(figures) > 1:
        rows.append(
            Row(
                f"control msgs/s per worker, {large['workers']:.0f} vs "
                f"{small['workers']:.0f} workers",
                large["received_per_worker_per_s"],
                "/s",
                baseline=small["received_per_worker_per_s"],
                baseline_name=f"at {small['workers']:.0f} workers",
                target=Target("ratio", "<=", 1.5, "18"),
                note="flat (ratio ~1) when control traffic is O(workers); the fleet also "
                "holds the stack's real worker",
            )
        )
    for f in figures:
        n = f"{f['workers']:.0f}"
        received, beats = f["received_per_s"], f["beats_published_per_s"]
        rows.append(Row(f"control msgs/s received, {n} simulated workers", received, "/s"))
        rows.append(Row(f"heartbeats published/s, {n} simulated workers", beats, "/s"))
        rows.append(
            Row(
                f"dispatcher CPU, {n} simulated workers",
                f["dispatcher_cpu_ms_per_s"],
                "ms/s",
                baseline=None if f is small else small["dispatcher_cpu_ms_per_s"],
                baseline_name=f"at {small['workers']:.0f} workers",
            )
        )
    for row in rows:
        row.bench = "control"
    return Result(rows=rows, extra={"control": figures})


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", default="2,20", help="fleet sizes, comma-separated")
    parser.add_argument("--window", type=float, default=6.0, help="seconds measured per size")
    args = parser.parse_args()
    sizes = tuple(int(n) for n in args.workers.split(","))
    result = run(sizes, args.window)
    print(table(result.rows))
    for f in result.extra["control"]:
        print(f"rabbitmq CPU (shared node), {f['workers']:.0f} workers: "
              f"{f['rabbitmq_cpu_ms_per_s']:.1f} ms/s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
