"""Timer trigger figures: jitter from scheduled time to the dispatcher, and scale.

Not a test: prints figures measured in this run on this machine.

    .venv/bin/python bench/cron.py [--timers 100] [--seconds 30] [--scale 10000]

Jitter (target, issue 12: p99 within 5 ms of the baseline's p99): `--timers` timer
triggers `@every 1s` served by a real `pyfc trigger timer` process (SQLite store, real
broker), each fire claimed, recorded and published with a confirm; the bench consumes the
dispatcher shard queues of its namespace in place of the dispatcher and takes each
invocation's delivery time minus its scheduled time (`triggerTime`, whole seconds). The
baseline, measured at the same time in a process of its own (so both see the same load
on a shared machine): as many bare asyncio (uvloop) timers sleeping to each whole second,
their wake-up time minus the scheduled time.

Scale (`--scale N`): N timers in this process (the trigger cache, the heap scheduler and
its source, against a real store and broker): memory per timer (RSS before and after
loading them), CPU per timer per second idle (daily schedules: none due in the window),
and while each fires once a minute (`S M/1 * * * *`, spread over the minute).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aio_pika
import uvloop
from aiormq.abc import DeliveredMessage

from shared import codec
from shared.accept import Acceptor
from shared.models import Function, Service, Trigger
from shared.protocol import Invocation, InvocationBatch
from shared.store import Store
from shared.topology import MSG_INVOKE_BATCH, Topology, declare_all, declare_invoke
from shared.trigger_types import Limits, trigger_type, validate
from tests.stack import AMQP_URL, delete_namespace
from triggers.adapter import Emitter
from triggers.cache import TriggerCache
from triggers.metrics import TriggerMetrics
from triggers.timer import TimerSource

ROOT = Path(__file__).resolve().parent.parent


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def summary(name: str, samples_ms: list[float]) -> tuple[float, float]:
    p50, p99 = percentile(samples_ms, 0.5), percentile(samples_ms, 0.99)
    print(
        f"{name:<34} n={len(samples_ms):>5}  p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  "
        f"max {max(samples_ms):7.2f} ms"
    )
    return p50, p99


async def baseline(timers: int, seconds: int) -> list[float]:
    """Bare asyncio timers sleeping to each whole second: wake-up minus scheduled (ms)."""
    samples: list[float] = []
    end = int(time.time()) + seconds + 1

    async def timer() -> None:
        due = int(time.time()) + 1
        while due <= end:
            await asyncio.sleep(due - time.time())
            samples.append((time.time() - due) * 1000)
            due += 1

    await asyncio.gather(*(timer() for _ in range(timers)))
    return samples


async def make_function(store: Store, tenant: str) -> None:
    await store.create_tenant(tenant, 100)
    await store.create_service(tenant, Service(service_name="s"))
    await store.create_function(
        tenant, "s", Function(function_name="f", service_name="s", code_checksum="0" * 64)
    )


async def add_timers(store: Store, tenant: str, expressions: list[str]) -> None:
    limits = Limits(max_event_bytes=6 << 20)
    for i, expression in enumerate(expressions):
        config = validate("timer", {"cronExpression": expression}, limits)
        trigger = Trigger(trigger_name=f"t{i}", trigger_type="timer", trigger_config=config)
        await store.create_trigger(tenant, "s", "f", trigger)


async def jitter(timers: int, seconds: int) -> list[float]:
    """Scheduled time -> delivery on a dispatcher shard queue, through a real timer process."""
    namespace = f"bcron{uuid.uuid4().hex[:8]}"
    samples: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        store = await Store.open(f"sqlite+aiosqlite:///{tmp}/pyfc.db")
        await store.migrate()
        await make_function(store, "bench")
        await add_timers(store, "bench", ["@every 1s"] * timers)
        connection = await aio_pika.connect_robust(AMQP_URL)
        channel = await connection.channel()
        topo = Topology(namespace)
        await declare_all(channel, topo)
        started = time.time()
        warm = started + 4  # the process's start and first fires are not steady state

        def record(inv: Invocation, now: float) -> None:
            due = json.loads(inv.payload)["triggerTime"]
            scheduled = time.mktime(time.strptime(due, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
            if scheduled >= warm:
                samples.append((now - scheduled) * 1000)

        async def on_message(message: DeliveredMessage) -> None:
            now = time.time()
            if message.header.properties.message_type == MSG_INVOKE_BATCH:
                for inv in codec.decode(message.body, InvocationBatch).invocations:
                    record(inv, now)
            else:
                record(codec.decode(message.body, Invocation), now)

        underlay = await channel.get_underlay_channel()
        for queue in topo.shard_queues:
            await underlay.basic_consume(queue, on_message, no_ack=True)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("PYFC_")},
            "PYFC_DATA_DIR": tmp,
            "PYFC_NAMESPACE": namespace,
            "PYFC_AMQP_URL": AMQP_URL,
            "PYFC_LOG_LEVEL": "WARNING",
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "triggers", "timer", env=env, cwd=ROOT
        )
        try:
            await asyncio.sleep(seconds + 5)
        finally:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 30)
            await connection.close()
            await store.close()
            await delete_namespace(namespace)
    return samples


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def scale(n: int, window: float) -> None:
    namespace = f"bcron{uuid.uuid4().hex[:8]}"
    rng = random.Random(12)
    with tempfile.TemporaryDirectory() as tmp:
        store = await Store.open(f"sqlite+aiosqlite:///{tmp}/pyfc.db")
        await store.migrate()
        connection = await aio_pika.connect_robust(AMQP_URL)
        channel = await connection.channel(publisher_confirms=True)
        topo = Topology(namespace)
        await declare_all(channel, topo)
        acceptor = Acceptor(store, await declare_invoke(channel, topo))
        metrics = TriggerMetrics()
        emitter = Emitter(trigger_type("timer"), acceptor, metrics)
        for label, tenant, expressions in (
            # Daily at a time at least an hour away: nothing fires in the window.
            ("idle (daily)", "idle", [f"{rng.randrange(60)} {rng.randrange(60)} "
                                      f"{(time.gmtime().tm_hour + 12) % 24} * * *"
                                      for _ in range(n)]),
            ("firing once a minute", "busy", [f"{rng.randrange(60)} * * * * *"
                                              for _ in range(n)]),
        ):  # fmt: skip
            await make_function(store, tenant)
            t0 = time.perf_counter()
            await add_timers(store, tenant, expressions)
            created = time.perf_counter() - t0
            source = await TimerSource.open(
                store, emitter, metrics, catch_up_window=3600, catch_up_limit=100
            )
            cache = TriggerCache(store, source)
            gc.collect()
            before = rss_kb()
            t0 = time.perf_counter()
            await cache.load_all()
            loaded = time.perf_counter() - t0
            gc.collect()
            after = rss_kb()
            cpu0, wall0 = time.process_time(), time.perf_counter()
            fired0 = sum(s.value for s in _emitted(metrics))
            await asyncio.sleep(window)
            cpu = time.process_time() - cpu0
            wall = time.perf_counter() - wall0
            fired = sum(s.value for s in _emitted(metrics)) - fired0
            print(
                f"{n} timers {label}: stored in {created:.1f} s, loaded in {loaded:.2f} s; "
                f"memory {(after - before) / n * 1024:.0f} B/timer "
                f"(RSS +{(after - before) / 1024:.1f} MB); CPU {cpu / wall * 100:.1f}% of a core "
                f"= {cpu / wall / n * 1e6:.2f} us per timer per second; "
                f"{fired:.0f} fires in {wall:.0f} s ({fired / wall:.0f}/s, "
                f"{cpu / max(fired, 1) * 1e3:.2f} ms CPU per fire)"
            )
            await source.close()
            # Drop them before the next variant (the sweep must not take them over).
            await store.prune_fires(int(time.time() * 1000) + 1)
        await connection.close()
        await store.close()
        await delete_namespace(namespace)


def _emitted(metrics: TriggerMetrics) -> list[object]:
    out = []
    for family in metrics.registry.collect():
        if family.name == "pyfc_trigger_invocations":
            out += [s for s in family.samples if s.name.endswith("_total")]
    return out


async def baseline_process(timers: int, seconds: int) -> list[float]:
    """The baseline in a process of its own (as the timer process is), run alongside."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--baseline-child",
        "--timers",
        str(timers),
        "--seconds",
        str(seconds),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    samples: list[float] = json.loads(out)
    return samples


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--timers", type=int, default=100)
    p.add_argument("--seconds", type=int, default=30)
    p.add_argument("--scale", type=int, default=0, help="also: N timers in one process")
    p.add_argument("--window", type=float, default=60.0, help="scale: seconds measured")
    p.add_argument("--baseline-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.baseline_child:
        print(json.dumps(await baseline(args.timers, args.seconds)))
        return
    # Both at once, each in a process of its own: they see the same machine load.
    base, samples = await asyncio.gather(
        baseline_process(args.timers, args.seconds + 6), jitter(args.timers, args.seconds)
    )
    _, base_p99 = summary(f"bare asyncio timers x{args.timers}", base)
    _, p99 = summary(f"timer triggers x{args.timers} -> shard", samples)
    verdict = "within" if p99 - base_p99 <= 5 else "NOT within"
    print(f"p99 - baseline p99 = {p99 - base_p99:.2f} ms ({verdict} the 5 ms target)")
    if args.scale:
        await scale(args.scale, args.window)


if __name__ == "__main__":
    uvloop.run(main())
