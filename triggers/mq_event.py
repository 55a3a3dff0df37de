"""What an MQ trigger makes of messages, as pure functions: the request id a message (or a
batch) derives, its lineage, and the event a function gets.

A message's id is derived from its `message_id` (every `pyfc publish` and MQ destination
sets one), else from its content: a redelivered message derives the same id, so with
`Invocation.once` the dispatcher runs it once however often the adapter accepts it.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import msgspec

from shared.topology import HDR_HOPS, HDR_TRACE

# Bytes a message adds to a batch event beyond its body (envelope and properties).
EVENT_OVERHEAD = 1024


@dataclass(frozen=True, slots=True)
class Message:
    """A delivered message as the trigger sees it: decoded at the edge, no broker objects."""

    body: bytes
    exchange: str
    routing_key: str
    delivery_tag: int
    redelivered: bool
    message_id: str = ""
    headers: Mapping[str, Any] | None = None
    properties: Mapping[str, Any] | None = None

    @property
    def key(self) -> str:
        """What identifies the message across redeliveries."""
        if self.message_id:
            return f"id:{self.message_id}"
        digest = hashlib.sha256()
        for part in (self.exchange, self.routing_key, _json(self.properties or {})):
            digest.update(part.encode() if isinstance(part, str) else part)
            digest.update(b"\0")
        digest.update(self.body)
        return f"sha256:{digest.hexdigest()}"


def batch_key(messages: Sequence[Message]) -> str:
    """One message's own key; a batch's from its messages' keys (the same messages
    redelivered together derive the same id)."""
    if len(messages) == 1:
        return messages[0].key
    digest = hashlib.sha256("\n".join(sorted(m.key for m in messages)).encode())
    return f"batch:{digest.hexdigest()}"


def chain(messages: Sequence[Message]) -> tuple[str, int]:
    """The trace and depth the messages carry (AMQP headers `x-pyfc-trace`/`x-pyfc-hops`
    set by `pyfc publish` and MQ destinations): ("", 0) for a message from outside."""
    trace, hops = "", 0
    for m in messages:
        headers = m.headers or {}
        raw = headers.get(HDR_HOPS)
        try:
            depth = int(raw) if raw is not None else 0
        except (TypeError, ValueError):
            depth = 0
        if depth >= hops:
            hops = depth
            found = headers.get(HDR_TRACE)
            trace = found.decode() if isinstance(found, bytes) else str(found or trace)
    return trace, hops


def batch_event(messages: Sequence[Message]) -> bytes:
    """The event of a batch (DESIGN.md): a JSON array of `{"data": {"envelope": {...},
    "props": {...}, "body": ...}}`; a body that is not UTF-8 is base64 with
    `"isBase64Encoded": true`."""
    items = []
    for m in messages:
        data: dict[str, Any] = {
            "envelope": {
                "exchange": m.exchange,
                "routingKey": m.routing_key,
                "deliveryTag": m.delivery_tag,
                "redeliver": m.redelivered,
            },
            "props": _plain(dict(m.properties or {})),
        }
        try:
            data["body"] = m.body.decode("utf-8")
        except UnicodeDecodeError:
            data["body"] = base64.b64encode(m.body).decode()
            data["isBase64Encoded"] = True
        items.append({"data": data})
    return msgspec.json.encode(items)


def event_size(message: Message) -> int:
    """About what `message` adds to a batch event (base64 grows a body by a third)."""
    return EVENT_OVERHEAD + len(message.body) * 4 // 3


def _plain(value: Any) -> Any:
    """AMQP field values as JSON values (bytes as text, times as ISO-8601)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


def _json(value: Any) -> bytes:
    return msgspec.json.encode(_plain(value), order="sorted")
