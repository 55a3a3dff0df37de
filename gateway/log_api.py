"""Log stores over HTTP: query a function's lines (paged), follow them, append records.

`GET .../logs?requestId=&since=&until=&q=&level=&limit=&nextToken=` answers a page
`{"logs": [...], "nextToken"}`; `&follow=true` streams matching lines as they arrive, one
JSON object per line (`application/x-ndjson`, chunked; an empty line every 15 s keeps
the connection alive). `POST .../logs {"records": [{"message", "level", "requestId",
"time"}]}` appends the tenant's own records (kind `user`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Annotated, Any

import msgspec
from aiohttp import web

from gateway.http import Gateway, gateway_of, json_response, tenant_of
from shared.errors import BadRequest, InvocationNotFound, NotFound
from shared.logread import (
    CLOCK_MARGIN_SECONDS,
    MAX_LIMIT,
    Cursor,
    LogQuery,
    follow,
    parse_time,
    parse_token,
    read_page,
    request_time,
)
from shared.logstore import (
    LEVELS,
    LogRecord,
    Retention,
    append_records,
    cut_line,
    record_json,
    store_name,
    stream_queue,
)
from shared.protocol import LATEST

FOLLOW_KEEPALIVE_SECONDS = 15.0
MAX_APPEND_RECORDS = 1000
DEFAULT_WINDOW_SECONDS = 3600.0


def _retention(gw: Gateway) -> Retention:
    return Retention(max_age=gw.settings.log_max_age, max_bytes=gw.settings.log_max_bytes)


async def _store_queue(gw: Gateway, tenant: str, service: str, function: str) -> str:
    """The stream of the function's store (404 for a missing service or function), from
    the cached catalog: no database read on a warm gateway."""
    spec = await gw.catalog.spec(tenant, service, LATEST, function)
    return stream_queue(gw.settings.namespace, tenant, store_name(service, spec.log_store))


def _limit(raw: str | None) -> int:
    if raw is None:
        return 100
    try:
        limit = int(raw)
    except ValueError:
        raise BadRequest(f"limit: {raw!r} is not an integer") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"limit: must be between 1 and {MAX_LIMIT}, not {limit}")
    return limit


async def _query(request: web.Request, gw: Gateway, tenant: str) -> LogQuery:
    params = request.query
    now = time.time()
    level = params.get("level", "").upper()
    if level and level not in LEVELS:
        raise BadRequest(f"level: {params['level']!r} is not one of {', '.join(LEVELS)}")
    since = parse_time("since", params["since"], now) if params.get("since") else 0.0
    until = parse_time("until", params["until"], now) if params.get("until") else 0.0
    if since and until and since > until:
        raise BadRequest("since is after until")
    request_id = params.get("requestId", "")
    reports = 0
    scan_from = 0.0
    if request_id:
        if len(request_id) > 128:
            raise BadRequest("requestId: longer than 128 characters")
        began, ended, reports = await _request_bounds(gw, tenant, request_id)
        scan_from = max(since, began)
        if ended and not until:
            until = ended + CLOCK_MARGIN_SECONDS
    elif not since and params.get("follow") != "true":
        since = (until or now) - DEFAULT_WINDOW_SECONDS
    return LogQuery(
        service=request.match_info["service"],
        function=request.match_info["function"],
        request_id=request_id,
        since=since,
        until=until,
        text=params.get("q", ""),
        level=level,
        limit=_limit(params.get("limit")),
        reports=reports,
        scan_from=scan_from,
    )


async def _request_bounds(gw: Gateway, tenant: str, request_id: str) -> tuple[float, float, int]:
    """When a request ran: (from, to or 0 = maybe still running, report lines that end it).

    The gateway's ids are uuid7 (they carry their time) and a sync call runs once; an
    async invocation's record has its times and attempts. Neither: 404."""
    try:
        record = await gw.store.get_invocation(tenant, request_id)
    except (InvocationNotFound, NotFound):
        record = None
    made = request_time(request_id)
    if record is None:
        if made is None:
            raise InvocationNotFound(f"no request {request_id!r}")
        return made, 0.0, 1
    began = parse_time("createdTime", record.created_time, time.time())
    if made is not None:
        began = min(began, made)
    if record.status in ("Succeeded", "Failed") and record.finished_time:
        ended = parse_time("finishedTime", record.finished_time, time.time())
        return began, ended, max(1, record.attempt)
    return began, 0.0, 0


async def get_logs(request: web.Request) -> web.StreamResponse:
    gw, tenant = gateway_of(request), tenant_of(request)
    service, function = request.match_info["service"], request.match_info["function"]
    follow_mode = request.query.get("follow", "") == "true"
    queue = await _store_queue(gw, tenant.name, service, function)
    token = request.query.get("nextToken", "")
    cursor: Cursor | None = parse_token(token) if token else None
    query = await _query(request, gw, tenant.name)
    if follow_mode:
        return await _follow(request, gw, queue, query)
    page = await read_page(gw.connection, queue, query, cursor, gw.log_markers)
    if query.request_id and not page.records and cursor is None:
        raise InvocationNotFound(f"no log lines of request {query.request_id!r} in this store")
    body: dict[str, Any] = {"logs": [record_json(r) for r in page.records]}
    if page.next_token:
        body["nextToken"] = page.next_token
    return json_response(body)


async def _follow(
    request: web.Request, gw: Gateway, queue: str, query: LogQuery
) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    lines = follow(gw.connection, queue, query, _retention(gw))
    try:
        while True:
            try:
                async with asyncio.timeout(FOLLOW_KEEPALIVE_SECONDS):
                    record = await anext(lines)
            except TimeoutError:
                await response.write(b"\n")
                continue
            await response.write(msgspec.json.encode(record_json(record)) + b"\n")
    except (ConnectionResetError, asyncio.CancelledError):
        raise
    finally:
        with contextlib.suppress(Exception):
            await lines.aclose()


class AppendRecord(msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=True):
    message: str
    level: str = ""
    request_id: Annotated[str, msgspec.Meta(max_length=128)] = ""
    time: str = ""


class AppendBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    records: list[AppendRecord]


async def append_logs(request: web.Request) -> web.Response:
    gw, tenant = gateway_of(request), tenant_of(request)
    service, function = request.match_info["service"], request.match_info["function"]
    queue = await _store_queue(gw, tenant.name, service, function)
    try:
        body = msgspec.json.decode(await request.read(), type=AppendBody)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise BadRequest(f"bad records: {e}") from e
    if not 1 <= len(body.records) <= MAX_APPEND_RECORDS:
        raise BadRequest(f"records: give 1 to {MAX_APPEND_RECORDS}")
    now = time.time()
    records = []
    for i, item in enumerate(body.records):
        level = item.level.upper()
        if level and level not in LEVELS:
            raise BadRequest(
                f"records[{i}].level: {item.level!r} is not one of {', '.join(LEVELS)}"
            )
        when = parse_time(f"records[{i}].time", item.time, now) if item.time else now
        records.append(
            LogRecord(
                time=when,
                service=service,
                function=function,
                request_id=item.request_id,
                level=level,
                message=cut_line(item.message),
                kind="user",
            )
        )
    channel = await gw.connection.channel(publisher_confirms=True)
    try:
        await append_records(channel, queue, records, _retention(gw))
    finally:
        await channel.close()
    return json_response({"appended": len(records)})


def add_routes(router: web.UrlDispatcher) -> None:
    base = "/v1/services/{service}/functions/{function}/logs"
    router.add_get(base, get_logs)
    router.add_post(base, append_logs)
