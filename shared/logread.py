"""Reading log stores: a query's page, and following a store as lines arrive.

A query starts at the stream's own time index (`x-stream-offset` = a timestamp, chunk
granularity) a little before its `since`, or at a page cursor's offset, and reads forward.
It knows where the store ended when it began by first publishing a marker into the stream
(confirmed): everything published before is before the marker, so reaching it ends the
query without waiting for a silence. A query for one request id starts at the request's
time (its uuid7 id, or its async record) and stops at the request's last report line.
`matches` and the cursor are pure; `read_page` and `follow` only move bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from collections.abc import AsyncGenerator
from datetime import UTC, datetime

import aio_pika
import aiormq
import msgspec
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection

from shared import codec
from shared.broker import PUBLISH_TIMEOUT
from shared.errors import BadRequest, Unavailable
from shared.logstore import (
    HDR_LOG_FUNCTIONS,
    HDR_LOG_REQUESTS,
    HDR_LOG_TIME,
    LEVELS,
    MSG_LOG_MARKER,
    LogBatch,
    LogRecord,
    Retention,
    declare_store,
)

# Lines are stamped by worker clocks, request ids by gateway clocks and streams index by
# the broker's: a scan starts this much before the time it looks for (hosts kept in sync
# by NTP are milliseconds apart).
CLOCK_MARGIN_SECONDS = 0.5
# A line reaches its store this long after it was written at most, for a request that
# runs no longer (a page stops reading past `until` plus this).
SHIP_SLACK_SECONDS = 30.0
# What one page reads at most before it answers with a cursor to read on from.
SCAN_RECORDS = 200_000
SCAN_SECONDS = 5.0
MAX_LIMIT = 1000
_PREFETCH = 500


class LogQuery(msgspec.Struct, kw_only=True, frozen=True):
    """Which lines of a function a page or a follow wants; times are epoch seconds."""

    service: str
    function: str
    request_id: str = ""
    since: float = 0.0
    until: float = 0.0  # 0: up to where the store ends now
    text: str = ""
    level: str = ""
    limit: int = 100
    # A request id query: how many report lines end it (its attempts; 0 = read to the end).
    reports: int = 0
    # Where the scan starts (epoch seconds; 0 = `since`): a request's start for an id.
    scan_from: float = 0.0
    # Only records of this kind (function, platform, user; "" = all).
    kind: str = ""


def matches(record: LogRecord, query: LogQuery) -> bool:
    """Whether a record is one the query asks for ("" service or function: any)."""
    if (query.service and record.service != query.service) or (
        query.function and record.function != query.function
    ):
        return False
    if query.kind and record.kind != query.kind:
        return False
    if query.request_id and record.request_id != query.request_id:
        return False
    if record.time < query.since or (query.until and record.time > query.until):
        return False
    if query.level and (
        record.level not in LEVELS or LEVELS.index(record.level) < LEVELS.index(query.level)
    ):
        return False
    return not query.text or query.text in record.message


def is_report(record: LogRecord) -> bool:
    return record.kind == "platform" and record.message.startswith(
        f"RequestId: {record.request_id} Duration:"
    )


def _may_hold(message: AbstractIncomingMessage, query: LogQuery) -> bool:
    """Whether a batch may hold records of the query, from its headers (no decoding)."""
    functions = message.headers.get(HDR_LOG_FUNCTIONS)
    if isinstance(functions, str | bytes):
        text = functions.decode() if isinstance(functions, bytes) else functions
        names = text.split(" ")
        if query.function and f"{query.service}/{query.function}" not in names:
            return False
        if query.service and not any(n.startswith(query.service + "/") for n in names):
            return False
    requests = message.headers.get(HDR_LOG_REQUESTS)
    if query.request_id and isinstance(requests, str | bytes):
        text = requests.decode() if isinstance(requests, bytes) else requests
        return query.request_id in text.split(" ")
    return True


class Cursor(msgspec.Struct, frozen=True):
    """Where the next page starts: a stream message and how many of its records were read."""

    offset: int
    skip: int = 0

    def token(self) -> str:
        return f"{self.offset}-{self.skip}"


_TOKEN = re.compile(r"^(\d{1,19})-(\d{1,9})$")


def parse_token(token: str) -> Cursor:
    match = _TOKEN.fullmatch(token)
    if not match:
        raise BadRequest(f"nextToken: {token!r} is not a token a page answered")
    return Cursor(int(match[1]), int(match[2]))


_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d)$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(name: str, value: str, now: float) -> float:
    """An ISO-8601 time, epoch seconds, or a duration back from now (`10m`, `2h`, `30s`)."""
    value = value.strip()
    if match := _RELATIVE.fullmatch(value):
        return now - float(match[1]) * _UNIT[match[2]]
    try:
        return float(value)
    except ValueError:
        pass
    try:
        stamp = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise BadRequest(
            f"{name}: {value!r} is not a time (ISO 8601, epoch seconds, or 10m / 2h back)"
        ) from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp()


def request_time(request_id: str) -> float | None:
    """When a uuid7 request id was made (the gateway's ids), else None."""
    try:
        parsed = uuid.UUID(request_id)
    except ValueError:
        return None
    if parsed.version != 7:
        return None
    return (parsed.int >> 80) / 1000.0


def new_request_id() -> str:
    """A request id that says when it was made (uuid7: 48 bits of epoch ms, then random),
    so the logs of a request are found from its id alone."""
    ms = int(time.time() * 1000) & ((1 << 48) - 1)
    rand = int.from_bytes(uuid.uuid4().bytes, "big") & ((1 << 74) - 1)
    value = (
        (ms << 80) | (0x7 << 76) | ((rand >> 62) << 64) | (0b10 << 62) | (rand & ((1 << 62) - 1))
    )
    return str(uuid.UUID(int=value))


class Page(msgspec.Struct, kw_only=True):
    records: list[LogRecord]
    next_token: str = ""


async def _open_stream(
    connection: AbstractRobustConnection, queue: str
) -> tuple[AbstractChannel, aio_pika.abc.AbstractQueue] | None:
    """A channel and the store's stream; None when the store has no stream (no lines yet).

    A stream declared a moment ago may not take consumers yet ("does not have a replica
    on the local node"): tried again for a second or so."""
    for attempt in range(20):
        channel = await connection.channel()
        try:
            stream = await channel.declare_queue(queue, passive=True)
            await channel.set_qos(prefetch_count=_PREFETCH)
            return channel, stream
        except aiormq.exceptions.ChannelNotFoundEntity:
            return None
        except aiormq.exceptions.AMQPError:
            if attempt == 19:
                raise
            await asyncio.sleep(0.05)
    return None


async def _mark_end(
    connection: AbstractRobustConnection, queue: str, marker: str, channel: AbstractChannel | None
) -> None:
    """Publish the end marker `marker` into the stream, confirmed (on `channel`, a
    confirming channel kept open, or on one of its own)."""
    own = channel is None
    if channel is None:
        channel = await connection.channel(publisher_confirms=True)
    try:
        await channel.default_exchange.publish(
            aio_pika.Message(b"", type=MSG_LOG_MARKER, message_id=marker),
            routing_key=queue,
            timeout=PUBLISH_TIMEOUT,
        )
    finally:
        if own:
            await channel.close()


def _start(query: LogQuery, cursor: Cursor | None) -> int | str | datetime:
    if cursor is not None:
        return cursor.offset
    begin = query.scan_from or query.since
    if begin <= 0:
        return "first"
    return datetime.fromtimestamp(max(0.0, begin - CLOCK_MARGIN_SECONDS), UTC)


async def read_page(
    connection: AbstractRobustConnection,
    queue: str,
    query: LogQuery,
    cursor: Cursor | None = None,
    markers: AbstractChannel | None = None,
) -> Page:
    """Up to `query.limit` matching records, oldest first, and a token when there are more.

    `markers`: a confirming channel to publish end markers on (else one per call)."""
    marker = uuid.uuid4().hex
    # The marker goes out while the consumer is set up: whatever was published before it
    # is before it in the stream, however late the consumer starts reading.
    marking = asyncio.ensure_future(_mark_end(connection, queue, marker, markers))
    try:
        opened = await _open_stream(connection, queue)
    except BaseException:
        marking.cancel()
        raise
    if opened is None:
        with contextlib.suppress(Exception):
            await marking
        return Page(records=[])
    channel, stream = opened
    deliveries: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
    found: list[LogRecord] = []
    reports = 0
    scanned = 0
    stop_after = query.until + SHIP_SLACK_SECONDS if query.until else 0.0
    started = time.monotonic()
    tag = ""
    try:
        tag = await stream.consume(
            deliveries.put, arguments={"x-stream-offset": _start(query, cursor)}
        )
        await marking
        while True:
            async with asyncio.timeout(SCAN_SECONDS * 2):
                message = await deliveries.get()
            await message.ack()
            offset = int(message.headers.get("x-stream-offset", 0))  # type: ignore[arg-type]
            if message.type == MSG_LOG_MARKER:
                if message.message_id == marker:
                    return Page(records=found)
                continue
            flushed = message.headers.get(HDR_LOG_TIME)
            if stop_after and isinstance(flushed, int) and flushed / 1000 > stop_after:
                return Page(records=found)
            if not _may_hold(message, query):
                continue
            try:
                records = codec.decode(message.body, LogBatch).records
            except BadRequest:
                continue  # not ours: a store takes tenants' appends through the API only
            skip = cursor.skip if cursor is not None and offset == cursor.offset else 0
            for index in range(skip, len(records)):
                record = records[index]
                if not matches(record, query):
                    continue
                if len(found) == query.limit:
                    return Page(records=found, next_token=Cursor(offset, index).token())
                found.append(record)
                if query.reports and is_report(record):
                    reports += 1
                    if reports >= query.reports:
                        return Page(records=found)
            scanned += len(records)
            if scanned >= SCAN_RECORDS or time.monotonic() - started > SCAN_SECONDS:
                # Enough for one answer: the caller reads on from the next message.
                return Page(records=found, next_token=Cursor(offset + 1, 0).token())
    finally:
        if tag:
            with contextlib.suppress(Exception):
                await stream.cancel(tag)
        with contextlib.suppress(Exception):
            await channel.close()


async def follow(
    connection: AbstractRobustConnection, queue: str, query: LogQuery, retention: Retention
) -> AsyncGenerator[LogRecord, None]:
    """Matching records as they reach the store (from `since` when given, else new ones)."""
    setup = await connection.channel()
    try:
        await declare_store(setup, queue, retention)  # no lines yet: it starts empty
    finally:
        await setup.close()
    opened = await _open_stream(connection, queue)
    if opened is None:
        raise Unavailable(f"log store {queue} went away")
    channel, stream = opened
    deliveries: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
    start: int | str | datetime = "next" if query.since <= 0 else _start(query, None)
    tag = await stream.consume(deliveries.put, arguments={"x-stream-offset": start})
    try:
        while True:
            message = await deliveries.get()
            await message.ack()
            if message.type == MSG_LOG_MARKER or not _may_hold(message, query):
                continue
            try:
                records = codec.decode(message.body, LogBatch).records
            except BadRequest:
                continue
            for record in records:
                if matches(record, query):
                    yield record
    finally:
        with contextlib.suppress(Exception):
            await stream.cancel(tag)
        with contextlib.suppress(Exception):
            await channel.close()
