"""Messages between roles (**contract**): one envelope for every invocation, one outcome.

Encoded only by `shared.codec` (msgpack on the broker). Event payloads travel as raw bytes.
"""

from __future__ import annotations

from typing import Literal

import msgspec

InvocationKind = Literal["sync", "async"]
Source = Literal["http", "s3", "cron", "mq", "log", "destination", "cli"]
OutcomeStatus = Literal["succeeded", "function_error", "system_error"]

LATEST = "LATEST"


class Lineage(msgspec.Struct, kw_only=True, frozen=True):
    """Where an invocation chain started and how deep it is (loop protection)."""

    trace_id: str
    hops: int = 0
    origin: str = ""


class FunctionSpec(msgspec.Struct, kw_only=True, frozen=True):
    """Everything a worker needs to run one function version; workers never read the DB."""

    tenant: str
    service: str
    function: str
    qualifier: str = LATEST
    version: str = LATEST
    revision: int = 0
    runtime: str = "python3.11"
    handler: str = "index.handler"
    code_digest: str = ""
    timeout: float = 3.0
    memory_size: int = 128
    initializer: str | None = None
    initialization_timeout: float = 3.0
    instance_concurrency: int = 1
    environment: dict[str, str] = {}
    log_store: str = ""
    # The tenant's number (`Tenant.number`): a root worker runs the instances as uid/gid
    # PYFC_INSTANCE_UID_BASE + number. 0 from a dispatcher older than the numbers.
    tenant_number: int = 0

    @property
    def instance_key(self) -> str:
        """Warm instances are reusable only for the same tenant/function/version/revision."""
        return (
            f"{self.tenant}/{self.service}/{self.function}"
            f"@{self.version}#{self.revision}:{self.code_digest[:12]}"
        )


class Invocation(msgspec.Struct, kw_only=True):
    """The envelope of every invocation, from its source to the worker that runs it."""

    id: str
    tenant: str
    service: str
    qualifier: str = LATEST
    function: str
    # The version the qualifier resolved to (LATEST, "1", "2"...), decided once by the
    # first role that resolves it (`FunctionCatalog.resolve`: the gateway for HTTP calls,
    # else the dispatcher at first admission) and kept through retries, redeliveries and
    # redrives. "" = not resolved yet.
    version: str = ""
    kind: InvocationKind = "sync"
    source: Source = "http"
    payload: bytes = b""
    created_at: float = 0.0
    deadline: float = 0.0
    attempt: int = 1
    lineage: Lineage
    traceparent: str = ""
    log_tail: bool = False
    # Lowest function revision the caller knows about: a dispatcher with an older
    # cached config re-reads it instead of running stale code.
    min_revision: int = 0
    # Filled by the dispatcher when it admits and routes the invocation.
    spec: FunctionSpec | None = None
    # The id is deterministic (a trigger's fire): its source may publish it twice (a
    # takeover after a crash), so the dispatcher admits only the first copy of the id
    # (`Store.admit_first`); a redelivery of that copy is handled as any other.
    once: bool = False
    # An HTTP trigger's request (`shared/http_trigger.py`) in `payload`, and how the
    # function takes it: "wsgi", "event" or "asgi"; "" = a plain event.
    http: str = ""


class Outcome(msgspec.Struct, kw_only=True):
    """What happened to one invocation attempt; sent to the sync caller or to `done`."""

    request_id: str
    tenant: str
    status: OutcomeStatus
    body: bytes = b""
    # function_error: "UnhandledInvocationError" | "HandledInvocationError"
    # system_error: an error code such as FunctionTimeout, InstanceCrashed, FunctionNotFound
    error_type: str = ""
    error_message: str = ""
    http_status: int = 200
    log_tail: bytes = b""
    duration_ms: float = 0.0
    instance_id: str = ""
    cold_start: bool = False
    attempt: int = 1
    # The instance's peak memory so far (KB; 0 unknown), as the report line shows it.
    max_memory_kb: int = 0
    # Worker-local: the lines the function printed or logged, (epoch seconds, text). The
    # worker ships them to the log store and empties this before the outcome leaves it.
    log_lines: list[tuple[float, str]] = []


