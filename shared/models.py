"""Metadata records (**contract**): field names as Function Compute's, camelCase in JSON.

The store returns these; the gateway encodes them as the API's response bodies.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

InvocationStatus = Literal["Enqueued", "Running", "Succeeded", "Failed"]


class Tenant(msgspec.Struct, kw_only=True, frozen=True):
    name: str
    concurrency: int = 100
    # Longest invocation chain (lineage hops) the dispatcher runs before stopping a loop.
    max_chain_depth: int = 16
    created_time: str = ""
    # Given once at creation and never to another tenant: workers run the tenant's
    # instances under a uid made from it (docs/architecture.md "Isolation").
    number: int = 0


# A log store's name goes into its stream's name (shared/logstore.py): "" = the service's.
StoreName = Annotated[str, msgspec.Meta(pattern=r"^([A-Za-z0-9_][-A-Za-z0-9_]{0,127})?$")]


class LogConfig(msgspec.Struct, kw_only=True, frozen=True, rename="camel", omit_defaults=True):
    logstore: StoreName = ""
    project: str = ""


class Service(msgspec.Struct, kw_only=True, frozen=True, rename="camel"):
    service_name: str
    service_id: str = ""
    description: str = ""
    role: str = ""
    log_config: LogConfig = LogConfig()
    environment_variables: dict[str, str] = {}
    created_time: str = ""
    last_modified_time: str = ""


class Function(msgspec.Struct, kw_only=True, frozen=True, rename="camel"):
    function_name: str
    service_name: str
    function_id: str = ""
    description: str = ""
    runtime: str = "python3.11"
    handler: str = "index.handler"
    timeout: float = 3.0
    memory_size: int = 128
    initializer: str | None = None
    initialization_timeout: float = 3.0
    instance_concurrency: int = 1
    environment_variables: dict[str, str] = {}
    code_checksum: str = ""  # sha256 hex of the code zip; the blob store key
    code_size: int = 0
    # Slots of the tenant's concurrency set aside for (and capped at) this function;
    # None = shares the tenant's unreserved slots. The sum over a tenant's functions never
    # exceeds the tenant's concurrency (the store enforces it).
    reserved_concurrency: int | None = None
    # Bumped on every change; warm instances of an older revision are not reused.
    revision: int = 1
    created_time: str = ""
    last_modified_time: str = ""


class InvocationRecord(msgspec.Struct, kw_only=True, rename="camel"):
    """An async invocation as the status API shows it."""

    request_id: str
    tenant: str
    service_name: str
    qualifier: str
    function_name: str
    # The version the qualifier resolved to ("" until the dispatcher resolved it).
    version: str = ""
    status: InvocationStatus = "Enqueued"
    attempt: int = 0
    error_type: str = ""
    error_message: str = ""
    result: bytes = b""
    created_time: str = ""
    finished_time: str = ""
    # Where the invocation came from: the lineage origin of its chain's first hop, e.g.
    # `http`, `timer:<triggerName>`, `destination:<service>/<function>`.
    origin: str = ""


class Trigger(msgspec.Struct, kw_only=True, frozen=True, rename="camel"):
    """An event source bound to `service.qualifier/function` (FC's trigger resource).

    `trigger_config` is the type's config as validated by `shared.trigger_types` (a JSON
    object; its fields are the type's). Names are unique per function.
    """

    trigger_name: str
    trigger_type: str
    trigger_config: dict[str, Any] = {}
    qualifier: str = "LATEST"
    enabled: bool = True
    description: str = ""
    trigger_id: str = ""
    service_name: str = ""
    function_name: str = ""
    created_time: str = ""
    last_modified_time: str = ""


class DestinationTarget(msgspec.Struct, kw_only=True, frozen=True, rename="camel"):
    """`function:{service}[.{qualifier}]/{function}` or `mq:{exchange}[/{routingKey}]`."""

    destination: str


class DestinationConfig(
    msgspec.Struct, kw_only=True, frozen=True, rename="camel", omit_defaults=True
):
    on_success: DestinationTarget | None = None
    on_failure: DestinationTarget | None = None


class AsyncConfig(msgspec.Struct, kw_only=True, frozen=True, rename="camel"):
    """How async invocations of one function+qualifier are retried and where results go."""

    service_name: str = ""
    qualifier: str = "LATEST"
    function_name: str = ""
    max_async_retry_attempts: int = 3
    max_async_event_age_in_seconds: int = 86400
    destination_config: DestinationConfig = DestinationConfig()
    created_time: str = ""
    last_modified_time: str = ""


class ProvisionConfig(msgspec.Struct, kw_only=True, frozen=True, rename="camel"):
    """Minimum warm instances kept for one function+qualifier."""

    service_name: str = ""
    qualifier: str = "LATEST"
    function_name: str = ""
    target: int = 0
    created_time: str = ""
    last_modified_time: str = ""


# Why an async invocation was given up on.
DEAD_LETTER_REASONS = frozenset(
    (
        "RetriesExhausted",
        "EventAgeExceeded",
        "RecursiveLoopDetected",
        "NotRetryable",
        "DestinationFailed",
    )
)


class DeadLetter(msgspec.Struct, kw_only=True, frozen=True, rename="camel"):
    """An async invocation given up on; kept (beyond its function's life) for redrive.

    `reason` is one of `DEAD_LETTER_REASONS`. `envelope` is the codec-encoded
    `shared.protocol.Invocation` that redrive publishes again; the API never shows it.
    """

    request_id: str
    service_name: str
    qualifier: str
    function_name: str
    reason: str
    error_type: str = ""
    error_message: str = ""
    attempts: int = 0
    hops: int = 0
    trace_id: str = ""
    payload: bytes = b""
    response: bytes = b""
    envelope: bytes = b""
    created_time: str = ""
