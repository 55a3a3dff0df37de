"""`pyfc trigger <kind>` runs a trigger process; `pyfc trigger create|list|get|update|delete`
is the trigger API from the command line."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import click

from pyfc.client import Api, _fail
from pyfc.console import Context, api_command, json_option, pass_context, run
from shared.trigger_types import PROCESS_KINDS


@click.group(help="run a trigger process, or manage triggers")
def trigger() -> None:
    pass


def _trigger_process(kind: str) -> click.Command:
    @pass_context
    def run_process(ctx: Context) -> int:
        from triggers.main import main as trigger_main

        return trigger_main(kind, ctx.settings())

    return click.Command(kind, callback=run_process, help=f"run one process of the {kind} role")


for _kind in PROCESS_KINDS:
    trigger.add_command(_trigger_process(_kind))


def _config_options(f: click.decorators.FC) -> click.decorators.FC:
    for option in reversed(
        (
            click.option("--cron", help="timer: cronExpression (6 or 5 fields, @every 30s)"),
            click.option("--timezone", help="timer: IANA zone, e.g. Asia/Shanghai"),
            click.option("--payload", help="timer: the payload string the function gets"),
            click.option("--missed-runs", type=click.Choice(("skip", "once", "all"))),
            click.option("--overlap", type=click.Choice(("allow", "skip", "queue"))),
            click.option("--config", "config_json", help="the whole triggerConfig as JSON"),
            click.option("--qualifier", help="version or alias (default LATEST)"),
        )
    ):
        f = option(f)
    return f


def _config(options: dict[str, Any]) -> dict[str, Any]:
    raw = options.get("config_json")
    try:
        config: dict[str, Any] = json.loads(raw) if raw else {}
    except ValueError as e:
        raise click.BadParameter(f"not JSON: {e}", param_hint="--config") from None
    for flag, field in (
        ("cron", "cronExpression"),
        ("timezone", "timezone"),
        ("payload", "payload"),
        ("missed_runs", "missedRuns"),
        ("overlap", "overlap"),
    ):
        if options.get(flag) is not None:
            config[field] = options[flag]
    return config


def _target(target: str) -> str:
    service, _, function = target.partition("/")
    if not service or not function:
        raise click.BadParameter("SERVICE/FUNCTION", param_hint="target")
    return f"/v1/services/{quote(service)}/functions/{quote(function)}/triggers"


@trigger.command("create", help="create a trigger on SERVICE/FUNCTION")
@api_command
@click.argument("target", metavar="SERVICE/FUNCTION")
@click.argument("name", metavar="TRIGGER")
@click.option("--type", "trigger_type", default="timer", show_default=True)
@click.option("--disabled", is_flag=True, help="create it disabled")
@_config_options
@json_option
def create(
    api: Api, target: str, name: str, trigger_type: str, disabled: bool, as_json: bool, **opts: Any
) -> int:
    body: dict[str, Any] = {
        "triggerName": name,
        "triggerType": trigger_type,
        "triggerConfig": _config(opts),
        "enabled": not disabled,
    }
    if opts.get("qualifier"):
        body["qualifier"] = opts["qualifier"]
    return run(_call(api, "POST", _target(target), body, as_json))


@trigger.command("list", help="list a function's triggers")
@api_command
@click.argument("target", metavar="SERVICE/FUNCTION")
@json_option
def list_(api: Api, target: str, as_json: bool) -> int:
    return run(_list(api, _target(target), as_json))


@trigger.command("get", help="show one trigger")
@api_command
@click.argument("target", metavar="SERVICE/FUNCTION")
@click.argument("name", metavar="TRIGGER")
@json_option
def get(api: Api, target: str, name: str, as_json: bool) -> int:
    return run(_call(api, "GET", f"{_target(target)}/{quote(name)}", None, as_json))


@trigger.command("update", help="change a trigger (only what is given)")
@api_command
@click.argument("target", metavar="SERVICE/FUNCTION")
@click.argument("name", metavar="TRIGGER")
@_config_options
@click.option("--enable/--disable", "enabled", default=None)
@json_option
def update(
    api: Api, target: str, name: str, enabled: bool | None, as_json: bool, **opts: Any
) -> int:
    body: dict[str, Any] = {}
    if config := _config(opts):
        body["triggerConfig"] = config
    if enabled is not None:
        body["enabled"] = enabled
    if opts.get("qualifier"):
        body["qualifier"] = opts["qualifier"]
    return run(_call(api, "PUT", f"{_target(target)}/{quote(name)}", body, as_json))


@trigger.command("delete", help="delete a trigger")
@api_command
@click.argument("target", metavar="SERVICE/FUNCTION")
@click.argument("name", metavar="TRIGGER")
@json_option
def delete(api: Api, target: str, name: str, as_json: bool) -> int:
    return run(_call(api, "DELETE", f"{_target(target)}/{quote(name)}", None, as_json, name))


async def _list(api: Api, base: str, as_json: bool) -> int:
    async with aiohttp.ClientSession() as s:
        status, _, raw = await api.request(s, "GET", base + "?" + urlencode({"limit": "100"}))
    if status != 200:
        return _fail(status, raw)
    page = json.loads(raw)
    if as_json:
        print(json.dumps(page, indent=2))
    for t in [] if as_json else page["triggers"]:
        print(_line(t))
    return 0


async def _call(
    api: Api, method: str, path: str, body: dict[str, Any] | None, as_json: bool, name: str = ""
) -> int:
    async with aiohttp.ClientSession() as s:
        status, _, raw = await api.request(s, method, path, json=body)
    if status >= 300:
        return _fail(status, raw)
    if method == "DELETE":
        print(f"deleted trigger {name}" if not as_json else "{}")
        return 0
    trigger = json.loads(raw)
    print(json.dumps(trigger, indent=2) if as_json else _line(trigger))
    return 0


def _line(t: dict[str, Any]) -> str:
    state = "enabled" if t.get("enabled") else "disabled"
    config = json.dumps(t.get("triggerConfig", {}), separators=(",", ":"))
    return (
        f"{t['triggerName']}  {t['triggerType']}  {t.get('qualifier', 'LATEST')}  {state}  "
        f"{config}  id={t.get('triggerId', '')}"
    )
