"""`pyfc service list|get|delete`, `pyfc function list|get|delete`, `pyfc tenant show`:
the resources a descriptor deploys, one at a time. Readable lines, or the API's JSON."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import click

from pyfc.client import Api, _fail, split_target
from pyfc.console import api_command, json_option, run


async def _get(api: Api, path: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s:
        status, _, raw = await api.request(s, "GET", path)
    if status != 200:
        _fail(status, raw)
    found: dict[str, Any] = json.loads(raw)
    return found


async def _list(api: Api, path: str, key: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    start = ""
    while True:
        query = urlencode({"limit": "100", **({"startKey": start} if start else {})})
        page = await _get(api, f"{path}?{query}")
        items += page[key]
        start = page.get("nextToken") or ""
        if not start:
            return items


async def _delete(api: Api, path: str) -> None:
    async with aiohttp.ClientSession() as s:
        status, _, raw = await api.request(s, "DELETE", path)
    if status not in (200, 204):
        _fail(status, raw)


def _show(value: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(value, indent=2))
        return
    width = max(len(k) for k in value) if value else 0
    for k, v in value.items():
        shown = json.dumps(v) if isinstance(v, dict | list) else v
        print(f"{k + ':':<{width + 1}} {shown}")


@click.group("service", help="services: list, show, delete")
def service() -> None:
    pass


@service.command("list", help="list the tenant's services")
@api_command
@json_option
def service_list(api: Api, as_json: bool) -> int:
    services = run(_list(api, "/v1/services", "services"))
    if as_json:
        print(json.dumps({"services": services}, indent=2))
    elif not services:
        print("no services: pyfc deploy creates them")
    for s in [] if as_json else services:
        print(f"{s['serviceName']}  {s.get('description', '')}".rstrip())
    return 0


@service.command("get", help="show a service")
@api_command
@click.argument("name")
@json_option
def service_get(api: Api, name: str, as_json: bool) -> int:
    _show(run(_get(api, f"/v1/services/{quote(name)}")), as_json)
    return 0


@service.command("delete", help="delete a service (it must have no functions)")
@api_command
@click.argument("name")
@json_option
def service_delete(api: Api, name: str, as_json: bool) -> int:
    run(_delete(api, f"/v1/services/{quote(name)}"))
    print("{}" if as_json else f"deleted service {name}")
    return 0


@click.group("function", help="functions: list, show, delete")
def function() -> None:
    pass


@function.command("list", help="list a service's functions")
@api_command
@click.argument("service_name", metavar="SERVICE")
@json_option
def function_list(api: Api, service_name: str, as_json: bool) -> int:
    functions = run(_list(api, f"/v1/services/{quote(service_name)}/functions", "functions"))
    if as_json:
        print(json.dumps({"functions": functions}, indent=2))
    elif not functions:
        print(f"no functions in {service_name}")
    for f in [] if as_json else functions:
        print(
            f"{f['functionName']}  {f['runtime']}  {f['handler']}  {f['memorySize']} MB  "
            f"{f['timeout']:g} s  code {f['codeChecksum'][:12]}  revision {f['revision']}"
        )
    return 0


@function.command("get", help="show a function: SERVICE/FUNCTION")
@api_command
@click.argument("target", metavar="SERVICE/FUNCTION")
@json_option
def function_get(api: Api, target: str, as_json: bool) -> int:
    service_name, name = split_target(target)
    _show(run(_get(api, f"/v1/services/{quote(service_name)}/functions/{quote(name)}")), as_json)
    return 0


@function.command("delete", help="delete a function (it must have no triggers)")
@api_command
@click.argument("target", metavar="SERVICE/FUNCTION")
@json_option
def function_delete(api: Api, target: str, as_json: bool) -> int:
    service_name, name = split_target(target)
    run(_delete(api, f"/v1/services/{quote(service_name)}/functions/{quote(name)}"))
    print("{}" if as_json else f"deleted function {target}")
    return 0


@click.command("show", help="the tenant of the API key: concurrency, chain depth, reserved")
@api_command
@json_option
def tenant_show(api: Api, as_json: bool) -> int:
    _show(run(_get(api, "/v1/tenant")), as_json)
    return 0


COMMANDS = [service, function]
