"""Trigger types (**contract**): each type's `triggerConfig`, validated in one place.

The gateway validates a trigger's config here before storing it, and the triggers role
decodes the stored config with the same Struct, so a config is checked once where it
enters and read typed everywhere after. A new event source adds its Struct, its check and
one `TriggerType` entry to `TRIGGER_TYPES` (see docs/architecture.md "Triggers").
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit

import msgspec
from yarl import URL

from shared import cron, s3events
from shared.errors import BadRequest, Forbidden, PayloadTooLarge
from shared.logstore import STORE_NAME
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


class KeyFilter(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    prefix: str = ""
    suffix: str = ""


class ObjectFilter(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """FC's OSS trigger filter: `{"key": {"prefix", "suffix"}}` on the decoded key."""

    key: KeyFilter = msgspec.field(default_factory=KeyFilter)


class _Credentials(msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=True):
    endpoint_url: str = ""
    region: str = "us-east-1"
    access_key_id: str = ""
    secret_access_key: str = ""


class SqsSource(_Credentials, tag="sqs", tag_field="type"):
    """AWS S3 (or any S3 endpoint) notifying an SQS queue, polled with long polling; the
    S3 API at `endpointUrl` configures the bucket's notification and answers HEADs."""

    queue_url: str
    # How long a received message stays invisible to other pollers; an adapter killed
    # before deleting it has its events delivered again after this.
    visibility_timeout_seconds: int = 30


class MinioAmqpSource(_Credentials, tag="minio-amqp", tag_field="type"):
    """MinIO's AMQP notification target on the platform's broker: a fanout, durable
    `exchange` ("" is the deployment's, `{namespace}.s3-events`); the credentials, optional,
    configure the bucket's notification."""

    exchange: str = ""
    # MinIO's ARN of its AMQP target, for the bucket's notification configuration.
    queue_arn: str = "arn:minio:sqs::PRIMARY:amqp"


class WebhookSource(msgspec.Struct, tag="webhook", tag_field="type", forbid_unknown_fields=True):
    """An endpoint on the gateway (`/v1/triggers/s3/{triggerId}/events`) authenticated by
    the trigger's token, for MinIO's webhook target or any S3-shaped sender."""


ObjectSource = SqsSource | MinioAmqpSource | WebhookSource
EventFormat = Literal["s3", "oss"]


class S3Config(msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=True):
    """`s3` (FC's `oss`): object events of one bucket, filtered by event name and key."""

    bucket: str
    events: list[str]
    filter: ObjectFilter = msgspec.field(default_factory=ObjectFilter)
    event_format: EventFormat = "s3"
    source: ObjectSource = msgspec.field(default_factory=MinioAmqpSource)

    def takes(self, event: s3events.ObjectEvent) -> bool:
        """Whether this trigger runs its function for `event`."""
        return s3events.matches(
            event,
            bucket=self.bucket,
            events=self.events,
            prefix=self.filter.key.prefix,
            suffix=self.filter.key.suffix,
        )


class MqConfig(msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=True):
    """`mq`: run the function for each message published to `exchange` whose routing key
    matches `routingKey` (a topic pattern: `*` one word, `#` any), or for each batch of up
    to `batchSize` messages gathered for at most `batchWindowSeconds`. `amqpUrl`: the
    tenant's own broker (the platform's by default); its password is never returned."""

    exchange: str
    routing_key: str = "#"
    batch_size: int = 1
    batch_window_seconds: float = 0.0
    amqp_url: str = ""


class LogTriggerConfig(msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=True):
    """`log`: run the function with batches of the records of a tenant's log store
    (shared/logstore.py): up to `batchSize` records gathered for at most
    `batchWindowSeconds`, from `startFrom` (`latest`: lines after the trigger was created
    or changed; `earliest`: all the store keeps; or an ISO 8601 time, to replay)."""

    logstore: str
    batch_size: int = 100
    batch_window_seconds: float = 1.0
    start_from: str = "latest"


