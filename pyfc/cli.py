"""`pyfc` command line: readable output for people, `--json` for scripts."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from shared.errors import PyfcError
from shared.settings import Settings


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

    def client(name: str, help: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help)
        c.add_argument("--endpoint", help="gateway URL (PYFC_ENDPOINT)")
        c.add_argument("--api-key", help="API key (PYFC_API_KEY)")
        return c

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
