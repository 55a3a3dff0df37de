"""`pyfc` command line (click): readable output for people, `--json` for scripts.

The root group and the commands that run pyfc's own processes live here; the commands
that talk to the gateway live in their area's module and are registered below.
"""

from __future__ import annotations

import json
import sys
import traceback

import click

from pyfc import (
    client_commands,
    deploy_cli,
    log_client,
    profiles,
    publish_client,
    release_client,
    resource_cli,
    trigger_cli,
)
from pyfc.client import EXIT_FAILED, Api, CliError, _fail, exit_code_for
from pyfc.console import Context, json_option, pass_context, run
from shared.errors import PyfcError
from shared.settings import Settings


@click.group(
    name="pyfc",
    context_settings={"help_option_names": ["-h", "--help"]},
    help="pyfc function platform",
)
@click.option("--data-dir", help="state directory (PYFC_DATA_DIR)")
@click.option("--profile", help="the saved endpoint and key to use (PYFC_PROFILE; `pyfc login`)")
@click.option("--debug", is_flag=True, help="show the traceback of an error")
@click.version_option(package_name="pyfc", prog_name="pyfc")
@click.pass_context
def cli(ctx: click.Context, data_dir: str | None, profile: str | None, debug: bool) -> None:
    ctx.obj = Context(data_dir, profile, debug)


@cli.command(help="save an endpoint and API key as a profile (default: `default`)")
@click.option("--endpoint", required=True, help="the gateway's URL, e.g. https://fc.example.com")
@click.option("--api-key", required=True, help="a tenant's API key")
@click.option("--profile", "name", default=profiles.DEFAULT_PROFILE, show_default=True)
@click.option("--check/--no-check", default=True, show_default=True, help="try the key first")
@json_option
def login(endpoint: str, api_key: str, name: str, check: bool, as_json: bool) -> int:
    path = profiles.config_path()
    if check:
        run(_check_login(Api(endpoint, api_key, "from --endpoint")))
    profiles.save(path, profiles.Profile(name, endpoint, api_key))
    if as_json:
        print(json.dumps({"profile": name, "endpoint": endpoint, "config": str(path)}))
    else:
        print(f"profile {name!r} saved in {path}: {endpoint}")
    return 0


async def _check_login(api: Api) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as s:
        status, _, raw = await api.request(s, "GET", "/v1/services?limit=1")
    if status != 200:
        _fail(status, raw)


@cli.command(help='print the shell completion script: eval "$(pyfc completion bash)"')
@click.argument("shell", type=click.Choice(("bash", "zsh", "fish")))
def completion(shell: str) -> int:
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    assert cls is not None  # the three choices are click's own
    print(cls(cli, {}, "pyfc", "_PYFC_COMPLETE").source())
    return 0


@cli.command(help="run the whole local stack in the foreground")
@click.option("--workers", type=int, default=1, show_default=True)
@click.option("--port", type=int, help="gateway HTTP port (PYFC_HTTP_PORT)")
@pass_context
def up(ctx: Context, workers: int, port: int | None) -> int:
    import uvloop

    from pyfc.up import up as run_up

    return uvloop.run(run_up(ctx.settings(http_port=port), workers))


def _role(name: str) -> click.Command:
    @pass_context
    def run_role(ctx: Context) -> int:
        settings = ctx.settings()
        if name == "gateway":
            from gateway.main import main as role_main
        elif name == "dispatcher":
            from dispatcher.main import main as role_main
        else:
            from worker.main import main as role_main
        return role_main(settings)

    return click.Command(name, callback=run_role, help=f"run one {name} process")


for _name in ("gateway", "dispatcher", "worker"):
    cli.add_command(_role(_name))


@cli.group(help="manage tenants")
def tenant() -> None:
    pass


@tenant.command("create", help="create a tenant and print its API key")
@click.argument("name")
@click.option("--concurrency", type=int)
@click.option("--json", "as_json", is_flag=True, help="print JSON for scripts")
@pass_context
def tenant_create(ctx: Context, name: str, concurrency: int | None, as_json: bool) -> int:
    return run(_tenant_create(ctx.settings(), name, concurrency, as_json))


tenant.add_command(resource_cli.tenant_show)


@tenant.command("update", help="change a tenant's concurrency cap or chain depth")
@click.argument("name")
@click.option("--concurrency", type=int)
@click.option("--max-chain-depth", type=int)
@click.option("--json", "as_json", is_flag=True, help="print JSON for scripts")
@pass_context
def tenant_update(
    ctx: Context, name: str, concurrency: int | None, max_chain_depth: int | None, as_json: bool
) -> int:
    return run(_tenant_update(ctx.settings(), name, concurrency, max_chain_depth, as_json))


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
    from aio_pika.exceptions import AMQPError

    from shared import control
    from shared.broker import connect
    from shared.errors import Unavailable
    from shared.protocol import ControlEvent
    from shared.topology import Topology

    try:
        connection = await connect(settings.amqp_url, "pyfc-cli", timeout=5)
        async with connection:
            await control.publish(
                await connection.channel(),
                Topology(settings.namespace, settings.queue_type),
                ControlEvent(kind="tenant-changed", tenant=name),
            )
    except (OSError, AMQPError, TimeoutError, Unavailable):
        return False
    return True


# The commands over the gateway's API, one module per area.
for _command in (
    deploy_cli.deploy,
    *resource_cli.COMMANDS,
    *client_commands.COMMANDS,
    trigger_cli.trigger,
    *release_client.COMMANDS,
    *log_client.COMMANDS,
    *publish_client.COMMANDS,
):
    cli.add_command(_command)


def main(argv: list[str] | None = None) -> int:
    """Run one command; every error is one line on stderr and an exit code (see
    `pyfc.client`), its traceback only with `--debug`."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args[: args.index("--")] if "--" in args else "--debug" in args
    try:
        code = cli.main(args=args, prog_name="pyfc", standalone_mode=False)
    except click.exceptions.Abort:
        return 130
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except CliError as e:
        return _error(e.message, e.exit_code, debug)
    except PyfcError as e:
        return _error(f"{e.code}: {e.message}", exit_code_for(e.status), debug)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a bug or an unforeseen failure: still one line
        return _error(f"{type(e).__name__}: {e} (--debug shows where)", EXIT_FAILED, debug)
    return code if isinstance(code, int) else 0


def _error(message: str, exit_code: int, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    print(f"pyfc: {message}", file=sys.stderr)
    return exit_code