MAX_LOG_BATCH = 10_000
MAX_LOG_WINDOW_SECONDS = 300.0
MAX_MQ_BATCH = 100
MAX_MQ_WINDOW_SECONDS = 60.0
# The password of an `amqpUrl` as GET shows it; a PUT that sends it back keeps the stored one.
SECRET_MASK = "****"
_EXCHANGE_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,255}$")
_WORD_RE = re.compile(r"^(\*|#|[^.*#]+)$")


HTTP_METHODS = ("GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS")
AuthType = Literal["anonymous", "function"]
RequestFormat = Literal["wsgi", "event", "asgi"]


class HttpConfig(msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=True):
    """`http`: the function served at `/v1/proxy/{s}[.{q}]/{f}/...` and at the trigger's
    own URL (`/v1/http/{triggerId}/...`); `authType: anonymous` needs no credential on the
    trigger's URL. `requestFormat`: a WSGI app (FC 2.0's Python HTTP functions), FC 3.0's
    HTTP event, or an ASGI app."""

    auth_type: AuthType = "function"
    methods: list[str] = msgspec.field(default_factory=lambda: list(HTTP_METHODS))
    request_format: RequestFormat = "wsgi"


@dataclass(frozen=True, slots=True)
class Limits:
    """What a config is checked against beyond its own fields."""

    max_event_bytes: int
    # The deployment's namespace: its own exchanges are not event sources.
    namespace: str = "pyfc"
    # `mq`: the operator's allow-list of exchange patterns (PYFC_MQ_EXCHANGES; empty = any
    # exchange but the platform's) and the tenant asking (`{tenant}` in a pattern).
    mq_exchanges: tuple[str, ...] = ()
    tenant: str = ""


@dataclass(frozen=True, slots=True)
class TriggerType:
    """One event source: its config Struct, its checks, and the envelope `source` it sets."""

    name: str
    config: type[msgspec.Struct]
    source: Source
    check: Callable[[Any, Limits], None]
    # Served by a `pyfc trigger <name>` process (false: the gateway serves it, as `http`).
    process: bool = True


def _check_timer(config: TimerConfig, limits: Limits) -> None:
    config.schedule()
    event = timer_event("1970-01-01T00:00:00Z", "", config.payload)
    if len(event) + _TIMER_EVENT_OVERHEAD > limits.max_event_bytes:
        raise PayloadTooLarge(
            f"triggerConfig.payload: the timer's event would be {len(event)} bytes; "
            f"the async event limit is {limits.max_event_bytes}"
        )


_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_EXCHANGE = re.compile(r"^[A-Za-z0-9_.:-]{1,255}$")


