"""`pyfc trigger create|list|get|update|delete`: the trigger API from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp

from pyfc.client import Api, _fail

ACTIONS = ("create", "list", "get", "update", "delete")


def add_actions(tsub: Any, connection_options: Any) -> None:
    """The client actions under `pyfc trigger`."""

    def action(name: str, help: str, named: bool = True) -> argparse.ArgumentParser:
        a: argparse.ArgumentParser = connection_options(tsub.add_parser(name, help=help))
        a.add_argument("target", metavar="SERVICE/FUNCTION")
        if named:
            a.add_argument("name", metavar="TRIGGER")
        a.add_argument("--json", action="store_true")
        return a

    def config_options(a: argparse.ArgumentParser) -> None:
        a.add_argument("--cron", help="timer: cronExpression (6 or 5 fields, @every 30s)")
        a.add_argument("--timezone", help="timer: IANA zone, e.g. Asia/Shanghai")
        a.add_argument("--payload", help="timer: the payload string the function gets")
        a.add_argument("--missed-runs", choices=("skip", "once", "all"))
        a.add_argument("--overlap", choices=("allow", "skip", "queue"))
        a.add_argument("--config", help="the whole triggerConfig as JSON")
        a.add_argument("--qualifier", help="version or alias (default LATEST)")

    create = action("create", "create a trigger on SERVICE/FUNCTION")
    create.add_argument("--type", default="timer", dest="trigger_type")
    create.add_argument("--disabled", action="store_true", help="create it disabled")
    config_options(create)
    action("list", "list a function's triggers", named=False)
    action("get", "show one trigger")
    update = action("update", "change a trigger (only what is given)")
    config_options(update)
    state = update.add_mutually_exclusive_group()
    state.add_argument("--enable", dest="enabled", action="store_true", default=None)
    state.add_argument("--disable", dest="enabled", action="store_false")
    action("delete", "delete a trigger")


def _config(args: argparse.Namespace) -> dict[str, Any]:
    config: dict[str, Any] = json.loads(args.config) if args.config else {}
    for flag, field in (
        ("cron", "cronExpression"),
        ("timezone", "timezone"),
        ("payload", "payload"),
        ("missed_runs", "missedRuns"),
        ("overlap", "overlap"),
    ):
        if getattr(args, flag) is not None:
            config[field] = getattr(args, flag)
    return config


async def run(api: Api, args: argparse.Namespace) -> int:
    service, _, function = args.target.partition("/")
    if not service or not function:
        print("error: target is SERVICE/FUNCTION", file=sys.stderr)
        return 2
    base = f"/v1/services/{quote(service)}/functions/{quote(function)}/triggers"
    async with aiohttp.ClientSession() as s:
        if args.action == "list":
            status, _, raw = await api.request(s, "GET", base + "?" + urlencode({"limit": "100"}))
            if status != 200:
                return _fail(status, raw)
            page = json.loads(raw)
            if args.json:
                print(json.dumps(page, indent=2))
            for t in [] if args.json else page["triggers"]:
                print(_line(t))
            return 0
        path = base + "/" + quote(args.name) if args.action != "create" else base
        body: dict[str, Any] | None = None
        if args.action == "create":
            body = {
                "triggerName": args.name,
                "triggerType": args.trigger_type,
                "triggerConfig": _config(args),
                "enabled": not args.disabled,
            }
        elif args.action == "update":
            body = {}
            if config := _config(args):
                body["triggerConfig"] = config
            if args.enabled is not None:
                body["enabled"] = args.enabled
        if body is not None and args.qualifier:
            body["qualifier"] = args.qualifier
        method = {"create": "POST", "get": "GET", "update": "PUT", "delete": "DELETE"}
        status, _, raw = await api.request(s, method[args.action], path, json=body)
        if status >= 300:
            return _fail(status, raw)
        if args.action == "delete":
            print(f"deleted trigger {args.name}" if not args.json else "{}")
            return 0
        trigger = json.loads(raw)
        print(json.dumps(trigger, indent=2) if args.json else _line(trigger))
        return 0


def _line(t: dict[str, Any]) -> str:
    state = "enabled" if t.get("enabled") else "disabled"
    config = json.dumps(t.get("triggerConfig", {}), separators=(",", ":"))
    return (
        f"{t['triggerName']}  {t['triggerType']}  {t.get('qualifier', 'LATEST')}  {state}  "
        f"{config}  id={t.get('triggerId', '')}"
    )
