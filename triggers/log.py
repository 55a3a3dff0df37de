"""The log source (`pyfc trigger log`): a log store's records, in batches, run a function.

Each trigger reads its store's stream (shared/logstore.py) from a checkpoint and hands
the function `{"source": {"logstore", "beginCursor", "endCursor"}, "records": [...]}`
for up to `batchSize` records gathered for at most `batchWindowSeconds`.

One replica runs a trigger at a time, and the checkpoint lives in the broker: the
trigger's lease queue `{ns}.trigger.log.<id>.<generation>` (durable, single active
consumer) holds checkpoint messages (the stream position to read on from). Every replica
consumes it with prefetch 1; the broker makes one consumer active and gives it the
checkpoint, so it alone reads the stream. After a batch is accepted (recorded, published,
confirmed) it publishes the next checkpoint (confirmed), then acks the one it held. If the
process dies, its unacked checkpoint goes to a standby replica, which reads on from there
(the newest of the checkpoints it finds): no gap; a batch accepted but not yet
checkpointed runs again (the same records from the same position make the same request
id, marked `once`, so the dispatcher runs the first copy; a batch that comes out longer
or shorter, a window's batch, runs again: its records reach the function twice). A
change of the trigger (a new `startFrom` to replay from a time) is a new generation: a
new lease queue.

Records carry the lineage of the invocation that wrote them; a batch continues the
deepest chain in it, so a function triggered by its own store is stopped by loop
protection (the dispatcher's chain depth) instead of running forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from datetime import UTC, datetime

import aio_pika
import msgspec
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection
from prometheus_client import Counter

from shared import codec
from shared.broker import PUBLISH_TIMEOUT, connect
from shared.errors import BadRequest
from shared.logread import Cursor
from shared.logstore import (
    MSG_LOG_MARKER,
    LogBatch,
    LogRecord,
    Retention,
    declare_store,
    record_json,
    stream_queue,
)
from shared.protocol import Lineage
from shared.settings import Settings
from shared.trigger_types import LogTriggerConfig, log_start
from triggers.adapter import ActiveTrigger, Emitter, event_id
from triggers.metrics import TriggerMetrics

log = logging.getLogger(f"pyfc.{__name__}")

KIND = "log"
RETRY_FIRST, RETRY_MAX = 0.2, 5.0


class Checkpoint(msgspec.Struct, kw_only=True):
    """Where a log trigger reads on: the stream message at `offset`, its records from
    `skip`; offset -1: nothing read yet (start from the trigger's `startFrom`)."""

    offset: int = -1
    skip: int = 0

    def after(self, other: Checkpoint) -> bool:
        return (self.offset, self.skip) > (other.offset, other.skip)


def lease_queue(namespace: str, active: ActiveTrigger) -> str:
    generation = hashlib.sha256(active.trigger.last_modified_time.encode()).hexdigest()[:8]
    return f"{namespace}.trigger.log.{active.trigger_id}.{generation}"


def batch_event(store: str, begin: Cursor, end: Cursor, records: list[LogRecord]) -> bytes:
    """The function's event for a batch (FC's log trigger event)."""
    return msgspec.json.encode(
        {
            "source": {
                "logstore": store,
                "beginCursor": begin.token(),
                "endCursor": end.token(),
            },
            "records": [record_json(r) for r in records],
        }
    )


def batch_lineage(records: list[LogRecord], request_id: str, origin: str) -> Lineage:
    """The deepest chain among the records' writers, one hop further."""
    deepest = max(records, key=lambda r: r.hops)
    if not deepest.trace_id:
        return Lineage(trace_id=request_id, hops=0, origin=origin)
    return Lineage(trace_id=deepest.trace_id, hops=deepest.hops + 1, origin=origin)


class _Runner:
    """One trigger on this replica: a standby until the broker hands it the checkpoint."""

    def __init__(
        self,
        source: LogSource,
        active: ActiveTrigger,
        channel: AbstractChannel,
        lease: str,
    ) -> None:
        self.source = source
        self.active = active
        self.channel = channel
        self.lease = lease
        self.held: list[AbstractIncomingMessage] = []
        self.checkpoint: Checkpoint | None = None
        self.reader: asyncio.Task[None] | None = None

    @property
    def config(self) -> LogTriggerConfig:
        config: LogTriggerConfig = self.active.config
        return config

    async def on_checkpoint(self, message: AbstractIncomingMessage) -> None:
        try:
            found = codec.decode(message.body, Checkpoint)
        except BadRequest:
            await message.ack()
            return
        self.held.append(message)
        if self.checkpoint is None or found.after(self.checkpoint):
            self.checkpoint = found
        if self.reader is None:  # we are the active consumer now
            log.info("%s: active, reading from %s", self.active.label, self.checkpoint)
            self.reader = asyncio.create_task(self._read(self.checkpoint))

    async def _read(self, start: Checkpoint) -> None:
        config = self.config
        store = stream_queue(self.source.namespace, self.active.tenant, config.logstore)
        channel = await self.source.connection.channel()
        await declare_store(channel, store, self.source.retention)
        await channel.set_qos(prefetch_count=max(100, min(config.batch_size, 1000)))
        stream = await channel.get_queue(store, ensure=False)
        deliveries: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        tag = await stream.consume(
            deliveries.put, arguments={"x-stream-offset": self._offset(start)}
        )
        batch: list[tuple[LogRecord, Cursor]] = []
        window_end = 0.0
        not_before = self._not_before()
        try:
            while True:
                timeout = None if not batch else max(0.0, window_end - time.monotonic())
                try:
                    async with asyncio.timeout(timeout):
                        message = await deliveries.get()
                except TimeoutError:
                    await self._deliver(batch)
                    batch = []
                    continue
                await message.ack()
                if message.type == MSG_LOG_MARKER:
                    continue
                offset = int(message.headers.get("x-stream-offset", 0))  # type: ignore[arg-type]
                if start.offset >= 0 and offset < start.offset:
                    continue
                try:
                    records = codec.decode(message.body, LogBatch).records
                except BadRequest:
                    continue
                first = start.skip if offset == start.offset else 0
                for index in range(first, len(records)):
                    if records[index].time < not_before:
                        continue  # the stream's time index is coarser than a second
                    if not batch:
                        window_end = time.monotonic() + config.batch_window_seconds
                    batch.append((records[index], Cursor(offset, index)))
                    if len(batch) >= config.batch_size:
                        await self._deliver(batch)
                        batch = []
                if batch and config.batch_window_seconds == 0:
                    await self._deliver(batch)
                    batch = []
        finally:
            with contextlib.suppress(Exception):
                await stream.cancel(tag)
            with contextlib.suppress(Exception):
                await channel.close()

    def _not_before(self) -> float:
        """Records older than the trigger's start point (`latest`: its last change; a
        time) are not its events."""
        begin = log_start(self.config.start_from)
        if begin == "earliest":
            return 0.0
        if begin == "latest":
            return datetime.fromisoformat(
                self.active.trigger.last_modified_time.replace("Z", "+00:00")
            ).timestamp()
        assert isinstance(begin, float)
        return begin

    def _offset(self, start: Checkpoint) -> int | str | datetime:
        if start.offset >= 0:
            return start.offset
        begin = log_start(self.config.start_from)
        if begin == "earliest":
            return "first"
        if begin == "latest":
            # After the trigger was created or changed: the same on every replica.
            changed = datetime.fromisoformat(
                self.active.trigger.last_modified_time.replace("Z", "+00:00")
            )
            return changed
        assert isinstance(begin, float)
        return datetime.fromtimestamp(begin, UTC)

    async def _deliver(self, batch: list[tuple[LogRecord, Cursor]]) -> None:
        """Accept the batch's invocation (retrying while the store or broker is down),
        then move the checkpoint past it."""
        if not batch:
            return
        records = [record for record, _ in batch]
        begin, end = batch[0][1], batch[-1][1]
        t = self.active.trigger
        request_id = event_id(self.active.trigger_id, f"{begin.token()}/{end.token()}")
        payload = batch_event(self.config.logstore, begin, end, records)
        origin = f"log:{t.trigger_name}"
        inv = self.source.emitter.invocation(
            self.active,
            payload,
            request_id,
            once=True,
            lineage=batch_lineage(records, request_id, origin),
        )
        delay = RETRY_FIRST
        while True:
            try:
                await self.source.emitter.emit(self.active, inv, again=True)
                break
            except Exception as e:
                log.warning(
                    "%s: batch not accepted yet (%r); again in %.1fs", self.active.label, e, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
        self.source.batches.labels(self.active.tenant).inc()
        await self._save(Checkpoint(offset=end.offset, skip=end.skip + 1))

    async def _save(self, checkpoint: Checkpoint) -> None:
        confirmed = self.source.confirmed
        await confirmed.default_exchange.publish(
            aio_pika.Message(
                codec.encode(checkpoint), delivery_mode=aio_pika.DeliveryMode.PERSISTENT
            ),
            routing_key=self.lease,
            timeout=PUBLISH_TIMEOUT,
        )
        held, self.held = self.held, []
        for message in held:
            await message.ack()
        self.checkpoint = checkpoint

    async def stop(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.reader
        if not self.channel.is_closed:
            with contextlib.suppress(Exception):
                await self.channel.close()


class LogSource:
    kind = KIND

    def __init__(
        self,
        settings: Settings,
        emitter: Emitter,
        metrics: TriggerMetrics,
        connection: AbstractRobustConnection,
        confirmed: AbstractChannel,
    ) -> None:
        self.namespace = settings.namespace
        self.retention = Retention(max_age=settings.log_max_age, max_bytes=settings.log_max_bytes)
        self.emitter = emitter
        self.connection = connection
        self.confirmed = confirmed
        self._metrics = metrics
        self._runners: dict[str, _Runner] = {}
        self.batches = Counter(
            "pyfc_trigger_log_batches",
            "Log trigger batches accepted",
            ["tenant"],
            registry=metrics.registry,
        )

    @classmethod
    async def open(cls, settings: Settings, emitter: Emitter, metrics: TriggerMetrics) -> LogSource:
        connection = await connect(settings.amqp_url, f"pyfc-trigger-log@{settings.namespace}")
        confirmed = await connection.channel(publisher_confirms=True)
        return cls(settings, emitter, metrics, connection, confirmed)

    async def sync(self, changed: list[ActiveTrigger], removed: list[str]) -> None:
        for trigger_id in removed:
            runner = self._runners.pop(trigger_id, None)
            if runner is not None:
                await runner.stop()
        for active in changed:
            old = self._runners.pop(active.trigger_id, None)
            if old is not None:
                await old.stop()
            try:
                self._runners[active.trigger_id] = await self._start(active)
            except Exception as e:
                log.error("%s: not served: %r", active.label, e)
        self._metrics.triggers.labels(KIND).set(len(self._runners))

    async def _start(self, active: ActiveTrigger) -> _Runner:
        lease = lease_queue(self.namespace, active)
        channel = await self.connection.channel()
        queue = await channel.declare_queue(
            lease, durable=True, arguments={"x-single-active-consumer": True}
        )
        if queue.declaration_result.message_count == 0:
            # A new generation: its first checkpoint (replicas racing here publish the
            # same one: the reader takes the newest it holds).
            await self.confirmed.default_exchange.publish(
                aio_pika.Message(
                    codec.encode(Checkpoint()), delivery_mode=aio_pika.DeliveryMode.PERSISTENT
                ),
                routing_key=lease,
                timeout=PUBLISH_TIMEOUT,
            )
        await channel.set_qos(prefetch_count=1)
        runner = _Runner(self, active, channel, lease)
        await queue.consume(runner.on_checkpoint)
        log.info("%s: serving (lease %s)", active.label, lease)
        return runner

    async def close(self) -> None:
        for runner in self._runners.values():
            await runner.stop()
        self._runners.clear()
        await self.connection.close()
