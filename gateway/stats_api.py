"""Stats over HTTP: `GET /v1/services/{s}/functions/{f}/stats?window=15m&step=1m` and
`GET /v1/stats?window=` (every function of the tenant): invocations, errors by type,
throttles, p50/p99 duration, cold-start share, retries and dead letters, over the window
and as a series of steps. Counted from the log stores' platform lines (shared/logstats.py)
and, for dead letters, the tenant's dead-letter records."""

from __future__ import annotations

import re
import time
from collections import defaultdict
from typing import Any

from aiohttp import web

from gateway.http import Gateway, gateway_of, json_response, tenant_of
from shared import rows
from shared.errors import BadRequest
from shared.logread import MAX_LIMIT, LogQuery, parse_time, parse_token, read_page
from shared.logstats import Tally, series, summarize
from shared.logstore import LogRecord, store_name, stream_queue

_DURATION = re.compile(r"^(\d+)(s|m|h|d)$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_WINDOW_SECONDS = 7 * 86400
MAX_STEPS = 500
# Pages of a scan: a window beyond this many is answered as far as it got ("partial").
MAX_PAGES = 20


def _seconds(name: str, raw: str) -> float:
    match = _DURATION.fullmatch(raw.strip())
    if match is None or int(match[1]) == 0:
        raise BadRequest(f"{name}: {raw!r} is not a duration such as 30s, 15m, 2h, 1d")
    return int(match[1]) * _UNIT[match[2]]


def _window(request: web.Request) -> tuple[float, float, float]:
    """(since, until, step) from `window` (default 15m), `until` (default now), `step`."""
    now = time.time()
    window = _seconds("window", request.query.get("window", "15m"))
    if window > MAX_WINDOW_SECONDS:
        raise BadRequest("window: at most 7d")
    until = parse_time("until", request.query["until"], now) if "until" in request.query else now
    step = _seconds("step", request.query["step"]) if "step" in request.query else window / 15
    if window / step > MAX_STEPS:
        raise BadRequest(f"step: a window has at most {MAX_STEPS} steps")
    return until - window, until, step


async def _records(gw: Gateway, queue: str, query: LogQuery) -> tuple[list[LogRecord], bool]:
    """Every platform record of the query; whether the scan stopped short."""
    out: list[LogRecord] = []
    token = ""
    for _ in range(MAX_PAGES):
        cursor = parse_token(token) if token else None
        page = await read_page(gw.connection, queue, query, cursor, gw.log_markers)
        out += page.records
        token = page.next_token
        if not token:
            return out, False
    return out, True


def _body(
    tally: Tally, steps: list[tuple[float, Tally]], dead: int, since: float, until: float
) -> dict[str, Any]:
    body = {
        "since": rows.iso_millis(since),
        "until": rows.iso_millis(until),
        **tally.json(),
        "deadLetters": dead,
        "series": [{"time": rows.iso_millis(start), **t.json()} for start, t in steps],
    }
    return body


async def _dead_letters(gw: Gateway, tenant: str, since: float, service: str = "") -> list[Any]:
    letters = await gw.store.list_dead_letters(tenant, service=service, limit=1000)
    return [d for d in letters if parse_time("createdTime", d.created_time, since) >= since]


async def function_stats(request: web.Request) -> web.Response:
    gw, tenant = gateway_of(request), tenant_of(request)
    service, function = request.match_info["service"], request.match_info["function"]
    svc = await gw.store.get_service(tenant.name, service)
    await gw.store.get_function(tenant.name, service, function)
    since, until, step = _window(request)
    queue = stream_queue(
        gw.settings.namespace, tenant.name, store_name(service, svc.log_config.logstore)
    )
    query = LogQuery(
        service=service,
        function=function,
        since=since,
        until=until,
        kind="platform",
        limit=MAX_LIMIT * 1000,
    )
    records, partial = await _records(gw, queue, query)
    dead = sum(
        1
        for d in await _dead_letters(gw, tenant.name, since, service)
        if d.function_name == function
    )
    body = _body(
        summarize(records, since, until, step),
        series(records, since, until, step),
        dead,
        since,
        until,
    )
    return json_response({**body, "partial": partial})


async def tenant_stats(request: web.Request) -> web.Response:
    gw, tenant = gateway_of(request), tenant_of(request)
    since, until, step = _window(request)
    stores: dict[str, list[str]] = defaultdict(list)
    start = ""
    while True:
        services = await gw.store.list_services(tenant.name, limit=100, start_key=start)
        for svc in services[:100]:
            stores[store_name(svc.service_name, svc.log_config.logstore)].append(svc.service_name)
        if len(services) < 100:
            break
        start = services[-1].service_name + "\0"
    by_function: dict[tuple[str, str], list[LogRecord]] = defaultdict(list)
    partial = False
    for store, services_of_store in stores.items():
        queue = stream_queue(gw.settings.namespace, tenant.name, store)
        query = LogQuery(
            service="", function="", since=since, until=until, kind="platform", limit=10**9
        )
        records, cut = await _records(gw, queue, query)
        partial = partial or cut
        for record in records:
            if record.service in services_of_store:
                by_function[record.service, record.function].append(record)
    dead: dict[tuple[str, str], int] = defaultdict(int)
    for letter in await _dead_letters(gw, tenant.name, since):
        dead[letter.service_name, letter.function_name] += 1
    everything = [r for records in by_function.values() for r in records]
    body = _body(
        summarize(everything, since, until, step),
        series(everything, since, until, step),
        sum(dead.values()),
        since,
        until,
    )
    body["functions"] = [
        {
            "serviceName": service,
            "functionName": function,
            **summarize(records, since, until, step).json(),
            "deadLetters": dead.get((service, function), 0),
        }
        for (service, function), records in sorted(by_function.items())
    ]
    return json_response({**body, "partial": partial})


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/v1/services/{service}/functions/{function}/stats", function_stats)
    router.add_get("/v1/stats", tenant_stats)
