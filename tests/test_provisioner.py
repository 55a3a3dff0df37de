"""The worker's provisioner against the real broker, without the rest of the stack: a
snapshot published by hand, instances in a pool of this process."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import pytest
from aio_pika.abc import AbstractRobustConnection

from shared import codec
from shared.protocol import FunctionSpec, ProvisionSnapshot, ProvisionTarget
from shared.topology import Topology, declare_fanout, delete_all
from tests.instances import bootstrap_children, eventually, make_spec, write_code
from tests.stack import AMQP_URL
from worker.placement import function_key
from worker.pool import InstancePool
from worker.provision import Provisioner


@dataclass
class FixedCode:
    """A code cache that has every digest at one directory."""

    path: Path

    async def path_for(self, digest: str) -> Path:
        return self.path


@pytest.fixture
async def broker() -> AsyncIterator[tuple[AbstractRobustConnection, Topology]]:
    topo = Topology(f"t{uuid.uuid4().hex[:10]}")
    connection = await aio_pika.connect_robust(AMQP_URL, timeout=10)
    try:
        yield connection, topo
    finally:
        await delete_all(await connection.channel(), topo)
        await connection.close()


async def publish(
    connection: AbstractRobustConnection, topo: Topology, *targets: tuple[FunctionSpec, int]
) -> None:
    channel = await connection.channel()
    exchange = await declare_fanout(channel, topo.provision_exchange)
    snapshot = ProvisionSnapshot(targets=[ProvisionTarget(spec=s, target=n) for s, n in targets])
    await exchange.publish(aio_pika.Message(codec.encode(snapshot)), routing_key="")
    await channel.close()


ATTEMPTS = """
import os, time
def init(context):
    with open(os.environ["ATTEMPTS"], "a") as f:
        f.write(f"{time.monotonic()}\\n")
    if os.environ.get("FAIL"):
        raise RuntimeError("cannot load the model")
def handler(event, context):
    return event
"""


async def test_target_kept_and_dropped(
    tmp_path: Path, broker: tuple[AbstractRobustConnection, Topology]
) -> None:
    connection, topo = broker
    attempts = tmp_path / "attempts"
    spec = make_spec(initializer="index.init", environment={"ATTEMPTS": str(attempts)})
    pool = InstancePool(max_instances=4, stop_grace=1.0)
    code = FixedCode(write_code(tmp_path, ATTEMPTS))
    provisioner = await Provisioner.open(connection, topo, pool, code, worker_id="w-1", slots=4)  # type: ignore[arg-type]
    try:
        await publish(connection, topo, (spec, 2))
        await eventually(lambda: len(pool.provisioned()) == 2)
        assert provisioner.owned == {function_key(spec): 2}
        # capacity is slots - 1: a target of 5 gets 3 here, the last slot stays on demand
        await publish(connection, topo, (spec, 5))
        await eventually(lambda: len(pool.provisioned()) == 3)
        await publish(connection, topo)
        await eventually(lambda: not pool.provisioned() and pool.instances_alive == 0)
    finally:
        await provisioner.close()
        await pool.close()
    assert not bootstrap_children()


async def test_failing_starts_back_off(
    tmp_path: Path, broker: tuple[AbstractRobustConnection, Topology]
) -> None:
    connection, topo = broker
    attempts = tmp_path / "attempts"
    env = {"ATTEMPTS": str(attempts), "FAIL": "1"}
    spec = make_spec(initializer="index.init", environment=env)
    pool = InstancePool(max_instances=4, stop_grace=1.0)
    code = FixedCode(write_code(tmp_path, ATTEMPTS))
    provisioner = await Provisioner.open(connection, topo, pool, code, worker_id="w-1", slots=4)  # type: ignore[arg-type]
    try:
        await publish(connection, topo, (spec, 2))
        await eventually(lambda: attempts.exists())
        # both starts of a pass fail; retried after 1 s, then 2 s, then 4 s: three passes
        # in the first ~3.5 s, not dozens (and one backoff step per pass, not per start)
        await eventually(lambda: len(attempts.read_text().split()) >= 6, within=6.0)
        times = sorted(map(float, attempts.read_text().split()))[:6]
        passes = [times[0], times[2], times[4]]
        assert times[1] - times[0] < 0.5 and times[3] - times[2] < 0.5, times  # in pairs
        gaps = [b - a for a, b in itertools.pairwise(passes)]
        # Delays of 1 s then 2 s, each gap that delay plus a pass's own time (measured
        # gaps 1.9-2.1 s then 3.0-3.2 s: their difference 0.9-1.3 s is the step). A step per
        # start (2 s, then 8 s) or no doubling (a difference of 0) falls outside.
        assert 1.0 <= gaps[0] < 2.8 and 0.5 <= gaps[1] - gaps[0] < 2.0, gaps
        assert pool.instances_alive == 0 and not pool.provisioned()
    finally:
        await provisioner.close()
        await pool.close()