def system_outcome(inv: Invocation, code: str, message: str, http_status: int) -> Outcome:
    """The platform (not the function) could not run `inv`: one constructor for every role."""
    return Outcome(
        request_id=inv.id,
        tenant=inv.tenant,
        status="system_error",
        error_type=code,
        error_message=message,
        http_status=http_status,
        attempt=inv.attempt,
    )


class Completion(msgspec.Struct, kw_only=True):
    """A worker finished an invocation: sent to the tenant's dispatcher shard.

    For sync work it only frees the concurrency slot (the caller already has its reply);
    for async work it carries the outcome and the envelope (without its spec), so the
    dispatcher can record, retry, dead-letter or forward it with nothing kept in memory.
    """

    request_id: str
    tenant: str
    kind: InvocationKind
    outcome: Outcome | None = None
    invocation: Invocation | None = None
    # The worker that ran it: the dispatcher learns when work it routed to one worker's
    # affinity queue ran elsewhere (dispatcher/affinity.py).
    worker_id: str = ""
    # Sync only (async completions carry their outcome): the function failed. What the
    # dispatcher needs to watch a canary version's error rate (dispatcher/rollback.py).
    failed: bool = False


class InvocationBatch(msgspec.Struct, kw_only=True):
    """Async invocations of one tenant accepted together (several HTTP calls in flight at
    once), in one persistent message to the tenant's dispatcher shard."""

    invocations: list[Invocation]


class WorkBatch(msgspec.Struct, kw_only=True):
    """Admitted async invocations of one function version, in one persistent message to
    the workers: at most its instanceConcurrency, so one instance can take them all."""

    invocations: list[Invocation]


class CompletionBatch(msgspec.Struct, kw_only=True):
    """Several async completions of one worker bound for one dispatcher shard, in one
    persistent message (fewer publishes, confirms and deliveries per invocation)."""

    completions: list[Completion]


def invocation_bytes(inv: Invocation) -> int:
    """Roughly what `inv` adds to a batch message (its payload dominates)."""
    return 256 + len(inv.payload)


def completion_bytes(done: Completion) -> int:
    """Roughly what `done` adds to a batch message (its bodies dominate)."""
    size = 256
    if done.outcome is not None:
        size += len(done.outcome.body) + len(done.outcome.log_tail)
    if done.invocation is not None:
        size += len(done.invocation.payload)
    return size


class ControlEvent(msgspec.Struct, kw_only=True):
    """Fanout notice that metadata changed; every process drops what it cached."""

    kind: Literal[
        "function-changed",
        "service-changed",
        "tenant-changed",
        "provision-changed",
        "version-changed",  # published or deleted (tenant, service)
        "alias-changed",  # created, updated, deleted, rolled back (tenant, service)
        "trigger-changed",
    ]
    tenant: str
    service: str = ""
    function: str = ""
    # trigger-changed: the trigger's type, so only that kind's processes reload.
    trigger_type: str = ""


class ProvisionTarget(msgspec.Struct, kw_only=True, frozen=True):
    """Keep `target` instances of `spec` warm across the worker fleet."""

    spec: FunctionSpec
    target: int


class ProvisionSnapshot(msgspec.Struct, kw_only=True, frozen=True):
    """The whole desired provisioned state, published by dispatchers on the `provision`
    fanout every few seconds and after a change; workers place the instances among
    themselves (worker/placement.py). Idempotent: several publishers are harmless."""

    targets: list[ProvisionTarget] = []
    published_at: float = 0.0


class WorkerBeat(msgspec.Struct, kw_only=True, frozen=True):
    """A worker's heartbeat on the `fleet` fanout, so every worker knows the live fleet.

    `capacity`: provisioned instances it may host; `slots`: instances it may run at once
    (dispatchers keep async work within the fleet's slots); `ready`: its live provisioned instances
    per instance key; `seq` 0 is its first beat (others answer with theirs at once);
    `leaving` is its last one, on a clean stop. For routing work to warm instances
    (dispatcher/affinity.py): `warm` is the requests its live instances can take at once
    per instance key, `busy` the requests running on them, `held` the messages of the
    shared work queue it holds unacked (of its `slots` prefetch: work no dispatcher counts
    as routed to it); all empty when it has no affinity queue.
    """

    worker_id: str
    capacity: int
    slots: int = 0
    seq: int = 0
    leaving: bool = False
    ready: dict[str, int] = {}
    warm: dict[str, int] = {}
    busy: dict[str, int] = {}
    held: int = 0
