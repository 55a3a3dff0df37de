"""What the peers' worker processes run (bench/peers.py starts them): a Celery app and a
dramatiq actor on the same RabbitMQ, each with a no-op task that counts itself in a tally
the bench reads, and an echo task for Celery's round trip.

The tally is a small file mapped into memory by every worker process: each (process,
thread) claims its own 8-byte slot once (under a file lock) and then writes its running
count there, so counting a task costs no system call and adds no broker or store traffic.

Worker entry points (their configuration on the command line):

    python -m bench.peer_tasks celery QUEUE TALLY POOL CONCURRENCY
    python -m dramatiq bench.peer_tasks ...   (BENCH_DRAMATIQ_QUEUE, BENCH_TALLY in the env:
                                               the dramatiq CLI only imports a module)
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
import sys
import threading
from pathlib import Path
from typing import Any

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
SLOTS = 512
_SLOT = struct.Struct("<q")


class Tally:
    """Counts across processes and threads: slot 0 is the next free slot, 1.. the counts."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_RDWR)
        self._map = mmap.mmap(self._fd, (SLOTS + 1) * _SLOT.size)
        self._local = threading.local()

    @classmethod
    def create(cls, path: str | Path) -> Tally:
        Path(path).write_bytes(bytes((SLOTS + 1) * _SLOT.size))
        return cls(path)

    def _claim(self) -> int:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            (slot,) = _SLOT.unpack_from(self._map, 0)
            _SLOT.pack_into(self._map, 0, slot + 1)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        if slot >= SLOTS:
            raise RuntimeError(f"more than {SLOTS} counting threads")
        return int(slot) + 1

    def tick(self) -> None:
        local = self._local
        pid = os.getpid()
        if getattr(local, "pid", None) != pid:  # first task of this thread, or after a fork
            local.pid, local.slot, local.count = pid, self._claim(), 0
        local.count += 1
        _SLOT.pack_into(self._map, local.slot * _SLOT.size, local.count)

    def total(self) -> int:
        return sum(_SLOT.unpack_from(self._map, i * _SLOT.size)[0] for i in range(1, SLOTS + 1))

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)


# -- Celery ------------------------------------------------------------------------------


def celery_app(queue: str, tally: Tally | None = None) -> Any:
    """A Celery app whose every name (task queue, exchange, control and event exchanges)
    is `queue`'s own, so runs never meet; results over the rpc:// backend (replies to the
    caller's own auto-delete queue). Remote control, events, gossip and mingle are off:
    a plain task queue, as the comparison needs."""
    from celery import Celery

    app = Celery("bench", broker=AMQP_URL, backend="rpc://", set_as_current=False)
    app.conf.update(
        task_default_queue=queue,
        task_default_exchange=queue,
        task_default_routing_key=queue,
        control_exchange=f"{queue}.control",
        event_exchange=f"{queue}.events",
        worker_enable_remote_control=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
    )

    @app.task(name="bench.noop", ignore_result=True, shared=False)  # type: ignore[untyped-decorator]
    def noop(payload: str) -> None:
        if tally is not None:
            tally.tick()

    @app.task(name="bench.echo", shared=False)  # type: ignore[untyped-decorator]
    def echo(payload: str) -> str:
        return payload

    return app


def celery_worker(queue: str, tally_path: str, pool: str, concurrency: int) -> None:
    from celery.signals import worker_ready

    app = celery_app(queue, Tally(tally_path))

    @worker_ready.connect  # type: ignore[untyped-decorator]
    def ready(**_: Any) -> None:
        print("ready", flush=True)

    app.worker_main(
        [
            "worker",
            f"--pool={pool}",
            f"--concurrency={concurrency}",
            f"--queues={queue}",
            f"--hostname={queue}@%h",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--loglevel=WARNING",
        ]
    )


# -- dramatiq ----------------------------------------------------------------------------


def dramatiq_broker(queue: str, tally: Tally | None = None, confirm: bool = False) -> Any:
    """A RabbitmqBroker (set as dramatiq's global broker) with the `noop` actor on `queue`
    (dramatiq adds `queue`.DQ and `queue`.XQ); `confirm`: sends wait for the broker's
    confirm (dramatiq's confirm_delivery, off by default)."""
    import dramatiq
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    broker = RabbitmqBroker(url=AMQP_URL, confirm_delivery=confirm)
    dramatiq.set_broker(broker)

    @dramatiq.actor(queue_name=queue, actor_name="noop", max_retries=0)
    def noop(payload: str) -> None:
        if tally is not None:
            tally.tick()

    return broker, noop


if os.environ.get("BENCH_DRAMATIQ_QUEUE") and __name__ != "__main__":
    # Imported by the dramatiq CLI in a worker process (see the module docstring).
    broker, _noop = dramatiq_broker(
        os.environ["BENCH_DRAMATIQ_QUEUE"], Tally(os.environ["BENCH_TALLY"])
    )


if __name__ == "__main__":
    kind, *args = sys.argv[1:]
    if kind != "celery":
        sys.exit(f"usage: {__doc__}")
    queue, tally_path, pool, concurrency = args
    celery_worker(queue, tally_path, pool, int(concurrency))
