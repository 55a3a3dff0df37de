"""Trigger types (**contract**): each type's `triggerConfig`, validated in one place.

The gateway validates a trigger's config here before storing it, and the triggers role
decodes the stored config with the same Struct, so a config is checked once where it
enters and read typed everywhere after. A new event source adds its Struct, its check and
one `TriggerType` entry to `TRIGGER_TYPES` (see docs/architecture.md "Triggers").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from shared import cron
from shared.errors import BadRequest, PayloadTooLarge
from shared.protocol import Source

MissedRuns = Literal["skip", "once", "all"]
Overlap = Literal["allow", "skip", "queue"]
# The event a timer hands its function, less the payload: `{"triggerTime":
# "2024-01-01T00:00:00Z", "triggerName": <=128 chars, "payload": ...}` (JSON escaping of
# the payload can double it; the limit is checked on the encoded event).
_TIMER_EVENT_OVERHEAD = 256


class TimerConfig(msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=True):
    """`timer`: FC's cron trigger (`cronExpression` 6- or 5-field, `@every`, CRON_TZ=)."""

    cron_expression: str
    timezone: str = ""
    payload: str = ""
    missed_runs: MissedRuns = "skip"
    overlap: Overlap = "allow"

    def schedule(self) -> cron.Schedule:
        return cron.parse(self.cron_expression, self.timezone)


@dataclass(frozen=True, slots=True)
class Limits:
    """What a config is checked against beyond its own fields."""

    max_event_bytes: int


@dataclass(frozen=True, slots=True)
class TriggerType:
    """One event source: its config Struct, its checks, and the envelope `source` it sets."""

    name: str
    config: type[msgspec.Struct]
    source: Source
    check: Callable[[Any, Limits], None]


def _check_timer(config: TimerConfig, limits: Limits) -> None:
    config.schedule()
    event = timer_event("1970-01-01T00:00:00Z", "", config.payload)
    if len(event) + _TIMER_EVENT_OVERHEAD > limits.max_event_bytes:
        raise PayloadTooLarge(
            f"triggerConfig.payload: the timer's event would be {len(event)} bytes; "
            f"the async event limit is {limits.max_event_bytes}"
        )


TRIGGER_TYPES: dict[str, TriggerType] = {
    "timer": TriggerType("timer", TimerConfig, "cron", _check_timer),
}


def trigger_type(name: str) -> TriggerType:
    """The registered type called `name`; 400 naming `triggerType` otherwise."""
    found = TRIGGER_TYPES.get(name)
    if found is None:
        known = ", ".join(sorted(TRIGGER_TYPES))
        raise BadRequest(f"triggerType: unknown trigger type {name!r} (supported: {known})")
    return found


def decode_config(kind: TriggerType, raw: Mapping[str, Any]) -> Any:
    """The typed config of `raw`; 400 naming the field (`triggerConfig.<field>`)."""
    try:
        return msgspec.convert(raw, kind.config)
    except msgspec.ValidationError as e:
        message = str(e).replace("`$.", "`triggerConfig.").replace("`$`", "`triggerConfig`")
        raise BadRequest(f"triggerConfig: {message}") from e


def validate(type_name: str, raw: Mapping[str, Any], limits: Limits) -> dict[str, Any]:
    """Check a trigger's config for its type; return it as stored (defaults filled in)."""
    kind = trigger_type(type_name)
    if not isinstance(raw, Mapping):
        raise BadRequest("triggerConfig: expected a JSON object")
    config = decode_config(kind, raw)
    kind.check(config, limits)
    stored: dict[str, Any] = msgspec.to_builtins(config)
    return stored


def timer_event(trigger_time: str, trigger_name: str, payload: str) -> bytes:
    """FC's timer event: `{"triggerTime", "triggerName", "payload"}` as JSON bytes."""
    return msgspec.json.encode(
        {"triggerTime": trigger_time, "triggerName": trigger_name, "payload": payload}
    )
