"""Broker high availability: a stack on a three-node RabbitMQ cluster with quorum queues
loses nothing when the node most of it is connected to, and that leads most of its
queues, is SIGKILLed under load; the node rejoins with no step in pyfc.

The cluster (tests/rabbit_cluster.py: own node names and ports, one Erlang cookie,
`join_cluster`) starts once for the module: 25-55 s on the loaded two-core machine; the
module takes 2-3 minutes in all (1,000 async invocations, the kill, the node's restart and
rejoin; then the whole cluster restarted under 400).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import Client
from tests.helpers import deploy, invoke, wait_result
from tests.rabbit_cluster import ClusterNode, RabbitCluster
from tests.stack import Stack, wait_until
from tests.test_chaos import wait_all_ran, wait_all_recorded
from tests.test_e2e_dispatch import PROBE, Probe

# Statuses a sync call may get while its broker node is lost: the reply channel went with
# the connection (503), its publish failed (503), or its deadline passed (504). Never a
# 500, never a hang.
CLEAN_FAILURES = {502, 503, 504}


@pytest.fixture(scope="module")
def cluster() -> Iterator[RabbitCluster]:
    rabbits = RabbitCluster()
    try:
        took = rabbits.start()
        print(f"three-node cluster up in {took:.1f} s")
        yield rabbits
    finally:
        rabbits.close()


def leaders(cluster: RabbitCluster, namespace: str) -> dict[str, str]:
    """Quorum queue of the namespace -> the node that leads it."""
    out = cluster.nodes[1].ctl("list_queues", "name", "type", "leader", "--no-table-headers")
    found = {}
    for line in out.splitlines():
        name, kind, leader = ([*line.split("\t"), "", ""])[:3]
        if name.startswith(f"{namespace}.") and kind == "quorum":
            found[name] = leader.strip()
    return found


async def burst(
    client: Client, service: str, function: str, n: int, at: int, fault: object
) -> tuple[list[str], list[float]]:
    """Async invocations, 32 callers at a time, until `n` are accepted (a caller refused
    with 503 while the broker fails over sends again, as a client would); `fault()` once
    `at` are. Returns the accepted request ids and when each refusal came."""
    accepted: list[str] = []
    refused: list[float] = []
    fired = asyncio.Event()
    sent = 0

    async def sender() -> None:
        nonlocal sent
        while len(accepted) < n:
            sent += 1
            try:
                status, headers, _ = await invoke(
                    client, service, function, b"e%d" % sent, X_Fc_Invocation_Type="Async"
                )
            except aiohttp.ClientError:
                status, headers = 0, {}
            if status == 202:
                accepted.append(headers["X-Fc-Request-Id"])
            else:
                assert status == 503, status
                refused.append(time.monotonic())
                await asyncio.sleep(0.05)
            if len(accepted) >= at and not fired.is_set():
                fired.set()
                await asyncio.to_thread(fault)  # type: ignore[arg-type]

    await asyncio.gather(*(sender() for _ in range(32)))
    return accepted, refused


def queue_states(cluster: RabbitCluster, via: ClusterNode) -> str:
    """Every queue's type, leader, ready, unacked and all messages, as `via` sees them."""
    return via.ctl(
        "list_queues", "name", "type", "leader", "messages_ready",
        "messages_unacknowledged", "messages",
    )  # fmt: skip


class SyncLoad:
    """Sync calls one after another on a few connections, each call's (start, end, status)."""

    def __init__(self, client: Client, service: str, function: str) -> None:
        self.calls: list[tuple[float, float, int]] = []
        self._client, self._service, self._function = client, service, function
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, callers: int = 4) -> None:
        self._tasks = [asyncio.create_task(self._caller(i)) for i in range(callers)]

    async def _caller(self, i: int) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            event = f"c{i}-{n}".encode()
            started = time.monotonic()
            try:
                status, _, body = await invoke(self._client, self._service, self._function, event)
            except aiohttp.ClientError:
                status, body = 0, b""
            if status == 200:
                assert body == event, body
            self.calls.append((started, time.monotonic(), status))
            if status != 200:
                await asyncio.sleep(0.1)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


