"""Client commands for versions and aliases: `pyfc publish`, `pyfc versions`,
`pyfc alias set|get|list|delete`. Readable lines, or the API's JSON with --json."""

from __future__ import annotations

import argparse
import json
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp

from pyfc.client import Api, _fail


def _weights(specs: list[str]) -> dict[str, float]:
    """`--weight 2=0.1` -> {"2": 0.1}; SystemExit with a clear line for a bad one."""
    out: dict[str, float] = {}
    for spec in specs:
        version, sep, weight = spec.partition("=")
        try:
            if not sep:
                raise ValueError
            out[version.strip()] = float(weight)
        except ValueError:
            msg = f"pyfc: --weight takes VERSION=WEIGHT (e.g. 2=0.1), got {spec!r}"
            raise SystemExit(msg) from None
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


async def alias(api: Api, args: argparse.Namespace) -> int:
    base = f"/v1/services/{quote(args.service)}/aliases"
    async with aiohttp.ClientSession() as s:
        if args.action == "list":
            status, _, raw = await api.request(s, "GET", base)
            if status != 200:
                return _fail(status, raw)
            page = json.loads(raw)
            if args.json:
                print(json.dumps(page, indent=2))
            for a in [] if args.json else page["aliases"]:
                print(_alias_line(a))
            if not args.json and not page["aliases"]:
                print(f"no aliases in {args.service}")
            return 0
        path = f"{base}/{quote(args.name)}"
        if args.action == "delete":
            status, _, raw = await api.request(s, "DELETE", path)
            if status != 204:
                return _fail(status, raw)
            print(f"deleted alias {args.name}")
            return 0
        if args.action == "get":
            status, _, raw = await api.request(s, "GET", path)
        else:  # set: create, or update when it exists
            body: dict[str, Any] = {
                "versionId": args.version,
                "additionalVersionWeight": _weights(args.weight),
            }
            if args.description is not None:
                body["description"] = args.description
            if args.no_auto_rollback:
                body["autoRollback"] = None
            elif args.auto_rollback is not None:
                body["autoRollback"] = {
                    "maxErrorRate": args.auto_rollback,
                    "windowSeconds": args.window,
                    "minInvocations": args.min_invocations,
                }
            status, _, raw = await api.request(
                s, "POST", base, json={"aliasName": args.name, **body}
            )
            if status == 409:
                status, _, raw = await api.request(s, "PUT", path, json=body)
        if status not in (200, 201):
            return _fail(status, raw)
    print(raw.decode() if args.json else _alias_line(json.loads(raw)))
    return 0


def add_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    connection_options: Any,
) -> None:
    """The release commands on the `pyfc` parser."""
    pub = connection_options(sub.add_parser("publish", help="publish LATEST as a new version"))
    pub.add_argument("service")
    pub.add_argument("--description", default="")
    pub.add_argument("--json", action="store_true")
    ver = connection_options(sub.add_parser("versions", help="list a service's versions"))
    ver.add_argument("service")
    ver.add_argument("--json", action="store_true")
    al = sub.add_parser("alias", help="aliases: a version and a weighted share to another")
    asub = al.add_subparsers(dest="action", required=True)

    def action(name: str, help: str, named: bool = True) -> argparse.ArgumentParser:
        a: argparse.ArgumentParser = connection_options(asub.add_parser(name, help=help))
        if named:
            a.add_argument("name")
        a.add_argument("--service", required=True)
        a.add_argument("--json", action="store_true")
        return a

    aset = action("set", "create or update an alias (gray release with --weight)")
    aset.add_argument("--version", required=True, help="the version the alias names")
    aset.add_argument(
        "--weight",
        action="append",
        default=[],
        metavar="VERSION=WEIGHT",
        help="send this share (0..1) of calls to another version; omit to send none",
    )
    aset.add_argument("--description")
    aset.add_argument(
        "--auto-rollback",
        type=float,
        metavar="MAX_ERROR_RATE",
        help="take the weighted version's share away when its error rate passes this",
    )
    aset.add_argument("--window", type=int, default=60, help="auto-rollback window (s)")
    aset.add_argument("--min-invocations", type=int, default=20)
    aset.add_argument("--no-auto-rollback", action="store_true")
    action("get", "show an alias (and its last automatic rollback)")
    action("delete", "delete an alias")
    action("list", "list a service's aliases", named=False)
