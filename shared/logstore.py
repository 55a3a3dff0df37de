"""Log stores (**contract**): every function's output, kept in RabbitMQ streams.

A log store is one stream queue per tenant and store name: `{ns}.logs.<tenant>.<store>`,
where the store is the service's `logConfig.logstore`, or the service's own name when
unset (one store per service by default, as in Function Compute). Retention is the
stream's (`x-max-age`, `x-max-length-bytes`); offsets are the cursors of queries, follow
and log triggers; the stream's own time index (`x-stream-offset` with a timestamp) finds
where a time range starts.

Each stream message is one `LogBatch` (msgpack, `shared.codec`): the records one worker
flushed for that store at once. The AMQP header `HDR_LOG_TIME` is the flush time in epoch
milliseconds. Platform lines (start, end, report) are records like any other, FC's text.
"""

from __future__ import annotations

import math
import re
import time
from datetime import UTC, datetime
from typing import Any, Literal

import aio_pika
import msgspec
from aio_pika.abc import AbstractChannel, AbstractQueue
from pamqp.common import FieldTable

from shared import codec
from shared.broker import PUBLISH_TIMEOUT
from shared.errors import BadRequest

# Store names: safe in a queue name, as FC's logstore names.
STORE_NAME = re.compile(r"^[A-Za-z0-9_][-A-Za-z0-9_]{0,127}$")
# AMQP header of a log batch: when the worker flushed it (epoch ms).
HDR_LOG_TIME = "x-pyfc-log-time"
# AMQP headers of a log batch naming what is in it (space-separated), so a reader skips
# a batch without decoding it: the request ids, and the `service/function`s.
HDR_LOG_REQUESTS = "x-pyfc-log-requests"
HDR_LOG_FUNCTIONS = "x-pyfc-log-functions"
# AMQP `type` of the stream messages that are not log batches (a query's end marker).
MSG_LOG_MARKER = "log-marker"

# A line longer than this is cut, and says so (a 10 MB print costs the store 16 KB).
MAX_LINE_CHARS = 16 * 1024
TRUNCATED = " ...[truncated {} chars]"

RecordKind = Literal["function", "platform", "user"]


class LogRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One line of a log store."""

    time: float  # epoch seconds
    service: str
    function: str
    qualifier: str = ""
    version: str = ""
    request_id: str = ""
    instance_id: str = ""
    level: str = ""
    message: str
    # function: printed or logged by the function; platform: FC's start/end/report and
    # error lines; user: appended by the tenant through the API.
    kind: RecordKind = "function"
    # The invocation's attempt (async retries count up from 1).
    attempt: int = 1
    # The lineage of the invocation that wrote it: a log trigger continues the chain, so
    # a function triggered by its own store is stopped by loop protection.
    trace_id: str = ""
    hops: int = 0


class LogBatch(msgspec.Struct, kw_only=True):
    """The records of one stream message."""

    records: list[LogRecord]


def batch_headers(records: list[LogRecord], flushed_ms: int) -> FieldTable:
    """The AMQP headers of a batch of records: its flush time and what it holds."""
    requests = {r.request_id for r in records if r.request_id}
    functions = {f"{r.service}/{r.function}" for r in records}
    return {
        HDR_LOG_TIME: flushed_ms,
        HDR_LOG_REQUESTS: " ".join(sorted(requests)),
        HDR_LOG_FUNCTIONS: " ".join(sorted(functions)),
    }


def iso_millis(ts: float) -> str:
    """Epoch seconds as ISO-8601 UTC with milliseconds and `Z`."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def record_json(record: LogRecord) -> dict[str, Any]:
    return {
        "time": iso_millis(record.time),
        "serviceName": record.service,
        "functionName": record.function,
        "qualifier": record.qualifier,
        "versionId": record.version,
        "requestId": record.request_id,
        "instanceId": record.instance_id,
        "level": record.level,
        "kind": record.kind,
        "message": record.message,
    }


def store_name(service: str, logstore: str) -> str:
    """The store a service's functions log to: its `logConfig.logstore`, else its name."""
    return logstore or service


def check_store_name(name: str) -> str:
    if not STORE_NAME.fullmatch(name):
        raise BadRequest(
            f"logConfig.logstore: {name!r} is not a store name (letters, digits, '-', '_';"
            " at most 128)"
        )
    return name