# Open bug (issue 21): in 2 of 7 runs, 2 invocations stay Enqueued after the node loss (a
# worker's completion batch whose confirm was lost), and in 1 of 7 a sync call got no
# answer. Run it with `pytest -m open_bug tests/test_broker_ha.py`.
@pytest.mark.open_bug
@pytest.mark.timeout(400)  # the cluster's start (~25 s) counts, and 1,000 async calls
async def test_a_node_lost_under_load_loses_nothing(
    cluster: RabbitCluster, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    first = cluster.nodes[0]
    stack = Stack(tmp_path / "stack", worker_slots=8, amqp_url=cluster.url)
    stack.env["PYFC_QUEUE_TYPE"] = "quorum"
    try:
        # Gateway, dispatcher and one worker connect to the first node (the first URL that
        # answers), a second worker to the second node (its URL list starts there).
        stack.start(workers=1)
        others_first = ",".join(node.url for node in [*cluster.nodes[1:], first])
        stack.start_worker({"PYFC_AMQP_URL": others_first})
        tenant, key = stack.create_tenant()
        client = Client(session, stack.url, key, tenant)
        probe = Probe()
        service, function = await deploy(
            client,
            {"index.py": PROBE},
            environmentVariables=probe.env(SLEEP="0.02"),
            instanceConcurrency=4,
        )
        echo_service, echo = await deploy(client)
        assert (await invoke(client, echo_service, echo, b"warm"))[2] == b"warm"
        # The queues were declared by roles on the first node: it leads (most of) them.
        led = leaders(cluster, stack.namespace)
        on_first = [name for name, node in led.items() if node == first.node]
        assert len(on_first) > len(led) / 2, led

        sync = SyncLoad(client, echo_service, echo)
        sync.start()
        killed_at: list[float] = []

        def kill_first() -> None:
            killed_at.append(time.monotonic())
            first.kill()

        accepted, refused = await burst(client, service, function, 1000, 500, kill_first)
        assert killed_at, "the node was never killed"
        # Sync calls go on until they have succeeded for a while after the kill.
        await wait_for_sync_recovery(sync, killed_at[0])
        await sync.stop()
        assert len(accepted) >= 1000
        try:
            ran = await wait_all_ran(probe, accepted, timeout=180)
            await wait_all_recorded(client, service, function, accepted, timeout=120)
        except AssertionError as e:  # where the rest are, before the cluster goes away
            queues = queue_states(cluster, cluster.nodes[1])
            raise AssertionError(f"{e}\nqueues:\n{queues}") from None
        duplicates = len(ran) - len(set(ran))

        in_flight = [c for c in sync.calls if c[0] <= killed_at[0] <= c[1]]
        after = [c for c in sync.calls if c[0] > killed_at[0]]
        first_ok = min(c[1] for c in after if c[2] == 200) - killed_at[0]
        failed_after = [c for c in after if c[2] != 200]
        print(
            f"async refused (503) {len(refused)} times, the last "
            f"{max(refused, default=killed_at[0]) - killed_at[0]:.2f} s after the kill"
        )
        print(
            f"node lost: {len(accepted)} accepted, {len(ran)} runs, {duplicates} duplicates; "
            f"sync calls in flight at the kill {[c[2] for c in in_flight]}, first success after "
            f"{first_ok:.2f} s, {len(failed_after)} failed after the kill "
            f"(last {max((c[1] for c in failed_after), default=killed_at[0]) - killed_at[0]:.2f}"
            f" s after), {len(after)} calls after it"
        )
        # Duplicates are work in flight on the lost node's connections: what the workers
        # held unacked (2 workers x 8 slots x 2 consumers on quorum: 32) and as many
        # completions not yet confirmed. Measured: 0.
        assert duplicates <= 64, duplicates
        assert all(c[2] in {200, *CLEAN_FAILURES} for c in sync.calls), sorted(
            {c[2] for c in sync.calls}
        )
        assert first_ok < 10, first_ok
        assert all(c[1] - killed_at[0] < 15 for c in failed_after), failed_after

        # The node comes back and rejoins; every queue has its three members again, with
        # nothing done in pyfc, and the stack serves as before.
        restarted = time.monotonic()
        first.start()
        cluster.wait_healthy()
        wait_until(
            lambda: set(cluster.quorum_members_online(stack.namespace).values()) == {3},
            60,
            "every quorum queue's three members online",
            0.5,
        )
        print(f"node rejoined, all quorum members online in {time.monotonic() - restarted:.1f} s")
        assert (await invoke(client, echo_service, echo, b"back"))[2] == b"back"
        status, headers, body = await invoke(
            client, service, function, b"async back", X_Fc_Invocation_Type="Async"
        )
        assert status == 202, body
        rec = await wait_result(client, service, function, headers["X-Fc-Request-Id"])
        assert rec["status"] == "Succeeded", rec
    finally:
        stack.stop()
        cluster.save_logs(tmp_path / "rabbit")


async def wait_for_sync_recovery(sync: SyncLoad, killed_at: float, timeout: float = 60) -> None:
    """Until 20 sync calls started after the kill succeeded in a row."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        after = [c[2] for c in sync.calls if c[0] > killed_at]
        if len(after) >= 20 and all(status == 200 for status in after[-20:]):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"sync calls did not recover: {[c[2] for c in sync.calls][-40:]}")


@pytest.mark.timeout(400)
async def test_the_whole_cluster_restarted_loses_nothing(
    cluster: RabbitCluster, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Every node stopped and started again under async load: quorum queues come back
    from their disks with every accepted invocation, and the roles reconnect by
    themselves (nothing is accepted while no node answers: 503)."""
    stack = Stack(tmp_path / "stack", worker_slots=8, amqp_url=cluster.url)
    stack.env["PYFC_QUEUE_TYPE"] = "quorum"
    try:
        stack.start(workers=1)
        tenant, key = stack.create_tenant()
        client = Client(session, stack.url, key, tenant)
        probe = Probe()
        service, function = await deploy(
            client,
            {"index.py": PROBE},
            environmentVariables=probe.env(SLEEP="0.05"),
            instanceConcurrency=4,
        )
        took: list[float] = []

        def restart_all() -> None:
            started = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(3) as pool:
                list(pool.map(lambda node: node.stop(), cluster.nodes))
                list(pool.map(lambda node: node.start(), cluster.nodes))
            cluster.wait_healthy()
            took.append(time.monotonic() - started)

        accepted, refused = await burst(client, service, function, 400, 150, restart_all)
        ran = await wait_all_ran(probe, accepted, timeout=180)
        await wait_all_recorded(client, service, function, accepted, timeout=120)
        duplicates = len(ran) - len(set(ran))
        print(
            f"cluster restart ({took[0]:.1f} s): {len(accepted)} accepted, {len(ran)} runs, "
            f"{duplicates} duplicates, {len(refused)} refusals while it was down"
        )
        assert len(set(ran)) >= len(accepted)
    finally:
        stack.stop()
        cluster.save_logs(tmp_path / "rabbit")
