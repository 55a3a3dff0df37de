"""`pyfc logs SERVICE/FUNCTION`: a function's lines from its log store, or followed."""

from __future__ import annotations

import json
import sys
from typing import Any

import aiohttp
import click

from pyfc.client import Api, _fail
from pyfc.console import api_command, json_option, run


def format_line(line: dict[str, Any]) -> str:
    """`<time> <request id> <message>`, the way FC's console shows a log store."""
    request = line.get("requestId") or "-"
    return f"{line.get('time', '')} {request} {line.get('message', '')}"


async def show_logs(
    api: Api, service: str, function: str, params: dict[str, str], as_json: bool
) -> int:
    path = f"/v1/services/{service}/functions/{function}/logs"
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        if params.get("follow"):
            async with session.get(api.endpoint + path, params=params, headers=api.headers) as r:
                if r.status != 200:
                    _fail(r.status, await r.read())
                async for raw in r.content:
                    if raw.strip():
                        line = json.loads(raw)
                        print(json.dumps(line) if as_json else format_line(line), flush=True)
            return 0
        while True:
            status, _, body = await api.request(session, "GET", path, params=params)
            if status != 200:
                _fail(status, body)
            page = json.loads(body)
            for line in page["logs"]:
                print(json.dumps(line) if as_json else format_line(line))
            token = page.get("nextToken")
            if not token:
                return 0
            params = {**params, "nextToken": token}


@click.command(help="show a function's logs: SERVICE/FUNCTION")
@api_command
@click.argument("target")
@click.option("--request-id", help="only this request's lines")
@click.option("--since", help="from: ISO time, epoch seconds, or back from now (10m, 2h)")
@click.option("--until", help="up to (same forms as --since)")
@click.option("-q", "--query", "text", help="only lines containing this text")
@click.option("--level", help="only logging lines at least this level (INFO, ERROR...)")
@click.option("-f", "--follow", is_flag=True, help="keep printing new lines as they arrive")
@json_option
def logs(
    api: Api,
    target: str,
    request_id: str | None,
    since: str | None,
    until: str | None,
    text: str | None,
    level: str | None,
    follow: bool,
    as_json: bool,
) -> int:
    service, _, function = target.partition("/")
    if not service or not function:
        raise click.UsageError("give SERVICE/FUNCTION")
    params = {
        key: value
        for key, value in (
            ("requestId", request_id),
            ("since", since),
            ("until", until),
            ("q", text),
            ("level", level),
            ("follow", "true" if follow else None),
            ("limit", "1000"),
        )
        if value
    }
    if not follow and not request_id and not since:
        params["since"] = "10m"
    try:
        return run(show_logs(api, service, function, params, as_json))
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 0


STAT_COLUMNS = (
    ("invocations", "calls"),
    ("errors", "errors"),
    ("throttles", "throttled"),
    ("durationP50Ms", "p50 ms"),
    ("durationP99Ms", "p99 ms"),
    ("coldStartShare", "cold"),
    ("retries", "retries"),
    ("deadLetters", "dead"),
)


def stats_table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    """One line per function (or step), FC console style columns."""
    header = ["", *(title for _, title in STAT_COLUMNS)]
    lines = [header]
    for name, values in rows:
        cells = [name]
        for key, _ in STAT_COLUMNS:
            value = values.get(key)
            if key == "coldStartShare" and value is not None:
                cells.append(f"{value:.0%}")
            else:
                cells.append("-" if value is None else f"{value:g}")
        lines.append(cells)
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in lines
    )


async def show_stats(api: Api, target: str, window: str, as_json: bool) -> int:
    if target:
        service, _, function = target.partition("/")
        path = f"/v1/services/{service}/functions/{function}/stats"
    else:
        path = "/v1/stats"
    async with aiohttp.ClientSession() as session:
        status, _, body = await api.request(session, "GET", path, params={"window": window})
    if status != 200:
        _fail(status, body)
    answer = json.loads(body)
    if as_json:
        print(json.dumps(answer))
        return 0
    rows = [(f["serviceName"] + "/" + f["functionName"], f) for f in answer.get("functions", [])]
    rows.append(("total" if not target else target, answer))
    print(f"{answer['since']} .. {answer['until']}")
    print(stats_table(rows))
    if answer.get("errorsByType"):
        print("errors: " + ", ".join(f"{k} {v}" for k, v in answer["errorsByType"].items()))
    return 0


@click.command(help="show stats: SERVICE/FUNCTION, or every function of the tenant")
@api_command
@click.argument("target", required=False, default="")
@click.option("--window", default="15m", show_default=True, help="30s, 15m, 2h, 1d")
@json_option
def stats(api: Api, target: str, window: str, as_json: bool) -> int:
    if target and "/" not in target:
        raise click.UsageError("give SERVICE/FUNCTION, or nothing for the whole tenant")
    return run(show_stats(api, target, window, as_json))


COMMANDS = [logs, stats]
