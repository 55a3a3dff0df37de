"""`pyfc mq publish EXCHANGE`: publish a message to an exchange (`POST /v1/messages/{exchange}`),
e.g. the one an MQ trigger binds. (`pyfc publish` is taken: it publishes a version.)"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import aiohttp
import click

from pyfc.client import Api, _fail
from pyfc.console import api_command, json_option, run


async def publish(api: Api, exchange: str, message: dict[str, object], as_json: bool) -> int:
    async with aiohttp.ClientSession() as session:
        status, _, body = await api.request(
            session, "POST", f"/v1/messages/{exchange}", json=message
        )
    if status != 200:
        _fail(status, body)
    answer = json.loads(body)
    if as_json:
        print(json.dumps(answer))
    else:
        print(answer["messageId"])
        if not answer["routed"]:
            print("warning: no queue is bound to it with a matching pattern", file=sys.stderr)
    return 0


@click.command(name="publish", help="publish a message to EXCHANGE (body: --body, --file or stdin)")
@api_command
@click.argument("exchange")
@click.option("-k", "--routing-key", default="", help="the message's routing key")
@click.option("-H", "--header", "headers", multiple=True, help="NAME=VALUE (repeatable)")
@click.option("--body", help="the body as text")
@click.option("--file", "path", type=click.Path(dir_okay=False, path_type=Path), help="the body")
@click.option(
    "--message-id", default="", help="its id (an MQ trigger's request id derives from it)"
)
@click.option("--content-type", default="", help="its content type")
@json_option
def publish_command(
    api: Api,
    exchange: str,
    routing_key: str,
    headers: tuple[str, ...],
    body: str | None,
    path: Path | None,
    message_id: str,
    content_type: str,
    as_json: bool,
) -> int:
    if body is not None and path is not None:
        raise click.UsageError("give --body or --file, not both")
    raw = (
        body.encode()
        if body is not None
        else path.read_bytes()
        if path
        else sys.stdin.buffer.read()
    )
    fields: dict[str, str] = {}
    for header in headers:
        name, sep, value = header.partition("=")
        if not sep or not name:
            raise click.UsageError(f"--header {header!r}: expected NAME=VALUE")
        fields[name] = value
    message: dict[str, object] = {
        "routingKey": routing_key,
        "headers": fields,
        "messageId": message_id,
        "contentType": content_type,
    }
    try:
        message["body"] = raw.decode("utf-8")
    except UnicodeDecodeError:
        message["body"], message["isBase64Encoded"] = base64.b64encode(raw).decode(), True
    return run(publish(api, exchange, message, as_json))


@click.group(name="mq", help="messages on the platform's broker (MQ triggers' exchanges)")
def mq() -> None:
    pass


mq.add_command(publish_command)
COMMANDS = (mq,)
