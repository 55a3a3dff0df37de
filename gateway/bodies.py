"""Request and response bodies of the HTTP API (**contract**); requests are validated once
where the bytes enter."""

from __future__ import annotations

import base64
from typing import Annotated, Any, TypeVar

import msgspec

from shared.errors import BadRequest
from shared.models import LogConfig
from shared.protocol import LATEST
from shared.release import Alias, AutoRollback, Version

T = TypeVar("T")

Name = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][-A-Za-z0-9_]{0,127}$")]
Description = Annotated[str, msgspec.Meta(max_length=256)]
Handler = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][\w.]*\.[A-Za-z_]\w*$", max_length=128)]
Timeout = Annotated[float, msgspec.Meta(gt=0, le=86400)]
MemorySize = Annotated[int, msgspec.Meta(ge=128, le=3072)]
InstanceConcurrency = Annotated[int, msgspec.Meta(ge=1, le=100)]
# Upper bound is the tenant's concurrency, which the store checks.
ReservedConcurrency = Annotated[int, msgspec.Meta(ge=0)]
EnvVars = dict[Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")], str]


class Code(msgspec.Struct, kw_only=True, rename="camel"):
    zip_file: str

    def zip_bytes(self) -> bytes:
        try:
            return base64.b64decode(self.zip_file, validate=True)
        except ValueError as e:
            raise BadRequest("code.zipFile is not valid base64") from e


class ServiceCreate(msgspec.Struct, kw_only=True, rename="camel"):
    service_name: Name
    description: Description = ""
    role: str = ""
    log_config: LogConfig = LogConfig()
    environment_variables: EnvVars = {}


class ServiceUpdate(msgspec.Struct, kw_only=True, rename="camel", omit_defaults=True):
    description: Description | None = None
    role: str | None = None
    log_config: LogConfig | None = None
    environment_variables: EnvVars | None = None


class FunctionCreate(msgspec.Struct, kw_only=True, rename="camel"):
    function_name: Name
    code: Code
    runtime: str = "python3.11"
    handler: Handler = "index.handler"
    description: Description = ""
    timeout: Timeout = 3.0
    memory_size: MemorySize = 128
    initializer: Handler | None = None
    initialization_timeout: Timeout = 3.0
    instance_concurrency: InstanceConcurrency = 1
    environment_variables: EnvVars = {}
    reserved_concurrency: ReservedConcurrency | None = None


class FunctionUpdate(msgspec.Struct, kw_only=True, rename="camel", omit_defaults=True):
    code: Code | None = None
    runtime: str | None = None
    handler: Handler | None = None
    description: Description | None = None
    timeout: Timeout | None = None
    memory_size: MemorySize | None = None
    initializer: Handler | None = None
    initialization_timeout: Timeout | None = None
    instance_concurrency: InstanceConcurrency | None = None
    environment_variables: EnvVars | None = None
    # null clears the reservation, so "absent" needs its own marker.
    reserved_concurrency: ReservedConcurrency | msgspec.UnsetType | None = msgspec.UNSET


# --- async and provision configs ----------------------------------------------------------

RetryAttempts = Annotated[int, msgspec.Meta(ge=0, le=8)]
EventAge = Annotated[int, msgspec.Meta(ge=1, le=86400)]
ProvisionTarget = Annotated[int, msgspec.Meta(ge=0, le=100)]
Destination = Annotated[str, msgspec.Meta(min_length=1, max_length=600)]


class DestinationBody(msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=True):
    destination: Destination


class DestinationConfigUpdate(
    msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=True, omit_defaults=True
):
    """Only the destinations given change; `null` removes one."""

    on_success: DestinationBody | msgspec.UnsetType | None = msgspec.UNSET
    on_failure: DestinationBody | msgspec.UnsetType | None = msgspec.UNSET


class AsyncConfigUpdate(
    msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=True, omit_defaults=True
):
    """PUT .../async-config: only the fields given change (defaults for a new config)."""

    max_async_retry_attempts: RetryAttempts | None = None
    max_async_event_age_in_seconds: EventAge | None = None
    destination_config: DestinationConfigUpdate | None = None


class ProvisionConfigUpdate(
    msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=True
):
    target: ProvisionTarget


# --- response bodies ---------------------------------------------------------------------


class TenantView(msgspec.Struct, kw_only=True, rename="camel"):
    """GET /v1/tenant: the caller's own tenant and its caps."""

    name: str
    concurrency: int
    max_chain_depth: int
    reserved_concurrency: int  # sum over the tenant's functions
    created_time: str


class DeadLetterSummary(msgspec.Struct, kw_only=True, rename="camel"):
    """A dead letter in a list: no payload, response or envelope."""

    request_id: str
    service_name: str
    qualifier: str
    function_name: str
    reason: str  # one of shared.models.DEAD_LETTER_REASONS
    error_type: str
    error_message: str
    attempts: int
    hops: int
    trace_id: str
    created_time: str


class DeadLetterPage(msgspec.Struct, kw_only=True, rename="camel", omit_defaults=True):
    dead_letters: list[DeadLetterSummary]
    next_token: str | None = None


class DeadLetterDetail(DeadLetterSummary, kw_only=True, rename="camel", omit_defaults=True):
    """One dead letter: payload and response as base64, and as text when they are UTF-8."""

    payload: str
    response: str
    payload_text: str | None = None
    response_text: str | None = None


class RedriveFailure(msgspec.Struct, kw_only=True, rename="camel"):
    request_id: str
    error_code: str
    error_message: str


class RedriveResult(msgspec.Struct, kw_only=True, rename="camel", omit_defaults=True):
    redriven: list[str]
    failed: list[RedriveFailure] = []
    next_token: str | None = None


# --- versions and aliases -----------------------------------------------------------

VersionId = Annotated[str, msgspec.Meta(pattern=r"^[1-9][0-9]{0,9}$")] | int
Weights = dict[str, float]


class PublishVersion(msgspec.Struct, kw_only=True, rename="camel"):
    description: Description = ""


class AliasCreate(msgspec.Struct, kw_only=True, rename="camel"):
    alias_name: str
    version_id: VersionId
    additional_version_weight: Weights = {}
    description: Description = ""
    auto_rollback: AutoRollback | None = None


class AliasUpdate(msgspec.Struct, kw_only=True, rename="camel", omit_defaults=True):
    """PUT is partial: only the fields given change; `autoRollback: null` turns it off."""

    version_id: VersionId | None = None
    additional_version_weight: Weights | None = None
    description: Description | None = None
    auto_rollback: AutoRollback | msgspec.UnsetType | None = msgspec.UNSET


class VersionPage(msgspec.Struct, kw_only=True, rename="camel", omit_defaults=True):
    versions: list[Version]
    next_token: str = ""


class AliasPage(msgspec.Struct, kw_only=True, rename="camel", omit_defaults=True):
    aliases: list[Alias]
    next_token: str = ""


def parse(body: bytes, kind: type[T]) -> T:
    """Decode a JSON body as `kind`, or a 400 that names the offending field."""
    if not body.strip():
        raise BadRequest("request body is empty; a JSON object is required")
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as e:
        raise BadRequest(f"invalid request body: {e}") from e
    except msgspec.DecodeError as e:
        raise BadRequest(f"malformed JSON: {e}") from e


def changes(update: msgspec.Struct) -> dict[str, Any]:
    """The fields a partial update (PUT) actually sets, by python field name.

    `None` means "not given", except for fields whose default is UNSET: there `null`
    is a value (clear it) and UNSET means "not given".
    """
    out: dict[str, Any] = {}
    for field in msgspec.structs.fields(update):
        value = getattr(update, field.name)
        if field.name == "code" or value is msgspec.UNSET:
            continue
        if value is None and field.default is not msgspec.UNSET:
            continue
        out[field.name] = value
    return out


class TriggerCreate(msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=True):
    trigger_name: Name
    trigger_type: str
    trigger_config: dict[str, Any] = {}
    qualifier: str = LATEST
    enabled: bool = True
    description: Description = ""


class TriggerUpdate(
    msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=True, omit_defaults=True
):
    """PUT is partial: only the fields given change (name and type never do)."""

    trigger_config: dict[str, Any] | None = None
    qualifier: str | None = None
    enabled: bool | None = None
    description: Description | None = None


class MessagePublish(msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=True):
    """`POST /v1/messages/{exchange}`: one message for the exchange's bound queues (an MQ
    trigger's among them). `body` is text, or base64 with `isBase64Encoded`; `messageId`
    (default: a new one) is what an MQ trigger derives its request id from."""

    routing_key: Annotated[str, msgspec.Meta(max_length=255)] = ""
    headers: Annotated[dict[str, str], msgspec.Meta(max_length=64)] = {}
    body: str = ""
    is_base64_encoded: bool = False
    message_id: Annotated[str, msgspec.Meta(max_length=128)] = ""
    content_type: Annotated[str, msgspec.Meta(max_length=128)] = ""


class MessagePublished(msgspec.Struct, kw_only=True, rename="camel"):
    """The broker confirmed the message; `routed`: some queue took it (false: no queue
    is bound to the exchange with a matching pattern, and the message is gone)."""

    message_id: str
    routed: bool