def _check_url(field: str, url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadRequest(f"triggerConfig.{field}: {url!r} is not an http(s) URL")


def _check_s3(config: S3Config, limits: Limits) -> None:
    if not _BUCKET.match(config.bucket) or ".." in config.bucket:
        raise BadRequest(
            f"triggerConfig.bucket: {config.bucket!r} is not a bucket name (3-63 characters: "
            "lower-case letters, digits, '.', '-')"
        )
    if not config.events:
        raise BadRequest("triggerConfig.events: give at least one event, e.g. s3:ObjectCreated:*")
    for event in config.events:
        if s3events.s3_name(event) not in s3events.S3_EVENTS:
            raise BadRequest(
                f"triggerConfig.events: unknown event {event!r} (e.g. s3:ObjectCreated:*, "
                "s3:ObjectCreated:Put, s3:ObjectRemoved:*, oss:ObjectCreated:PutObject)"
            )
    for name in ("prefix", "suffix"):
        if len(getattr(config.filter.key, name)) > 1024:
            raise BadRequest(f"triggerConfig.filter.key.{name}: longer than 1024 characters")
    source = config.source
    if isinstance(source, SqsSource | MinioAmqpSource):
        if source.endpoint_url:
            _check_url("source.endpointUrl", source.endpoint_url)
        if bool(source.access_key_id) != bool(source.secret_access_key):
            raise BadRequest(
                "triggerConfig.source: give both accessKeyId and secretAccessKey, or neither"
            )
    if isinstance(source, SqsSource):
        _check_url("source.queueUrl", source.queue_url)
        if not 1 <= source.visibility_timeout_seconds <= 43200:
            raise BadRequest("triggerConfig.source.visibilityTimeoutSeconds: 1 to 43200")
    if isinstance(source, MinioAmqpSource) and source.exchange:
        if not _EXCHANGE.match(source.exchange):
            raise BadRequest(f"triggerConfig.source.exchange: {source.exchange!r} is not valid")
        own = f"{limits.namespace}."
        if source.exchange.startswith(own) and source.exchange != events_exchange(limits.namespace):
            raise BadRequest(
                f"triggerConfig.source.exchange: {source.exchange!r} is the platform's own"
            )


def check_exchange(exchange: str, limits: Limits) -> None:
    """May a tenant bind or publish to `exchange` on the platform's broker? 400 for a bad
    name, 403 for the platform's own exchanges or one outside the operator's allow-list."""
    if not _EXCHANGE_RE.match(exchange):
        raise BadRequest(
            f"exchange: {exchange!r} is not an exchange name (1-255 of A-Z a-z 0-9 _ . : -)"
        )
    if exchange.startswith("amq.") or (
        limits.namespace and exchange.startswith(f"{limits.namespace}.")
    ):
        raise Forbidden(f"exchange: {exchange!r} is the platform's; tenants may not use it")
    patterns = [p.replace("{tenant}", limits.tenant) for p in limits.mq_exchanges]
    if patterns and not any(fnmatch.fnmatchcase(exchange, p) for p in patterns):
        raise Forbidden(
            f"exchange: {exchange!r} is not among the exchanges tenants may use "
            f"(PYFC_MQ_EXCHANGES: {', '.join(patterns)})"
        )


def check_routing_pattern(pattern: str, field_name: str = "triggerConfig.routingKey") -> None:
    """A topic binding pattern: dot-separated words, each `*`, `#` or a literal word."""
    words = pattern.split(".") if pattern else []
    if len(pattern.encode()) > 255 or not all(_WORD_RE.match(w) for w in words):
        raise BadRequest(
            f"{field_name}: {pattern!r} is not a topic pattern (words separated by '.', "
            "each '*', '#' or a word without them; at most 255 bytes)"
        )


def _check_amqp_url(url: str) -> None:
    try:
        parsed = URL(url)
    except ValueError as e:
        raise BadRequest(f"triggerConfig.amqpUrl: not a URL ({e})") from e
    if parsed.scheme not in ("amqp", "amqps") or not parsed.host:
        raise BadRequest(
            "triggerConfig.amqpUrl: expected amqp://[user:password@]host[:port][/vhost]"
        )


def _check_mq(config: MqConfig, limits: Limits) -> None:
    if config.amqp_url:
        _check_amqp_url(config.amqp_url)
        if not _EXCHANGE_RE.match(config.exchange) or config.exchange.startswith("amq."):
            raise BadRequest(f"triggerConfig.exchange: {config.exchange!r} cannot be bound")
    else:
        try:
            check_exchange(config.exchange, limits)
        except BadRequest as e:
            raise BadRequest(f"triggerConfig.{e.message}") from e
        except Forbidden as e:
            raise Forbidden(f"triggerConfig.{e.message}") from e
    check_routing_pattern(config.routing_key)
    if not 1 <= config.batch_size <= MAX_MQ_BATCH:
        raise BadRequest(
            f"triggerConfig.batchSize: {config.batch_size} is not in 1..{MAX_MQ_BATCH}"
        )
    if not 0 <= config.batch_window_seconds <= MAX_MQ_WINDOW_SECONDS:
        raise BadRequest(
            f"triggerConfig.batchWindowSeconds: {config.batch_window_seconds} is not in "
            f"0..{MAX_MQ_WINDOW_SECONDS:g}"
        )


def _check_log(config: LogTriggerConfig, limits: Limits) -> None:
    if not STORE_NAME.fullmatch(config.logstore):
        raise BadRequest(f"triggerConfig.logstore: {config.logstore!r} is not a store name")
    if not 1 <= config.batch_size <= MAX_LOG_BATCH:
        raise BadRequest(
            f"triggerConfig.batchSize: {config.batch_size} is not in 1..{MAX_LOG_BATCH}"
        )
    if not 0 <= config.batch_window_seconds <= MAX_LOG_WINDOW_SECONDS:
        raise BadRequest(
            f"triggerConfig.batchWindowSeconds: {config.batch_window_seconds} is not in "
            f"0..{MAX_LOG_WINDOW_SECONDS:g}"
        )
    log_start(config.start_from)


def log_start(start_from: str) -> float | str:
    """`startFrom` as the log trigger starts: "latest", "earliest", or epoch seconds."""
    if start_from in ("latest", "earliest"):
        return start_from
    try:
        stamp = datetime.fromisoformat(start_from.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(
            f"triggerConfig.startFrom: {start_from!r} is not latest, earliest or an ISO time"
        ) from None
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)).timestamp()


