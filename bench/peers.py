"""Celery and dramatiq on the same RabbitMQ, beside raw aio-pika baselines of the same run.

Not a test: prints figures and ratios measured in the same run on this machine. The peers
run as real worker processes (bench/peer_tasks.py), each started once and measured over
several repetitions; every repetition of a peer is paired with a raw baseline measured
just before it, so a peer's ratio is to the raw figure of the same minutes.

- async no-op end to end: N tasks of a 64-byte payload published by this process, until
  the workers have run all N (counted in shared memory, no extra traffic); baseline: raw
  persistent, confirmed publish -> consume -> ack (`bench/dispatch.py`'s raw_throughput);
- sync round trip: Celery's `delay().get()` with the rpc:// result backend; baseline: raw
  aio-pika direct reply-to RPC to a server in its own process (`bench/invoke.py`).

Every name (queues, exchanges) is unique to the run and deleted at the end. Peers use
their defaults otherwise (persistent messages; neither publishes with confirms by default;
dramatiq is measured a second time with confirmed sends, as pyfc and the raw baseline
publish).

    .venv/bin/python bench/peers.py [--reps 3] [--n 3000] [--calls 500]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aio_pika
import uvloop

from bench.dispatch import raw_throughput
from bench.invoke import raw_rpc
from bench.peer_tasks import AMQP_URL, Tally, celery_app, dramatiq_broker
from bench.report import Result, Row, p50, p99, spread_of, table

ROOT = Path(__file__).resolve().parent.parent
PAYLOAD = "x" * 64
WARM_UP = 50
START_TIMEOUT = 90.0
STOP_GRACE = 3.0


@dataclass(frozen=True)
class Peer:
    """One peer configuration: `name` as in the table, how its workers start."""

    name: str
    kind: str  # "celery" | "dramatiq"
    pool: str = ""
    concurrency: int = 0
    processes: int = 0
    threads: int = 0
    confirm: bool = False  # dramatiq: publish with confirms (confirm_delivery=True)


PEERS = (
    Peer("celery prefork x2", "celery", pool="prefork", concurrency=2),
    Peer("celery threads x8", "celery", pool="threads", concurrency=8),
    Peer("celery solo", "celery", pool="solo", concurrency=1),
    Peer("dramatiq 2 procs x 4 threads", "dramatiq", processes=2, threads=4),
    # With the guarantee pyfc's accepts and the raw baseline have: confirmed publishes.
    Peer("dramatiq 2x4, confirmed sends", "dramatiq", processes=2, threads=4, confirm=True),
)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, poll: float = 0.002) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(poll)


class Workers:
    """A peer's worker processes (their own session, so one signal reaches them all)."""

    def __init__(self, peer: Peer, queue: str, tally: Path, log: Path) -> None:
        self.peer, self.log = peer, log
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        if peer.kind == "celery":
            argv = ["-m", "bench.peer_tasks", "celery", queue, str(tally), peer.pool]
            argv.append(str(peer.concurrency))
            self.ready_marker, self.ready_count = "ready", 1
        else:
            argv = ["-m", "dramatiq", "bench.peer_tasks", "--queues", queue]
            argv += ["--processes", str(peer.processes), "--threads", str(peer.threads)]
            env |= {"BENCH_DRAMATIQ_QUEUE": queue, "BENCH_TALLY": str(tally)}
            self.ready_marker, self.ready_count = "is ready for action", peer.processes
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, *argv],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def wait_ready(self) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.peer.name} exited:\n{self.logs()}")
            return self.logs().count(self.ready_marker) >= self.ready_count

        wait_for(ready, START_TIMEOUT, f"{self.peer.name} workers", poll=0.05)

    def terminate(self) -> None:
        """Ask for a clean stop (all the peers at once: Celery's solo and threads pools
        take ~10 s to stop here)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)

    def stop(self, by: float) -> None:
        """Stopped, killed at `by` (time.monotonic) if still running (the run is over:
        nothing is lost)."""
        self.terminate()
        try:
            self.proc.wait(timeout=max(0.0, by - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


class Client:
    """Sends the peer's tasks from this process."""

    def __init__(self, peer: Peer, queue: str) -> None:
        self.peer = peer
        if peer.kind == "celery":
            self.app = celery_app(queue)
            self._noop = self.app.tasks["bench.noop"]
            self._echo = self.app.tasks["bench.echo"]
        else:
            self.broker, self._noop = dramatiq_broker(queue, confirm=peer.confirm)

    def send(self, n: int) -> None:
        if self.peer.kind == "celery":
            for _ in range(n):
                self._noop.delay(PAYLOAD)
        else:
            for _ in range(n):
                self._noop.send(PAYLOAD)

    def round_trip_ms(self) -> float:
        began = time.perf_counter()
        reply = self._echo.delay(PAYLOAD).get(timeout=30)
        elapsed = (time.perf_counter() - began) * 1000
        assert reply == PAYLOAD, reply
        return elapsed

    def close(self) -> None:
        if self.peer.kind == "celery":
            self.app.close()
        else:
            self.broker.close()


