"""`pyfc` command line: readable output for people, `--json` for scripts."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from pyfc import trigger_cli
from shared.errors import PyfcError
from shared.settings import Settings
from shared.trigger_types import TRIGGER_TYPES


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pyfc", description="pyfc function platform")
    p.add_argument("--data-dir", help="state directory (PYFC_DATA_DIR)")
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the whole local stack in the foreground")
    up.add_argument("--workers", type=int, default=1)
    up.add_argument("--port", type=int, help="gateway HTTP port (PYFC_HTTP_PORT)")
    for role in ("gateway", "dispatcher", "worker"):
        sub.add_parser(role, help=f"run one {role} process")

    tenant = sub.add_parser("tenant", help="manage tenants")
    tsub = tenant.add_subparsers(dest="action", required=True)
    create = tsub.add_parser("create", help="create a tenant and print its API key")
    create.add_argument("name")
    create.add_argument("--concurrency", type=int)
    create.add_argument("--json", action="store_true")
    tupdate = tsub.add_parser("update", help="change a tenant's concurrency cap or chain depth")
    tupdate.add_argument("name")
    tupdate.add_argument("--concurrency", type=int)
    tupdate.add_argument("--max-chain-depth", type=int)
    tupdate.add_argument("--json", action="store_true")

    def connection_options(c: argparse.ArgumentParser) -> argparse.ArgumentParser:
        c.add_argument("--endpoint", help="gateway URL (PYFC_ENDPOINT)")
        c.add_argument("--api-key", help="API key (PYFC_API_KEY)")
        return c

    def client(name: str, help: str) -> argparse.ArgumentParser:
        return connection_options(sub.add_parser(name, help=help))

    dep = client("deploy", "deploy a function from a folder")
    dep.add_argument("folder", type=Path)
    dep.add_argument("--service", required=True)
    dep.add_argument("--function", required=True)
    dep.add_argument("--handler", default="index.handler")
    dep.add_argument("--runtime", default="python3.11")
    dep.add_argument("--timeout", type=float)
    dep.add_argument("--memory", type=int)
    dep.add_argument("--initializer")
    dep.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")

    inv = client("invoke", "invoke a function: SERVICE[.QUALIFIER]/FUNCTION")
    inv.add_argument("target")
    inv.add_argument("--data", help="event as a string")
    inv.add_argument("--file", help="event from a file, or - for stdin")
    inv.add_argument("--async", dest="is_async", action="store_true")
    inv.add_argument("--log", action="store_true", help="print the log tail to stderr")

    res = client("result", "status and result of an async invocation")
    res.add_argument("target")
    res.add_argument("request_id")
    res.add_argument("--wait", type=float, default=0.0, metavar="SECONDS")

    trigger = sub.add_parser("trigger", help="run a trigger process, or manage triggers")
    trsub = trigger.add_subparsers(dest="action", required=True)
    for kind in TRIGGER_TYPES:
        trsub.add_parser(kind, help=f"run one process of the {kind} trigger role")
    trigger_cli.add_actions(trsub, connection_options)

    from pyfc.release_client import add_commands

    add_commands(sub, connection_options)

    dlq = sub.add_parser("dlq", help="dead letters: async invocations given up on")
    dsub = dlq.add_subparsers(dest="action", required=True)

    def dlq_action(name: str, help: str, filters: bool = True) -> argparse.ArgumentParser:
        a = connection_options(dsub.add_parser(name, help=help))
        if filters:
            a.add_argument("--service", default="", help="only this service's")
            a.add_argument("--function", default="", help="only this function's")
        a.add_argument("--json", action="store_true")
        return a

    dlist = dlq_action("list", "list dead letters")
    dlist.add_argument("--limit", type=int, default=100)
    dlist.add_argument("--start-key", default="")
    dlq_action("show", "show one dead letter with its payload", filters=False).add_argument("id")
    redrive = dlq_action("redrive", "run dead letters again: one ID, or --all matching")
    redrive.add_argument("id", nargs="?")
    redrive.add_argument("--all", action="store_true")
    dlq_action("purge", "delete all matching dead letters")
    return p


async def _tenant_create(
    settings: Settings, name: str, concurrency: int | None, as_json: bool
) -> int:
    from shared.store import Store

    store = await Store.open(settings.effective_database_url)
    try:
        await store.migrate()
        tenant, key = await store.create_tenant(name, concurrency or settings.tenant_concurrency)
    finally:
        await store.close()
    if as_json:
        print(json.dumps({"tenant": tenant.name, "apiKey": key}))
    else:
        print(f"tenant {tenant.name} created (concurrency {tenant.concurrency})")
        print(f"API key (shown once): {key}")
    return 0


async def _tenant_update(
    settings: Settings,
    name: str,
    concurrency: int | None,
    max_chain_depth: int | None,
    as_json: bool,
) -> int:
    from shared.store import Store

    store = await Store.open(settings.effective_database_url)
    try:
        await store.migrate()
        tenant = await store.update_tenant(
            name, concurrency=concurrency, max_chain_depth=max_chain_depth
        )
        reserved = await store.reserved_total(name)
    finally:
        await store.close()
    notified = await _notify_tenant_changed(settings, name)
    if as_json:
        print(
            json.dumps(
                {
                    "tenant": tenant.name,
                    "concurrency": tenant.concurrency,
                    "maxChainDepth": tenant.max_chain_depth,
                    "reservedConcurrency": reserved,
                }
            )
        )
    else:
        print(
            f"tenant {tenant.name} updated: concurrency {tenant.concurrency} "
            f"({reserved} reserved by functions), max chain depth {tenant.max_chain_depth}"
        )
    if not notified:
        print(
            "note: the broker could not be told; running roles pick the change up within "
            "their cache time (30 s)",
            file=sys.stderr,
        )
    return 0


async def _notify_tenant_changed(settings: Settings, name: str) -> bool:
    """Tell running roles to drop what they cached of the tenant; False if unreachable."""
    import aio_pika
    from aio_pika.exceptions import AMQPError

    from shared import control
    from shared.protocol import ControlEvent
    from shared.topology import Topology

    try:
        connection = await aio_pika.connect(settings.amqp_url, timeout=5)
        async with connection:
            await control.publish(
                await connection.channel(),
                Topology(settings.namespace, settings.queue_type),
                ControlEvent(kind="tenant-changed", tenant=name),
            )
    except (OSError, AMQPError, TimeoutError):
        return False
    return True


def _client_call(args: argparse.Namespace, settings: Settings) -> int:
    import os

    from pyfc import client

    endpoint = (
        args.endpoint
        or os.environ.get("PYFC_ENDPOINT")
        or (f"http://{settings.http_host}:{settings.http_port}")
    )
    api = client.Api(endpoint, client.api_key(args.api_key, settings.data_dir))
    if args.command == "deploy":
        options: dict[str, object] = {"handler": args.handler, "runtime": args.runtime}
        for flag, field in (
            ("timeout", "timeout"),
            ("memory", "memorySize"),
            ("initializer", "initializer"),
        ):
            if getattr(args, flag) is not None:
                options[field] = getattr(args, flag)
        if args.env:
            try:
                options["environmentVariables"] = dict(kv.split("=", 1) for kv in args.env)
            except ValueError:
                print("error: --env takes KEY=VALUE", file=sys.stderr)
                return 2
        return asyncio.run(client.deploy(api, args.folder, args.service, args.function, options))
    if args.command == "invoke":
        data = client.read_data(args.data, args.file)
        return asyncio.run(client.invoke(api, args.target, data, args.is_async, args.log))
    if args.command == "dlq":
        return asyncio.run(client.dlq(api, args))
    if args.command in ("publish", "versions", "alias"):
        from pyfc import release_client

        if args.command == "publish":
            return asyncio.run(
                release_client.publish(api, args.service, args.description, args.json)
            )
        if args.command == "versions":
            return asyncio.run(release_client.versions(api, args.service, args.json))
        return asyncio.run(release_client.alias(api, args))
    if args.command == "trigger":
        return asyncio.run(trigger_cli.run(api, args))
    return asyncio.run(client.result(api, args.target, args.request_id, args.wait))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env(data_dir=args.data_dir, http_port=getattr(args, "port", None))
        if args.command == "up":
            import uvloop

            from pyfc.up import up

            return uvloop.run(up(settings, args.workers))
        if args.command == "gateway":
            from gateway.main import main as role_main
        elif args.command == "dispatcher":
            from dispatcher.main import main as role_main
        elif args.command == "worker":
            from worker.main import main as role_main
        elif args.command == "trigger" and args.action in TRIGGER_TYPES:
            from triggers.main import main as trigger_main

            return trigger_main(args.action, settings)
        elif args.command == "tenant" and args.action == "update":
            return asyncio.run(
                _tenant_update(
                    settings, args.name, args.concurrency, args.max_chain_depth, args.json
                )
            )
        elif args.command == "tenant":
            return asyncio.run(_tenant_create(settings, args.name, args.concurrency, args.json))
        else:
            return _client_call(args, settings)
        return role_main(settings)
    except PyfcError as e:
        print(f"pyfc: {e.code}: {e.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
