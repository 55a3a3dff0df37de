"""`pyfc invoke`, `pyfc result` and `pyfc dlq`: click commands over
the functions in `pyfc.client`."""

from __future__ import annotations

import click

from pyfc import client
from pyfc.client import Api
from pyfc.console import api_command, json_option, run


@click.command(help="invoke a function: SERVICE[.QUALIFIER]/FUNCTION")
@api_command
@click.argument("target")
@click.option("--data", help="event as a string")
@click.option("--file", help="event from a file, or - for stdin")
@click.option("--async", "is_async", is_flag=True, help="queue it; print the request id")
@click.option("--log", is_flag=True, help="print the log tail to stderr")
@json_option
def invoke(
    api: Api,
    target: str,
    data: str | None,
    file: str | None,
    is_async: bool,
    log: bool,
    as_json: bool,
) -> int:
    event = client.read_data(data, file)
    return run(client.invoke(api, target, event, is_async, log, as_json))


@click.command(help="status and result of an async invocation")
@api_command
@click.argument("target")
@click.argument("request_id")
@click.option("--wait", type=float, default=0.0, metavar="SECONDS", help="until it finishes")
@json_option
def result(api: Api, target: str, request_id: str, wait: float, as_json: bool) -> int:
    return run(client.result(api, target, request_id, wait, as_json))


@click.group(help="dead letters: async invocations given up on")
def dlq() -> None:
    pass


def _filters(f: click.decorators.FC) -> click.decorators.FC:
    f = click.option("--function", default="", help="only this function's")(f)
    return click.option("--service", default="", help="only this service's")(f)


@dlq.command("list", help="list dead letters")
@api_command
@_filters
@click.option("--limit", type=int, default=100)
@click.option("--start-key", default="")
@json_option
def dlq_list(
    api: Api, service: str, function: str, limit: int, start_key: str, as_json: bool
) -> int:
    return run(
        client.dlq(
            api,
            "list",
            service=service,
            function=function,
            limit=limit,
            start_key=start_key,
            as_json=as_json,
        )
    )


@dlq.command("show", help="show one dead letter with its payload")
@api_command
@click.argument("letter_id", metavar="ID")
@json_option
def dlq_show(api: Api, letter_id: str, as_json: bool) -> int:
    return run(client.dlq(api, "show", letter_id=letter_id, as_json=as_json))


@dlq.command("redrive", help="run dead letters again: one ID, or --all matching")
@api_command
@click.argument("letter_id", metavar="[ID]", required=False, default="")
@click.option("--all", "redrive_all", is_flag=True)
@_filters
@json_option
def dlq_redrive(
    api: Api, letter_id: str, redrive_all: bool, service: str, function: str, as_json: bool
) -> int:
    return run(
        client.dlq(
            api,
            "redrive",
            service=service,
            function=function,
            letter_id=letter_id,
            redrive_all=redrive_all,
            as_json=as_json,
        )
    )


@dlq.command("purge", help="delete all matching dead letters")
@api_command
@_filters
@json_option
def dlq_purge(api: Api, service: str, function: str, as_json: bool) -> int:
    return run(client.dlq(api, "purge", service=service, function=function, as_json=as_json))


COMMANDS = (invoke, result, dlq)
