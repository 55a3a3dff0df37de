"""A rolling restart of every role under steady load fails nothing.

Two replicas of each role (gateway, dispatcher, worker, and the timer, mq, s3 and log trigger
processes; events flow through the timer and mq ones during the restarts). Each
replica in turn gets SIGTERM, exits, and a fresh one takes its place, while sync callers
and an async caller keep going and a timer fires every second. Callers behave as a load
balancer would: a connection refused (nothing sent) goes to the other gateway; any other
failure of a request that was sent counts as a failed request.

Asserts: zero failed sync requests, every accepted async invocation and every published
message ran, every scheduled second of the timer ran once, and none of the replicas needed
SIGKILL to stop. Sync calls run twice are bounded, not zero (an open finding, below).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable

import aio_pika
import aiohttp
import pytest

from tests.conftest import Client, StartStack
from tests.helpers import deploy, open_dir, unique
from tests.stack import AMQP_URL, Stack, wait_until
from tests.test_e2e_mq import mq_trigger, start_mq, wait_consuming
from tests.test_e2e_timer import RECORD, create_trigger, epoch, put_trigger, runs

SYNC_CALLERS = 4


class Load:
    """Sync callers and one async caller, spread over the gateways in `urls`."""

    def __init__(self, session: aiohttp.ClientSession, key: str, target: str) -> None:
        self.session, self.key, self.target = session, key, target
        self.urls: list[str] = []
        self.sync_ok = 0
        self.sync_failed: list[str] = []
        self.redirected = 0  # refused connections sent to the other gateway
        self.accepted: dict[str, str] = {}  # async payload mark -> request id, for each 202
        self.stopping = False
        self._turn = itertools.count()

    async def _send(
        self, data: bytes, headers: dict[str, str]
    ) -> tuple[int, bytes, dict[str, str]]:
        for attempt in range(50):
            url = self.urls[next(self._turn) % len(self.urls)]
            try:
                async with self.session.post(
                    url + self.target,
                    data=data,
                    headers={"Authorization": f"Bearer {self.key}", **headers},
                ) as r:
                    return r.status, await r.read(), dict(r.headers)
            except aiohttp.ClientConnectorError:
                # Refused: the request never left, so a balancer tries the next gateway.
                self.redirected += 1
                await asyncio.sleep(0.01 * attempt)
        raise AssertionError("no gateway accepted a connection for 50 tries")

    async def sync_caller(self) -> None:
        while not self.stopping:
            mark = f"s-{uuid.uuid4().hex[:10]}"
            try:
                status, body, _ = await self._send(json.dumps({"call": mark}).encode(), {})
            except aiohttp.ClientError as e:  # sent, then cut: a failed request
                self.sync_failed.append(f"{mark}: {e!r}")
                continue
            if status == 200 and body == b"ok":
                self.sync_ok += 1
            else:
                self.sync_failed.append(f"{mark}: {status} {body[:200]!r}")

    async def async_caller(self) -> None:
        while not self.stopping:
            mark = f"a-{uuid.uuid4().hex[:10]}"
            headers = {"X-Fc-Invocation-Type": "Async"}
            try:
                status, _, answer = await self._send(json.dumps({"call": mark}).encode(), headers)
            except aiohttp.ClientError:
                continue  # not acknowledged: the caller does not count it as accepted
            if status == 202:
                self.accepted[mark] = answer["X-Fc-Request-Id"]
            await asyncio.sleep(0.05)


async def publisher(exchange: str, published: list[str], stop: asyncio.Event) -> None:
    """A tenant's app publishing to the exchange an mq trigger listens on (confirmed)."""
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        target = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        while not stop.is_set():
            mark = f"m-{uuid.uuid4().hex[:10]}"
            message = aio_pika.Message(
                json.dumps({"call": mark}).encode(),
                message_id=mark,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            )
            await target.publish(message, routing_key="orders.new")
            published.append(mark)
            await asyncio.sleep(0.05)


def restart(stack: Stack, old: str, start_new: Callable[[], str]) -> tuple[str, float]:
    """SIGTERM `old`, wait for it to exit (it must not need SIGKILL), start a replacement."""
    proc = stack.procs[old]
    began = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    took = time.monotonic() - began
    assert proc.returncode == 0, f"{old} exited {proc.returncode}:\n{stack.logs(old)}"
    return start_new(), took