async def delete_names(queues: list[str], exchanges: list[str]) -> None:
    """Delete a run's queues and exchanges (absent ones are fine)."""
    connection = await aio_pika.connect(AMQP_URL, timeout=10)
    async with connection:
        for name in queues:
            channel = await connection.channel()
            try:
                await channel.queue_delete(name)
            except aio_pika.exceptions.ChannelClosed:
                pass
        for name in exchanges:
            channel = await connection.channel()
            try:
                await channel.exchange_delete(name)
            except aio_pika.exceptions.ChannelClosed:
                pass


class Running:
    """A peer's workers (started at once), then its client and warm-up (`ready`); all
    gone after `close`, names deleted."""

    def __init__(self, peer: Peer, tmp: Path) -> None:
        self.peer = peer
        self.queue = f"bench-{peer.kind}-{uuid.uuid4().hex[:10]}"
        self.tally = Tally.create(tmp / f"{self.queue}.tally")
        self.workers = Workers(peer, self.queue, self.tally.path, tmp / f"{self.queue}.log")
        self.client: Client | None = None

    def ready(self) -> Client:
        self.workers.wait_ready()
        self.client = Client(self.peer, self.queue)
        self.client.send(WARM_UP)
        wait_for(lambda: self.tally.total() >= WARM_UP, 60, f"{self.peer.name} warm-up")
        return self.client

    def close(self, by: float) -> None:
        self.workers.stop(by)
        if self.client is not None:
            self.client.close()
        self.tally.close()
        q = self.queue
        uvloop.run(delete_names([q, f"{q}.DQ", f"{q}.XQ"], [q, f"{q}.control", f"{q}.events"]))


def async_rate(client: Client, tally: Tally, n: int) -> float:
    """Tasks per second from the first publish to the last task run."""
    base = tally.total()
    began = time.perf_counter()
    client.send(n)
    wait_for(lambda: tally.total() >= base + n, 300, f"{n} tasks of {client.peer.name}")
    return n / (time.perf_counter() - began)


def run(reps: int = 3, n: int = 3000, calls: int = 500, peers: tuple[Peer, ...] = PEERS) -> Result:
    """Every peer's workers are started at once (they idle while another is measured);
    each peer is then measured in turn: `reps` x (raw, then the peer's `n` async tasks),
    and `calls` sync round trips where it has them."""
    result = Result()
    with tempfile.TemporaryDirectory(prefix="pyfc-bench-peers-") as tmp, ExitStack() as stack:
        runs: list[Running] = []

        @stack.callback
        def close() -> None:
            for r in runs:  # all asked at once, then all given the same grace
                r.workers.terminate()
            by = time.monotonic() + STOP_GRACE
            for r in runs:
                try:
                    r.close(by)
                except Exception:  # the others are still closed; this one is reported
                    traceback.print_exc()

        for peer in peers:
            runs.append(Running(peer, Path(tmp)))
        clients = [r.ready() for r in runs]
        rpc = uvloop.run(raw_rpc(calls, separate_process=True, warm_up=min(200, calls)))
        result.samples["round trip: raw aio-pika RPC, server in its own process (peers)"] = rpc
        per_rep: dict[str, dict[str, list[float]]] = {}
        for peer, run_, client in zip(peers, runs, clients, strict=True):
            raws: list[float] = []
            rates: list[float] = []
            per_rep[peer.name] = {"raw": raws, "peer": rates}
            for _ in range(reps):
                raws.append(uvloop.run(raw_throughput(n)))
                rates.append(async_rate(client, run_.tally, n))
            trips: list[float] = []
            if peer.kind == "celery":
                for i in range(calls + min(20, calls)):
                    ms = client.round_trip_ms()
                    if i >= min(20, calls):
                        trips.append(ms)
            ratios = [rate / raw for rate, raw in zip(rates, raws, strict=True)]
            result.rows.append(
                Row(
                    "async no-op end to end",
                    statistics.median(rates),
                    "/s",
                    baseline=statistics.median(raws),
                    baseline_name="raw confirmed publish->consume",
                    subject=peer.name,
                    bench="peers",
                    spread=spread_of(rates),
                    note=""
                    if reps < 2
                    else f"ratio per repetition {min(ratios):.2f}-{max(ratios):.2f}x",
                )
            )
            if trips:
                result.samples[f"round trip: {peer.name} delay().get()"] = trips
                for name, stat in (("p50", p50), ("p99", p99)):
                    result.rows.append(
                        Row(
                            f"sync round trip {name}",
                            stat(trips),
                            "ms",
                            baseline=stat(rpc),
                            baseline_name="raw RPC x-proc",
                            subject=peer.name,
                            bench="peers",
                        )
                    )
        result.rows.append(
            Row(
                "RPC x-proc p50 (the peers' sync baseline)",
                p50(rpc),
                "ms",
                subject="raw aio-pika",
                bench="peers",
            )
        )
        result.extra["peers"] = {"queues": [r.queue for r in runs], "repetitions": per_rep}
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--n", type=int, default=3000, help="async tasks per repetition")
    parser.add_argument("--calls", type=int, default=500, help="sync round trips per peer")
    args = parser.parse_args()
    result = run(args.reps, args.n, args.calls)
    print(f"{args.reps} repetitions of {args.n} async tasks; {args.calls} sync round trips")
    print(table(result.rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