def stream_queue(namespace: str, tenant: str, store: str) -> str:
    """The stream queue of a tenant's log store."""
    return f"{namespace}.logs.{tenant}.{store}"


class Retention(msgspec.Struct, kw_only=True, frozen=True):
    """How long and how much a store keeps (the stream's arguments)."""

    max_age: str = "7D"  # RabbitMQ's units: Y M D h m s
    max_bytes: int = 1024**3
    segment_bytes: int = 16 * 1024**2

    def arguments(self) -> FieldTable:
        return {
            "x-queue-type": "stream",
            "x-max-age": self.max_age,
            "x-max-length-bytes": self.max_bytes,
            "x-stream-max-segment-size-bytes": self.segment_bytes,
        }


async def declare_store(channel: AbstractChannel, name: str, retention: Retention) -> AbstractQueue:
    """Declare a store's stream (idempotent with the same retention)."""
    return await channel.declare_queue(name, durable=True, arguments=retention.arguments())


async def append_records(
    channel: AbstractChannel, queue: str, records: list[LogRecord], retention: Retention
) -> None:
    """Publish records to a store as one batch (declared first); confirmed if `channel`
    confirms."""
    await declare_store(channel, queue, retention)
    await channel.default_exchange.publish(
        aio_pika.Message(
            codec.encode(LogBatch(records=records)),
            headers=batch_headers(records, int(time.time() * 1000)),
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        ),
        routing_key=queue,
        timeout=PUBLISH_TIMEOUT,
    )


def cut_line(text: str, limit: int = MAX_LINE_CHARS) -> str:
    """`text`, cut to `limit` characters and marked if it was longer (a line an instance
    cut already, with its mark, is left as it is)."""
    if len(text) <= limit + len(TRUNCATED) + 12:
        return text
    return text[:limit] + TRUNCATED.format(len(text) - limit)


# -- FC's per-invocation lines --------------------------------------------------------


def start_line(request_id: str) -> str:
    return f"FC Invoke Start RequestId: {request_id}"


def end_line(request_id: str) -> str:
    return f"FC Invoke End RequestId: {request_id}"


def report_line(
    request_id: str,
    duration_ms: float,
    memory_size_mb: int,
    max_memory_kb: int,
    init_ms: float | None = None,
) -> str:
    """FC's (and Lambda's) report: duration, billed duration (whole ms, rounded up), the
    memory size and the most the instance used; `Init Duration` on a cold start."""
    billed = max(1, math.ceil(duration_ms))
    used = f"{max_memory_kb / 1024:.2f} MB" if max_memory_kb else "unknown"
    init = f" Init Duration: {init_ms:.2f} ms" if init_ms is not None else ""
    return (
        f"RequestId: {request_id} Duration: {duration_ms:.2f} ms Billed Duration: {billed} ms"
        f" Memory Size: {memory_size_mb} MB Max Memory Used: {used}{init}"
    )


_REPORT = re.compile(
    r"^RequestId: (\S+) Duration: ([\d.]+) ms Billed Duration: \d+ ms .*?"
    r"(?: Init Duration: ([\d.]+) ms)?$"
)
_ERROR = re.compile(r"^FC Invoke Error RequestId: \S+ (\S+): (?:(\w+): )?")
UNHANDLED = "UnhandledInvocationError"
THROTTLED = "FC Invoke Throttled RequestId: {}"


def parse_report(message: str) -> tuple[float, bool] | None:
    """(duration ms, cold start) of a report line, else None."""
    match = _REPORT.match(message)
    if match is None:
        return None
    return float(match[2]), match[3] is not None


def parse_error(message: str) -> str | None:
    """The error type of an error line: the function's exception or how it failed
    (`ValueError`, `FunctionTimeout`, `OutOfMemory`...), or the platform's code."""
    match = _ERROR.match(message)
    if match is None:
        return None
    if match[1] == UNHANDLED and match[2]:
        return match[2]
    return match[1]


def error_line(request_id: str, error_type: str, message: str) -> str:
    return f"FC Invoke Error RequestId: {request_id} {error_type}: {message}"


LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# `<stamp> <request id> [LEVEL] message`: what `logging` writes inside an instance.
_LOGGED = re.compile(r"^\S+ \S* \[(DEBUG|INFO|WARNING|ERROR|CRITICAL)\] ")


def level_of(line: str) -> str:
    """The `logging` level of a line an instance wrote ("" for a plain print)."""
    match = _LOGGED.match(line)
    return match.group(1) if match else ""
