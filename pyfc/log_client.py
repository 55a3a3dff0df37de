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


COMMANDS = [logs]