@pytest.mark.timeout(300)  # ten replicas restarted one by one (~40 s idle, ~95 s at load 13)
async def test_rolling_restart_of_every_role_under_load_fails_nothing(
    fresh_stack: StartStack,
) -> None:
    stack = fresh_stack(workers=2, worker_slots=6)
    workers = [n for n in stack.procs if n.startswith("worker")]
    gateways = {"gateway": stack.url, "gateway-b": stack.start_gateway("gateway-b")}
    stack.spawn("dispatcher", "dispatcher-b")
    stack.wait_log("dispatcher-b", "ready")
    timers = [stack.start_timers("timer-a"), stack.start_timers("timer-b")]
    mqs = [start_mq(stack, "mq-a"), start_mq(stack, "mq-b")]
    # The other trigger kinds' processes are restarted too (their own tests carry events
    # through a SIGKILL: tests/test_e2e_s3.py, tests/test_e2e_log_trigger.py).
    others = [stack.start_trigger(kind, f"{kind}-{r}") for kind in ("s3", "log") for r in "ab"]
    _, key = stack.create_tenant()
    connector = aiohttp.TCPConnector(force_close=True)  # each request its own connection
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=60)
    ) as session:
        client = Client(session, stack.url, key)
        runs_file = open_dir("rolling") / f"{unique('runs')}.jsonl"
        service, function = await deploy(
            client,
            {"index.py": RECORD},
            environmentVariables={"RUNS": str(runs_file), "SLEEP": "0.05"},
            timeout=30,
        )
        await create_trigger(client, service, function, "beat", cronExpression="@every 1s")
        exchange = unique("orders")
        orders = await mq_trigger(
            client, service, function, "orders", exchange=exchange, routingKey="orders.*"
        )
        await wait_consuming(stack, "mq-a", orders)
        published: list[str] = []
        stop_publishing = asyncio.Event()
        load = Load(session, key, f"/v1/services/{service}/functions/{function}/invocations")
        load.urls = list(gateways.values())
        tasks = [asyncio.create_task(load.sync_caller()) for _ in range(SYNC_CALLERS)]
        tasks.append(asyncio.create_task(load.async_caller()))
        tasks.append(asyncio.create_task(publisher(exchange, published, stop_publishing)))
        stop_times: dict[str, float] = {}
        try:
            await asyncio.to_thread(
                wait_until, lambda: load.sync_ok >= 20, 60, "the load to be running"
            )
            for name in list(gateways):
                url = gateways.pop(name)
                new = f"{name}-2"

                def start_gateway(new: str = new) -> str:
                    gateways[new] = stack.start_gateway(new)
                    load.urls.append(gateways[new])
                    return new

                _, stop_times[name] = await asyncio.to_thread(restart, stack, name, start_gateway)
                load.urls.remove(url)
            for name in ("dispatcher", "dispatcher-b"):

                def start_dispatcher(new: str = f"{name}-2") -> str:
                    stack.spawn("dispatcher", new)
                    stack.wait_log(new, "ready")
                    return new

                _, stop_times[name] = await asyncio.to_thread(
                    restart, stack, name, start_dispatcher
                )
            for name in workers:
                _, stop_times[name] = await asyncio.to_thread(
                    restart, stack, name, stack.start_worker
                )
            for name in timers:
                _, stop_times[name] = await asyncio.to_thread(
                    restart, stack, name, lambda new=f"{name}-2": stack.start_timers(new)
                )
            for name in mqs:
                _, stop_times[name] = await asyncio.to_thread(
                    restart, stack, name, lambda new=f"{name}-2": start_mq(stack, new)
                )
            for name in others:
                kind = name.split("-")[0]
                _, stop_times[name] = await asyncio.to_thread(
                    restart,
                    stack,
                    name,
                    lambda kind=kind, new=f"{name}-2": stack.start_trigger(kind, new),
                )
            before = load.sync_ok
            await asyncio.to_thread(
                wait_until, lambda: load.sync_ok >= before + 20, 60, "load after the restarts"
            )
        finally:
            load.stopping = True
            stop_publishing.set()
            await asyncio.gather(*tasks, return_exceptions=True)
        client.base = load.urls[0]  # the first gateway is gone; its replacement serves
        await put_trigger(client, service, function, "beat", enabled=False)

        def ran() -> set[str]:
            return {str(r.get("call")) for r in runs(runs_file)}

        try:
            await asyncio.to_thread(
                wait_until,
                lambda: set(load.accepted) | set(published) <= ran(),
                90,
                "accepted async invocations and published messages",
            )
        except TimeoutError:
            lost = sorted(set(published) - ran())
            missing = sorted(set(load.accepted) - ran())
            states = [
                (await client.call("GET", f"{load.target}/{load.accepted[m]}"))[2][:300]
                for m in missing[:5]
            ]
            raise AssertionError(
                f"{len(missing)} accepted never ran: {states}; {len(lost)} messages never ran"
            ) from None
    print(
        f"sync ok {load.sync_ok}, refused->redirected {load.redirected}, "
        f"async accepted {len(load.accepted)}, messages {len(published)}, "
        f"stop seconds {stop_times}"
    )
    assert load.sync_failed == [], load.sync_failed[:10]
    assert set(load.accepted) - ran() == set()
    assert len(published) >= 100 and set(published) - ran() == set()
    messages = Counter(
        str(r.get("call")) for r in runs(runs_file) if str(r.get("call")) in set(published)
    )
    print(f"messages published {len(published)}, ran twice {sum(n > 1 for n in messages.values())}")
    assert len(load.accepted) >= 20
    # The timer: every scheduled second from its first to its last run, each once.
    beats = Counter(r["triggerTime"] for r in runs(runs_file) if "triggerTime" in r)
    assert [t for t, n in beats.items() if n > 1] == [], "a scheduled time ran twice"
    seconds = sorted(int(epoch(t)) for t in beats)
    missing = sorted(set(range(seconds[0], seconds[-1] + 1)) - set(seconds))
    assert missing == [], f"scheduled times never run: {missing}"
    syncs = Counter(
        str(r.get("call")) for r in runs(runs_file) if str(r.get("call")).startswith("s-")
    )
    # Open finding: a sync call answered once may have run twice (seen in 1 of 3 runs: one
    # call). A stopping dispatcher gives back batches whose sync invocations it already
    # routed; the other routes them again. Bounded by the sync calls in flight at each
    # dispatcher stop (docs/architecture.md, "Rolling restarts").
    twice = [m for m, n in syncs.items() if n > 1]
    print(f"sync calls that ran twice: {len(twice)}")
    assert len(twice) <= 2 * SYNC_CALLERS, twice
