"""Client commands for versions and aliases: `pyfc publish`, `pyfc versions`,
`pyfc alias set|get|list|delete`. Readable lines, or the API's JSON with --json."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import click

from pyfc.client import EXIT_USAGE, Api, CliError, _fail
from pyfc.console import api_command, json_option, run


def _weights(specs: tuple[str, ...]) -> dict[str, float]:
    """`--weight 2=0.1` -> {"2": 0.1}; a usage error for a bad one."""
    out: dict[str, float] = {}
    for spec in specs:
        version, sep, weight = spec.partition("=")
        try:
            if not sep:
                raise ValueError
            out[version.strip()] = float(weight)
        except ValueError:
            msg = f"--weight takes VERSION=WEIGHT (e.g. 2=0.1), got {spec!r}"
            raise CliError(msg, EXIT_USAGE) from None
    return out


def _alias_line(a: dict[str, Any]) -> str:
    weights = ", ".join(f"{v}={w:g}" for v, w in a["additionalVersionWeight"].items())
    line = f"{a['aliasName']} -> version {a['versionId']}"
    if weights:
        line += f" (+ {weights})"
    if a.get("autoRollback"):
        rb = a["autoRollback"]
        line += (
            f"  auto-rollback above {rb['maxErrorRate']:.0%} over {rb['windowSeconds']}s"
            f" (min {rb['minInvocations']})"
        )
    if a.get("lastRollback"):
        last = a["lastRollback"]
        line += f"\n  rolled back version {last['versionId']} at {last['rolledBackTime']}: "
        line += last["reason"]
    return line


async def publish(api: Api, service: str, description: str, as_json: bool) -> int:
    async with aiohttp.ClientSession() as s:
        status, _, raw = await api.request(
            s, "POST", f"/v1/services/{quote(service)}/versions", json={"description": description}
        )
    if status != 201:
        return _fail(status, raw)
    version = json.loads(raw)
    print(raw.decode() if as_json else f"published {service} version {version['versionId']}")
    return 0


async def versions(api: Api, service: str, as_json: bool) -> int:
    found: list[dict[str, Any]] = []
    start = ""
    async with aiohttp.ClientSession() as s:
        while True:
            query = urlencode({"limit": "100", **({"startKey": start} if start else {})})
            status, _, raw = await api.request(
                s, "GET", f"/v1/services/{quote(service)}/versions?{query}"
            )
            if status != 200:
                return _fail(status, raw)
            page = json.loads(raw)
            found += page["versions"]
            start = page.get("nextToken", "")
            if not start:
                break
    if as_json:
        print(json.dumps({"versions": found}, indent=2))
    elif not found:
        print(f"no versions of {service}: pyfc publish {service}")
    for v in [] if as_json else found:
        print(f"{v['versionId']:>6}  {v['createdTime']}  {v['description']}")
    return 0


async def alias(
    api: Api,
    action: str,
    service: str,
    name: str = "",
    *,
    as_json: bool = False,
    version: str = "",
    weight: tuple[str, ...] = (),
    description: str | None = None,
    auto_rollback: float | None = None,
    window: int = 60,
    min_invocations: int = 20,
    no_auto_rollback: bool = False,
) -> int:
    base = f"/v1/services/{quote(service)}/aliases"
    async with aiohttp.ClientSession() as s:
        if action == "list":
            status, _, raw = await api.request(s, "GET", base)
            if status != 200:
                return _fail(status, raw)
            page = json.loads(raw)
            if as_json:
                print(json.dumps(page, indent=2))
            for a in [] if as_json else page["aliases"]:
                print(_alias_line(a))
            if not as_json and not page["aliases"]:
                print(f"no aliases in {service}")
            return 0
        path = f"{base}/{quote(name)}"
        if action == "delete":
            status, _, raw = await api.request(s, "DELETE", path)
            if status != 204:
                return _fail(status, raw)
            print(f"deleted alias {name}")
            return 0
        if action == "get":
            status, _, raw = await api.request(s, "GET", path)
        else:  # set: create, or update when it exists
            body: dict[str, Any] = {
                "versionId": version,
                "additionalVersionWeight": _weights(weight),
            }
            if description is not None:
                body["description"] = description
            if no_auto_rollback:
                body["autoRollback"] = None
            elif auto_rollback is not None:
                body["autoRollback"] = {
                    "maxErrorRate": auto_rollback,
                    "windowSeconds": window,
                    "minInvocations": min_invocations,
                }
            status, _, raw = await api.request(s, "POST", base, json={"aliasName": name, **body})
            if status == 409:
                status, _, raw = await api.request(s, "PUT", path, json=body)
        if status not in (200, 201):
            return _fail(status, raw)
    print(raw.decode() if as_json else _alias_line(json.loads(raw)))
    return 0


@click.command("publish", help="publish LATEST as a new version")
@api_command
@click.argument("service")
@click.option("--description", default="")
@json_option
def publish_command(api: Api, service: str, description: str, as_json: bool) -> int:
    return run(publish(api, service, description, as_json))


@click.command("versions", help="list a service's versions")
@api_command
@click.argument("service")
@json_option
def versions_command(api: Api, service: str, as_json: bool) -> int:
    return run(versions(api, service, as_json))


@click.group("alias", help="aliases: a version and a weighted share to another")
def alias_group() -> None:
    pass


def _alias_options(f: click.decorators.FC) -> click.decorators.FC:
    f = json_option(f)
    return click.option("--service", required=True)(f)


@alias_group.command("set", help="create or update an alias (gray release with --weight)")
@api_command
@click.argument("name")
@_alias_options
@click.option("--version", required=True, help="the version the alias names")
@click.option(
    "--weight",
    multiple=True,
    metavar="VERSION=WEIGHT",
    help="send this share (0..1) of calls to another version; omit to send none",
)
@click.option("--description")
@click.option(
    "--auto-rollback",
    type=float,
    metavar="MAX_ERROR_RATE",
    help="take the weighted version's share away when its error rate passes this",
)
@click.option("--window", type=int, default=60, show_default=True, help="auto-rollback window (s)")
@click.option("--min-invocations", type=int, default=20, show_default=True)
@click.option("--no-auto-rollback", is_flag=True)
def alias_set(api: Api, name: str, service: str, as_json: bool, **options: Any) -> int:
    return run(alias(api, "set", service, name, as_json=as_json, **options))


@alias_group.command("get", help="show an alias (and its last automatic rollback)")
@api_command
@click.argument("name")
@_alias_options
def alias_get(api: Api, name: str, service: str, as_json: bool) -> int:
    return run(alias(api, "get", service, name, as_json=as_json))


@alias_group.command("delete", help="delete an alias")
@api_command
@click.argument("name")
@_alias_options
def alias_delete(api: Api, name: str, service: str, as_json: bool) -> int:
    return run(alias(api, "delete", service, name, as_json=as_json))


@alias_group.command("list", help="list a service's aliases")
@api_command
@_alias_options
def alias_list(api: Api, service: str, as_json: bool) -> int:
    return run(alias(api, "list", service, as_json=as_json))


COMMANDS = (publish_command, versions_command, alias_group)
