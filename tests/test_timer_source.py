"""The timer source's structure at scale: one heap, one loop timer, no task per timer."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import aio_pika
import pytest

from shared.accept import Acceptor
from shared.models import Function, Service, Trigger
from shared.store import Store
from shared.topology import Topology, declare_all, declare_invoke
from shared.trigger_types import Limits, trigger_type, validate
from tests.stack import AMQP_URL, delete_namespace
from triggers import timer as timer_module
from triggers.adapter import Emitter
from triggers.cache import TriggerCache
from triggers.metrics import TriggerMetrics
from triggers.timer import TimerSource

N = 1000


async def test_many_timers_share_one_heap_and_no_tasks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    namespace = f"tsrc{uuid.uuid4().hex[:8]}"
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path}/pyfc.db")
    await store.migrate()
    connection = await aio_pika.connect_robust(AMQP_URL)
    try:
        await store.create_tenant("acme", 10)
        await store.create_service("acme", Service(service_name="s"))
        await store.create_function(
            "acme", "s", Function(function_name="f", service_name="s", code_checksum="0" * 64)
        )
        # Daily, 12 hours away: nothing is due while the test runs.
        config = validate(
            "timer", {"cronExpression": "0 0 */24 * * *"}, Limits(max_event_bytes=1 << 20)
        )
        for i in range(N):
            await store.create_trigger(
                "acme", "s", "f", Trigger(trigger_name=f"t{i}", trigger_type="timer",
                                          trigger_config=config)
            )  # fmt: skip
        channel = await connection.channel(publisher_confirms=True)
        topo = Topology(namespace)
        await declare_all(channel, topo)
        metrics = TriggerMetrics()
        emitter = Emitter(
            trigger_type("timer"), Acceptor(store, await declare_invoke(channel, topo)), metrics
        )
        tasks_before = len(asyncio.all_tasks())
        source = await TimerSource.open(
            store, emitter, metrics, catch_up_window=3600, catch_up_limit=100
        )
        cache = TriggerCache(store, source)
        await cache.load_all()
        assert source.timers == N and len(source._heap) == N
        # The sweep and the prune: nothing per timer.
        assert len(asyncio.all_tasks()) - tasks_before <= 2
        # A reload of an unchanged set hands the source nothing new (schedules kept).
        heap = list(source._heap)
        await cache.load_all()
        assert source._heap == heap
        # Removed timers' entries go when they outnumber the live ones.
        monkeypatch.setattr(timer_module, "COMPACT_AFTER", 0)
        removed = list(cache.active)[: N // 2 + 1]
        await source.sync([], removed)
        assert source.timers == N // 2 - 1 and len(source._heap) == N // 2 - 1
        await source.close()
    finally:
        await connection.close()
        await store.close()
        await delete_namespace(namespace)