def _check_http(config: HttpConfig, limits: Limits) -> None:
    if not config.methods:
        raise BadRequest(f"triggerConfig.methods: give at least one of {', '.join(HTTP_METHODS)}")
    for method in config.methods:
        if method not in HTTP_METHODS:
            raise BadRequest(
                f"triggerConfig.methods: {method!r} is not one of {', '.join(HTTP_METHODS)}"
            )
    if len(set(config.methods)) != len(config.methods):
        raise BadRequest("triggerConfig.methods: a method is listed twice")


def events_exchange(namespace: str) -> str:
    """The exchange the deployment's MinIO publishes bucket events to (deploy/)."""
    return f"{namespace}.s3-events"


S3 = TriggerType("s3", S3Config, "s3", _check_s3)
TRIGGER_TYPES: dict[str, TriggerType] = {
    "timer": TriggerType("timer", TimerConfig, "cron", _check_timer),
    "s3": S3,
    "mq": TriggerType("mq", MqConfig, "mq", _check_mq),
    "log": TriggerType("log", LogTriggerConfig, "log", _check_log),
    "http": TriggerType("http", HttpConfig, "http", _check_http, process=False),
}
# The kinds a `pyfc trigger <kind>` process serves (`pyfc up` runs one of each).
PROCESS_KINDS = tuple(name for name, kind in TRIGGER_TYPES.items() if kind.process)
# Other names of a type (Function Compute's): stored under the type's own name.
TYPE_ALIASES = {"oss": "s3"}
# Config fields never shown by the API (GET shows "" in their place).
SECRET_FIELDS = frozenset({"secretAccessKey"})


# Config fields holding a URL whose password is never shown (GET masks it).
URL_FIELDS = frozenset({"amqpUrl"})


def public_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A stored config as the API shows it: secrets blanked, passwords in URLs masked,
    at any depth."""
    return {k: _public_value(k, v) for k, v in config.items()}


def _public_value(key: str, value: Any) -> Any:
    if key in SECRET_FIELDS and value:
        return ""
    if key in URL_FIELDS and isinstance(value, str) and value:
        return mask_url(value)
    return public_config(value) if isinstance(value, Mapping) else value


def mask_url(url: str) -> str:
    """`url` with its password masked (what GET shows)."""
    try:
        parsed = URL(url)
    except ValueError:
        return SECRET_MASK
    return str(parsed.with_password(SECRET_MASK)) if parsed.password is not None else url


def restore_secrets(new: dict[str, Any], current: Mapping[str, Any]) -> dict[str, Any]:
    """A PUT's config with the masked URL passwords GET showed (same user and host)
    replaced by the stored ones, so sending back what GET showed keeps the secret."""
    out = dict(new)
    for key in URL_FIELDS:
        url, stored = new.get(key), current.get(key)
        if not isinstance(url, str) or not isinstance(stored, str) or not stored:
            continue
        try:
            sent, kept = URL(url), URL(stored)
        except ValueError:
            continue
        if sent.password == SECRET_MASK and sent.with_password(None) == kept.with_password(None):
            out[key] = stored
    return out


def trigger_type(name: str) -> TriggerType:
    """The registered type called `name` (or an alias of it); 400 naming `triggerType`."""
    found = TRIGGER_TYPES.get(TYPE_ALIASES.get(name, name))
    if found is None:
        known = ", ".join(sorted([*TRIGGER_TYPES, *TYPE_ALIASES]))
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
