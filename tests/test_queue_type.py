"""PYFC_QUEUE_TYPE: every durable queue of a stack is of the chosen type, and a queue left
with another type is refused with what to do."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

import aio_pika
import aiohttp
import pytest

from shared.errors import BadRequest, Unavailable
from shared.settings import Settings
from shared.topology import Topology, declare_durable, declare_invoke, durable_arguments
from tests.conftest import Client, StartStack
from tests.helpers import deploy, invoke, open_dir, wait_result
from tests.stack import AMQP_URL

DLX = {"x-message-ttl": 100, "x-dead-letter-exchange": "pyfc.invoke"}


@pytest.mark.parametrize(
    ("queue_type", "given", "expected"),
    [
        ("classic", {}, {"x-queue-type": "classic"}),
        ("classic", DLX, {"x-queue-type": "classic", **DLX}),
        ("quorum", {}, {"x-queue-type": "quorum"}),
        (
            "quorum",
            {"x-single-active-consumer": True},
            {"x-queue-type": "quorum", "x-single-active-consumer": True},
        ),
        # Dead-lettering out of a quorum queue: at least once (kept until the target
        # confirms), which needs the reject-publish overflow.
        (
            "quorum",
            DLX,
            {
                "x-queue-type": "quorum",
                **DLX,
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
            },
        ),
    ],
)
def test_durable_arguments(queue_type: str, given: dict[str, object], expected: object) -> None:
    assert durable_arguments(queue_type, given) == expected  # type: ignore[arg-type]


def test_an_unknown_queue_type_is_refused() -> None:
    with pytest.raises(ValueError, match="'mirrored' is not one of"):
        Topology("x", "mirrored")  # type: ignore[arg-type]
    with pytest.raises(BadRequest, match="queue_type"):
        Settings.from_env({"PYFC_QUEUE_TYPE": "mirrored", "PYFC_DATA_DIR": "/tmp/x"})
    assert Settings.from_env({"PYFC_QUEUE_TYPE": "quorum"}).queue_type == "quorum"
    assert Settings.from_env({}).queue_type == "classic"


def queue_types(namespace: str) -> dict[str, str]:
    """name -> type of the namespace's queues on the shared broker."""
    out = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "name", "type", "--no-table-headers"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    types = {}
    for line in out.splitlines():
        name, _, kind = line.partition("\t")
        if name.startswith(f"{namespace}."):
            types[name] = kind.strip()
    return types


FAIL_ONCE = (
    "import os\n"
    "def handler(event, context):\n"
    "    marker = os.path.join(os.environ['MARKERS'], context.request_id)\n"
    "    if not os.path.exists(marker):\n"
    "        open(marker, 'w').close()\n"
    "        raise RuntimeError('first attempt fails')\n"
    "    return event\n"
)


async def test_a_stack_on_quorum_queues_runs_sync_async_and_retries(
    fresh_stack: StartStack,
) -> None:
    stack = fresh_stack(workers=1, env={"PYFC_QUEUE_TYPE": "quorum"})
    _, key = stack.create_tenant()
    markers = open_dir("quorum-retry")
    async with aiohttp.ClientSession() as session:
        client = Client(session, stack.url, key)
        service, function = await deploy(
            client, {"index.py": FAIL_ONCE}, environmentVariables={"MARKERS": str(markers)}
        )
        echo_service, echo = await deploy(client)
        for i in range(5):  # warm: the later calls go through the worker's affinity queue
            assert (await invoke(client, echo_service, echo, b"s%d" % i))[2] == b"s%d" % i
        status, headers, body = await invoke(
            client, service, function, b"retried", X_Fc_Invocation_Type="Async"
        )
        assert status == 202, body
        # The first attempt fails; the retry waits in a delay queue, which dead-letters it
        # (at least once, from a quorum queue) back to the dispatcher.
        rec = await wait_result(client, service, function, headers["X-Fc-Request-Id"])
        assert rec["status"] == "Succeeded" and rec["attempt"] == 2, rec
        assert rec["result"] == "retried"
    types = queue_types(stack.namespace)
    worker_id = next(iter(stack.worker_ids.values()))
    topo = Topology(stack.namespace)
    for name in [*topo.shard_queues, topo.work_queue, topo.affinity_queue(worker_id)]:
        assert types.get(name) == "quorum", (name, types)
    delays = [name for name in types if name.startswith(f"{stack.namespace}.delay.")]
    assert delays and all(types[name] == "quorum" for name in delays), types
    # The others: log stores, streams (replicated already), and the roles' own exclusive
    # queues, which go away with their connection and stay classic: subscriptions to the
    # fanouts and, on a cluster, the gateway's sync replies.
    durable = {*topo.shard_queues, topo.work_queue, topo.affinity_queue(worker_id), *delays}
    streams = {name for name in types if name.startswith(f"{stack.namespace}.logs.")}
    assert all(types[name] == "stream" for name in streams), types
    assert all(types[name] == "classic" for name in types.keys() - durable - streams), types
    replies = [name for name in types if name.startswith(f"{stack.namespace}.reply.")]
    assert len(replies) == 1, types


async def test_a_queue_of_another_type_is_refused_with_what_to_do() -> None:
    topo = Topology(f"t{uuid.uuid4().hex[:10]}", "quorum")
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        setup = await connection.channel()
        await declare_invoke(setup, Topology(topo.namespace, "classic"))
        try:
            with pytest.raises(Unavailable, match="cannot change in place") as raised:
                await declare_invoke(await connection.channel(), topo)
            assert f"rabbitmqctl delete_queue {topo.shard_queue(0)}" in str(raised.value)
            with pytest.raises(Unavailable, match="other arguments"):
                await declare_durable(await connection.channel(), topo, topo.shard_queue(0))
        finally:
            for name in topo.shard_queues:
                await setup.queue_delete(name)
            await setup.exchange_delete(topo.invoke_exchange)


async def test_a_role_on_quorum_refuses_classic_shards_in_one_line(tmp_path: Path) -> None:
    topo = Topology(f"t{uuid.uuid4().hex[:10]}", "classic")
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        setup = await connection.channel()
        await declare_invoke(setup, topo)  # a running classic deployment's shards
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("PYFC_")},
            "PYFC_DATA_DIR": str(tmp_path),
            "PYFC_NAMESPACE": topo.namespace,
            "PYFC_QUEUE_TYPE": "quorum",
        }
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "dispatcher", env=env,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            _, err = await asyncio.wait_for(proc.communicate(), 60)
        finally:
            for name in topo.shard_queues:
                await setup.queue_delete(name)
            await setup.exchange_delete(topo.invoke_exchange)
    assert proc.returncode == 1
    last = err.decode().strip().splitlines()[-1]
    assert "PYFC_QUEUE_TYPE=quorum" in last and "cannot change in place" in last, err.decode()
