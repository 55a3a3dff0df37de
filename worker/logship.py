"""Ship what functions print and log, and FC's per-invocation lines, to the log stores.

The invoke path only appends records to a bounded buffer per store (no await, no I/O);
a flusher publishes each store's buffer as one stream message every `flush_seconds`
(sooner when a buffer passes `_EAGER_CHARS`), confirmed by the broker, and drops records
only once confirmed. A store whose buffer is full (a chatty function, or the broker slow)
drops new lines, counts them (`pyfc_worker_log_records_dropped`) and notes the drop in the
store when room returns: one tenant's chatter never holds another's invocations.

Loss window: records not yet confirmed when the worker dies are lost (at most one flush
interval plus a publish's round trip; see docs/architecture.md, "Log stores").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from dataclasses import dataclass, field

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from shared import codec
from shared.broker import PUBLISH_TIMEOUT, ready
from shared.logstore import (
    LogBatch,
    LogRecord,
    Retention,
    batch_headers,
    cut_line,
    declare_store,
    end_line,
    error_line,
    level_of,
    report_line,
    start_line,
    store_name,
    stream_queue,
)
from shared.protocol import FunctionSpec, Invocation, Outcome
from worker.metrics import WorkerMetrics

log = logging.getLogger(f"pyfc.{__name__}")

# A stream message holds at most about this many characters of records.
_BATCH_CHARS = 512 * 1024
# A buffer this full is flushed at once rather than at the next tick.
_EAGER_CHARS = 256 * 1024
# What a record costs beyond its message (its tags), for the buffer's bound.
_RECORD_OVERHEAD = 128


@dataclass(slots=True)
class _Buffer:
    """The records waiting for one store, and what was dropped since the last note."""

    queue: str
    service_hint: str
    records: deque[LogRecord] = field(default_factory=deque)
    chars: int = 0
    dropped: Counter[tuple[str, str]] = field(default_factory=Counter)


def invocation_records(
    spec: FunctionSpec,
    inv: Invocation,
    outcome: Outcome,
    started: float,
    ended: float,
    init_ms: float | None = None,
) -> list[LogRecord]:
    """FC's lines for one invocation: start, the function's lines, an error line if it
    failed, end, and the report (duration, billed duration, memory)."""

    def record(when: float, message: str, kind: str, level: str = "") -> LogRecord:
        return LogRecord(
            time=when,
            service=spec.service,
            function=spec.function,
            qualifier=inv.qualifier,
            version=spec.version,
            request_id=inv.id,
            instance_id=outcome.instance_id,
            level=level,
            message=message,
            kind=kind,  # type: ignore[arg-type]
            attempt=inv.attempt,
            trace_id=inv.lineage.trace_id,
            hops=inv.lineage.hops,
        )

    records = [record(started, start_line(inv.id), "platform", "INFO")]
    for when, text in outcome.log_lines:
        records.append(record(when, cut_line(text), "function", level_of(text)))
    if not outcome.log_lines and outcome.log_tail and not outcome.instance_id:
        # A start that failed: what the import and the initializer wrote.
        for text in outcome.log_tail.decode("utf-8", "replace").splitlines():
            records.append(record(ended, cut_line(text), "function", level_of(text)))
    if outcome.status != "succeeded":
        message = error_line(inv.id, outcome.error_type, outcome.error_message)
        records.append(record(ended, cut_line(message), "platform", "ERROR"))
    duration = outcome.duration_ms or (ended - started) * 1000
    records.append(record(ended, end_line(inv.id), "platform", "INFO"))
    report = report_line(inv.id, duration, spec.memory_size, outcome.max_memory_kb, init_ms)
    records.append(record(ended, report, "platform", "INFO"))
    return records


class LogShipper:
    """Built complete by `open`; `close` flushes what is left."""

    def __init__(
        self,
        channel: AbstractChannel,
        namespace: str,
        retention: Retention,
        *,
        flush_seconds: float,
        buffer_chars: int,
        metrics: WorkerMetrics | None,
    ) -> None:
        self._channel = channel
        self._namespace = namespace
        self._retention = retention
        self._flush_seconds = flush_seconds
        self._buffer_chars = buffer_chars
        self._metrics = metrics
        self._buffers: dict[str, _Buffer] = {}
        self._declared: set[str] = set()
        self._eager = asyncio.Event()
        self._failing = False
        self._task = asyncio.create_task(self._flush_forever())

    @classmethod
    async def open(
        cls,
        connection: AbstractRobustConnection,
        namespace: str,
        retention: Retention,
        *,
        flush_seconds: float = 0.2,
        buffer_chars: int = 4 * 1024 * 1024,
        metrics: WorkerMetrics | None = None,
    ) -> LogShipper:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        return cls(
            channel,
            namespace,
            retention,
            flush_seconds=flush_seconds,
            buffer_chars=buffer_chars,
            metrics=metrics,
        )

    def invocation(
        self,
        spec: FunctionSpec,
        inv: Invocation,
        outcome: Outcome,
        started: float,
        init_ms: float | None = None,
    ) -> None:
        """Buffer the lines of one finished invocation (and empty `outcome.log_lines`);
        `init_ms`: the start of the instance it cold-started."""
        records = invocation_records(spec, inv, outcome, started, time.time(), init_ms)
        outcome.log_lines = []
        self.add(spec.tenant, store_name(spec.service, spec.log_store), records)

    def add(self, tenant: str, store: str, records: list[LogRecord]) -> None:
        """Buffer records for a store; those that do not fit are dropped and counted."""
        queue = stream_queue(self._namespace, tenant, store)
        buffer = self._buffers.get(queue)
        if buffer is None:
            buffer = self._buffers[queue] = _Buffer(queue, store)
        for record in records:
            cost = len(record.message) + _RECORD_OVERHEAD
            # Platform lines are never dropped (a few per invocation): stats count them.
            if buffer.chars + cost > self._buffer_chars and record.kind != "platform":
                buffer.dropped[record.service, record.function] += 1
                if self._metrics is not None:
                    self._metrics.log_dropped.labels(tenant, record.service, record.function).inc()
                continue
            buffer.records.append(record)
            buffer.chars += cost
        if buffer.chars >= _EAGER_CHARS:
            self._eager.set()

    async def close(self) -> None:
        """Stop the flusher and publish what is buffered (a few seconds at most)."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5.0):
                await self.flush()
        if not self._channel.is_closed:
            await self._channel.close()

    async def _flush_forever(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._flush_seconds):
                    await self._eager.wait()
            self._eager.clear()
            try:
                await self.flush()
                if self._failing:
                    log.info("log stores reachable again")
                self._failing = False
            except Exception as e:
                if not self._failing:
                    log.warning("cannot ship logs (kept, up to the buffer's bound): %r", e)
                self._failing = True
                await asyncio.sleep(self._flush_seconds)

    async def flush(self) -> None:
        """Publish every buffered record; each store's in messages of up to `_BATCH_CHARS`."""
        pending = [b for b in self._buffers.values() if b.records or b.dropped]
        if not pending:
            return
        await ready(self._channel)
        results = await asyncio.gather(
            *(self._flush_one(b) for b in pending), return_exceptions=True
        )
        for buffer in pending:
            if not buffer.records and not buffer.dropped:
                del self._buffers[buffer.queue]
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            raise failed[0]

    async def _flush_one(self, buffer: _Buffer) -> None:
        if buffer.queue not in self._declared:
            await declare_store(self._channel, buffer.queue, self._retention)
            self._declared.add(buffer.queue)
        if buffer.dropped:
            now = time.time()
            for (service, function), n in buffer.dropped.items():
                note = (
                    f"[pyfc] {n} lines of {service}/{function} were dropped: the worker's"
                    f" buffer for log store {buffer.service_hint} was full"
                )
                buffer.records.append(
                    LogRecord(
                        time=now,
                        service=service,
                        function=function,
                        level="WARNING",
                        message=note,
                        kind="platform",
                    )
                )
            buffer.dropped.clear()
        while buffer.records:
            batch: list[LogRecord] = []
            chars = 0
            for record in buffer.records:
                if batch and chars + len(record.message) > _BATCH_CHARS:
                    break
                batch.append(record)
                chars += len(record.message) + _RECORD_OVERHEAD
            try:
                await self._channel.default_exchange.publish(
                    aio_pika.Message(
                        codec.encode(LogBatch(records=batch)),
                        headers=batch_headers(batch, int(time.time() * 1000)),
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    routing_key=buffer.queue,
                    mandatory=True,
                    timeout=PUBLISH_TIMEOUT,
                )
            except aio_pika.exceptions.DeliveryError:
                self._declared.discard(buffer.queue)  # the stream went away: declare again
                raise
            for _ in batch:
                buffer.records.popleft()
            buffer.chars -= chars
            if self._metrics is not None:
                self._metrics.log_shipped.inc(len(batch))
